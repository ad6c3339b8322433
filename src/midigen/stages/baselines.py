"""Fit the unigram and n-gram baselines on the train split and score them on the test split.

Writes --out (JSON metrics, one entry per baseline) and --plots/nll_by_position.csv (one NLL
column per baseline, the same position buckets as `midigen evaluate`), each atomically.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from midigen.atomic import atomic_file
from midigen.dag import default_help, with_defaults
from midigen.data.corpus import load_shard
from midigen.evaluation.baselines import evaluate_baselines
from midigen.evaluation.likelihood import write_metrics
from midigen.stages.branch import add_scheme_argument, shards_of


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_scheme_argument(parser)
    for option in ("shards", "out", "plots"):
        parser.add_argument(f"--{option}", type=Path, help=default_help("baselines", option))


def run(args: argparse.Namespace, params: dict) -> str:
    settings, args = params["evaluate"], with_defaults("baselines", args)
    shards, scheme = shards_of(args)
    out, plots = args.out, args.plots
    results = evaluate_baselines(
        load_shard(shards, "train"),
        load_shard(shards, "test"),
        scheme,
        settings["ngram_order"],
        settings["position_buckets"],
    )
    with atomic_file(plots / "nll_by_position.csv", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["bucket", *results])
        for bucket in results["unigram"]["nll_by_position"]:
            writer.writerow([bucket, *(r["nll_by_position"][bucket] for r in results.values())])
    write_metrics(out, results)
    return (
        ", ".join(
            f"{name} {r['nll']:.3f} nats/token, {r['bits_per_note']:.2f} bits/note"
            for name, r in results.items()
        )
        + f" -> {out}"
    )
