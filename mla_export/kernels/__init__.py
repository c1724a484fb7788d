"""Triton kernels for the MlaAttention op (RoPE + cache append, split-KV attention, combine), the
DeepseekMoE op (router, top-k, alignment, grouped expert GEMMs, combine) and the BlockFp8MatMul op (block-scaled
FP8 GEMM, split-K reduction).

Importing this package needs neither Triton, torch nor a GPU: the API is exposed lazily. The attention kernels
are the CUDA implementation of `torch.ops.mla.mla_attention` (registered in `mla_export.model.ops`, which imports `api`
at the first CUDA call). Sub-packages `attention`, `moe` and `fp8` hold each op's launch table (`plan`), kernels and
torch entry point (`api`); `aot` and `codegen` are the ahead-of-time build for the TensorRT plugins. The lowest
layer but `common`: it imports no other part of mla-export.
"""

from __future__ import annotations

_LAZY = {"mla_attention_triton": "attention.api", "plan_for": "attention.api", "deepseek_moe_triton": "moe.api",
         "block_fp8_matmul_triton": "fp8.api"}


def __getattr__(name):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_LAZY)
