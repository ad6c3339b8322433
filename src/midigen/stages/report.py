"""Build the HTML report comparing every variant; each run is also kept under OUT/runs/<run-id>/.

Reads metrics/S/train/V/ (DVCLive), metrics/S/eval/V.json, plots/S/eval/V/, samples/S/V/
for every variant in train.variants, metrics/S/baselines.json and data/shards/S/stats.json
(what encoding did to the notes); writes OUT/index.html (the latest run and every run's changes) and
OUT/runs/<run-id>/ (self-contained page, media copies, run.json).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from midigen.report.build import ReportInputs, build_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("reports"))
    parser.add_argument(
        "--metrics", type=Path, default=Path("metrics"), help="holds train/, eval/, baselines.json"
    )
    parser.add_argument("--plots", type=Path, default=Path("plots"), help="holds eval/VARIANT/")
    parser.add_argument("--samples", type=Path, default=Path("samples"), help="holds VARIANT/")
    parser.add_argument("--shards", type=Path, default=Path("data/shards"), help="holds stats.json")


def run(args: argparse.Namespace, params: dict) -> str:
    built = build_report(
        params, ReportInputs(args.metrics, args.plots, args.samples, args.shards), args.out
    )
    return (
        f"run {built.run_id}: {len(params['train']['variants'])} variants, {built.prompts} prompts "
        f"-> {built.index}. {built.memory}"
    )
