"""The `MlaAttention` op in PyTorch: the reference implementation and the registered custom op.

`mla_attention_reference` is the executable form of the contract in `contract.py`; the custom op
`torch.ops.mla.mla_attention` runs it on the CPU (a CUDA implementation is registered by
`mla_export.kernels` when Triton and a GPU are present) and is what export turns into the ONNX node.
"""

from __future__ import annotations

import torch

from .rope import rotate_interleaved


def check_cache_room(cache_seqlens: torch.Tensor, new_tokens: int, max_seq_len: int) -> None:
    """Raise ValueError when a sequence would be written past the cache (out of contract)."""
    if cache_seqlens.numel() and int(cache_seqlens.min()) < 0:
        raise ValueError(f"cache_seqlens has a negative entry ({int(cache_seqlens.min())})")
    longest = int(cache_seqlens.max()) + new_tokens if cache_seqlens.numel() else 0
    if longest > max_seq_len:
        raise ValueError(f"cache too short: a sequence would hold {longest} tokens after this call but the cache "
                         f"has {max_seq_len} rows; export with a larger --max-seq-len")


def mla_attention_reference(q_latent: torch.Tensor, q_pe: torch.Tensor, kv_latent: torch.Tensor,
                            k_pe: torch.Tensor, past_cache: torch.Tensor, cache_seqlens: torch.Tensor,
                            rope_cos_sin: torch.Tensor, softmax_scale: float,
                            compute_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The contract, computed plainly. Shapes as in `contract.py`.

    q_latent [B,S,H,Dc], q_pe [B,S,H,Dr], kv_latent [B,S,Dc], k_pe [B,S,Dr] of dtype T;
    past_cache [B,Smax,Dc+Dr] T; cache_seqlens [B] int; rope_cos_sin [Smax,Dr] float.
    Returns (attn_latent [B,S,H,Dc] T, present_cache [B,Smax,Dc+Dr] T, a new tensor).
    Arithmetic runs in `compute_dtype` (default: float64 for float64 inputs, else float32).
    Cache rows at or past cache_seqlens[b]+S are never read, so they may hold NaN.
    """
    batch, new_tokens, _, d_c = q_latent.shape
    max_seq_len = past_cache.shape[1]
    check_cache_room(cache_seqlens, new_tokens, max_seq_len)
    acc = compute_dtype or (torch.float64 if q_latent.dtype == torch.float64 else torch.float32)
    device = q_latent.device

    seqlens = cache_seqlens.to(device=device, dtype=torch.long)  # [B]
    positions = seqlens[:, None] + torch.arange(new_tokens, device=device)  # [B, S]
    cos_sin = rope_cos_sin.to(acc)[positions]  # [B, S, Dr]
    q_pe_rot = rotate_interleaved(q_pe.to(acc), cos_sin[:, :, None, :])  # [B, S, H, Dr]
    k_pe_rot = rotate_interleaved(k_pe.to(acc), cos_sin)  # [B, S, Dr]

    present = past_cache.clone()  # [B, Smax, Dc+Dr]
    rows = torch.cat([kv_latent.to(acc), k_pe_rot], dim=-1).to(past_cache.dtype)  # [B, S, Dc+Dr]
    batch_index = torch.arange(batch, device=device)[:, None].expand(batch, new_tokens)  # [B, S]
    present[batch_index, positions] = rows

    cache_rows = torch.arange(max_seq_len, device=device)  # [Smax]
    readable = cache_rows[None, :] < (seqlens + new_tokens)[:, None]  # [B, Smax]
    cache = torch.where(readable[..., None], present.to(acc), 0)  # [B, Smax, Dc+Dr], unread rows zeroed
    query = torch.cat([q_latent.to(acc), q_pe_rot], dim=-1)  # [B, S, H, Dc+Dr]
    scores = torch.einsum("bshc,btc->bsht", query, cache) * softmax_scale  # [B, S, H, Smax]
    causal = cache_rows[None, None, :] <= positions[:, :, None]  # [B, S, Smax]
    scores = scores.masked_fill(~causal[:, :, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1)  # [B, S, H, Smax]
    attn = torch.einsum("bsht,btc->bshc", probs, cache[..., :d_c])  # [B, S, H, Dc]
    return attn.to(q_latent.dtype), present


@torch.library.custom_op("mla::mla_attention", mutates_args=())
def mla_attention(q_latent: torch.Tensor, q_pe: torch.Tensor, kv_latent: torch.Tensor, k_pe: torch.Tensor,
                  past_cache: torch.Tensor, cache_seqlens: torch.Tensor, rope_cos_sin: torch.Tensor,
                  num_heads: int, kv_lora_rank: int, qk_rope_head_dim: int,
                  softmax_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`MlaAttention` as a PyTorch op (CPU: the reference; CUDA: registered by mla_export.kernels)."""
    return mla_attention_reference(q_latent, q_pe, kv_latent, k_pe, past_cache, cache_seqlens, rope_cos_sin,
                                   softmax_scale)


@mla_attention.register_fake
def _mla_attention_fake(q_latent, q_pe, kv_latent, k_pe, past_cache, cache_seqlens, rope_cos_sin,
                        num_heads, kv_lora_rank, qk_rope_head_dim, softmax_scale):
    return torch.empty_like(q_latent), torch.empty_like(past_cache)


# The Triton kernels register themselves as this op's CUDA implementation (no Triton import until a call).
from . import kernels  # noqa: E402,F401
