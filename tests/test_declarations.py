"""Each stage is declared once, in midigen.dag's table: the Snakefile is built from it,
dvc.yaml is written from it, and a stage run by hand takes its paths from it."""

from __future__ import annotations

import json
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest

from midigen.cli import main
from midigen.dag import (
    PACKAGE,
    PACKAGE_DATA,
    SOURCE_ROOT,
    STAGE_PARAMS,
    STAGES,
    code_deps,
    dvc_yaml,
    with_defaults,
)

ROOT = Path(__file__).resolve().parents[1]


def test_the_committed_dvc_yaml_is_the_one_the_table_writes():
    """Stale after any change to the table or to a stage's imports: run `midigen dag`."""
    assert (ROOT / "dvc.yaml").read_text() == dvc_yaml()


def test_midigen_dag_writes_dvc_yaml_with_every_stage_and_its_code(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the CLI reads params.yaml
    assert main(["dag", "--dvc", str(tmp_path / "dvc.yaml")]) == 0
    text = (tmp_path / "dvc.yaml").read_text()
    assert text == dvc_yaml()
    for name in STAGES:
        assert f"\n  {name}:\n" in text
    assert "      - src/midigen/models/transformer.py\n" in text  # train's code
    assert "    matrix:\n      scheme: ${encode.schemes}\n      variant: ${train.variants}" in text


def test_a_stage_run_by_hand_takes_the_paths_the_dag_passes():
    args = Namespace(
        scheme="bpe",
        variant="xl",
        shards=Path("mine"),
        model=None,
        samples=None,
        metrics=None,
        plots=None,
    )
    filled = with_defaults("evaluate", args)
    assert filled.shards == Path("mine")  # given: kept
    assert filled.model == Path("models/bpe/xl/model.pt")
    assert filled.samples == Path("samples/bpe/xl")
    assert filled.metrics == Path("metrics/bpe/eval/xl.json")
    assert args.model is None  # the caller's namespace is not changed


def test_code_deps_follow_imports_through_other_modules():
    """What the data issue found missing: generate reads midi.py and corpus.py, evaluate
    scores.py and midi.py, baselines transformer.py and batching.py (through likelihood.py)."""
    for stage, files in (
        ("generate", ("midi/files.py", "data/corpus.py")),
        ("evaluate", ("encodings/scores.py", "midi/files.py")),
        ("baselines", ("models/transformer.py", "data/batching.py")),
        ("report", ("report/templates/report.html.j2", "params.schema.yaml")),
    ):
        assert {f"{SOURCE_ROOT}/{f}" for f in files} <= set(code_deps(stage)), stage
    assert f"{SOURCE_ROOT}/models/transformer.py" not in code_deps("encode")


@pytest.mark.parametrize("stage", sorted(STAGE_PARAMS))
def test_everything_a_stage_imports_is_declared(stage):
    """The modules Python actually loads for the stage are all among its code deps."""
    probe = (
        "import json, sys; from midigen import cli; from midigen.stages import {0};"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'midigen')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe.format(stage)], capture_output=True, text=True, check=True
    ).stdout
    loaded = {f"{SOURCE_ROOT}/{m.replace('.', '/')[len('midigen/') :]}" for m in json.loads(out)}
    declared = {d.removesuffix(".py").removesuffix("/__init__") for d in code_deps(stage)}
    table = f"{SOURCE_ROOT}/dag"  # read for default paths only (code_deps says why)
    assert {m.rstrip("/") for m in loaded} <= declared | {SOURCE_ROOT, table}


def test_every_package_data_file_is_claimed_by_a_module():
    data = {
        p.relative_to(PACKAGE).as_posix()
        for p in PACKAGE.rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts
    }
    assert data == {f for files in PACKAGE_DATA.values() for f in files}
