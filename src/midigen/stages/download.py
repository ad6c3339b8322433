"""Fetch the MIDI corpus (bundled Bach chorales, a URL or a folder) with a split manifest.

Writes OUT/midi/<hash>.mid (exact duplicates dropped) and OUT/manifest.csv (path, sha256, size,
split, source); the split is a pure function of each file's content hash. The folder is
replaced whole, only on success. Reads the `download` section of params.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from midigen.download import download
from midigen.errors import MidigenError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, default=Path("data/raw"), help="output folder (default: data/raw)"
    )


def run(args: argparse.Namespace, params: dict) -> str:
    if "download" not in params:
        raise MidigenError("params have no 'download' section")
    return str(download(params["download"], args.out))
