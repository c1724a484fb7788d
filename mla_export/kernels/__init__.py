"""Triton kernels for the MlaAttention op (RoPE + cache append, split-KV attention, combine).

Importing this package needs neither Triton nor a GPU: it registers `mla_attention_triton` as the
CUDA implementation of `torch.ops.mla.mla_attention` (Triton is imported at the first call) and
exposes the API lazily. Modules: `plan` (the one table of launch choices), `rope_append`,
`attention`, `combine` (the kernels), `api` (the torch entry point), `register` (custom-op glue),
`aot` and `codegen` (the ahead-of-time build for the TensorRT plugin).
"""

from __future__ import annotations

from .register import register_cuda_implementation

register_cuda_implementation()


def __getattr__(name):
    if name in ("mla_attention_triton", "plan_for"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["mla_attention_triton", "plan_for", "register_cuda_implementation"]
