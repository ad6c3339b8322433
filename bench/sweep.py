"""The default-run sweep (issue 26): whole default runs at one wall-clock budget, compared by
bits per note and by how tonal their music is against the real continuations.

    python bench/sweep.py --work /tmp/sweep                      # every point, seed 0
    python bench/sweep.py --work /tmp/sweep --only index bpe-512 --seeds 0 1 2
    python bench/sweep.py ... --results bench/RESULTS.md         # also write its section

The points are overlays of params.yaml (experiments/sweep.yaml). Each runs in its own copy of
the committed tree (`git archive HEAD`: uncommitted changes are not in it), WORK/NAME-sS, as
`snakemake --cores all --configfile overlay.yaml` with `train.seed` S: download to report,
timed as one. Its rows (from the run's evaluate metrics), wall time and commit are kept in
bench/sweep/NAME-sS.json, committed, so that a sweep longer than a session goes on where it
stopped (a kept point is not run again) and the table holds every kept point. A point over
`--budget` minutes is marked so: the comparison is at the default run's budget, and a slower
point would win by time, not by its choice.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml
from sections import commit, record

ROOT = Path(__file__).resolve().parent.parent
KEPT = ROOT / "bench" / "sweep"  # one JSON per finished point and seed
MUSIC = ("scale_consistency", "pitch_class_entropy")


def prepare(folder: Path, overlay: dict, seed: int) -> None:
    """WORK/NAME-sS: the committed tree, and the point's overlay with its seed (a run that did
    not finish there is started again from nothing)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD"], capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    train = {**overlay.get("train", {}), "seed": seed}
    (folder / "overlay.yaml").write_text(yaml.safe_dump({**overlay, "train": train}))


def run_point(folder: Path) -> float:
    """The whole pipeline in `folder`, its source first on the path; its wall minutes."""
    env = {**os.environ, "PYTHONPATH": str(folder / "src")}
    started = time.perf_counter()
    with open(folder / "sweep.log", "w") as log:
        command = ["snakemake", "--cores", "all", "--configfile", "overlay.yaml"]
        if subprocess.run(command, cwd=folder, env=env, stdout=log, stderr=log).returncode:
            sys.exit(f"the run in {folder} failed: {folder / 'sweep.log'} says why")
    return (time.perf_counter() - started) / 60


def rows_of(folder: Path) -> list[dict]:
    """One row per scheme and variant the run evaluated."""
    rows = []
    for path in sorted(folder.glob("metrics/*/eval/*.json")):
        metrics = json.loads(path.read_text())
        music = metrics["music"]
        rows.append(
            {
                "scheme": path.parent.parent.name,
                "variant": path.stem,
                "bits_per_note": metrics["bits_per_note_interval"],
                **{f"generated_{m}": music["generated"][m] for m in MUSIC},
                **{f"real_{m}": music["real"][m] for m in MUSIC},
            }
        )
    return rows


def interval(value: dict, digits: int = 3) -> str:
    return f"{value['mean']:.{digits}f} [{value['low']:.{digits}f}, {value['high']:.{digits}f}]"


def table(results: list[dict], budget: float) -> str:
    lines = [
        "| point | seed | commit | wall min | scheme | variant | bits/note | scale consistency "
        "(real) | pitch-class entropy (real) |",
        "|---|---:|---|---:|---|---|---|---|---|",
    ]
    for result in results:
        over = " (over budget)" if result["minutes"] > budget else ""
        for row in result["rows"]:
            tonal = [
                f"{interval(row[f'generated_{m}'])} ({interval(row[f'real_{m}'])})" for m in MUSIC
            ]
            lines.append(
                f"| {result['point']} | {result['seed']} | {result['commit']} | "
                f"{result['minutes']:.1f}{over} | "
                f"{row['scheme']} | {row['variant']} | {interval(row['bits_per_note'], 2)} | "
                + " | ".join(tonal)
                + " |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="a folder per point and seed")
    parser.add_argument("--points", type=Path, default=ROOT / "experiments" / "sweep.yaml")
    parser.add_argument("--only", nargs="*", help="these points (default: all)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--budget", type=float, default=20.0, help="minutes per default run")
    parser.add_argument("--results", type=Path, help="write the table into this RESULTS.md")
    args = parser.parse_args()
    points = yaml.safe_load(args.points.read_text())
    unknown = sorted(set(args.only or ()) - set(points))
    if unknown:
        sys.exit(f"no such point in {args.points}: {', '.join(unknown)}")
    for name in args.only or points:
        for seed in args.seeds:
            kept = KEPT / f"{name}-s{seed}.json"
            if kept.exists():
                continue
            folder = args.work / f"{name}-s{seed}"
            prepare(folder, points[name] or {}, seed)
            minutes = run_point(folder)
            result = {"point": name, "seed": seed, "commit": commit(), "minutes": minutes}
            result["rows"] = rows_of(folder)
            KEPT.mkdir(exist_ok=True)
            kept.write_text(json.dumps(result, indent=1) + "\n")
            print(table([result], args.budget).splitlines()[-1], flush=True)
    order = {name: i for i, name in enumerate(points)}
    results = [json.loads(path.read_text()) for path in KEPT.glob("*.json")]
    results = [r for r in results if r["point"] in order]
    results.sort(key=lambda r: (order[r["point"]], r["seed"]))
    report = table(results, args.budget)
    print(report)
    if args.results:
        record(args.results, "sweep", "# The default-run sweep (issue 26)", report)


if __name__ == "__main__":
    main()
