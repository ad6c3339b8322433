"""Faults inside the DAG: each stage SIGKILLed while it runs, then the DAG run again, under
both tools (Snakemake after the `snakemake --unlock`, DVC after removing `.dvc/tmp/rwlock`,
the recoveries their messages ask for). Every re-run finishes, the killed training resumes
from its checkpoint (its log says from which step), and the outputs equal those of a run
never killed: nothing half-written is ever taken as finished."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from projects import TINY, make_project, run, set_param

pytestmark = pytest.mark.slow

# Each stage, killed once in this order: (name, its log, the target that runs it and what it
# needs, for Snakemake and for DVC). A target runs only stages not yet done, so the stage is
# sure to start.
KILLS = [
    ("download", "download", "data/raw", "download"),
    ("encode", "encode-index-0", "data/encoded/index/chunk-0", "encode@index-0"),
    ("shard", "shard-index", "data/shards/index", "shard@index"),
    ("baselines", "baselines-index", "metrics/index/baselines.json", "baselines@index"),
    ("train", "train-index-xl_knn", "models/index/xl_knn", "train@index-xl_knn"),
    ("generate", "generate-index-xl_knn", "samples/index/xl_knn", "generate@index-xl_knn"),
    (
        "evaluate",
        "evaluate-index-xl_knn",
        "metrics/index/eval/xl_knn.json",
        "evaluate@index-xl_knn",
    ),
    ("report", "report", "reports/index.html", "report"),
]

VARIANTS = tuple(TINY["train"]["variants"])


def fault_project(tmp: Path) -> Path:
    """The tiny project on one scheme, training long enough (40 steps, a checkpoint every 2)
    to be killed between checkpoints."""
    project = make_project(tmp)
    set_param(project, "encode.schemes", ["index"])
    for key, value in (("steps", 40), ("checkpoint_every", 2), ("eval_every", 20)):
        set_param(project, f"train.{key}", value)
    return project


def command(tool: str, target: str | None) -> list[str]:
    if tool == "snakemake":
        return [sys.executable, "-m", "snakemake", "--cores", "2", *([target] if target else [])]
    return [sys.executable, "-m", "dvc", "repro", *([target] if target else [])]


def started(project: Path, stage: str, log: str) -> bool:
    """The stage's process is running (its log is open); train: a checkpoint waits too."""
    if stage == "train":
        return any((project / "checkpoints" / "train" / "xl_knn").glob("*/checkpoint.pt"))
    return (project / "logs" / f"{log}.log").exists()


def kill_during(tool: str, project: Path, stage: str, log: str, target: str, rng) -> None:
    """Run the tool towards `target`; SIGKILL it and its jobs soon after `stage` starts."""
    shutil.rmtree(project / "logs", ignore_errors=True)
    job = subprocess.Popen(
        command(tool, target),
        cwd=project,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the kill reaches the stage too
    )
    deadline = time.monotonic() + 300
    while not started(project, stage, log):
        assert job.poll() is None, f"{tool} ended before {stage} started"
        assert time.monotonic() < deadline, f"{stage} never started under {tool}"
        time.sleep(0.02)
    time.sleep(rng.uniform(0, 0.3))
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()


def outputs(project: Path) -> dict:
    """What a run produced, in a form two runs can be compared by."""
    found: dict = {}
    shards = project / "data/shards/index"
    for split in ("train", "val", "test"):
        for name in ("tokens", "times", "bar_pos", "offsets"):
            found[f"{split}/{name}"] = np.load(shards / split / f"{name}.npy")
    found["stats"] = json.loads((shards / "stats.json").read_text())
    found["baselines"] = json.loads((project / "metrics/index/baselines.json").read_text())
    for v in VARIANTS:
        model = project / f"models/index/{v}/model.pt"
        found[f"model/{v}"] = torch.load(model, weights_only=True)
        found[f"eval/{v}"] = json.loads((project / f"metrics/index/eval/{v}.json").read_text())
        samples = json.loads((project / f"samples/index/{v}/samples.json").read_text())
        found[f"samples/{v}"] = [p["tokens"] for p in samples["prompts"]]
    found["report"] = (project / "reports/index.html").is_file()
    return found


def assert_same(a, b, where: str = "") -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=where)
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=where)
    elif isinstance(a, float):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6, nan_ok=True), where
    else:
        assert a == b, where


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The outputs of a run never killed."""
    project = fault_project(tmp_path_factory.mktemp("reference"))
    run(["snakemake", "--cores", "2"], project)
    return outputs(project)


@pytest.mark.parametrize("tool", ["snakemake", "dvc"])
def test_every_stage_killed_then_rerun_ends_as_a_run_never_killed(tool, tmp_path, reference):
    project = fault_project(tmp_path)
    rng = random.Random(tool)
    resumed = None
    for stage, log, smk_target, dvc_target in KILLS:
        target = smk_target if tool == "snakemake" else dvc_target
        kill_during(tool, project, stage, log, target, rng)
        if tool == "snakemake":  # the recovery its lock message asks for
            run(["snakemake", "--unlock"], project)
        else:  # DVC's: a kill while it writes its lock table leaves it corrupt, and DVC then
            # asks to remove it by hand (seen once in CI: "Unable to read RWLock-file")
            (project / ".dvc" / "tmp" / "rwlock").unlink(missing_ok=True)
            lock = project / "dvc.lock"  # killed while DVC rewrote it, it is left empty and
            if lock.exists() and not lock.stat().st_size:  # DVC stops on it (seen here once):
                lock.unlink()  # without it DVC runs the stages again, to the same outputs
        run([tool, *command(tool, target)[3:]], project)
        if stage == "train":
            text = (project / "logs" / "train-index-xl_knn.log").read_text()
            resumed = re.search(r"resuming from step (\d+)", text)
    assert resumed and 0 < int(resumed.group(1)) < 40, "the killed training did not resume"
    run([tool, *command(tool, None)[3:]], project)
    assert_same(reference, outputs(project))
    assert not list((project / "checkpoints").rglob("*.pt"))  # cleared once trained
