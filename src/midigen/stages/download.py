"""Fetch the MIDI corpus (music21's chorales or collections, a URL or a folder) with a manifest.

Writes OUT/midi/<hash>.mid (exact duplicates dropped), OUT/manifest.csv (path, sha256, size,
split, group, source) and OUT/skipped.csv (works that could not be rendered, with the reason);
songs that share a tune share a split, a pure function of each file's content. The folder is
replaced whole, only on success. Reads the `download` section of params.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from midigen.dag import default_help, with_defaults
from midigen.data.download import download
from midigen.errors import MidigenError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, help=default_help("download", "out"))


def run(args: argparse.Namespace, params: dict) -> str:
    if "download" not in params:
        raise MidigenError("params have no 'download' section")
    args = with_defaults("download", args)
    return str(download(params["download"], args.out))
