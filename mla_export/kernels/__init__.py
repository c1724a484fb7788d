"""Triton kernels for the MlaAttention op (RoPE + cache append, split-KV attention, combine).

Importing this package needs neither Triton, torch nor a GPU: the API is exposed lazily. The kernels
are the CUDA implementation of `torch.ops.mla.mla_attention` (registered in `mla_export.ops`, which
imports `api` at the first CUDA call). Modules: `plan` (the one table of launch choices and the
kernels' signatures), `rope_append`, `attention`, `combine` (the kernels), `api` (the torch entry
point), `aot` and `codegen` (the ahead-of-time build for the TensorRT plugin).
"""

from __future__ import annotations


def __getattr__(name):
    if name in ("mla_attention_triton", "plan_for"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["mla_attention_triton", "plan_for"]
