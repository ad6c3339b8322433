"""Real Snakemake and DVC runs on a tiny config, in a temp copy of the repo.

For both tools, on two token schemes (index and events): a clean run ends with
reports/index.html, a second run does nothing, changing encode.steps_per_beat re-runs everything
after download, changing one scheme's own params re-runs only its branch, and changing a
train.* value re-runs training and what follows it but not the data stages; after that change
`dvc metrics diff` and `dvc plots diff` compare with the committed run. Also: the two DAG files
declare the same stages with the same inputs and outputs, and `snakemake --lint` is clean.
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
from projects import TINY, commit_all, make_project, run, set_param

from midigen.dag import STAGES as DAG_STAGES
from midigen.data.corpus import load_shard
from midigen.encodings.catalog import load_scheme

TINY_FILES = TINY["download"]["max_files"]  # val and test at 0.25: every split gets songs
SCHEMES, VARIANTS = tuple(TINY["encode"]["schemes"]), tuple(TINY["train"]["variants"])


def branch(scheme: str) -> set[str]:
    """The stages of one scheme's branch, named as DVC names them (stage@values)."""
    data = {f"encode@{scheme}-{c}" for c in TINY["encode"]["chunks"]}
    data |= {f"shard@{scheme}", f"baselines@{scheme}"}
    return data | after_train(scheme)


def after_train(scheme: str) -> set[str]:
    return {f"{s}@{scheme}-{v}" for s in ("train", "generate", "evaluate") for v in VARIANTS}


# What a change of a train.* value must re-run: every model's training and what follows it.
AFTER_TRAIN = {"report"}.union(*(after_train(s) for s in SCHEMES))
STAGES = {"download", "report"}.union(*(branch(s) for s in SCHEMES))

pytestmark = pytest.mark.slow


def snakemake_jobs(project: Path, *extra: str) -> list[dict]:
    """The jobs a dry run would execute, each with its rule, wildcards, input and output."""
    output = run(["snakemake", "--dry-run", "--cores", "2", *extra], project)
    jobs = []
    for block in re.split(r"\n(?=rule \w+:)", output):
        head = re.match(r"rule (\w+):", block)
        if not head:
            continue
        fields = dict(re.findall(r"^\s{4}(\w+): (.*)$", block, flags=re.M))
        jobs.append(
            {
                "rule": head.group(1),
                "wildcards": fields.get("wildcards", ""),
                "input": set(fields.get("input", "").split(", ")) - {""},
                "output": set(fields.get("output", "").split(", ")) - {""},
            }
        )
    return jobs


def job_name(job: dict) -> str:
    """A Snakemake job named as DVC names its stage: rule, or rule@its wildcards' values."""
    values = [pair.split("=")[1] for pair in job["wildcards"].split(", ") if pair]
    return job["rule"] + (f"@{'-'.join(values)}" if values else "")


def planned_snakemake(project: Path) -> set[str]:
    return {job_name(j) for j in snakemake_jobs(project) if j["rule"] != "all"}


def ran_stages_dvc(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def assert_round_trip(project: Path) -> None:
    """Every song in every scheme's shards decodes, to the notes the index score holds (the
    full MIDI round trip is tests/test_chorales.py)."""
    for scheme_name in SCHEMES:
        scheme = load_scheme(project / "data/shards" / scheme_name)
        songs = 0
        for split in ("train", "val", "test"):
            shard = load_shard(project / "data/shards" / scheme_name, split)
            for i in range(len(shard.songs)):
                notes = scheme.decode(np.asarray(shard.tokens[shard.song(i)]))
                assert len(notes) == int(shard.songs[i]["notes"])
                songs += 1
        assert songs == TINY_FILES, scheme_name


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return make_project(tmp_path_factory.mktemp("dag"))


def test_snakemake_lint_is_clean(project):
    assert "Congratulations" in run(["snakemake", "--lint"], project)


def test_snakemake_run_rerun_and_params_change(tmp_path):
    project = make_project(tmp_path)
    out = run(["snakemake", "--cores", "2"], project)
    assert "midigen report:" in out and (project / "reports/index.html").is_file()
    assert_round_trip(project)
    for stage in STAGES:
        assert (project / "logs" / f"{stage.replace('@', '-')}.log").stat().st_size > 0, stage

    assert "Nothing to be done" in run(["snakemake", "--cores", "2"], project)

    set_param(project, "encode.steps_per_beat", 2)
    assert planned_snakemake(project) == STAGES - {"download"}
    out = run(["snakemake", "--cores", "2"], project)
    assert "midigen download:" not in out and "midigen shard:" in out
    assert '"steps_per_beat": 2' in (project / "data/shards/index/stats.json").read_text()

    set_param(project, "encode.events.velocity_bins", 8)
    assert planned_snakemake(project) == branch("events") | {"report"}
    run(["snakemake", "--cores", "2"], project)

    set_param(project, "train.lr", 0.002)
    assert planned_snakemake(project) == AFTER_TRAIN
    run(["snakemake", "--cores", "2"], project)
    set_param(project, "model.dropout", 0.2)
    assert planned_snakemake(project) == AFTER_TRAIN

    edit_code(project, "midi/files.py")  # every stage but the report imports it
    assert planned_snakemake(project) == STAGES


def edit_code(project: Path, module: str) -> None:
    path = project / "src" / "midigen" / module
    assert path.is_file(), f"no module {module} to edit"
    with open(path, "a") as f:
        f.write("\n# an edit\n")


def test_dvc_run_rerun_and_params_change(tmp_path):
    project = make_project(tmp_path)
    out = run(["dvc", "repro"], project)
    assert ran_stages_dvc(out) == STAGES
    assert (project / "reports/index.html").is_file()
    assert_round_trip(project)
    commit_all(project, "run 1")  # the baseline `dvc metrics diff` compares against

    out = run(["dvc", "repro"], project)
    assert ran_stages_dvc(out) == set()
    assert "Data and pipelines are up to date" in out

    set_param(project, "encode.steps_per_beat", 2)
    out = run(["dvc", "repro"], project)
    assert ran_stages_dvc(out) == STAGES - {"download"}
    assert '"steps_per_beat": 2' in (project / "data/shards/index/stats.json").read_text()

    set_param(project, "encode.events.velocity_bins", 8)
    assert ran_stages_dvc(run(["dvc", "repro"], project)) == branch("events") | {"report"}

    set_param(project, "train.lr", 0.002)
    assert ran_stages_dvc(run(["dvc", "repro"], project)) == AFTER_TRAIN
    set_param(project, "model.dropout", 0.2)
    assert ran_stages_dvc(run(["dvc", "repro"], project)) == AFTER_TRAIN

    edit_code(project, "midi/files.py")
    changed = set(json.loads(run(["dvc", "status", "--json"], project)))
    assert {f"{stage}@index-{v}" for stage in ("generate", "evaluate") for v in VARIANTS} <= changed
    assert "report" not in changed  # it never imports midi.py

    diff = run(["dvc", "metrics", "diff", "--json"], project)
    changed = json.loads(diff)
    evaluated, trained = "metrics/index/eval/xl_knn.json", "metrics/index/train/xl_knn/metrics.json"
    assert evaluated in changed and trained in changed
    assert changed[evaluated]["nll"]["diff"] != 0
    run(["dvc", "plots", "diff", "-o", "plots_diff"], project)
    assert (project / "plots_diff/index.html").stat().st_size > 0
    assert len(list((project / "reports/runs").iterdir())) == 5  # every run kept


def _covers(directory: str, path: str) -> bool:
    return directory == path or PurePosixPath(directory) in PurePosixPath(path).parents


def test_both_dag_files_declare_the_same_stages(project):
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    snake = {job_name(j): j for j in snakemake_jobs(project, "--forceall") if j["rule"] != "all"}
    with Repo(str(project)) as repo:
        dvc = {
            stage.name: {
                "input": {d.def_path for d in stage.deps if not isinstance(d, ParamsDependency)},
                "output": {o.def_path for o in stage.outs},
            }
            for stage in repo.index.stages
        }
    assert set(snake) == set(dvc) == STAGES
    for name, job in snake.items():
        kept = set(DAG_STAGES[name.split("@")[0]].kept)  # the report's history: DVC's alone
        assert job["output"] | kept == dvc[name]["output"], name
        # A DVC dependency on a folder stands for the Snakemake inputs inside it (DVC cannot
        # list one dependency per chunk); each such folder must hold another stage's outputs.
        for path in job["input"]:
            assert any(_covers(dep, path) for dep in dvc[name]["input"]), (name, path)
        for dep in dvc[name]["input"]:
            assert any(_covers(dep, path) for path in job["input"]), (name, dep)
