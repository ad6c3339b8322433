"""Gather the encoded chunks into per-split shards (memory-mappable .npy), vocab and stats."""

from __future__ import annotations

import argparse
from pathlib import Path

from midigen.corpus import EncodeConfig, build_shards


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--encoded", type=Path, default=Path("data/encoded"), help="folder holding chunk-ID folders"
    )
    parser.add_argument("--out", type=Path, default=Path("data/shards"))


def run(args: argparse.Namespace, params: dict) -> str:
    encode = params["encode"]
    chunks = [args.encoded / f"chunk-{i}" for i in sorted(encode["chunks"])]
    return build_shards(
        chunks, EncodeConfig.from_params(encode), args.out, encode["flag_lost_fraction"]
    )
