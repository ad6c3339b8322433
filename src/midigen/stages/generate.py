"""Continue the first test songs with a trained variant: MIDI, WAV and piano rolls of prompt,
real and generated piece, and samples.json (see midigen.generation.writing)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from midigen.dag import default_help, with_defaults
from midigen.generation.sampling import GenerateConfig
from midigen.generation.writing import write_samples
from midigen.models.variants import load_trained
from midigen.stages.branch import add_scheme_argument, shards_of


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variant", required=True, help="one of train.variants")
    add_scheme_argument(parser)
    for option, about in (("shards", ""), ("raw", "song titles; "), ("model", ""), ("out", "")):
        parser.add_argument(f"--{option}", type=Path, help=about + default_help("generate", option))


def run(args: argparse.Namespace, params: dict) -> str:
    args = with_defaults("generate", args)
    shards, scheme = shards_of(args)
    path = args.model
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_trained(path, scheme.fields, device, args.variant)
    config = GenerateConfig.from_params(params["generate"])
    out = args.out
    grid = model.config.steps_per_beat  # the model's, as it was trained: its shards'
    samples = write_samples(model, args.variant, shards, args.raw, out, config, grid)
    tokens = sum(len(p.tokens["generated"]) for p in samples.prompts)
    audio = f"no audio: {samples.renderer}" if samples.renderer else "with audio"
    return (
        f"{args.scheme} {args.variant}: {len(samples.prompts)} continuations in one batch, "
        f"{tokens} tokens at {samples.tokens_per_s:,.0f} tokens/s, {audio} -> {out}"
    )
