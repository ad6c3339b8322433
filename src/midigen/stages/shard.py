"""Gather one scheme's encoded chunks into per-split shards (memory-mappable .npy), the scheme
(scheme.json, with the merges bpe learns here on the training split) and stats."""

from __future__ import annotations

import argparse
from pathlib import Path

from midigen.dag import default_help, with_defaults
from midigen.data.corpus import EncodeConfig, build_shards
from midigen.stages.branch import add_scheme_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_scheme_argument(parser)
    parser.add_argument(
        "--encoded",
        type=Path,
        help=f"folder of chunk-ID folders ({default_help('shard', 'encoded')})",
    )
    parser.add_argument("--out", type=Path, help=default_help("shard", "out"))


def run(args: argparse.Namespace, params: dict) -> str:
    encode, args = params["encode"], with_defaults("shard", args)
    encoded = args.encoded
    chunks = [encoded / f"chunk-{i}" for i in sorted(encode["chunks"])]
    config = EncodeConfig.from_params(encode, args.scheme)
    out = args.out
    return build_shards(chunks, config, out, encode["flag_lost_fraction"])
