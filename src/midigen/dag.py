"""What each stage reads: the one declaration that both DAG files follow.

`STAGE_PARAMS` names the params a stage reads (a whole section, or section.key), and
`code_deps(stage)` is its code: the closure of its imports inside midigen (read from the
sources, so a new import is a new dependency without anyone listing it), plus the package
files those modules read. The Snakefile builds its rules from both; dvc.yaml cannot run
code, so tests/test_dag.py checks that it lists exactly these (`dvc_problems`).
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

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
STAGE_PARAMS: dict[str, tuple[str, ...]] = {
    "download": ("download",),
    "encode": (*(f"encode.{key}" for key in ENCODE_KEYS), f"encode.{SCHEME}"),
    "shard": (
        *(f"encode.{key}" for key in ENCODE_KEYS),
        f"encode.{SCHEME}",
        "encode.flag_lost_fraction",
    ),
    "train": ("data", "model", "train"),
    "generate": ("generate",),
    "baselines": ("evaluate",),
    "evaluate": (
        "evaluate",
        "model.xl_mem_len",
        "train.seed",
        "train.seeds",
    ),
    "report": SECTIONS,
}
# Files besides code that a module reads from the package (by module name).
PACKAGE_DATA = {
    "midigen.params": ("params.schema.yaml",),
    "midigen.report.build": ("report/templates/report.html.j2",),
}


def code_deps(stage: str) -> list[str]:
    """Repository paths of everything in the package that `midigen STAGE` runs or reads."""
    modules = _closure(("midigen.cli", f"midigen.stages.{stage}"))
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


def dvc_problems(stages: dict) -> list[str]:
    """Where dvc.yaml's `stages` (parsed) differ from this declaration: a code file or a param
    missing or extra, or a stage missing; [] when they agree."""
    problems = [f"dvc.yaml has no stage {s}" for s in STAGE_PARAMS if s not in stages]
    for stage, body in stages.items():
        body = body.get("do", body)  # a foreach stage declares its body under `do`
        if stage not in STAGE_PARAMS:
            problems.append(f"dvc.yaml stage {stage} is not declared in midigen.dag")
            continue
        code = {d for d in body.get("deps", []) if d.startswith(f"{SOURCE_ROOT}/")}
        params = {re.sub(r"\$\{item(\.scheme)?\}", SCHEME, p) for p in body.get("params", [])}
        for kind, listed, wanted in (
            ("code dependency", code, set(code_deps(stage))),
            ("param", params, set(STAGE_PARAMS[stage])),
        ):
            problems += [f"{stage}: {kind} {x} missing" for x in sorted(wanted - listed)]
            problems += [f"{stage}: {kind} {x} not declared" for x in sorted(listed - wanted)]
    return problems
