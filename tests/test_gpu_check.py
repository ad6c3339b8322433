"""bench/gpu_check.sh, the GPU path in one script: it parses, and its CPU fallbacks run here.

The GPU half runs only where a CUDA GPU is (bench/RESULTS.md, "GPU check", holds its last
results); what CI can check is the script's syntax and its --cpu-only mode: the imports, the
CUDA tests skipping with their reason, and a one-step throughput run on the CPU.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"


def gpu_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHON": sys.executable},
    )


def test_the_script_parses():
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_cpu_only_runs_the_fallbacks_and_writes_the_summary(tmp_path):
    """--cpu-only hides any GPU: the imports pass, every CUDA test is skipped saying that it
    needs a CUDA GPU, a one-step CPU throughput table comes out, and OUTDIR gets the log and
    the summary."""
    result = gpu_check("--cpu-only", str(tmp_path / "out"))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "GPU check (bench/gpu_check.sh): CPU-only" in output
    assert "imports ok: torch" in output
    skipped = re.findall(r"SKIPPED \[(\d+)\] tests/test_cuda\.py:\d+: needs a CUDA GPU", output)
    assert skipped and sum(map(int, skipped)) >= 10, output[-3000:]
    assert not re.search(r"tests/test_cuda\.py::\S+ (PASSED|FAILED|ERROR)", output)
    for side in ("reference", "ref_noattn", "vanilla", "xl", "xl_knn"):
        assert re.search(rf"^\| {side} \| [\d.]+ \| [\d,]+ \|$", output, re.M), side
    assert "gpu_check: all steps ok" in output
    summary = (tmp_path / "out" / "summary.md").read_text()
    for name in ("imports", "test_cuda", "train_cpu_smoke"):
        assert re.search(rf"^\| {name} \| ok \| \d+ s \|$", summary, re.M), summary
    assert "needs a CUDA GPU" in summary and "| xl_knn |" in summary
    assert (tmp_path / "out" / "gpu_check.log").stat().st_size > 0


def test_an_unknown_option_is_refused(tmp_path):
    result = gpu_check("--gpu-only", str(tmp_path))
    assert result.returncode == 2
    assert "unknown option --gpu-only" in result.stderr
