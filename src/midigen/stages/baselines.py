"""Fit the unigram and n-gram baselines on the train split and score them on the test split.

Writes --out (JSON metrics, one entry per baseline) and --plots/nll_by_position.csv (one NLL
column per baseline, the same position buckets as `midigen evaluate`), each atomically.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from midigen.atomic import atomic_file
from midigen.baselines import evaluate_baselines
from midigen.corpus import load_shard, load_vocab
from midigen.evaluate import write_metrics


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", type=Path, default=Path("data/shards"))
    parser.add_argument("--out", type=Path, default=Path("metrics/baselines.json"))
    parser.add_argument("--plots", type=Path, default=Path("plots/baselines"))


def run(args: argparse.Namespace, params: dict) -> str:
    settings = params["evaluate"]
    results = evaluate_baselines(
        load_shard(args.shards, "train"),
        load_shard(args.shards, "test"),
        load_vocab(args.shards),
        settings["ngram_order"],
        settings["position_buckets"],
    )
    with atomic_file(args.plots / "nll_by_position.csv", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["bucket", *results])
        for bucket in results["unigram"]["nll_by_position"]:
            writer.writerow([bucket, *(r["nll_by_position"][bucket] for r in results.values())])
    write_metrics(args.out, results)
    return (
        ", ".join(
            f"{name} {r['nll']:.3f} nats/token, {r['bits_per_note']:.2f} bits/note"
            for name, r in results.items()
        )
        + f" -> {args.out}"
    )
