"""Time the BlockFp8MatMul Triton kernels on a GPU: weight GB/s against the device's copy bandwidth (decode) and
TFLOP/s against its bf16 matmul rate (prefill), both peaks measured in the same run, and the same products with the
weight in bfloat16 (torch.matmul: twice the bytes) as the baseline.

    python benchmarks/bench_fp8.py [--rows 1,16,64,4096] [--shapes 576x7168,...] [--iters 20] [--json out.json]
    python benchmarks/bench_fp8.py --dry-run      # small shapes on the CPU under the Triton interpreter (tests)

Shapes (N x K) are DeepSeek-V3's projections (kv_a_proj_with_mqa 576x7168, q_a_proj 1536x7168, q_b_proj
24576x1536, o_proj 7168x16384, dense down_proj 7168x18432) and W_UK^T per head (G = 128, 512x128). Per shape and
row count M: weight bytes = G*N*K (FP8) + 4 * scale blocks; weight GB/s = weight bytes / time (the decode floor: the
weight is read once); TFLOP/s = 2*G*M*N*K / time. Rows are timed on the device's own path (native FP8 on sm_89+)
and, on sm_89+, also on the weight-only path (what sm_80/86 run). Each row reports the max error against the
float32 product on the dequantized weight. Exits with a message on a machine without a CUDA GPU (unless --dry-run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

ROWS = (1, 16, 64, 4096)
SHAPES = ("576x7168", "1536x7168", "24576x1536", "7168x16384", "7168x18432", "128:512x128")
DECODE_ROWS = 64  # at or below: judged by weight bandwidth, above: by the matmul rate
DECODE_BAR, PREFILL_BAR = 0.70, 0.40  # of copy bandwidth, of the bf16 matmul rate


def parse_shape(text: str) -> tuple[int, int, int]:
    """"N x K" or "G:NxK" -> (G, N, K)."""
    groups, _, nk = text.rpartition(":")
    n, k = nk.lower().split("x")
    return int(groups or 1), int(n), int(k)


def weight_bytes(groups: int, n: int, k: int) -> int:
    """Bytes of an FP8 weight and its float32 block scales."""
    return groups * (n * k + 4 * -(-n // 128) * -(-k // 128))


def make_weight(groups: int, n: int, k: int, device):
    """Random FP8 codes (finite, |q| <= 448) and scales around 1/448 per block: [G, N, K], [G, nb, kb]."""
    import torch

    g = torch.Generator(device=device).manual_seed(n + k)
    q = (torch.randn(groups, n, k, generator=g, device=device) * 64).clamp(-448, 448).to(torch.float8_e4m3fn)
    s = torch.rand(groups, -(-n // 128), -(-k // 128), generator=g, device=device) / 448 + 1e-4
    return q, s


def dequantized(q, s, dtype):
    n, k = q.shape[-2:]
    full = s.repeat_interleave(128, -2)[..., :n, :].repeat_interleave(128, -1)[..., :k]
    return (q.float() * full).to(dtype)


def bench_row(groups, n, k, rows, path, q, s, w_bf16, peaks, iters, cuda) -> dict:
    import torch

    from mla_export.kernels.fp8.api import block_fp8_matmul_triton
    from mla_export.run.measure import time_calls

    device = q.device
    g = torch.Generator(device=device).manual_seed(rows)
    x = torch.randn(groups, rows, k, generator=g, device=device).to(w_bf16.dtype)  # [G, M, K]
    qq, ss = (q[0], s[0]) if groups == 1 else (q, s)
    xx = x[0] if groups == 1 else x
    out = torch.empty(*xx.shape[:-1], n, dtype=x.dtype, device=device)
    run = lambda: block_fp8_matmul_triton(xx, qq, ss, out=out, path=path)  # noqa: E731
    seconds = statistics.median(time_calls(run, warmup=3, iters=iters, cuda=cuda)) * 1e-3
    base = lambda: torch.matmul(x, w_bf16.transpose(-1, -2))  # noqa: E731
    base_seconds = statistics.median(time_calls(base, warmup=3, iters=iters, cuda=cuda)) * 1e-3
    want = torch.matmul(x.float(), w_bf16.float().transpose(-1, -2))  # the bf16-rounded weight: a rough check
    err = (run().float().reshape(want.shape) - want).abs().max().item()
    read, flops = weight_bytes(groups, n, k), 2.0 * groups * rows * n * k
    row = {"shape": f"{groups}:{n}x{k}" if groups > 1 else f"{n}x{k}", "rows": rows, "path": path,
           "us": seconds * 1e6, "weight_GB/s": read / seconds / 1e9, "of_copy_bw": read / seconds / peaks["copy"],
           "TFLOP/s": flops / seconds / 1e12, "of_matmul": flops / seconds / peaks["matmul"],
           "bf16_weight_us": base_seconds * 1e6, "x_vs_bf16_weight": base_seconds / seconds,
           "max_abs_err_vs_bf16_weight": err, "ref_max": want.abs().max().item()}
    row["phase"] = "decode" if rows <= DECODE_ROWS else "prefill"
    row["meets_bar"] = (row["of_copy_bw"] >= DECODE_BAR if row["phase"] == "decode"
                        else row["of_matmul"] >= PREFILL_BAR)
    return row


def describe(row: dict) -> str:
    share = (f"{100 * row['of_copy_bw']:.0f}% of copy" if row["phase"] == "decode"
             else f"{100 * row['of_matmul']:.0f}% of bf16 matmul")
    return (f"{row['shape']} M={row['rows']} {row['path']}: {row['us']:.1f} us, {row['weight_GB/s']:.0f} GB/s, "
            f"{row['TFLOP/s']:.1f} TFLOP/s ({share}); bf16 weight {row['bf16_weight_us']:.1f} us "
            f"(x{row['x_vs_bf16_weight']:.2f}); max err {row['max_abs_err_vs_bf16_weight']:.3g} of {row['ref_max']:.3g}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(map(str, ROWS)), help="row counts M (tokens)")
    parser.add_argument("--shapes", default=",".join(SHAPES), help="weights as NxK or G:NxK")
    parser.add_argument("--iters", type=int, default=20, help="timed calls per measurement (median)")
    parser.add_argument("--dry-run", action="store_true", help="small shapes on the CPU under the interpreter")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
        args.rows, args.shapes, args.iters = "1,80", "40x200,2:64x128", 2
    import torch

    cuda = torch.cuda.is_available() and not args.dry_run
    if not cuda and not args.dry_run:
        print("bench_fp8.py needs an NVIDIA GPU with a CUDA build of torch; none is available here. The kernels are "
              "tested on the CPU by tests/test_fp8_kernels.py under the Triton interpreter (and this script's code "
              "by --dry-run).", file=sys.stderr)
        return 2
    from bench_moe import peaks_of  # the same peaks as the MoE benchmark

    from mla_export.kernels.fp8.api import device_path

    device = torch.device("cuda" if cuda else "cpu")
    peaks = peaks_of(cuda, torch.bfloat16)
    name = torch.cuda.get_device_name() if cuda else "CPU (Triton interpreter, --dry-run)"
    print(f"{name}: copy {peaks['copy'] / 1e9:.0f} GB/s, bf16 matmul {peaks['matmul'] / 1e12:.1f} TFLOP/s")
    paths = ["native", "weight_only"] if device_path(device) == "native" or args.dry_run else ["weight_only"]
    rows = []
    for shape in (s for s in args.shapes.split(",") if s.strip()):
        groups, n, k = parse_shape(shape)
        q, s = make_weight(groups, n, k, device)
        w_bf16 = dequantized(q, s, torch.bfloat16)
        for m in (int(r) for r in args.rows.split(",") if r.strip()):
            for path in paths:
                rows.append(bench_row(groups, n, k, m, path, q, s, w_bf16, peaks, args.iters, cuda))
                print(describe(rows[-1]), flush=True)
        q = s = w_bf16 = None
        if cuda:
            torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "copy_GB/s": peaks["copy"] / 1e9, "matmul_TFLOP/s": peaks["matmul"] / 1e12,
                       "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.exit(main())
