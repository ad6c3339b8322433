"""The package layout's import rules (issue 13): imports run one way between subpackages."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "midigen"
# The floors of the house, bottom first: a subpackage imports only its own and lower floors
# (and the shell's helpers), so no two subpackages import each other.
FLOORS = ("midi", "encodings", "data", "models", "generation", "evaluation", "report", "stages")
SUBPACKAGES = FLOORS


def module_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def midigen_imports(path: Path) -> set[str]:
    """The midigen modules a source file imports, anywhere in it (functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("midigen")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("midigen"):
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def imports_of(subpackage: str) -> dict[str, set[str]]:
    return {
        module_of(path): midigen_imports(path)
        for path in sorted((PACKAGE / subpackage).glob("*.py"))
    }


def test_every_module_is_in_a_subpackage_or_is_the_shell():
    """The top level holds only the shell: CLI, the stage table, the variant registry, params,
    errors, atomic files, progress lines."""
    top = sorted(p.stem for p in PACKAGE.glob("*.py"))
    shell = ["atomic", "cli", "dag", "errors", "params", "progress", "registry"]
    assert top == ["__init__", "__main__", *shell]
    assert {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()} == set(SUBPACKAGES)


@pytest.mark.parametrize("floor", FLOORS)
def test_a_floor_imports_only_the_floors_below_it(floor):
    """MIDI in and out at the bottom, then the encodings, then corpus/shards/batching above
    them, then the models, ...: an import upwards would close a cycle."""
    above = tuple(f"midigen.{upper}" for upper in FLOORS[FLOORS.index(floor) + 1 :])
    for module, imported in imports_of(floor).items():
        wrong = {name for name in imported if name.startswith(above)}
        assert not wrong, f"{module} imports {sorted(wrong)}"


def test_the_subpackages_import_one_another_without_cycles():
    """Checked on the import graph itself, so a new subpackage cannot slip in a cycle."""
    graph = {
        sub: {
            part for names in imports_of(sub).values() for n in names for part in n.split(".")[1:2]
        }
        - {sub}
        for sub in SUBPACKAGES
    }
    done: set[str] = set()

    def visit(sub: str, path: tuple[str, ...]) -> None:
        assert sub not in path, f"import cycle: {' -> '.join((*path, sub))}"
        if sub in done or sub not in graph:
            return
        for imported in graph[sub]:
            visit(imported, (*path, sub))
        done.add(sub)

    for sub in SUBPACKAGES:
        visit(sub, ())


def test_the_report_reads_files_not_models():
    """Importing the report (what `midigen report` runs) loads no model code and no torch."""
    code = (
        "import sys, midigen.stages.report; "
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('midigen.models')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
