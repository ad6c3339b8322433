"""Write dvc.yaml from the stage table in midigen.dag (the Snakefile reads the table itself)."""

from __future__ import annotations

import argparse
from pathlib import Path

from midigen.atomic import atomic_file
from midigen.dag import STAGES, dvc_yaml


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dvc", type=Path, default=Path("dvc.yaml"), help="default: dvc.yaml")


def run(args: argparse.Namespace, params: dict) -> str:
    with atomic_file(args.dvc) as out:
        out.write(dvc_yaml())
    return f"{len(STAGES)} stages -> {args.dvc}"
