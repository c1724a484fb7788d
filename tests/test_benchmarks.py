"""The benchmark scripts stay runnable: each runs on the tiny presets (GPU ones stop with their message
where there is no GPU); their real measurements run elsewhere (benchmarks/RESULTS.md), not in tests."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                          timeout=600, cwd=cwd)


def test_bench_export_on_tiny_presets(tmp_path):
    proc = run("bench_export.py", "tiny:1:float32", "tiny-moe:all:bfloat16", "--json", "out.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((tmp_path / "out.json").read_text())
    assert [(r["case"], r["layers"]) for r in rows] == [("tiny:1:float32", 1), ("tiny-moe:all:bfloat16", 3)]
    assert all(r["bytes_written"] > 100_000 and r["peak_rss_gib"] > 0.1 for r in rows)


def test_bench_absorb_sizes_on_tiny(tmp_path):
    proc = run("bench_absorb.py", "--sizes", "--preset", "tiny-moe", "--layers", "3", "--json", "a.json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "prefolded" in proc.stdout and "runtime" in proc.stdout


def test_bench_kernels_cache_layouts_agree(tmp_path):
    """bench_kernels.py's paged and FP8 decode inputs run (CPU: under the interpreter) and each layout's output
    equals its contiguous twin's; the timing itself is a GPU step (gpu_check.py)."""
    import os

    env = dict(os.environ, PYTHONPATH=str(BENCHMARKS.parent))  # this checkout's mla_export
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "bench_kernels.py"), "--check-layouts"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("equal to contiguous\n") == 1 and proc.stdout.count("equal to contiguous-fp8\n") == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without a GPU")
def test_gpu_benchmarks_stop_with_a_message_without_a_gpu(tmp_path):
    proc = run("bench_kernels.py", cwd=tmp_path)
    assert proc.returncode == 2 and "needs an NVIDIA GPU" in proc.stderr
