"""Dependencies match the code (issue 24): every library src/midigen imports is a base
dependency of pyproject.toml, or an optional one behind a named extra whose absence is one clear
message. A base install that lacks one stops a newcomer's first command (it did: tokenizers)."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
import tomllib

from midigen.cli import main
from midigen.encodings.catalog import scheme_for
from midigen.errors import OPTIONAL, MidigenError, optional
from midigen.params import load_params, validate_params

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "midigen"
DISTRIBUTION = {
    "yaml": "pyyaml",
    "faiss": "faiss-cpu",
}  # import name -> name on PyPI, where they differ
BY_NAME = ("import_module", "find_spec")  # calls that import a module named by a string


def distribution(module: str) -> str:
    return DISTRIBUTION.get(module, module).lower().replace("_", "-")


def requirement_names(requirements: list[str]) -> set[str]:
    """Distribution names of PEP 508 lines ("numpy>=1.24" -> "numpy"), extras dropped."""
    return {
        re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].lower().replace("_", "-")
        for line in requirements
    }


def imported_libraries(source: str) -> tuple[set[str], set[str]]:
    """(the third-party top-level modules `source` imports by statement or by a string name,
    the modules it imports through `optional(...)`)."""
    imported, through_optional = set(), set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            name = getattr(node.func, "attr", getattr(node.func, "id", None))
            target = through_optional if name == "optional" else imported
            if name in (*BY_NAME, "optional") and isinstance(node.args[0].value, str):
                target.add(node.args[0].value.split(".")[0])
    own = set(sys.stdlib_module_names) | {"midigen", "__future__"}
    return imported - own, through_optional


def undeclared(sources: dict[str, str], base: set[str], extras: dict[str, set[str]]) -> list[str]:
    """One line per library a module imports that the install it needs does not declare."""
    problems = []
    for name, source in sorted(sources.items()):
        imported, through_optional = imported_libraries(source)
        for module in sorted(imported):
            if distribution(module) not in base:
                where = " (import it through errors.optional)" if module in OPTIONAL else ""
                problems.append(f"{name} imports {module}, not a base dependency{where}")
        for module in sorted(through_optional):
            extra = OPTIONAL.get(module, (None,))[0]
            if distribution(module) not in extras.get(extra, set()):
                problems.append(f"{name}: optional {module} is in no extra (OPTIONAL: {extra})")
    return problems


def declared() -> tuple[set[str], dict[str, set[str]]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = {k: requirement_names(v) for k, v in project["optional-dependencies"].items()}
    return requirement_names(project["dependencies"]), extras


def test_every_library_src_imports_is_declared_where_the_install_gets_it():
    sources = {str(p.relative_to(ROOT)): p.read_text() for p in sorted(PACKAGE.rglob("*.py"))}
    base, extras = declared()
    assert undeclared(sources, base, extras) == []
    assert "tokenizers" in base  # the bpe scheme's; the default run must not need an extra


def test_the_check_finds_an_undeclared_import():
    """What the check above would say had pyproject lost tokenizers, or src imported MidiTok
    directly or through an extra nobody declared."""
    sources = {
        "bpe.py": "from tokenizers import Tokenizer\nimport os\nfrom midigen import errors",
        "remi.py": "import miditok",
        "media.py": "spec = util.find_spec('pretty_midi')",
        "late.py": "def f():\n    miditok = optional('miditok')",
    }
    problems = undeclared(sources, {"numpy"}, {"test": {"miditok"}})
    assert problems == [
        "bpe.py imports tokenizers, not a base dependency",
        "late.py: optional miditok is in no extra (OPTIONAL: remi)",
        "media.py imports pretty_midi, not a base dependency",
        "remi.py imports miditok, not a base dependency (import it through errors.optional)",
    ]


def test_every_optional_library_has_its_extra():
    _, extras = declared()
    for module, (extra, _) in OPTIONAL.items():
        assert distribution(module) in extras[extra], f"extra {extra!r} must install {module}"


WITHOUT_MIDITOK = (
    "the remi scheme (MidiTok's REMI) needs the miditok package, which is not "
    "installed: pip install 'midigen[remi]' (in a clone: pip install -e '.[remi]')"
)


def test_a_missing_extra_is_one_message_naming_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "miditok", None)  # what a base install sees
    with pytest.raises(MidigenError) as e:
        optional("miditok")
    assert str(e.value) == WITHOUT_MIDITOK
    with pytest.raises(MidigenError, match="pip install 'midigen.remi.'"):
        scheme_for("remi", {"steps_per_beat": 4, "max_duration": 32, "instruments": "merge"})
    params = load_params(ROOT / "params.yaml")
    params["encode"]["schemes"] = ["index", "remi"]
    with pytest.raises(MidigenError) as e:
        validate_params(params)
    assert str(e.value) == f"params.yaml: encode.schemes lists remi; {WITHOUT_MIDITOK}"

    # the CLI: one line on stderr, status 2, nothing written
    monkeypatch.chdir(tmp_path)
    text = (ROOT / "params.yaml").read_text()
    assert "schemes: [index]" in text
    (tmp_path / "params.yaml").write_text(text.replace("schemes: [index]", "schemes: [remi]"))
    assert main(["encode", "--scheme", "remi", "--chunk", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err == f"midigen encode: error: params.yaml: encode.schemes lists remi; {WITHOUT_MIDITOK}"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]
