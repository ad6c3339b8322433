"""DVC for teams, with the real tool on the tiny config: a remote (a local folder, as a team's
SSH or S3 remote would be) that `dvc push` fills and a second clone `dvc pull`s from, getting
the trained models without training; and an experiment queue over a small params grid that
`dvc exp show` compares."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from projects import commit_all, make_project, run

pytestmark = pytest.mark.slow

MODEL = "models/index/xl_knn/model.pt"
EVAL = "metrics/index/eval/xl_knn.json"


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory) -> Path:
    """A project after `dvc repro`, its dvc.lock committed."""
    project = make_project(tmp_path_factory.mktemp("team"))
    run(["dvc", "repro"], project)
    commit_all(project, "run")
    return project


def test_a_second_clone_pulls_the_models_instead_of_training(reproduced, tmp_path):
    remote = tmp_path / "remote"
    run(["dvc", "remote", "add", "-d", "team", str(remote)], reproduced)
    commit_all(reproduced, "the team's remote")
    pushed = run(["dvc", "push"], reproduced)
    assert "pushed" in pushed and any(remote.rglob("*"))

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(reproduced), str(clone)], tmp_path)
    assert not (clone / MODEL).exists()
    run(["dvc", "pull"], clone)
    for path in (MODEL, EVAL, "data/shards/index/scheme.json", "samples/index/xl_knn"):
        if (reproduced / path).is_dir():
            assert sorted(p.name for p in (clone / path).iterdir()) == sorted(
                p.name for p in (reproduced / path).iterdir()
            )
        else:
            assert (clone / path).read_bytes() == (reproduced / path).read_bytes(), path
    # the page itself is not cached (each run's page is rebuilt from the pulled files)
    assert list(json.loads(run(["dvc", "status", "--json"], clone))) == ["report"]
    rebuilt = run(["dvc", "repro"], clone)
    assert re.findall(r"Running stage '([^']+)'", rebuilt) == ["report"]  # nothing trained


def test_an_experiment_queue_over_a_params_grid_is_compared(reproduced):
    grid = {"0.002": None, "0.004": None}
    for lr in grid:
        run(["dvc", "exp", "run", "--queue", "-S", f"train.lr={lr}"], reproduced)
    run_queue(reproduced, len(grid))
    shown = json.loads(run(["dvc", "exp", "show", "--json"], reproduced))
    experiments = [
        exp
        for commit in shown
        for run_ in commit.get("experiments") or []
        for exp in run_.get("revs", [])
    ]
    for exp in experiments:
        data = exp["data"]
        lr = str(data["params"]["params.yaml"]["data"]["train"]["lr"])
        if lr in grid:
            grid[lr] = data["metrics"][EVAL]["data"]["nll"]
    assert None not in grid.values(), shown
    baseline = json.loads((reproduced / EVAL).read_text())["nll"]
    assert len({baseline, *grid.values()}) == 3  # each learning rate trained its own models
    table = run(["dvc", "exp", "show", "--no-pager", "--md"], reproduced)
    assert "train.lr" in table and "0.004" in table


def run_queue(project: Path, tasks: int, minutes: float = 20) -> None:
    """Start the queue's worker and wait until every task succeeded (`dvc exp run --run-all`
    hangs after the last task in DVC 3.67, treeverse/dvc#10398, so the queue is polled)."""
    run(["dvc", "queue", "start", "--jobs", "1"], project)
    deadline = time.monotonic() + 60 * minutes
    status = run(["dvc", "queue", "status"], project)
    while status.count("Success") < tasks:
        assert "Failed" not in status and time.monotonic() < deadline, status
        time.sleep(5)
        status = run(["dvc", "queue", "status"], project)
    run(["dvc", "queue", "stop"], project)
