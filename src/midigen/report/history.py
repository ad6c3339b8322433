"""The report's run history: what code ran (commit, hash of the sources), each run's id, and
what changed from one run to the next (params, code, main metrics)."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

import midigen

log = logging.getLogger(__name__)

MAIN_METRICS = (  # (key, label): the metrics whose moves the history lists
    ("nll", "NLL"),
    ("bits_per_note", "bits/note"),
    ("late_nll", "late NLL"),
    ("repeat_second", "repeat 2nd"),
    ("reach_beyond_nll", "NLL beyond XL's reach"),
)


def code_version() -> dict[str, Any]:
    """Git commit of the code that ran (when in a git checkout) and a hash of its sources."""
    package = Path(midigen.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(path.relative_to(package).as_posix().encode() + b"\0")
            digest.update(path.read_bytes())
    version: dict[str, Any] = {"commit": None, "dirty": None, "src_sha256": digest.hexdigest()}
    try:
        commit = subprocess.run(
            ["git", "-C", str(package), "rev-parse", "HEAD"], capture_output=True, text=True
        )
        status = subprocess.run(
            ["git", "-C", str(package), "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
        )
    except OSError:  # no git on this machine
        return version
    if commit.returncode == 0:
        version["commit"] = commit.stdout.strip()
        version["dirty"] = bool(status.stdout.strip())
    return version


def new_run_id(now: datetime, record: dict[str, Any]) -> str:
    """UTC time to the millisecond (sorts in time order) + a short hash of what the run holds."""
    content = hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode())
    return f"{now:%Y%m%dT%H%M%S}.{now.microsecond // 1000:03d}Z-{content.hexdigest()[:6]}"


def _flatten(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in params.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def params_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """'train.steps: 1000 -> 2000' for every param that differs (added or removed too)."""
    old, new = _flatten(before), _flatten(after)
    missing = "(unset)"
    return [
        f"{key}: {json.dumps(old.get(key, missing))} \u2192 {json.dumps(new.get(key, missing))}"
        for key in sorted(old.keys() | new.keys())
        if old.get(key, missing) != new.get(key, missing)
    ]


def metric_moves(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """'xl: NLL 1.550 -> 1.500 (-0.050)' for each main metric that moved, per variant."""
    moves = []
    for name, now in after["variants"].items():
        then = before["variants"].get(name)
        if then is None:
            moves.append(f"{name}: new in this run")
            continue
        parts = [
            f"{label} {then[key]:.3f} \u2192 {now[key]:.3f} ({now[key] - then[key]:+.3f})"
            for key, label in MAIN_METRICS
            if then.get(key) is not None
            and now.get(key) is not None
            and round(now[key] - then[key], 3) != 0
        ]
        moves.append(f"{name}: {', '.join(parts) if parts else 'unchanged'}")
    return moves


def load_runs(runs_dir: Path) -> list[dict[str, Any]]:
    """run.json of every earlier run, oldest first; an unreadable one is skipped with a warning."""
    runs = []
    for path in sorted(runs_dir.glob("*/run.json")):
        if path.parent.name.startswith("."):  # a run still being built (or left by a crash)
            continue
        try:
            runs.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as e:
            log.warning("skipping unreadable %s: %s", path, e)
    return sorted(runs, key=lambda run: run["id"])


def history(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every run, newest first, with what changed against the run before it."""
    rows = []
    for i, run in enumerate(runs):
        previous = runs[i - 1] if i else None
        changes = params_changes(previous["params"], run["params"]) if previous else []
        if previous and previous["code"]["src_sha256"] != run["code"]["src_sha256"]:
            changes.append(
                f"code: {short_version(previous['code'])} \u2192 {short_version(run['code'])}"
            )
        rows.append(
            {
                "id": run["id"],
                "code": short_version(run["code"]),
                "first": previous is None,
                "changes": changes,
                "moves": metric_moves(previous["summary"], run["summary"]) if previous else [],
            }
        )
    return rows[::-1]


def short_version(code: dict[str, Any]) -> str:
    """'a1b2c3d4 (modified) src 0123abcd' - enough to tell two versions apart."""
    commit = code["commit"][:8] + (" (modified)" if code["dirty"] else "") if code["commit"] else ""
    return f"{commit} src {code['src_sha256'][:8]}".strip()
