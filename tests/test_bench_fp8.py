"""benchmarks/bench_fp8.py stays runnable and is part of `make gpu-check`: its accounting, its message without a
GPU, the whole script on small shapes under the Triton interpreter (--dry-run), and gpu_check's reading of its rows.
Its real measurements are owed to a GPU (`make gpu-check`)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "bench_fp8.py"
sys.path.insert(0, str(BENCH.parent))

import bench_fp8  # noqa: E402


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_bytes_and_shapes():
    assert bench_fp8.parse_shape("576x7168") == (1, 576, 7168)
    assert bench_fp8.parse_shape("128:512x128") == (128, 512, 128)
    # V3's dense down_proj: one byte per weight, one float32 per 128x128 block (56 x 144 blocks)
    assert bench_fp8.weight_bytes(1, 7168, 18432) == 7168 * 18432 + 4 * 56 * 144
    assert bench_fp8.weight_bytes(128, 512, 128) == 128 * (512 * 128 + 4 * 4)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without a GPU")
def test_stops_with_a_message_without_a_gpu(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2 and "needs an NVIDIA GPU" in proc.stderr


@pytest.mark.slow
def test_dry_run_writes_every_field(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH), "--dry-run", "--json", "fp8.json"], capture_output=True,
                          text=True, timeout=600, cwd=tmp_path, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "fp8.json").read_text())["rows"]
    assert [(r["shape"], r["rows"], r["path"]) for r in rows] == [
        (shape, m, path) for shape in ("40x200", "2:64x128") for m in (1, 80) for path in ("native", "weight_only")]
    for row in rows:
        assert {"us", "weight_GB/s", "of_copy_bw", "TFLOP/s", "of_matmul", "bf16_weight_us", "x_vs_bf16_weight",
                "phase", "meets_bar"} <= set(row)
        # against the bf16-rounded weight: bf16 inputs, so within a few bf16 ulps (the native path: plus e4m3)
        assert row["max_abs_err_vs_bf16_weight"] < 0.1 * row["ref_max"]
    assert {r["phase"] for r in rows} == {"decode", "prefill"}


def test_gpu_check_runs_and_judges_the_benchmark(tmp_path):
    gpu_check = _gpu_check()
    assert "fp8-bench" in [s.name for s in gpu_check.STEPS]
    rows = [{"shape": "7168x18432", "rows": 1, "path": "native", "phase": "decode", "of_copy_bw": 0.8,
             "of_matmul": 0.01},
            {"shape": "7168x18432", "rows": 1, "path": "weight_only", "phase": "decode", "of_copy_bw": 0.5,
             "of_matmul": 0.01},
            {"shape": "7168x18432", "rows": 4096, "path": "native", "phase": "prefill", "of_copy_bw": 0.1,
             "of_matmul": 0.45}]
    (tmp_path / "fp8.json").write_text(json.dumps({"rows": rows}))
    figures = gpu_check._fp8_bench("", gpu_check.Context(out=tmp_path, bundle=tmp_path))
    assert figures["FP8 GEMM 7168x18432 M=1, % of copy"] == 80.0  # the device's own path (first), not weight-only
    judged = [name for name in gpu_check.TARGETS if name in figures]
    assert judged == ["FP8 GEMM 7168x18432 M=1, % of copy", "FP8 GEMM 7168x18432 M=4096, % of bf16 GEMM"]
    assert gpu_check._fp8_bench("", gpu_check.Context(out=tmp_path / "none", bundle=tmp_path)) == {}
