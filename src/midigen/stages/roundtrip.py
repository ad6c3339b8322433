"""Check that every downloaded file survives tokens -> MIDI -> tokens (reports mismatches).

Not a DAG stage: a check to run on any corpus. Exits with status 2 on any mismatch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from midigen.dag import table_paths
from midigen.data.corpus import EncodeConfig, roundtrip_corpus
from midigen.errors import MidigenError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    raw = table_paths("download")["out"]
    parser.add_argument("--raw", type=Path, default=Path(raw), help=f"download output ({raw})")
    parser.add_argument("--workers", type=int, default=0)


def run(args: argparse.Namespace, params: dict) -> str:
    checked, mismatches, skipped = roundtrip_corpus(
        args.raw, EncodeConfig.from_params(params["encode"]), args.workers
    )
    if mismatches:
        raise MidigenError(
            f"{len(mismatches)} of {checked} files do not round-trip, "
            f"first: {', '.join(mismatches[:5])}"
        )
    return f"{checked} files round-trip exactly, 0 mismatches ({skipped} skipped as unencodable)"
