"""The stages of the pipeline, declared once: the table both DAG files follow.

`STAGES` gives each stage's command, the params it reads (a whole section, or section.key),
the other stages' outputs it reads and what it writes, as path templates over the wildcards
it runs per (scheme, chunk, variant); `code_deps(stage)` is its code: the closure of its
imports inside midigen (read from the sources, so a new import is a new dependency without
anyone listing it), plus the package files those modules read. The Snakefile builds its rules
from the table; dvc.yaml, which cannot run code, is written from it by `midigen dag`
(tests/test_declarations.py fails while the committed file is stale); a stage run by hand
defaults its paths to the table's (`with_defaults`).
"""

from __future__ import annotations

import ast
import re
from argparse import Namespace
from dataclasses import dataclass
from functools import cache
from itertools import product
from pathlib import Path, PurePosixPath

import yaml

PACKAGE = Path(__file__).resolve().parent
SOURCE_ROOT = "src/midigen"  # where the package lives in the repository
SECTIONS = ("download", "encode", "data", "model", "train", "generate", "evaluate", "report")
# The encode keys that change what a token stream looks like (not `workers`).
ENCODE_KEYS = (
    "steps_per_beat",
    "max_duration",
    "instruments",
    "max_steps",
    "max_notes",
    "max_file_mb",
    "chunks",
)
SCHEME = "{scheme}"  # stands for the branch's scheme: its own section is encode.<scheme>
# What a stage runs per: each wildcard's values are a list in params.
WILDCARDS = {"scheme": "encode.schemes", "chunk": "encode.chunks", "variant": "train.variants"}


@dataclass(frozen=True)
class Stage:
    """One stage as both DAG files run it. Paths are templates over WILDCARDS: an input with
    a wildcard the stage does not run per stands for all of its values (the report reads
    every variant's metrics). Every stage also writes logs/NAME[-WILDCARD...].log."""

    command: str  # `midigen` and its path arguments; the DAG files add params and the log
    params: tuple[str, ...]  # sections, or section.key, of params.yaml it reads
    inputs: tuple[str, ...] = ()  # other stages' outputs it reads
    outs: tuple[str, ...] = ()  # a path without a suffix is a folder
    metrics: tuple[str, ...] = ()  # outputs DVC shows as metrics, and as plots:
    plots: tuple[str, ...] = ()
    cached: bool = True  # whether DVC caches the outputs (not the report page)
    # outputs that grow from run to run (the report's history): DVC keeps them (persist);
    # Snakemake deletes every output it declares before a job, so its rule leaves them out
    kept: tuple[str, ...] = ()
    threads: str | None = None  # "all" cores, or the param that sets how many (0: all)

    @property
    def wildcards(self) -> tuple[str, ...]:
        """The wildcards it runs per, in WILDCARDS order (those its command names)."""
        return tuple(w for w in WILDCARDS if f"{{{w}}}" in self.command)

    @property
    def outputs(self) -> tuple[str, ...]:
        return (*self.outs, *self.metrics, *self.plots)


STAGES: dict[str, Stage] = {
    "download": Stage("midigen download --out data/raw", ("download",), outs=("data/raw",)),
    "encode": Stage(
        "midigen encode --scheme {scheme} --chunk {chunk} --raw data/raw"
        " --out data/encoded/{scheme}/chunk-{chunk}",
        (*(f"encode.{key}" for key in ENCODE_KEYS), f"encode.{SCHEME}"),
        inputs=("data/raw",),
        outs=("data/encoded/{scheme}/chunk-{chunk}",),
        threads="encode.workers",
    ),
    "shard": Stage(
        "midigen shard --scheme {scheme} --encoded data/encoded/{scheme}"
        " --out data/shards/{scheme}",
        (
            *(f"encode.{key}" for key in ENCODE_KEYS),
            f"encode.{SCHEME}",
            "encode.flag_lost_fraction",
        ),
        inputs=("data/encoded/{scheme}/chunk-{chunk}",),
        outs=("data/shards/{scheme}",),
    ),
    "train": Stage(
        "midigen train --scheme {scheme} --variant {variant} --shards data/shards/{scheme}"
        " --out models/{scheme}/{variant} --metrics metrics/{scheme}/train/{variant}"
        " --checkpoints checkpoints/train",  # where checkpoints wait: no tool deletes it
        ("data", "model", "train"),
        inputs=("data/shards/{scheme}",),
        outs=("models/{scheme}/{variant}",),
        metrics=("metrics/{scheme}/train/{variant}/metrics.json",),
        plots=("metrics/{scheme}/train/{variant}/plots",),
        threads="all",
    ),
    "generate": Stage(
        "midigen generate --scheme {scheme} --variant {variant} --shards data/shards/{scheme}"
        " --raw data/raw --model models/{scheme}/{variant}/model.pt"
        " --out samples/{scheme}/{variant}",
        ("generate",),
        inputs=("models/{scheme}/{variant}", "data/shards/{scheme}", "data/raw"),
        outs=("samples/{scheme}/{variant}",),
        threads="all",
    ),
    "baselines": Stage(
        "midigen baselines --scheme {scheme} --shards data/shards/{scheme}"
        " --out metrics/{scheme}/baselines.json --plots plots/{scheme}/baselines",
        ("evaluate",),
        inputs=("data/shards/{scheme}",),
        metrics=("metrics/{scheme}/baselines.json",),
        plots=("plots/{scheme}/baselines",),
    ),
    "evaluate": Stage(
        "midigen evaluate --scheme {scheme} --variant {variant} --shards data/shards/{scheme}"
        " --model models/{scheme}/{variant}/model.pt --samples samples/{scheme}/{variant}"
        " --metrics metrics/{scheme}/eval/{variant}.json --plots plots/{scheme}/eval/{variant}",
        ("evaluate", "model.xl_mem_len", "train.seed", "train.seeds"),
        inputs=("models/{scheme}/{variant}", "data/shards/{scheme}", "samples/{scheme}/{variant}"),
        metrics=("metrics/{scheme}/eval/{variant}.json",),
        plots=("plots/{scheme}/eval/{variant}",),
        threads="all",
    ),
    "report": Stage(
        "midigen report --metrics metrics --plots plots --samples samples --shards data/shards"
        " --out reports",
        SECTIONS,
        inputs=(
            "metrics/{scheme}/train/{variant}/metrics.json",
            "metrics/{scheme}/eval/{variant}.json",
            "plots/{scheme}/eval/{variant}",
            "samples/{scheme}/{variant}",
            "metrics/{scheme}/baselines.json",
            "data/shards/{scheme}",
        ),
        outs=("reports/index.html",),
        cached=False,
        kept=("reports/runs",),
    ),
}
STAGE_PARAMS = {name: stage.params for name, stage in STAGES.items()}
# Files besides code that a module reads from the package (by module name).
PACKAGE_DATA = {
    "midigen.params": ("params.schema.yaml",),
    "midigen.report.build": ("report/templates/report.html.j2",),
}


def code_deps(stage: str) -> list[str]:
    """Repository paths of everything in the package that `midigen STAGE` runs or reads, but
    this table: a stage reads from it only the default paths, which both DAG files pass
    explicitly, and a change to a stage's row reaches both tools as a change of that stage's
    command, params or files; counted as code, one edited row would re-run every stage."""
    modules = _closure(("midigen.cli", f"midigen.stages.{stage}")) - {__name__}
    files = {_path(m) for m in modules}
    files |= {Path(f) for m in modules for f in PACKAGE_DATA.get(m, ())}
    return sorted(f"{SOURCE_ROOT}/{f.as_posix()}" for f in files)


def sections_of(stage: str, scheme: str | None = None) -> dict[str, list[str] | None]:
    """STAGE_PARAMS[stage] as {section: keys, or None for the whole section}, for the branch
    of `scheme` (the stages before training read its section of encode)."""
    chosen: dict[str, list[str] | None] = {}
    for name in STAGE_PARAMS[stage]:
        if SCHEME in name:
            if scheme is None:
                raise ValueError(f"the {stage} stage runs per scheme: name one")
            name = name.replace(SCHEME, scheme)
        section, _, key = name.partition(".")
        if not key:
            chosen[section] = None
        elif chosen.get(section, []) is not None:
            chosen[section] = [*chosen.get(section, []), key]
    return chosen


def _closure(roots: tuple[str, ...]) -> set[str]:
    """The modules of midigen that `roots` import, directly or not, with their packages."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo += _imports(module)
        todo += [module.rsplit(".", k)[0] for k in range(1, module.count(".") + 1)]
    return seen


@cache
def _imports(module: str) -> tuple[str, ...]:
    """The midigen modules that `module`'s source imports (anywhere in it)."""
    tree = ast.parse((PACKAGE / _path(module)).read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append(node.module)
            found += [f"{node.module}.{alias.name}" for alias in node.names]
    return tuple(name for name in found if name.split(".")[0] == "midigen" and _exists(name))


def _exists(module: str) -> bool:
    return (PACKAGE / _path(module)).is_file()


def _path(module: str) -> Path:
    """The file of a midigen module, relative to the package folder."""
    parts = module.split(".")[1:]
    folder = Path(*parts) if parts else Path()
    if (PACKAGE / folder).is_dir():
        return folder / "__init__.py"
    return folder.with_suffix(".py")


# ---- the table, as each DAG tool and each stage reads it -----------------------------------


def log_path(name: str) -> str:
    """logs/NAME[-{wildcard}...].log: one log per job."""
    return "logs/" + "-".join([name, *(f"{{{w}}}" for w in STAGES[name].wildcards)]) + ".log"


def is_folder(path: str) -> bool:
    return not PurePosixPath(path).suffix


def expand_inputs(name: str, values: dict[str, list]) -> list[str]:
    """A stage's inputs for Snakemake: its own wildcards kept, every other one expanded over
    `values` (wildcard -> its values in params)."""
    own = STAGES[name].wildcards
    found = []
    for template in STAGES[name].inputs:
        others = [w for w in WILDCARDS if f"{{{w}}}" in template and w not in own]
        for chosen in product(*(values[w] for w in others)):
            keep = {w: f"{{{w}}}" for w in own}
            found.append(template.format(**keep, **dict(zip(others, chosen, strict=True))))
    return list(dict.fromkeys(found))


def table_paths(name: str) -> dict[str, str]:
    """The path templates stage `name`'s command passes, by option (`--model` -> "model")."""
    words = STAGES[name].command.split()
    options = zip(words, words[1:], strict=False)
    return {
        option[2:]: value
        for option, value in options
        if option.startswith("--") and option[2:] not in WILDCARDS
    }


def default_help(name: str, option: str) -> str:
    """`--option`'s help: its default, as the DAG files pass it (wildcards in capitals)."""
    return "default: " + table_paths(name)[option].format(**{w: w.upper() for w in WILDCARDS})


def with_defaults(name: str, args: Namespace) -> Namespace:
    """`args` with every path option left unset as the DAG files pass it, so that a stage run
    by hand reads and writes where the pipeline does."""
    wildcards = {w: getattr(args, w) for w in STAGES[name].wildcards}
    unset = {
        option: Path(template.format(**wildcards))
        for option, template in table_paths(name).items()
        if getattr(args, option, None) is None
    }
    return Namespace(**{**vars(args), **unset})


def dvc_stages() -> dict:
    """The `stages` of dvc.yaml: each stage of the table, a matrix over its wildcards."""
    return {name: _dvc_stage(name, stage) for name, stage in STAGES.items()}


def _dvc_stage(name: str, stage: Stage) -> dict:
    own = stage.wildcards
    item = {w: f"${{item.{w}}}" for w in own}
    body: dict = {"matrix": {w: f"${{{WILDCARDS[w]}}}" for w in own}} if own else {}
    body["cmd"] = f"{stage.command} --log {log_path(name)}".format(**item)
    inputs = [_dvc_input(template, own).format(**item) for template in stage.inputs]
    body["deps"] = [*dict.fromkeys(inputs), *code_deps(name)]
    body["params"] = [param.replace(SCHEME, item.get("scheme", SCHEME)) for param in stage.params]
    for kind in ("outs", "metrics", "plots"):
        paths = [path.format(**item) for path in getattr(stage, kind)]
        if paths:
            body[kind] = paths if stage.cached else [{path: {"cache": False}} for path in paths]
    if stage.kept:
        kept = {"cache": False, "persist": True}
        body["outs"] += [{path.format(**item): kept} for path in stage.kept]
    return body


def _dvc_input(template: str, own: tuple[str, ...]) -> str:
    """An input as DVC can list it: the folder above the first wildcard the stage does not
    run per (DVC lists no dependency per chunk or variant of another stage)."""
    parts = template.split("/")
    for i, part in enumerate(parts):
        if any(f"{{{w}}}" in part for w in WILDCARDS if w not in own):
            return "/".join(parts[:i])
    return template


DVC_HEADER = """\
# Written by `midigen dag` from the stage table in src/midigen/dag.py, which the Snakefile
# also reads: edit the table, then run `midigen dag` (tests/test_declarations.py fails while
# this file is stale). One branch per token scheme (encode.schemes), one job per scheme and
# chunk or model variant.
"""


def dvc_yaml() -> str:
    """dvc.yaml's text: the header, then every stage, a blank line apart."""
    text = yaml.dump({"stages": dvc_stages()}, Dumper=_Indented, sort_keys=False, width=100)
    return DVC_HEADER + re.sub(r"\n(  \w)", r"\n\n\1", text).replace("\n\n", "\n", 1)


class _Indented(yaml.SafeDumper):
    """Lists indented under their key, as people write dvc.yaml."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)
