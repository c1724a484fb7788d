"""The `MlaAttention` op in PyTorch: the reference implementation and the registered custom op.

`mla_attention_reference` is the executable form of the contract in `contract.py`; the custom op
`torch.ops.mla.mla_attention` runs it on the CPU and the Triton kernels on CUDA (imported at the
first CUDA call), and is what export turns into the ONNX node.
"""

from __future__ import annotations

import math

import torch

from .rope import rotate_interleaved


def check_cache_room(cache_seqlens: torch.Tensor, new_tokens: int, max_seq_len: int) -> None:
    """Raise ValueError when a sequence would be written past the cache (out of contract)."""
    if cache_seqlens.numel() and int(cache_seqlens.min()) < 0:
        raise ValueError(f"cache_seqlens has a negative entry ({int(cache_seqlens.min())})")
    longest = int(cache_seqlens.max()) + new_tokens if cache_seqlens.numel() else 0
    if longest > max_seq_len:
        raise ValueError(f"cache too short: a sequence would hold {longest} tokens after this call but the cache "
                         f"has {max_seq_len} rows (export with more cache rows)")


# The cache semantics of the contract, shared by the reference op and the eager model's naive path.

def token_positions(cache_seqlens: torch.Tensor, new_tokens: int, device: torch.device) -> torch.Tensor:
    """Position of new token i of sequence b: cache_seqlens[b] + i, as `[B, S]` int64."""
    seqlens = cache_seqlens.to(device=device, dtype=torch.long)  # [B]
    return seqlens[:, None] + torch.arange(new_tokens, device=device)  # [B, S]


def append_rows(past_cache: torch.Tensor, positions: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """A copy of `past_cache [B, Smax, W]` with row positions[b, i] set to rows[b, i] (`rows [B, S, W]`)."""
    batch, new_tokens = positions.shape
    present = past_cache.clone()  # [B, Smax, W]
    batch_index = torch.arange(batch, device=positions.device)[:, None].expand(batch, new_tokens)  # [B, S]
    present[batch_index, positions] = rows.to(past_cache.dtype)
    return present


def readable_cache(present: torch.Tensor, cache_seqlens: torch.Tensor, new_tokens: int,
                   dtype: torch.dtype) -> torch.Tensor:
    """`present [B, Smax, W]` in `dtype` with every row at or past cache_seqlens[b] + S zeroed: those rows
    are never read and may hold NaN."""
    rows = torch.arange(present.shape[1], device=present.device)  # [Smax]
    filled = cache_seqlens.to(device=present.device, dtype=torch.long) + new_tokens  # [B]
    readable = rows[None, :] < filled[:, None]  # [B, Smax]
    return torch.where(readable[..., None], present.to(dtype), 0)  # [B, Smax, W]


def causal_mask(positions: torch.Tensor, max_seq_len: int) -> torch.Tensor:
    """True where new token (b, i) may attend to cache row t: t <= positions[b, i]. `[B, S, Smax]`."""
    rows = torch.arange(max_seq_len, device=positions.device)  # [Smax]
    return rows[None, None, :] <= positions[:, :, None]  # [B, S, Smax]


def mla_attention_reference(q_latent: torch.Tensor, q_pe: torch.Tensor, kv_latent: torch.Tensor,
                            k_pe: torch.Tensor, past_cache: torch.Tensor, cache_seqlens: torch.Tensor,
                            rope_cos_sin: torch.Tensor, softmax_scale: float,
                            compute_dtype: torch.dtype | None = None,
                            read_cache: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The contract, computed plainly. Shapes as in `contract.py`.

    q_latent [B,S,H,Dc], q_pe [B,S,H,Dr], kv_latent [B,S,Dc], k_pe [B,S,Dr] of dtype T;
    past_cache [B,Smax,Dc+Dr] T; cache_seqlens [B] int; rope_cos_sin [Smax,Dr] float.
    Returns (attn_latent [B,S,H,Dc] T, present_cache [B,Smax,Dc+Dr] T, a new tensor).
    Arithmetic runs in `compute_dtype` (default: float64 for float64 inputs, else float32).
    Cache rows at or past cache_seqlens[b]+S are never read, so they may hold NaN.

    For validating an FP8 cache (`run/fp8_cache_check.py`): `read_cache` (`[B, Smax, Dc+Dr]`, the runtime's own
    cache after the call) is what the attention reads instead of the rows it wrote (which it still returns,
    unquantized), so that a runtime whose c_kv rounded to the neighbouring FP8 code is judged on its attention,
    given its cache.
    """
    new_tokens, d_c = q_latent.shape[1], q_latent.shape[3]
    max_seq_len = past_cache.shape[1]
    check_cache_room(cache_seqlens, new_tokens, max_seq_len)
    acc = compute_dtype or (torch.float64 if q_latent.dtype == torch.float64 else torch.float32)

    positions = token_positions(cache_seqlens, new_tokens, q_latent.device)  # [B, S]
    cos_sin = rope_cos_sin.to(acc)[positions]  # [B, S, Dr]
    q_pe_rot = rotate_interleaved(q_pe.to(acc), cos_sin[:, :, None, :])  # [B, S, H, Dr]
    k_pe_rot = rotate_interleaved(k_pe.to(acc), cos_sin)  # [B, S, Dr]
    present = append_rows(past_cache, positions, torch.cat([kv_latent.to(acc), k_pe_rot], dim=-1))  # [B,Smax,Dc+Dr]

    read = present if read_cache is None else read_cache
    cache = readable_cache(read, cache_seqlens, new_tokens, acc)  # [B, Smax, Dc+Dr]
    query = torch.cat([q_latent.to(acc), q_pe_rot], dim=-1)  # [B, S, H, Dc+Dr]
    scores = torch.einsum("bshc,btc->bsht", query, cache) * softmax_scale  # [B, S, H, Smax]
    scores = scores.masked_fill(~causal_mask(positions, max_seq_len)[:, :, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1)  # [B, S, H, Smax]
    attn = torch.einsum("bsht,btc->bshc", probs, cache[..., :d_c])  # [B, S, H, Dc]
    return attn.to(q_latent.dtype), present


def check_attributes(q_latent: torch.Tensor, q_pe: torch.Tensor, kv_latent: torch.Tensor, k_pe: torch.Tensor,
                     past_cache: torch.Tensor, num_heads: int, kv_lora_rank: int, qk_rope_head_dim: int,
                     softmax_scale: float) -> None:
    """Raise ValueError when the op's attributes disagree with its inputs' shapes (or the scale is not a
    finite positive number): every implementation checks this, as the plugin does at build time."""
    # [B,S,H,Dc], [B,S,H,Dr], [B,S,Dc], [B,S,Dr], [B,Smax,Dc+Dr]
    expected = (num_heads, kv_lora_rank, qk_rope_head_dim)
    got = (q_latent.shape[2], q_latent.shape[3], q_pe.shape[3])
    if expected != got:
        raise ValueError(f"mla_attention: attributes (num_heads, kv_lora_rank, qk_rope_head_dim)={expected} "
                         f"do not match the inputs' shapes {got}")
    widths = (q_pe.shape[2], kv_latent.shape[-1], k_pe.shape[-1], past_cache.shape[-1])
    if widths != (num_heads, kv_lora_rank, qk_rope_head_dim, kv_lora_rank + qk_rope_head_dim):
        raise ValueError(f"mla_attention: q_pe heads, kv_latent, k_pe and past_cache widths {widths} do not match "
                         f"the attributes (num_heads={num_heads}, kv_lora_rank={kv_lora_rank}, "
                         f"qk_rope_head_dim={qk_rope_head_dim})")
    if not (math.isfinite(softmax_scale) and softmax_scale > 0):
        raise ValueError(f"mla_attention: softmax_scale={softmax_scale}: expected a finite positive number")


@torch.library.custom_op("mla::mla_attention", mutates_args=())
def mla_attention(q_latent: torch.Tensor, q_pe: torch.Tensor, kv_latent: torch.Tensor, k_pe: torch.Tensor,
                  past_cache: torch.Tensor, cache_seqlens: torch.Tensor, rope_cos_sin: torch.Tensor,
                  num_heads: int, kv_lora_rank: int, qk_rope_head_dim: int,
                  softmax_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`MlaAttention` as a PyTorch op (CPU: the reference; CUDA: the Triton kernels)."""
    check_attributes(q_latent, q_pe, kv_latent, k_pe, past_cache, num_heads, kv_lora_rank, qk_rope_head_dim,
                     softmax_scale)
    return mla_attention_reference(q_latent, q_pe, kv_latent, k_pe, past_cache, cache_seqlens, rope_cos_sin,
                                   softmax_scale)


@mla_attention.register_fake
def _mla_attention_fake(q_latent, q_pe, kv_latent, k_pe, past_cache, cache_seqlens, rope_cos_sin,
                        num_heads, kv_lora_rank, qk_rope_head_dim, softmax_scale):
    return torch.empty_like(q_latent), torch.empty_like(past_cache)


@mla_attention.register_kernel("cuda")
def _mla_attention_cuda(q_latent, q_pe, kv_latent, k_pe, past_cache, cache_seqlens, rope_cos_sin, num_heads,
                        kv_lora_rank, qk_rope_head_dim, softmax_scale):
    """The CUDA implementation: the Triton kernels (Triton is imported at the first call, not before)."""
    # [B,S,H,Dc], [B,S,H,Dr], [B,S,Dc], [B,S,Dr], [B,Smax,Dc+Dr], [B] int32, [Smax,Dr] f32
    check_attributes(q_latent, q_pe, kv_latent, k_pe, past_cache, num_heads, kv_lora_rank, qk_rope_head_dim,
                     softmax_scale)
    from ..kernels.attention.api import mla_attention_triton

    return mla_attention_triton(q_latent.contiguous(), q_pe.contiguous(), kv_latent.contiguous(), k_pe.contiguous(),
                                past_cache.contiguous(), cache_seqlens.to(torch.int32),
                                rope_cos_sin.float().contiguous(), softmax_scale)
