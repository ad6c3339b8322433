"""The tiny DAG through a real single-node Slurm cluster, with workflow/profiles/slurm.

tests/slurm/start_cluster.sh installs Debian's slurm-wlm and munge when missing and starts
munged, slurmctld and slurmd on this machine (it exits 77, and this test skips with its reason,
only where they cannot be installed: not root, no apt-get, apt-get failing). The test then runs
`snakemake --workflow-profile workflow/profiles/slurm` on the tiny config and checks that every
job (each encode chunk, each train variant, ...) was its own sbatch job, with the resources the
profile asks, and that the results equal a local run's.

The cluster keeps no accounting database, so the plugin reads job states from `squeue`
(finished jobs stay listed for MinJobAge = 600 s). Run it with `pytest -s tests/test_slurm.py`
to see the Slurm job ids.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from projects import ROOT, TINY, make_project, run

pytestmark = pytest.mark.slow

START = ROOT / "tests" / "slurm" / "start_cluster.sh"
PROFILE = yaml.safe_load((ROOT / "workflow/profiles/slurm/config.yaml").read_text())
SCHEMES, VARIANTS = TINY["encode"]["schemes"], TINY["train"]["variants"]
PER_MODEL = [f"{s}_{v}" for s in SCHEMES for v in VARIANTS]
# Every Snakemake job but the local `all`, as the plugin names its log folder: rule/wildcards.
JOBS = (
    {"rule_download", "rule_report"}
    | {f"rule_encode/{s}_{c}" for s in SCHEMES for c in TINY["encode"]["chunks"]}
    | {f"rule_{rule}/{s}" for rule in ("shard", "baselines") for s in SCHEMES}
    | {f"rule_{rule}/{m}" for rule in ("train", "generate", "evaluate") for m in PER_MODEL}
)
# Settings of this test cluster, not of the profile: the plugin would ask `sacct` (disabled
# here), and its first status check would wait 40 s; keep the per-job logs to check them.
CLUSTER_FLAGS = [
    "--slurm-status-command",
    "squeue",
    "--slurm-init-seconds-before-status-checks",
    "2",
    "--slurm-keep-successful-logs",
]
RESULTS = ("data", "metrics", "models", "plots", "samples")
TIMINGS = {"seconds", "tokens_per_s"}  # in samples.json: wall-clock, differs run to run
SUBMITTED = re.compile(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: (.+?)\)\.")


@pytest.fixture(scope="module")
def slurm_cluster() -> str:
    """Start (installing if needed) the single-node cluster; `sinfo`'s answer."""
    started = time.perf_counter()
    result = subprocess.run(["bash", str(START)], capture_output=True, text=True)
    output = result.stdout + result.stderr
    if result.returncode == 77:
        pytest.skip(f"Slurm unavailable: {output.strip()}")
    assert result.returncode == 0, f"{START.name} failed:\n{output}"
    print(f"\n{output.strip()}\n(cluster ready in {time.perf_counter() - started:.0f} s)")
    return output


def fingerprint(project: Path) -> dict[str, str]:
    """sha256 of every result file; samples.json without its timings."""
    prints = {}
    for folder in RESULTS:
        for path in sorted((project / folder).rglob("*")):
            if not path.is_file():
                continue
            data = path.read_bytes()
            if path.name == "samples.json":
                data = json.dumps(_drop(json.loads(data), TIMINGS), sort_keys=True).encode()
            prints[str(path.relative_to(project))] = hashlib.sha256(data).hexdigest()
    return prints


def _drop(value, keys: set[str]):
    if isinstance(value, dict):
        return {k: _drop(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [_drop(v, keys) for v in value]
    return value


def squeue(job_ids: list[str]) -> dict[str, dict[str, str]]:
    """State, CPUs, memory and time limit of finished jobs, as slurmctld still lists them."""
    out = subprocess.run(
        [
            "squeue",
            "--states=all",
            "--noheader",
            "--jobs",
            ",".join(job_ids),
            "--format=%i|%T|%C|%m|%l",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    fields = ("state", "cpus", "mem", "time")
    return {
        row[0]: dict(zip(fields, row[1:], strict=True))
        for row in (r.split("|") for r in out.split())
    }


def expected_cpus(job: str) -> int:
    """Threads the profile gives a job: set-threads, else `cores` for the rules that take
    workflow.cores (train, generate, evaluate), else 1."""
    rule = job.split("/")[0].removeprefix("rule_")
    if rule in PROFILE.get("set-threads", {}):
        return PROFILE["set-threads"][rule]
    return PROFILE["cores"] if rule in ("train", "generate", "evaluate") else 1


def test_tiny_dag_on_slurm_equals_a_local_run(slurm_cluster, tmp_path):
    started = time.perf_counter()
    local = make_project(tmp_path / "local")
    run(["snakemake", "--cores", "2"], local)
    local_s = time.perf_counter() - started

    started = time.perf_counter()
    project = make_project(tmp_path / "slurm")
    out = run(
        ["snakemake", "--workflow-profile", "workflow/profiles/slurm", *CLUSTER_FLAGS], project
    )
    slurm_s = time.perf_counter() - started
    assert (project / "reports/index.html").is_file()

    # One sbatch job per Snakemake job, each with its own id and log file.
    submitted = {}
    for slurm_id, log in SUBMITTED.findall(out):
        job = str(Path(log).parent.relative_to(project / ".snakemake/slurm_logs"))
        assert job not in submitted, f"{job} submitted twice"
        submitted[job] = slurm_id
        assert Path(log).name == f"{slurm_id}.log" and Path(log).is_file(), log
    ids = "\n".join(f"  {job:36} SLURM job {i}" for job, i in sorted(submitted.items()))
    print(f"\nlocal run {local_s:.0f} s, Slurm run {slurm_s:.0f} s; sbatch job ids:\n{ids}")
    assert set(submitted) == JOBS, out[-4000:]
    assert len(set(submitted.values())) == len(JOBS)
    report_log = project / ".snakemake/slurm_logs/rule_report" / f"{submitted['rule_report']}.log"
    assert "midigen report:" in report_log.read_text()  # the stage's output, from its job

    # Slurm ran them all, with the resources of the profile.
    time_limit = f"{PROFILE['default-resources']['runtime'] // 60}:00:00"
    memory = f"{PROFILE['default-resources']['mem_mb']}M"
    listed = squeue(list(submitted.values()))
    for job, slurm_id in submitted.items():
        want = {
            "state": "COMPLETED",
            "cpus": str(expected_cpus(job)),
            "mem": memory,
            "time": time_limit,
        }
        assert listed.get(slurm_id) == want, (job, slurm_id, listed.get(slurm_id))

    # The same results as a local run: shards, models, metrics and plots byte for byte, and
    # samples but for their timings.
    slurm, here = fingerprint(project), fingerprint(local)
    assert slurm.keys() == here.keys()
    assert [name for name in slurm if slurm[name] != here[name]] == []
    assert any(name.startswith("models/") for name in slurm)
