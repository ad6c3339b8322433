"""Encode one chunk of the downloaded MIDI files into one scheme's tokens (encode.schemes).

Writes OUT/{tokens,times,bar_pos,offsets}.npy, OUT/songs.csv (with what the scheme changed),
OUT/errors.csv (skipped files with their reason) and OUT/scheme.json, and prints a one-line
summary.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from midigen.data.corpus import EncodeConfig, encode_chunk
from midigen.errors import MidigenError
from midigen.stages.branch import add_scheme_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--raw", type=Path, default=Path("data/raw"), help="download output")
    parser.add_argument("--chunk", type=int, required=True, help="chunk id in encode.chunks")
    add_scheme_argument(parser)
    parser.add_argument("--out", type=Path, help="default: data/encoded/SCHEME/chunk-ID")
    parser.add_argument("--workers", type=int, help="processes (default: encode.workers)")


def run(args: argparse.Namespace, params: dict) -> str:
    encode = params["encode"]
    if args.chunk not in encode["chunks"]:
        raise MidigenError(f"--chunk {args.chunk} is not one of encode.chunks {encode['chunks']}")
    out = args.out or Path(f"data/encoded/{args.scheme}/chunk-{args.chunk}")
    workers = encode["workers"] if args.workers is None else args.workers
    config = EncodeConfig.from_params(encode, args.scheme)
    return encode_chunk(args.raw, args.chunk, len(encode["chunks"]), config, out, workers)
