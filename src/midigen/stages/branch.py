"""What the stages after shard share: the scheme branch they run on (encode.schemes)."""

from __future__ import annotations

import argparse
from pathlib import Path

from midigen.encodings import Scheme
from midigen.encodings.catalog import SCHEMES, load_scheme
from midigen.errors import MidigenError


def add_scheme_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scheme",
        default="index",
        choices=SCHEMES,
        help="the branch of encode.schemes to run (it names the default paths)",
    )


def shards_of(args: argparse.Namespace) -> tuple[Path, Scheme]:
    """The shard folder of a stage (`--shards`, defaulted by midigen.dag.with_defaults) and
    the scheme its tokens are in, which must be the branch the stage was asked to run."""
    shards = args.shards
    scheme = load_scheme(shards)
    if scheme.name != args.scheme:
        raise MidigenError(f"{shards} holds {scheme.name} tokens, not {args.scheme} (--scheme)")
    return shards, scheme
