"""benchmarks/bench_moe.py stays runnable: its accounting, its message without a GPU, and the whole script on
tiny-moe under the Triton interpreter (--dry-run). Its real measurements are owed to a GPU (`make gpu-check`)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mla_export.model.hf_config import load_preset

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_moe.py"
sys.path.insert(0, str(BENCH.parent))

import bench_moe  # noqa: E402


def test_bytes_and_flops_at_deepseek_sizes():
    v3, lite = load_preset("deepseek-v3"), load_preset("deepseek-v2-lite")
    assert bench_moe.expert_bytes(v3, 2) == 3 * 2048 * 7168 * 2  # 88 MB per V3 expert in bfloat16
    assert bench_moe.expert_bytes(lite, 2) == 3 * 1408 * 2048 * 2
    assert bench_moe.moe_flops(4096, v3) == 2 * 4096 * 8 * 3 * 2048 * 7168
    assert bench_moe.moe_flops(1, lite) == 2 * 6 * 3 * 1408 * 2048


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without a GPU")
def test_stops_with_a_message_without_a_gpu(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2 and "needs an NVIDIA GPU" in proc.stderr


@pytest.mark.slow
def test_dry_run_writes_every_field(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH), "--dry-run", "--json", "moe.json"], capture_output=True,
                          text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "moe.json").read_text())
    rows = result["rows"]
    assert [(r["phase"], r["tokens"]) for r in rows] == [("decode", 1), ("decode", 8), ("prefill", 300)]
    for row in rows:
        assert {"us", "weight_GB/s", "of_copy_bw", "TFLOP/s", "of_matmul", "of_roofline", "x_vs_dense", "x_vs_loop",
                "bar", "goal", "meets_bar"} <= set(row)
        assert row["max_abs_err_vs_loop"] < 3e-2 and row["cosine_vs_loop"] > 0.9999  # float16
    assert rows[0]["experts_read"] == 2 and rows[2]["experts_read"] == 8  # top_k 2 of 8; 300 tokens use them all


def test_fp8_expert_bytes_and_quantization():
    """FP8 experts: 1 byte per weight plus one float32 scale per 128 x 128 block of gate_up [2I, d] and down [d, I];
    the benchmark's quantizer reproduces the weights to e4m3's precision (2^-4 relative, 2^-10 * scale absolute)."""
    v3 = load_preset("deepseek-v3")
    assert bench_moe.expert_bytes(v3, 2, fp8=True) == 3 * 2048 * 7168 + 4 * (32 * 56 + 56 * 16)
    w = torch.randn(2, 300, 200, generator=torch.Generator().manual_seed(0))
    q, scale = bench_moe.quantize_experts(w)
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (2, 3, 2)
    back = bench_moe.dequantize_experts(q, scale, torch.float32)
    assert ((back - w).abs() <= 2 ** -4 * w.abs() + 2 ** -10 * scale.max()).all()


@pytest.mark.slow
def test_dry_run_with_fp8_experts(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(BENCH.parents[1])}  # this tree's package, not an installed one
    proc = subprocess.run([sys.executable, str(BENCH), "--dry-run", "--experts", "fp8", "--no-baselines", "--json",
                           "moe.json"], capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "moe.json").read_text())
    assert result["experts"] == "fp8"
    config = load_preset("tiny-moe")
    for row in result["rows"]:
        assert row["experts"] == "fp8" and row["weight_bytes"] == row["experts_read"] * bench_moe.expert_bytes(
            config, 2, fp8=True)
        assert row["cosine_vs_loop"] > 0.9999  # weight-only under the interpreter: float16 rounding only
