"""Temp copies of the repository as a project a user runs: the real tools on the tiny config."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY = yaml.safe_load((ROOT / ".test" / "params.yaml").read_text())  # the committed tiny config


def run(cmd: list[str], cwd: Path) -> str:
    """Run a command; `snakemake` and `dvc` run under the interpreter running the tests."""
    if cmd[0] in ("snakemake", "dvc"):
        cmd = [sys.executable, "-m", *cmd]
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{output[-4000:]}"
    return output


def make_project(tmp: Path) -> Path:
    """Copy the repo's files (as git sees them) and shrink the corpus to a few chorales."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    project = tmp / "project"
    for name in files:
        if (ROOT / name).is_file() and not name.startswith("tests/"):
            (project / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, project / name)
    shutil.copy2(ROOT / ".test" / "params.yaml", project / "params.yaml")  # the tiny config
    run(["git", "init", "-q"], project)
    commit_all(project, "tiny")
    return project


def commit_all(project: Path, message: str) -> None:
    """Commit everything git sees in the project (what a user does after a run)."""
    run(["git", "add", "-A"], project)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], project)


def set_param(project: Path, key: str, value) -> None:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())
    *sections, name = key.split(".")
    place = params
    for section in sections:
        place = place[section]
    place[name] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))
