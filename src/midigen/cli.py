"""`midigen <stage>`: the one command both DAG files call.

Each stage lives in midigen.stages.<name> and provides `add_arguments(parser)` and
`run(args, params) -> str`; the returned one-line summary is printed on success. Only the
stage being run is imported (`midigen --help` and the data stages never load torch); the
others are listed by their docstring's first line, read without importing them.
"""

from __future__ import annotations

import argparse
import ast
import errno
import importlib
import importlib.util
import json
import logging
import sys
from pathlib import Path

from midigen import progress
from midigen.errors import MidigenError
from midigen.params import DEFAULT_PARAMS, load_params, validate_params

STAGES = (
    "download",
    "encode",
    "shard",
    "train",
    "generate",
    "baselines",
    "evaluate",
    "report",
    "roundtrip",
    "continue",
    "dag",
)
# commands whose module is named otherwise: Python keeps `continue` for itself, and
# midigen.dag is the table `dag` writes out
MODULES = {"continue": "continue_song", "dag": "dag_file"}


def stage_module(name: str) -> str:
    """The module in midigen.stages that runs command `name`."""
    return f"midigen.stages.{MODULES.get(name, name)}"


DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # full disk, quota, file size limit
log = logging.getLogger("midigen")


def stage_summary(name: str) -> str:
    """A stage's help line: the first line of its module's docstring, without importing it."""
    spec = importlib.util.find_spec(stage_module(name))
    source = Path(spec.origin).read_text(encoding="utf-8")
    return ast.get_docstring(ast.parse(source)).splitlines()[0]


def build_parser(stage: str | None = None) -> argparse.ArgumentParser:
    """The command line; only `stage`'s module is imported, for its own arguments."""
    parser = argparse.ArgumentParser(prog="midigen", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name in STAGES:
        p = sub.add_parser(name, help=stage_summary(name))
        if name != stage:
            continue
        module = importlib.import_module(stage_module(name))
        p.description = module.__doc__
        p.add_argument(
            "--params", type=Path, default=DEFAULT_PARAMS, help="params file (default: params.yaml)"
        )
        p.add_argument(
            "--params-json",
            metavar="JSON",
            help="the sections of params this stage reads, as JSON (how Snakemake "
            "passes them); overrides --params",
        )
        p.add_argument("--log", type=Path, help="also write the log to this file")
        p.add_argument(
            "--threads",
            type=int,
            help="cores the stage may use (how Snakemake passes a job's threads; default: "
            "all, or encode.workers)",
        )
        module.add_arguments(p)
        p.set_defaults(module=module)
    return parser


def _setup_logging(log_file: Path | None) -> None:
    """Warnings, progress lines and the error line on stderr; everything, with times, in the
    --log file."""
    console = logging.StreamHandler(sys.stderr)
    console.addFilter(lambda r: r.levelno >= logging.WARNING or r.name == progress.LOG.name)
    console.setFormatter(logging.Formatter("%(message)s"))
    handlers: list[logging.Handler] = [console]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        file = logging.FileHandler(log_file, mode="w")
        file.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
        handlers.append(file)
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True)


def _params(args: argparse.Namespace) -> dict:
    if args.params_json is None:
        return load_params(args.params)
    try:
        params = json.loads(args.params_json)
    except json.JSONDecodeError as e:
        raise MidigenError(f"--params-json is not valid JSON ({e})") from None
    return validate_params(params, source="--params-json", partial=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    stage = argv[0] if argv and argv[0] in STAGES else None
    args = build_parser(stage).parse_args(argv)
    _setup_logging(args.log)
    if args.threads and "torch" in sys.modules:  # a stage that computes with torch
        sys.modules["torch"].set_num_threads(args.threads)
    try:
        summary = args.module.run(args, _params(args))
    except MidigenError as e:
        log.error("midigen %s: error: %s", args.stage, e)
        return 2
    except OSError as e:
        if e.errno not in DISK_FULL:
            raise
        log.error(
            "midigen %s: error: no room to write %s (%s); its earlier outputs are untouched "
            "(outputs are written to a temp file and renamed): free some space and run it again",
            args.stage,
            e.filename or "its outputs",
            e.strerror,
        )
        return 2
    print(f"midigen {args.stage}: {summary}")
    log.info("%s: %s", args.stage, summary)
    return 0
