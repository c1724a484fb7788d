"""The `MlaAttention` op over a paged and/or FP8 latent cache (contract version 2, `contract.py`): the
FP8 cache quantizer, the references, and the custom ops export turns into version-2 nodes.

Each reference gathers the pages a call reads into a contiguous view `[B, max_pages * page, Dc+Dr]`
(slots past a sequence's last needed page are never dereferenced), runs the contiguous reference
(`ops.mla_attention_reference`) on it, and writes only the new rows back into a copy of the pool. FP8:
the view holds the dequantized rows, the new c_kv rows are quantized then dequantized before the
attention reads them (what every implementation stores), k_pe stays in T.

`LatentPages` / `Fp8LatentCache` are what the export-form attention modules receive instead of a
contiguous cache tensor; `attention_core` calls the op that fits.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..common import contract
from .ops import check_attributes, check_cache_room, mla_attention_reference, token_positions


class LatentPages(NamedTuple):
    """A paged cache in the model's dtype: the pool `[P, page, Dc+Dr]` and `block_table [B, max_pages]` int32."""

    pool: torch.Tensor
    block_table: torch.Tensor


class Fp8LatentCache(NamedTuple):
    """An FP8 cache: codes `[P, page, Dc]` e4m3, scales `[P, page, ceil(Dc/128)]` float32, rope `[P, page, Dr]`
    T, and the block table (`page_size` 0: contiguous, the identity `[B, 1]`, P = B and page = Smax)."""

    codes: torch.Tensor
    scales: torch.Tensor
    rope: torch.Tensor
    block_table: torch.Tensor
    page_size: int


# ---- the FP8 cache format ------------------------------------------------------------------------------------

def fp8_cache_scales(x: torch.Tensor) -> torch.Tensor:
    """The power-of-two scale of each 128-value tile of `x [..., Dc]`: 2^ceil(log2(max(amax/448, 1e-4))),
    amax/448 computed in float32 as every implementation does; `[..., ceil(Dc/128)]` float32."""
    tile = contract.FP8_CACHE_TILE
    x32 = x.to(torch.float32)
    tiles = -(-x32.shape[-1] // tile)
    padded = torch.nn.functional.pad(x32.abs(), (0, tiles * tile - x32.shape[-1]))  # [..., tiles*128]
    amax = padded.unflatten(-1, (tiles, tile)).amax(-1)  # [..., tiles]
    bound = torch.clamp(amax / contract.FP8_MAX, min=contract.FP8_CACHE_MIN_SCALE)  # float32
    mantissa, exponent = torch.frexp(bound)  # bound = mantissa * 2^exponent, mantissa in [0.5, 1)
    ceil_log2 = torch.where(mantissa == 0.5, exponent - 1, exponent)
    return torch.ldexp(torch.ones_like(bound), ceil_log2)


def quantize_cache_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """c_kv rows `x [..., Dc]` -> (codes [..., Dc] float8_e4m3fn, scales [..., ceil(Dc/128)] float32)."""
    scales = fp8_cache_scales(x)
    per_value = scales.repeat_interleave(contract.FP8_CACHE_TILE, dim=-1)[..., :x.shape[-1]]  # [..., Dc]
    return (x.to(torch.float32) / per_value).to(torch.float8_e4m3fn), scales


def dequantize_cache_rows(codes: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """float(code) * scale, in `dtype` (exact for float16, bfloat16 and wider: a 4-bit mantissa times 2^k)."""
    per_value = scales.repeat_interleave(contract.FP8_CACHE_TILE, dim=-1)[..., :codes.shape[-1]]
    return (codes.to(torch.float32) * per_value).to(dtype)


def fp8_round_trip(x: torch.Tensor) -> torch.Tensor:
    """`x` as an FP8 cache stores it and reads it back (x's dtype)."""
    return dequantize_cache_rows(*quantize_cache_rows(x), x.dtype)


# ---- references ----------------------------------------------------------------------------------------------

def read_slots(block_table: torch.Tensor, cache_seqlens: torch.Tensor, new_tokens: int, page: int,
               num_pages: int) -> torch.Tensor:
    """The page ids a call touches, `[B, max_pages]` int64, slots past each sequence's last needed page set to
    page 0 (never dereferenced for their contents); ValueError for a needed id outside [0, num_pages)."""
    slots = torch.arange(block_table.shape[1], device=block_table.device)  # [max_pages]
    needed = -(-(cache_seqlens.to(torch.long) + new_tokens) // page)  # [B]
    used = slots[None, :] < needed[:, None]  # [B, max_pages]
    ids = block_table.to(torch.long)
    bad = used & ((ids < 0) | (ids >= num_pages))
    if bool(bad.any()):
        b, j = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"block_table[{b}, {j}] = {int(ids[b, j])} is outside the pool of {num_pages} pages")
    return torch.where(used, ids, 0)


def _rows(positions: torch.Tensor, block_table: torch.Tensor, page: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(page id, row in page) of each new token: `[B, S]` each."""
    slot_page = torch.gather(block_table.to(torch.long), 1, positions // page)  # [B, S]
    return slot_page, positions % page


def mla_attention_paged_reference(q_latent, q_pe, kv_latent, k_pe, past_pages, cache_seqlens, rope_cos_sin,
                                  block_table, softmax_scale):
    """Contract version 2, model-dtype pool: (attn_latent [B,S,H,Dc], present_pages [P, page, Dc+Dr])."""
    pages, page = past_pages.shape[0], past_pages.shape[1]
    new_tokens = q_latent.shape[1]
    rows = block_table.shape[1] * page
    check_cache_room(cache_seqlens, new_tokens, min(rows, rope_cos_sin.shape[0]))
    ids = read_slots(block_table, cache_seqlens, new_tokens, page, pages)  # [B, max_pages]
    view = past_pages[ids].flatten(1, 2)  # [B, max_pages*page, Dc+Dr]
    attn, present_view = mla_attention_reference(q_latent, q_pe, kv_latent, k_pe, view, cache_seqlens,
                                                 rope_cos_sin, softmax_scale)
    positions = token_positions(cache_seqlens, new_tokens, q_latent.device)  # [B, S]
    page_ids, offsets = _rows(positions, block_table, page)  # [B, S] each
    batch = torch.arange(positions.shape[0], device=positions.device)[:, None]
    present = past_pages.clone()
    present[page_ids, offsets] = present_view[batch, positions]
    return attn, present


def mla_attention_fp8_cache_reference(q_latent, q_pe, kv_latent, k_pe, past_codes, cache_seqlens, rope_cos_sin,
                                      block_table, past_scales, past_rope, softmax_scale, page_size):
    """Contract version 2, FP8 cache (paged, or contiguous with `page_size` 0): (attn_latent, present codes,
    present scales, present rope)."""
    pages, page = past_codes.shape[0], past_codes.shape[1]
    new_tokens, dtype = q_latent.shape[1], q_latent.dtype
    if page_size == 0:  # contiguous: the pool is [B, Smax, ...] and page b is sequence b
        block_table = torch.arange(q_latent.shape[0], dtype=torch.int32, device=q_latent.device)[:, None]
    check_cache_room(cache_seqlens, new_tokens, min(block_table.shape[1] * page, rope_cos_sin.shape[0]))
    ids = read_slots(block_table, cache_seqlens, new_tokens, page, pages)  # [B, max_pages]
    view = torch.cat([dequantize_cache_rows(past_codes[ids], past_scales[ids], dtype),
                      past_rope[ids].to(dtype)], dim=-1).flatten(1, 2)  # [B, max_pages*page, Dc+Dr]
    codes, scales = quantize_cache_rows(kv_latent)  # [B, S, Dc], [B, S, tiles]
    stored = dequantize_cache_rows(codes, scales, dtype)  # [B, S, Dc]: what the cache holds
    attn, present_view = mla_attention_reference(q_latent, q_pe, stored, k_pe, view, cache_seqlens, rope_cos_sin,
                                                 softmax_scale)
    positions = token_positions(cache_seqlens, new_tokens, q_latent.device)  # [B, S]
    page_ids, offsets = _rows(positions, block_table, page)  # [B, S] each
    batch = torch.arange(positions.shape[0], device=positions.device)[:, None]
    d_c = past_codes.shape[-1]
    present_codes, present_scales, present_rope = past_codes.clone(), past_scales.clone(), past_rope.clone()
    present_codes[page_ids, offsets] = codes
    present_scales[page_ids, offsets] = scales
    present_rope[page_ids, offsets] = present_view[batch, positions, d_c:].to(past_rope.dtype)
    return attn, present_codes, present_scales, present_rope


# ---- the custom ops ------------------------------------------------------------------------------------------

@torch.library.custom_op("mla::mla_attention_paged", mutates_args=())
def mla_attention_paged(q_latent: torch.Tensor, q_pe: torch.Tensor, kv_latent: torch.Tensor, k_pe: torch.Tensor,
                        past_pages: torch.Tensor, cache_seqlens: torch.Tensor, rope_cos_sin: torch.Tensor,
                        block_table: torch.Tensor, num_heads: int, kv_lora_rank: int, qk_rope_head_dim: int,
                        softmax_scale: float, page_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`MlaAttention` version 2 over a paged pool in the model's dtype (the reference, on every device)."""
    check_attributes(q_latent, q_pe, kv_latent, k_pe, past_pages, num_heads, kv_lora_rank, qk_rope_head_dim,
                     softmax_scale)
    return mla_attention_paged_reference(q_latent, q_pe, kv_latent, k_pe, past_pages, cache_seqlens, rope_cos_sin,
                                         block_table, softmax_scale)


@mla_attention_paged.register_fake
def _paged_fake(q_latent, q_pe, kv_latent, k_pe, past_pages, cache_seqlens, rope_cos_sin, block_table, num_heads,
                kv_lora_rank, qk_rope_head_dim, softmax_scale, page_size):
    return torch.empty_like(q_latent), torch.empty_like(past_pages)


@mla_attention_paged.register_kernel("cuda")
def _paged_cuda(q_latent, q_pe, kv_latent, k_pe, past_pages, cache_seqlens, rope_cos_sin, block_table, num_heads,
                kv_lora_rank, qk_rope_head_dim, softmax_scale, page_size):
    """CUDA: the Triton kernels' contract-2 path (imported at the first call; owed to a GPU run)."""
    check_attributes(q_latent, q_pe, kv_latent, k_pe, past_pages, num_heads, kv_lora_rank, qk_rope_head_dim,
                     softmax_scale)
    from ..kernels.attention.api import mla_attention_triton

    return mla_attention_triton(q_latent.contiguous(), q_pe.contiguous(), kv_latent.contiguous(), k_pe.contiguous(),
                                past_pages.contiguous(), cache_seqlens.to(torch.int32), rope_cos_sin.float().contiguous(),
                                softmax_scale, block_table=block_table.to(torch.int32).contiguous(), page_size=page_size)


@torch.library.custom_op("mla::mla_attention_fp8_cache", mutates_args=())
def mla_attention_fp8_cache(q_latent: torch.Tensor, q_pe: torch.Tensor, kv_latent: torch.Tensor, k_pe: torch.Tensor,
                            past_codes: torch.Tensor, cache_seqlens: torch.Tensor, rope_cos_sin: torch.Tensor,
                            block_table: torch.Tensor, past_scales: torch.Tensor, past_rope: torch.Tensor,
                            num_heads: int, kv_lora_rank: int, qk_rope_head_dim: int, softmax_scale: float,
                            page_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`MlaAttention` version 2 over an FP8 cache (the reference, on every device)."""
    return mla_attention_fp8_cache_reference(q_latent, q_pe, kv_latent, k_pe, past_codes, cache_seqlens,
                                             rope_cos_sin, block_table, past_scales, past_rope, softmax_scale,
                                             page_size)


@mla_attention_fp8_cache.register_fake
def _fp8_cache_fake(q_latent, q_pe, kv_latent, k_pe, past_codes, cache_seqlens, rope_cos_sin, block_table,
                    past_scales, past_rope, num_heads, kv_lora_rank, qk_rope_head_dim, softmax_scale, page_size):
    return (torch.empty_like(q_latent), torch.empty_like(past_codes), torch.empty_like(past_scales),
            torch.empty_like(past_rope))


@mla_attention_fp8_cache.register_kernel("cuda")
def _fp8_cache_cuda(q_latent, q_pe, kv_latent, k_pe, past_codes, cache_seqlens, rope_cos_sin, block_table, past_scales,
                    past_rope, num_heads, kv_lora_rank, qk_rope_head_dim, softmax_scale, page_size):
    """CUDA: the Triton kernels' FP8-cache path (imported at the first call; owed to a GPU run)."""
    from ..kernels.attention.api import mla_attention_triton

    return mla_attention_triton(q_latent.contiguous(), q_pe.contiguous(), kv_latent.contiguous(), k_pe.contiguous(),
                                past_codes.contiguous(), cache_seqlens.to(torch.int32), rope_cos_sin.float().contiguous(),
                                softmax_scale, block_table=block_table.to(torch.int32).contiguous(),
                                past_scale=past_scales.float().contiguous(), past_rope=past_rope.contiguous(),
                                page_size=page_size, kv_cache_dtype=contract.KV_CACHE_DTYPE_FP8)


def attention_core(q_latent, q_pe, kv_latent, k_pe, cache, cache_seqlens, rope_cos_sin, num_heads: int,
                   kv_lora_rank: int, qk_rope_head_dim: int, softmax_scale: float, **fp8_cache_check):
    """The MlaAttention op that fits `cache` (a contiguous tensor, `LatentPages` or `Fp8LatentCache`):
    (attn_latent [B,S,H,Dc], the updated cache of the same kind). `fp8_cache_check` (validate's reference of
    an FP8 cache, contiguous): the reference itself with those keywords (`ops.mla_attention_reference`)."""
    attrs = (num_heads, kv_lora_rank, qk_rope_head_dim, softmax_scale)
    if fp8_cache_check:
        return mla_attention_reference(q_latent, q_pe, kv_latent, k_pe, cache, cache_seqlens, rope_cos_sin,
                                       softmax_scale, **fp8_cache_check)
    if isinstance(cache, LatentPages):
        attn, pool = torch.ops.mla.mla_attention_paged(q_latent, q_pe, kv_latent, k_pe, cache.pool, cache_seqlens,
                                                       rope_cos_sin, cache.block_table, *attrs, cache.pool.shape[1])
        return attn, LatentPages(pool, cache.block_table)
    if isinstance(cache, Fp8LatentCache):
        attn, codes, scales, rope = torch.ops.mla.mla_attention_fp8_cache(
            q_latent, q_pe, kv_latent, k_pe, cache.codes, cache_seqlens, rope_cos_sin, cache.block_table,
            cache.scales, cache.rope, *attrs, cache.page_size)
        return attn, Fp8LatentCache(codes, scales, rope, cache.block_table, cache.page_size)
    return torch.ops.mla.mla_attention(q_latent, q_pe, kv_latent, k_pe, cache, cache_seqlens, rope_cos_sin, *attrs)
