"""Triton kernels for the MlaAttention op (RoPE + cache append, split-KV attention, combine) and the
DeepseekMoE op (router, top-k, alignment, grouped expert GEMMs, combine).

Importing this package needs neither Triton, torch nor a GPU: the API is exposed lazily. The attention kernels
are the CUDA implementation of `torch.ops.mla.mla_attention` (registered in `mla_export.ops`, which imports `api`
at the first CUDA call). Modules: `plan` and `moe_plan` (the tables of launch choices and the kernels'
signatures), `rope_append`, `attention`, `combine`, `moe_route`, `moe_align`, `moe_experts` (the kernels), `api`
and `moe_api` (the torch entry points), `aot` and `codegen` (the ahead-of-time build for the TensorRT plugins).
"""

from __future__ import annotations

_LAZY = {"mla_attention_triton": "api", "plan_for": "api", "deepseek_moe_triton": "moe_api"}


def __getattr__(name):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_LAZY)
