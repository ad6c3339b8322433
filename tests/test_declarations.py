"""Each stage's params and code are declared once (midigen.dag): the Snakefile is built from
the declaration, and dvc.yaml must list exactly what it says."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from midigen.dag import PACKAGE, PACKAGE_DATA, SOURCE_ROOT, STAGE_PARAMS, code_deps, dvc_problems

ROOT = Path(__file__).resolve().parents[1]


def dvc_stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_dvc_yaml_lists_exactly_the_declared_code_and_params():
    assert dvc_problems(dvc_stages()) == []


def test_a_code_file_or_param_left_out_of_dvc_yaml_is_named():
    stages = copy.deepcopy(dvc_stages())
    stages["generate"]["deps"].remove(f"{SOURCE_ROOT}/midi/files.py")
    stages["evaluate"]["params"].remove("train.seeds")
    stages["shard"]["do"]["deps"].append(f"{SOURCE_ROOT}/models/transformer.py")
    stages["encode"]["params"].remove("encode.${item.scheme}")  # its own scheme's section
    assert dvc_problems(stages) == [
        "encode: param encode.{scheme} missing",
        "shard: code dependency src/midigen/models/transformer.py not declared",
        "generate: code dependency src/midigen/midi/files.py missing",
        "evaluate: param train.seeds missing",
    ]


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
    assert {m.rstrip("/") for m in loaded} <= declared | {SOURCE_ROOT}


def test_every_package_data_file_is_claimed_by_a_module():
    data = {
        p.relative_to(PACKAGE).as_posix()
        for p in PACKAGE.rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts
    }
    assert data == {f for files in PACKAGE_DATA.values() for f in files}
