"""The command line loads only the stage it runs: help and the data stages start without torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from midigen.cli import STAGES, stage_summary

HEAVY = ("torch", "matplotlib")


def imported_modules(*args: str) -> set[str]:
    """Every module `python -m midigen ARGS` imports, from Python's own -X importtime log."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "midigen", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    lines = [line for line in result.stderr.splitlines() if line.startswith("import time:")]
    return {line.rsplit("|", 1)[1].strip() for line in lines[1:]}  # first line: the header


@pytest.mark.parametrize("args", [["--help"], ["download", "--help"], ["encode", "--help"]])
def test_help_and_data_stages_never_import_torch_or_matplotlib(args):
    modules = imported_modules(*args)
    assert "midigen.cli" in modules  # the log is read right
    assert not {m for m in modules if m.split(".")[0] in HEAVY}


def test_a_model_stage_still_gets_its_own_arguments():
    modules = imported_modules("train", "--help")
    assert {"torch", "midigen.train"} <= modules
    assert "midigen.report" not in modules


def test_help_lists_every_stage_by_its_docstring():
    result = subprocess.run(
        [sys.executable, "-m", "midigen", "--help"], capture_output=True, text=True, check=True
    )
    text = " ".join(result.stdout.split())
    for name in STAGES:
        summary = stage_summary(name)
        assert summary and " ".join(summary.split())[:40] in text, name
