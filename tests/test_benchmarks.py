"""The benchmark scripts run and write their tables (their figures are not asserted:
speed belongs in benchmarks/, never in a timed test)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``benchmarks/<name>`` with ``args``, one torch thread, the course importable."""
    env = {**os.environ, "COURSE_THREADS": "1", "PYTHONPATH": str(ROOT)}
    script = str(ROOT / "benchmarks" / name)
    return subprocess.run(
        [sys.executable, script, *args], env=env, capture_output=True, text=True, timeout=600
    )


def test_throughput_script_writes_a_table(tmp_path):
    out = tmp_path / "throughput.md"
    args = ["--profile", "smoke", "--train-steps", "2", "--warmup", "1", "--samples", "1"]
    proc = run_script("throughput.py", *args, "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = out.read_text()
    assert "## mnist, recipe `smoke`" in table
    rows = [ln for ln in table.splitlines() if ln.startswith(("| train", "| sample"))]
    kinds = [r.split("|")[1].strip() for r in rows]
    assert kinds == ["train", "sample ddpm-1000", "sample ddim-50"]
    assert all(float(r.split("|")[4].replace(",", "")) > 0 for r in rows)


def test_gpu_check_runs_every_stage_in_quick_mode(tmp_path):
    """The GPU check is run rarely and on borrowed minutes: its code paths are run here,
    at tiny sizes on the CPU, so that a GPU session never fails on a typo."""
    out = tmp_path / "results.md"
    proc = run_script("gpu_check.py", "--quick", "--objective", "flow", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = out.read_text()
    assert "## GPU check on CPU" in table and "quick mode" in table
    rows = [ln for ln in table.splitlines() if ln.startswith("| ")][1:]  # after the header
    what = [r.split("|")[1].strip() for r in rows]
    assert what[0].startswith("train `smoke`") and what[1].startswith("training run")
    assert {"sample EDM Heun", "sample DDIM, η = 0", "sample flow, Euler"} <= set(what)
    # without CUDA and without --quick it refuses, naming the way to test it
    refused = run_script("gpu_check.py", "--out", str(out))
    assert refused.returncode == 2 and "--quick" in refused.stderr
