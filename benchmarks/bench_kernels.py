"""Time the Triton MlaAttention kernels on a GPU: decode GB/s and prefill TFLOP/s against measured peaks.

    python benchmarks/bench_kernels.py [--heads 128 16] [--dtype bfloat16] [--json out.json]

Measured in the same run: device-to-device copy bandwidth (bytes read + written) and the bf16
matmul rate, so results are reported as fractions of this GPU's own peaks.
- decode (S=1): effective GB/s = latent cache bytes read (B * (context+1) * (Dc+Dr) * elem) / time,
  for (B, context) in (1,4096) (1,65536) (8,4096) (32,4096) (64,4096) (128,8192); speedup vs the eager
  PyTorch reference (einsum + softmax) where it fits in memory.
- prefill (empty cache, S new tokens): TFLOP/s = 2 * H * S * avg_len * (Dc+Dr + Dc) / time,
  avg_len = (S+1)/2 (causal).
Issue 3's targets: decode B=64 x 4096 >= 70% of copy bandwidth, B=1 x 65536 >= 60%, prefill S=4096 >= 25%
of the matmul rate. Exits with a message on a machine without a CUDA GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

from mla_export.model.hf_config import load_preset
from mla_export.run.measure import attention_inputs, copy_bandwidth_gb_s, matmul_tflops, time_calls
from mla_export.model.rope import rope_cos_sin

DECODE_SHAPES = [(1, 4096), (1, 65536), (8, 4096), (32, 4096), (64, 4096), (128, 8192)]
PREFILL_TOKENS = [512, 2048, 4096]
D_C, D_R = 512, 64


def cuda_seconds(fn, warmup: int = 3, iters: int = 20) -> float:
    """Median seconds of fn() over `iters` runs, timed with CUDA events."""
    return statistics.median(time_calls(fn, warmup, iters, cuda=True)) * 1e-3


def make_inputs(batch, new_tokens, heads, context, max_seq_len, dtype):
    """Random op inputs on the GPU, every sequence holding `context` rows, and DeepSeek-V3's rope table."""
    *tensors, seqlens = attention_inputs(batch, new_tokens, heads, D_C, D_R, context, max_seq_len, dtype, "cuda")
    table = rope_cos_sin(load_preset("deepseek-v3"), max_seq_len).to("cuda")  # [Smax, Dr]
    return (*tensors, seqlens, table)


def bench_decode(heads: int, dtype: torch.dtype, copy_bw: float) -> list[dict]:
    from mla_export.kernels import mla_attention_triton
    from mla_export.model.ops import mla_attention_reference

    rows = []
    for batch, context in DECODE_SHAPES:
        args = make_inputs(batch, 1, heads, context, context + 1, dtype)
        out = torch.empty_like(args[0])
        seconds = cuda_seconds(lambda: mla_attention_triton(*args, 0.07, out=out, in_place=True))
        cache_bytes = batch * (context + 1) * (D_C + D_R) * args[0].element_size()
        row = {"phase": "decode", "heads": heads, "batch": batch, "context": context, "us": seconds * 1e6,
               "GB/s": cache_bytes / seconds / 1e9, "of_copy_bw": cache_bytes / seconds / copy_bw}
        eager_bytes = batch * heads * (context + 1) * 4 * 3 + batch * (context + 1) * (D_C + D_R) * 4 * 2
        if eager_bytes < 0.5 * torch.cuda.mem_get_info()[0]:
            eager = cuda_seconds(lambda: mla_attention_reference(*args, 0.07), warmup=1, iters=5)
            row["speedup_vs_eager"] = eager / seconds
        rows.append(row)
        print(f"decode H={heads} B={batch} ctx={context}: {row['us']:.1f} us, {row['GB/s']:.0f} GB/s "
              f"({100 * row['of_copy_bw']:.0f}% of copy), x{row.get('speedup_vs_eager', float('nan')):.1f} vs eager")
        args = out = None  # free the tensors before the next shape
        torch.cuda.empty_cache()
    return rows


def bench_prefill(heads: int, dtype: torch.dtype, mm_rate: float) -> list[dict]:
    from mla_export.kernels import mla_attention_triton

    rows = []
    for tokens in PREFILL_TOKENS:
        args = make_inputs(1, tokens, heads, 0, tokens, dtype)
        out = torch.empty_like(args[0])
        seconds = cuda_seconds(lambda: mla_attention_triton(*args, 0.07, out=out, in_place=True))
        flops = 2 * heads * tokens * (tokens + 1) / 2 * (D_C + D_R + D_C)
        row = {"phase": "prefill", "heads": heads, "tokens": tokens, "ms": seconds * 1e3,
               "TFLOP/s": flops / seconds / 1e12, "of_matmul": flops / seconds / mm_rate}
        rows.append(row)
        print(f"prefill H={heads} S={tokens}: {row['ms']:.2f} ms, {row['TFLOP/s']:.0f} TFLOP/s "
              f"({100 * row['of_matmul']:.0f}% of matmul)")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", type=int, nargs="+", default=[128, 16], help="head counts to run")
    parser.add_argument("--dtype", choices=["bfloat16", "float16"], default="bfloat16")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_kernels.py needs an NVIDIA GPU with a CUDA build of torch; none is available here. "
              "The kernels are tested on the CPU by tests/test_kernels.py under the Triton interpreter.",
              file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype)
    copy_bw = copy_bandwidth_gb_s(cuda=True, nbytes=1 << 30, iters=20) * 1e9  # bytes/s
    mm_rate = matmul_tflops(dtype) * 1e12  # FLOP/s
    print(f"{torch.cuda.get_device_name()}: copy {copy_bw / 1e9:.0f} GB/s, {args.dtype} matmul "
          f"{mm_rate / 1e12:.0f} TFLOP/s")
    rows = []
    for heads in args.heads:
        rows += bench_decode(heads, dtype, copy_bw)
        rows += bench_prefill(heads, dtype, mm_rate)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "copy_GB/s": copy_bw / 1e9,
                       "matmul_TFLOP/s": mm_rate / 1e12, "dtype": args.dtype, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
