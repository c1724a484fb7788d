"""Registers the Triton kernels as the CUDA implementation of `torch.ops.mla.mla_attention`."""

from __future__ import annotations

import torch


def register_cuda_implementation() -> bool:
    """Register once per process; returns False when torch's op registry refuses (e.g. already registered)."""
    from ..ops import mla_attention

    if getattr(mla_attention, "_mla_triton_registered", False):
        return True

    def _cuda(q_latent, q_pe, kv_latent, k_pe, past_cache, cache_seqlens, rope_cos_sin, num_heads, kv_lora_rank,
              qk_rope_head_dim, softmax_scale):
        # [B,S,H,Dc], [B,S,H,Dr], [B,S,Dc], [B,S,Dr], [B,Smax,Dc+Dr], [B] int32, [Smax,Dr] f32
        expected = (num_heads, kv_lora_rank, qk_rope_head_dim)
        got = (q_latent.shape[2], q_latent.shape[3], q_pe.shape[3])
        if expected != got:
            raise ValueError(f"mla_attention: attributes (num_heads, kv_lora_rank, qk_rope_head_dim)={expected} "
                             f"do not match the inputs' shapes {got}")
        from .api import mla_attention_triton

        return mla_attention_triton(q_latent.contiguous(), q_pe.contiguous(), kv_latent.contiguous(),
                                    k_pe.contiguous(), past_cache.contiguous(), cache_seqlens.to(torch.int32),
                                    rope_cos_sin.float().contiguous(), softmax_scale)

    try:
        mla_attention.register_kernel("cuda")(_cuda)
    except RuntimeError:
        return False
    mla_attention._mla_triton_registered = True
    return True

