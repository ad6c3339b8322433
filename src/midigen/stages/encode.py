"""Encode one chunk of the downloaded MIDI files into one scheme's tokens (encode.schemes).

Writes OUT/{tokens,times,bar_pos,offsets}.npy, OUT/songs.csv (with what the scheme changed),
OUT/errors.csv (skipped files with their reason) and OUT/scheme.json, and prints a one-line
summary.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from midigen.dag import default_help, with_defaults
from midigen.data.corpus import EncodeConfig, encode_chunk
from midigen.errors import MidigenError
from midigen.stages.branch import add_scheme_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--raw", type=Path, help=default_help("encode", "raw"))
    parser.add_argument("--chunk", type=int, required=True, help="chunk id in encode.chunks")
    add_scheme_argument(parser)
    parser.add_argument("--out", type=Path, help=default_help("encode", "out"))


def run(args: argparse.Namespace, params: dict) -> str:
    encode = params["encode"]
    if args.chunk not in encode["chunks"]:
        raise MidigenError(f"--chunk {args.chunk} is not one of encode.chunks {encode['chunks']}")
    args = with_defaults("encode", args)
    out = args.out
    workers = args.threads or encode["workers"]  # processes
    config = EncodeConfig.from_params(encode, args.scheme)
    return encode_chunk(args.raw, args.chunk, len(encode["chunks"]), config, out, workers)
