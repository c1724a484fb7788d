"""Time the Triton MlaAttention kernels on a GPU: decode GB/s and prefill TFLOP/s against measured peaks.

    python benchmarks/bench_kernels.py [--heads 128 16] [--dtype bfloat16] [--json out.json]
    python benchmarks/bench_kernels.py --check-layouts     # no timing: the cache layouts agree (CPU too)

Measured in the same run: device-to-device copy bandwidth (bytes read + written) and the bf16
matmul rate, so results are reported as fractions of this GPU's own peaks.
- decode (S=1): effective GB/s = latent cache bytes read (B * (context+1) * (Dc+Dr) * elem) / time,
  for (B, context) in (1,4096) (1,65536) (8,4096) (32,4096) (64,4096) (128,8192); speedup vs the eager
  PyTorch reference (einsum + softmax) where it fits in memory.
- prefill (empty cache, S new tokens): TFLOP/s = 2 * H * S * avg_len * (Dc+Dr + Dc) / time,
  avg_len = (S+1)/2 (causal).
- decode per cache layout (contract version 2): contiguous, paged (64-row pages shuffled across sequences),
  FP8 (contiguous and paged): GB/s of the layout's cache bytes (B * (context+1) * bytes per token: (Dc+Dr) *
  elem, FP8 Dc + 4 * ceil(Dc/128) + Dr * elem), its fraction of copy bandwidth and its time against the
  contiguous layout's; before timing, each layout's output is checked bit-identical to its contiguous twin.
Issue 3's targets: decode B=64 x 4096 >= 70% of copy bandwidth, B=1 x 65536 >= 60%, prefill S=4096 >= 25%
of the matmul rate; issue 24's: paged decode within 5% of contiguous. Exits with a message on a machine
without a CUDA GPU, except --check-layouts (on the CPU it needs TRITON_INTERPRET=1 and runs a small shape).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch

from mla_export.common.contract import FP8_CACHE_TILE

from mla_export.model.hf_config import load_preset
from mla_export.run.measure import attention_inputs, copy_bandwidth_gb_s, matmul_tflops, time_calls
from mla_export.model.rope import rope_cos_sin

DECODE_SHAPES = [(1, 4096), (1, 65536), (8, 4096), (32, 4096), (64, 4096), (128, 8192)]
PREFILL_TOKENS = [512, 2048, 4096]
D_C, D_R = 512, 64
LAYOUT_SHAPES = [(1, 65536), (64, 4096), (128, 8192)]
# (name, page size, FP8 cache, the layout it must equal bit for bit)
LAYOUTS = [("contiguous", 0, False, None), ("paged64", 64, False, "contiguous"),
           ("contiguous-fp8", 0, True, None), ("paged64-fp8", 64, True, "contiguous-fp8")]


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


def layout_inputs(batch: int, context: int, heads: int, dtype: torch.dtype, page_size: int, fp8: bool,
                  device: str) -> tuple[tuple, dict, int]:
    """(op arguments, cache keyword arguments, cache bytes read) of one decode step over `context` rows per
    sequence: the same rows in every layout (FP8: their codes with scale 1), a paged pool's pages shuffled."""
    from mla_export.model.rope import rope_cos_sin

    rows = context + 1
    *tensors, cache, seqlens = attention_inputs(batch, 1, heads, D_C, D_R, context, rows, dtype, device)
    pages = -(-rows // page_size) if page_size else 1
    page_rows = page_size or rows
    table = rope_cos_sin(load_preset("deepseek-v3"), pages * page_rows).to(device)  # [Smax, Dr]
    order = torch.randperm(batch * pages, generator=torch.Generator().manual_seed(1)) if page_size else \
        torch.arange(batch)  # contiguous: page b is sequence b
    block_table = order.view(batch, pages)
    block_table = block_table.to(device, torch.int32)  # [B, pages]
    padded = torch.zeros(batch, pages * page_rows, D_C + D_R, dtype=dtype, device=device)
    padded[:, :rows] = cache
    pool = torch.empty_like(padded.view(batch * pages, page_rows, -1))  # [P, page, Dc+Dr]
    pool[block_table.flatten().long()] = padded.view(batch * pages, page_rows, -1)
    kwargs = {"page_size": page_size, "block_table": block_table if page_size else None}
    per_token = (D_C + D_R) * cache.element_size()
    if fp8:
        tiles = -(-D_C // FP8_CACHE_TILE)
        kwargs.update(kv_cache_dtype=1, past_rope=pool[..., D_C:].contiguous(),
                      past_scale=torch.ones(*pool.shape[:2], tiles, device=device))
        pool = pool[..., :D_C].float().clamp(-448, 448).to(torch.float8_e4m3fn)  # [P, page, Dc]
        per_token = D_C + 4 * tiles + D_R * cache.element_size()
    return (*tensors, pool, seqlens, table), kwargs, batch * rows * per_token


def check_layouts(heads: int, dtype: torch.dtype, device: str, shapes) -> list[dict]:
    """Run each layout once per shape; its output must equal its contiguous twin's bit for bit."""
    from mla_export.kernels import mla_attention_triton

    rows = []
    for batch, context in shapes:
        outputs = {}
        for name, page, fp8, twin in LAYOUTS:
            args, kwargs, nbytes = layout_inputs(batch, context, heads, dtype, page, fp8, device)
            outputs[name] = mla_attention_triton(*args, 0.07, in_place=True, num_splits=2, **kwargs)[0]
            same = twin is None or torch.equal(outputs[name], outputs[twin])
            if not same:
                raise SystemExit(f"layout {name} differs from {twin} at B={batch} x {context}")
            rows.append({"layout": name, "batch": batch, "context": context, "cache_bytes": nbytes})
            print(f"{name} B={batch} ctx={context}: {nbytes} cache bytes, output "
                  f"{'equal to ' + twin if twin else 'computed'}")
    return rows


def bench_layouts(heads: int, dtype: torch.dtype, copy_bw: float) -> list[dict]:
    from mla_export.kernels import mla_attention_triton

    check_layouts(heads, dtype, "cuda", [(2, 300)])
    rows = []
    for batch, context in LAYOUT_SHAPES:
        base = None
        for name, page, fp8, _ in LAYOUTS:
            args, kwargs, nbytes = layout_inputs(batch, context, heads, dtype, page, fp8, "cuda")
            out = torch.empty_like(args[0])
            seconds = cuda_seconds(lambda: mla_attention_triton(*args, 0.07, out=out, in_place=True, **kwargs))
            base = base or seconds
            row = {"phase": "decode-layout", "layout": name, "heads": heads, "batch": batch, "context": context,
                   "us": seconds * 1e6, "GB/s": nbytes / seconds / 1e9, "of_copy_bw": nbytes / seconds / copy_bw,
                   "time_vs_contiguous": seconds / base}
            rows.append(row)
            print(f"decode {name} H={heads} B={batch} ctx={context}: {row['us']:.1f} us, {row['GB/s']:.0f} GB/s "
                  f"({100 * row['of_copy_bw']:.0f}% of copy), time x{row['time_vs_contiguous']:.3f} of contiguous")
            args = out = kwargs = None
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
    parser.add_argument("--check-layouts", action="store_true",
                        help="only check that every cache layout gives its contiguous twin's output (no timing)")
    args = parser.parse_args()
    if args.check_layouts:
        if torch.cuda.is_available():
            check_layouts(args.heads[0], getattr(torch, args.dtype), "cuda", [(2, 300)])
        elif os.environ.get("TRITON_INTERPRET") == "1":
            check_layouts(4, torch.float16, "cpu", [(2, 80)])  # interpreter: no bf16 dots, a small shape
        else:
            print("--check-layouts without a GPU runs under the Triton interpreter: set TRITON_INTERPRET=1",
                  file=sys.stderr)
            return 2
        return 0
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
        rows += bench_layouts(heads, dtype, copy_bw)
        rows += bench_prefill(heads, dtype, mm_rate)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "copy_GB/s": copy_bw / 1e9,
                       "matmul_TFLOP/s": mm_rate / 1e12, "dtype": args.dtype, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
