"""Score one trained variant on the test split and compare its samples with the real music.

Writes --metrics (JSON: likelihood metrics, the repeat probe, NLL by repeat reach, musical
statistics with intervals over prompts, the main numbers of every training seed) and --plots
(nll_by_position.csv/.png, histograms.csv/.png, songs.csv: NLL per song and probe cell, and
seed-S/songs.csv for every further training seed S of train.seeds), each atomically.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from midigen.atomic import atomic_dir
from midigen.corpus import load_shard, load_vocab
from midigen.errors import MidigenError
from midigen.evaluate import (
    compare_music,
    evaluate_model,
    load_samples,
    write_metrics,
    write_plots,
)
from midigen.model import MusicTransformer, load_model, variant_memory
from midigen.paired import SONGS_CSV, SongCells, write_song_cells
from midigen.train import TrainConfig, seed_runs

SEED_METRICS = ("nll", "bits_per_note", "early_nll", "late_nll", "repeat")  # per training seed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variant", required=True, help="which variant (names the outputs)")
    parser.add_argument("--shards", type=Path, default=Path("data/shards"))
    parser.add_argument("--model", type=Path, help="default: models/VARIANT/model.pt")
    parser.add_argument("--samples", type=Path, help="default: samples/VARIANT")
    parser.add_argument("--metrics", type=Path, help="default: metrics/eval/VARIANT.json")
    parser.add_argument("--plots", type=Path, help="default: plots/eval/VARIANT")


def run(args: argparse.Namespace, params: dict) -> str:
    settings, steps_per_beat = params["evaluate"], params["encode"]["steps_per_beat"]
    xl_mem_len = params["model"]["xl_mem_len"]  # the same reach buckets for every variant
    model_path = args.model or Path("models") / args.variant / "model.pt"
    samples_dir = args.samples or Path("samples") / args.variant
    metrics_path = args.metrics or Path("metrics/eval") / f"{args.variant}.json"
    plots_dir = args.plots or Path("plots/eval") / args.variant

    variant_memory(args.variant)  # an unknown variant stops here, before any file is read
    samples = load_samples(samples_dir)
    if samples.get("variant", args.variant) != args.variant:
        raise MidigenError(
            f"{samples_dir}/samples.json holds samples of {samples['variant']}, not {args.variant}"
        )
    test = load_shard(args.shards, "test")
    vocab = load_vocab(args.shards)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(model_path, len(vocab), device, args.variant)
    expected = {"encode.steps_per_beat": steps_per_beat, "model.xl_mem_len": xl_mem_len}
    for source, key, value in (
        (f"{model_path} was trained with", "encode.steps_per_beat", model.config.steps_per_beat),
        (f"{samples_dir}/samples.json has", "encode.steps_per_beat", samples["steps_per_beat"]),
        (f"{model_path} was trained with", "model.xl_mem_len", model.config.xl_mem_len),
    ):
        if value != expected[key]:
            name = key.split(".")[1]
            raise MidigenError(f"{source} {name} {value} but {key} is {expected[key]}")

    def score(model: MusicTransformer) -> tuple[dict, SongCells]:
        return evaluate_model(
            model,
            test,
            vocab,
            settings["position_buckets"],
            settings["batch_size"],
            settings["repeat_ngram"],
            xl_mem_len,
        )

    metrics, songs = score(model)
    seeds = {}  # folder -> songs.csv table of every further training seed
    metrics["seeds"] = []
    for seed, folder in seed_runs(TrainConfig.from_params(params["train"])):
        if folder:
            path = model_path.parent / folder / "model.pt"
            seed_metrics, seeds[folder] = score(load_model(path, len(vocab), device, args.variant))
        else:
            seed_metrics = metrics
        metrics["seeds"].append(
            {"seed": seed, "folder": folder, **{k: seed_metrics[k] for k in SEED_METRICS}}
        )
    metrics["music"], histograms = compare_music(samples, vocab)
    with atomic_dir(plots_dir) as tmp:
        write_plots(tmp, args.variant, metrics["nll_by_position"], histograms)
        write_song_cells(tmp / SONGS_CSV, songs)
        for folder, table in seeds.items():
            (tmp / folder).mkdir()
            write_song_cells(tmp / folder / SONGS_CSV, table)
    write_metrics(metrics_path, metrics)
    return (
        f"{args.variant}: {metrics['nll']:.3f} nats/token, {metrics['bits_per_note']:.2f} "
        f"bits/note, accuracy {metrics['accuracy']:.1%}, repeat {metrics['repeat']['first']:.3f}"
        f" -> {metrics['repeat']['second']:.3f} -> {metrics_path}"
    )
