"""Score one trained variant on the test split and compare its samples with the real music.

Writes --metrics (JSON: likelihood metrics, the repeat probe, NLL by repeat reach, musical
statistics with intervals over prompts, the main numbers of every training seed) and --plots
(nll_by_position.csv/.png, histograms.csv/.png, songs.csv: NLL per song and probe cell,
seed-S/songs.csv for every further training seed S of train.seeds, and cache/songs.csv: the
same with the copy cache mixed in, fit on the validation split), each atomically.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from midigen.atomic import atomic_dir
from midigen.dag import default_help, with_defaults
from midigen.data.corpus import load_shard
from midigen.encodings.catalog import steps_per_beat_of
from midigen.errors import MidigenError
from midigen.evaluation.cache import fit_cache
from midigen.evaluation.checks import TrainingIndex
from midigen.evaluation.likelihood import (
    Scored,
    check_buckets,
    compare_music,
    score_model,
    score_split,
    summarize_scores,
    write_metrics,
    write_plots,
)
from midigen.evaluation.paired import CACHE_FOLDER, SONGS_CSV, SongCells, write_song_cells
from midigen.generation.samples import read_samples
from midigen.models.training import TrainConfig, seed_runs
from midigen.models.transformer import ModelConfig
from midigen.models.variants import check_variant, load_trained
from midigen.stages.branch import add_scheme_argument, shards_of

SEED_METRICS = ("nll", "bits_per_note", "early_nll", "late_nll", "repeat")  # per training seed
CACHED_METRICS = ("nll", "bits_per_note", "repeat", "repeat_by_reach")  # with the copy cache


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variant", required=True, help="which variant (names the outputs)")
    add_scheme_argument(parser)
    for option in ("shards", "model", "samples", "metrics", "plots"):
        parser.add_argument(f"--{option}", type=Path, help=default_help("evaluate", option))


def check_grid(shards: Path, found: dict[str, int]) -> None:
    """Each input's steps per beat (by where it was found) is the shards' grid, or one error."""
    grid = steps_per_beat_of(shards)
    for source, value in found.items():
        if value != grid:
            raise MidigenError(f"{source} steps_per_beat {value} but {shards} are on {grid}")


def run(args: argparse.Namespace, params: dict) -> str:
    settings = params["evaluate"]
    xl_mem_len = params["model"]["xl_mem_len"]  # the same reach buckets for every variant
    args = with_defaults("evaluate", args)
    model_path, samples_dir = args.model, args.samples
    metrics_path, plots_dir = args.metrics, args.plots

    check_variant(args.variant)  # an unknown variant stops here, before any file is read
    samples = read_samples(samples_dir)
    if samples.variant != args.variant:
        raise MidigenError(
            f"{samples_dir}/samples.json holds samples of {samples.variant}, not {args.variant}"
        )
    shards, scheme = shards_of(args)
    test, val = load_shard(shards, "test"), load_shard(shards, "val")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_trained(model_path, scheme.fields, device, args.variant)
    check_grid(
        shards,
        {
            f"{model_path} was trained with": model.config.steps_per_beat,
            f"{samples_dir}/samples.json has": samples.steps_per_beat,
        },
    )
    if isinstance(model.config, ModelConfig) and model.config.xl_mem_len != xl_mem_len:
        raise MidigenError(  # the LSTM has no XL memory
            f"{model_path} was trained with xl_mem_len {model.config.xl_mem_len} but "
            f"model.xl_mem_len is {xl_mem_len}"
        )

    batch_size, repeat_ngram = settings["batch_size"], settings["repeat_ngram"]

    def summarize(scored: Scored, model: nn.Module) -> tuple[dict, SongCells]:
        segment_len = model.config.segment_len
        buckets = settings["position_buckets"]
        return summarize_scores(scored, scheme, buckets, segment_len, repeat_ngram)

    def score(model: nn.Module) -> tuple[Scored, dict, SongCells]:
        scored = score_split(model, test, scheme, batch_size, repeat_ngram, xl_mem_len)
        return scored, *summarize(scored, model)

    check_buckets(settings["position_buckets"])
    scored, metrics, songs = score(model)
    # the sceptic's reference: the same model with a copy cache, fit on validation only
    cache, val_nll = fit_cache(score_model(model, val, scheme, batch_size), val)
    cached, cached_songs = summarize(cache.applied(scored), model)
    metrics["copy_cache"] = {
        "order": cache.order,
        "weight": cache.weight,
        "val_nll": val_nll,
        **{key: cached[key] for key in CACHED_METRICS},
    }
    seeds = {}  # folder -> songs.csv table of every further training seed
    metrics["seeds"] = []
    for seed, folder in seed_runs(TrainConfig.from_params(params["train"])):
        if folder:
            path = model_path.parent / folder / "model.pt"
            _, seed_metrics, seeds[folder] = score(
                load_trained(path, scheme.fields, device, args.variant)
            )
        else:
            seed_metrics = metrics
        metrics["seeds"].append(
            {"seed": seed, "folder": folder, **{k: seed_metrics[k] for k in SEED_METRICS}}
        )
    index = TrainingIndex.of(load_shard(shards, "train"), scheme.fields)  # for copying
    metrics["music"], histograms = compare_music(samples, scheme, index)
    with atomic_dir(plots_dir) as tmp:
        write_plots(tmp, args.variant, metrics["nll_by_position"], histograms)
        write_song_cells(tmp / SONGS_CSV, songs)
        (tmp / CACHE_FOLDER).mkdir()
        write_song_cells(tmp / CACHE_FOLDER / SONGS_CSV, cached_songs)
        for folder, table in seeds.items():
            (tmp / folder).mkdir()
            write_song_cells(tmp / folder / SONGS_CSV, table)
    write_metrics(metrics_path, metrics)
    return (
        f"{args.scheme} {args.variant}: {metrics['nll']:.3f} nats/token, "
        f"{metrics['bits_per_note']:.2f} bits/note, accuracy {metrics['accuracy']:.1%}, "
        f"repeat {metrics['repeat']['first']:.3f}"
        f" -> {metrics['repeat']['second']:.3f} -> {metrics_path}"
    )
