"""Continue the first test songs with a trained variant: MIDI, WAV and piano rolls of prompt,
real and generated piece, and samples.json (see midigen.generate)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from midigen.corpus import load_vocab
from midigen.generate import GenerateConfig, write_samples
from midigen.model import load_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variant", required=True, help="vanilla | xl | xl_knn")
    parser.add_argument("--shards", type=Path, default=Path("data/shards"))
    parser.add_argument("--raw", type=Path, default=Path("data/raw"), help="for song titles")
    parser.add_argument("--model", type=Path, help="default: models/VARIANT/model.pt")
    parser.add_argument("--out", type=Path, help="default: samples/VARIANT")


def run(args: argparse.Namespace, params: dict) -> str:
    path = args.model or Path("models") / args.variant / "model.pt"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(path, len(load_vocab(args.shards)), device, args.variant)
    config = GenerateConfig.from_params(params["generate"])
    out = args.out or Path("samples") / args.variant
    samples = write_samples(
        model, args.variant, args.shards, args.raw, out, config, params["encode"]["steps_per_beat"]
    )
    tokens = sum(len(p["tokens"]["generated"]) for p in samples["prompts"])
    seconds = sum(p["seconds"] for p in samples["prompts"])
    audio = f"no audio: {samples['renderer']}" if samples["renderer"] else "with audio"
    return (
        f"{args.variant}: {len(samples['prompts'])} continuations, {tokens} tokens at "
        f"{tokens / seconds:,.0f} tokens/s, {audio} -> {out}"
    )
