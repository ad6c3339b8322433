"""The package layout's import rules (issue 13): imports run one way between subpackages."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "midigen"
SUBPACKAGES = ("data", "encodings", "models", "generation", "evaluation", "report", "stages")


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
    """The top level holds only the shell: CLI, DAG declarations, params, errors, atomic files,
    progress lines."""
    top = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert top == ["__init__", "__main__", "atomic", "cli", "dag", "errors", "params", "progress"]
    assert {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()} == set(SUBPACKAGES)


def test_encodings_import_only_midi_code():
    allowed = ("midigen.encodings", "midigen.data.midi", "midigen.errors")
    for module, imported in imports_of("encodings").items():
        wrong = {name for name in imported if not name.startswith(allowed)}
        assert not wrong, f"{module} imports {sorted(wrong)}"


@pytest.mark.parametrize("subpackage", ["data", "encodings", "models"])
def test_lower_layers_never_import_upper_ones(subpackage):
    upper = ("midigen.evaluation", "midigen.generation", "midigen.report", "midigen.stages")
    for module, imported in imports_of(subpackage).items():
        wrong = {name for name in imported if name.startswith(upper)}
        assert not wrong, f"{module} imports {sorted(wrong)}"


def test_the_report_reads_files_not_models():
    """Importing the report (what `midigen report` runs) loads no model code and no torch."""
    code = (
        "import sys, midigen.stages.report; "
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('midigen.models')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
