"""Measurement, shared by `profile` and the benchmarks: timers, the device's own peaks (copy
bandwidth, matmul rate), percentiles, and random inputs of the MlaAttention op."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import numpy as np
import torch


def time_calls(fn: Callable[[], object], warmup: int, iters: int, cuda: bool = False) -> list[float]:
    """Milliseconds per call of `fn`, after `warmup` untimed calls (CUDA events on a GPU)."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(iters):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    return samples


def percentile(samples: list[float], q: float) -> float:
    """Linear-interpolated percentile of `samples` (q in [0, 100])."""
    return float(np.percentile(np.asarray(samples), q))


def copy_bandwidth_gb_s(cuda: bool, nbytes: int = 256 << 20, iters: int = 5) -> float:
    """Bytes read + written per second of a large device-to-device (or RAM-to-RAM) copy, in GB/s."""
    device = "cuda" if cuda else "cpu"
    src = torch.empty(nbytes, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    samples = time_calls(lambda: dst.copy_(src), warmup=2, iters=iters, cuda=cuda)
    return 2 * nbytes / (statistics.median(samples) * 1e-3) / 1e9


def matmul_tflops(dtype: torch.dtype, size: int = 8192, iters: int = 20) -> float:
    """Dense `size`^3 matmul rate on the GPU in TFLOP/s (median of `iters`)."""
    a = torch.randn(size, size, device="cuda", dtype=dtype)
    b = torch.randn(size, size, device="cuda", dtype=dtype)
    ms = statistics.median(time_calls(lambda: a @ b, warmup=3, iters=iters, cuda=True))
    return 2 * size**3 / (ms * 1e-3) / 1e12


def attention_inputs(batch: int, new_tokens: int, heads: int, kv_lora_rank: int, rope_dim: int, context: int,
                     max_seq_len: int, dtype: torch.dtype, device: str, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random MlaAttention inputs, every sequence already holding `context` cache rows:
    (q_latent [B,S,H,Dc], q_pe [B,S,H,Dr], kv_latent [B,S,Dc], k_pe [B,S,Dr], cache [B,Smax,Dc+Dr] of `dtype`,
    cache_seqlens [B] int32). The rope table comes from the config (`rope.rope_cos_sin`)."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(batch, new_tokens, heads, kv_lora_rank), (batch, new_tokens, heads, rope_dim),
              (batch, new_tokens, kv_lora_rank), (batch, new_tokens, rope_dim),
              (batch, max_seq_len, kv_lora_rank + rope_dim)]
    tensors = [torch.randn(s, generator=gen).to(device, dtype) for s in shapes]
    seqlens = torch.full((batch,), context, dtype=torch.int32, device=device)  # [B]
    return (*tensors, seqlens)
