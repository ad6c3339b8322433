"""The command line loads only the stage it runs: help and the data stages start without torch."""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys

import numpy as np
import pytest
from builders import shards_via_stages

from midigen.cli import STAGES, stage_summary
from midigen.midi.files import Notes, write_midi

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
    assert {"torch", "midigen.models.training"} <= modules
    assert "midigen.report.build" not in modules


def test_help_lists_every_stage_by_its_docstring():
    result = subprocess.run(
        [sys.executable, "-m", "midigen", "--help"], capture_output=True, text=True, check=True
    )
    text = " ".join(result.stdout.split())
    for name in STAGES:
        summary = stage_summary(name)
        assert summary and " ".join(summary.split())[:40] in text, name


def _no_room():
    """In the child: writes past 1 kB fail (EFBIG) as on a full disk, instead of a signal."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))


def test_a_full_disk_is_one_clear_message_and_earlier_outputs_survive(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(3):
        notes = Notes(*(np.array(c) for c in ([0, 4 * i + 4], [0, 0], [60, 62 + i], [4, 4])))
        (corpus / f"{i}.mid").write_bytes(write_midi(notes, 4))
    shards = shards_via_stages(tmp_path, source="dir", dir=str(corpus), test_fraction=0)
    before = {p: p.read_bytes() for p in shards.rglob("*") if p.is_file()}
    params = json.dumps({"encode": {"steps_per_beat": 4, "max_duration": 8, "chunks": [0]}})
    result = subprocess.run(
        [sys.executable, "-m", "midigen", "shard", "--encoded", str(tmp_path / "encoded")]
        + ["--out", str(shards), "--params-json", params],
        capture_output=True,
        text=True,
        preexec_fn=_no_room,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "midigen shard: error: no room to write" in result.stderr
    assert "earlier outputs are untouched" in result.stderr
    assert {p: p.read_bytes() for p in shards.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "encoded", "raw", "shards"]
