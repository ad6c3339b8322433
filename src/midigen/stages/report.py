"""Build the HTML report comparing every variant; each run is also kept under OUT/runs/<run-id>/.

Reads metrics/S/train/V/ (DVCLive), metrics/S/eval/V.json, plots/S/eval/V/, samples/S/V/
for every variant in train.variants, metrics/S/baselines.json and data/shards/S/stats.json
(what encoding did to the notes); writes OUT/index.html (the latest run and every run's changes) and
OUT/runs/<run-id>/ (self-contained page, media copies, run.json).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from midigen.dag import default_help, with_defaults
from midigen.report.build import ReportInputs, build_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for option, holds in (
        ("metrics", "SCHEME/train/, eval/, baselines.json"),
        ("plots", "SCHEME/eval/VARIANT/"),
        ("samples", "SCHEME/VARIANT/"),
        ("shards", "SCHEME/stats.json"),
        ("out", "index.html, runs/"),
    ):
        about = f"holds {holds} ({default_help('report', option)})"
        parser.add_argument(f"--{option}", type=Path, help=about)


def run(args: argparse.Namespace, params: dict) -> str:
    args = with_defaults("report", args)
    built = build_report(
        params, ReportInputs(args.metrics, args.plots, args.samples, args.shards), args.out
    )
    return (
        f"run {built.run_id}: {len(params['train']['variants'])} variants, {built.prompts} prompts "
        f"-> {built.index}. {built.memory}"
    )
