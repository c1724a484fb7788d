"""Kernel 1 of 3: rotate the new tokens' q_pe and k_pe and append [kv_latent ; rotated k_pe] to the cache.

One program per new token (b, i), at position p = cache_seqlens[b] + i. Rotation follows DeepSeek's
interleaved pairs: (x[2k], x[2k+1]) -> (x0 cos - x1 sin, x0 sin + x1 cos) with cos = rope_cos_sin[p, k],
sin = rope_cos_sin[p, Dr/2 + k], computed in float32 and stored in T. Writes happen only when
0 <= p < limit (Smax; paged: min(Smax, max_pages * page_size)) and, paged, when the page id block_table[b,
p // page_size] is inside the pool, so no call writes outside the cache (`cache_io.pool_rows`).

Cache layouts (contract version 2): CACHE_V2 == 0 is contract version 1, row p of sequence b in cache
[B, Smax, Dc+Dr] (the cache arguments are then constexpr None). CACHE_V2 == 1 takes them: page_size > 0
addresses page block_table[b, p // page_size], row p % page_size, of a pool [P, page_size, width]; 0 the
contiguous pool [B, Smax, width]. KV_FP8: c_kv quantized per tile of CACHE_TILE values
(`cache_io.quantize_tiles`), codes into cache [P, rows, Dc] uint8, scales into scale [P, rows, Dc /
CACHE_TILE] float32 and the rotated k_pe into rope [P, rows, Dr] T.

Bytes moved per token: read Dc + Dr + H*Dr elements and 2*Dr floats of the table, write Dc + Dr
cache elements (FP8: Dc codes, 4 * Dc / CACHE_TILE scale bytes and Dr elements) and H*Dr rotated-query
elements (to the workspace, for the attention kernel).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .cache_io import pool_rows, position_limit, quantize_tiles


@triton.jit
def mla_rope_append_kernel(
    q_pe_ptr,  # [B, S, H, Dr] T
    kv_latent_ptr,  # [B, S, Dc] T
    k_pe_ptr,  # [B, S, Dr] T
    cache_ptr,  # [B, Smax, Dc+Dr] T, rows p written
    seqlens_ptr,  # [B] int32
    cos_sin_ptr,  # [Smax, Dr] float32
    q_rot_ptr,  # [B, S, H, Dr] T, workspace: rotated q_pe
    S,  # new tokens per sequence
    H,  # heads
    Smax,  # cache rows (paged: rope table rows)
    block_table_ptr,  # [B, max_pages] int32 (page_size > 0)
    scale_ptr,  # [P, rows, Dc / CACHE_TILE] float32 (KV_FP8)
    rope_ptr,  # [P, rows, Dr] T (KV_FP8)
    num_pages,  # P
    max_pages,  # block table slots per sequence (page_size > 0)
    page_size,  # rows per page; 0: contiguous
    DC: tl.constexpr,  # kv_lora_rank (power of two)
    DR: tl.constexpr,  # qk_rope_head_dim (even)
    HALF_BLOCK: tl.constexpr,  # power of two >= DR // 2
    BLOCK_H: tl.constexpr,  # heads per step of the q loop
    CACHE_V2: tl.constexpr,  # 1: the contract-2 cache arguments above are used
    KV_FP8: tl.constexpr,  # 1: the FP8 cache (cache_ptr holds uint8 codes)
    CACHE_TILE: tl.constexpr,  # min(DC, FP8_CACHE_TILE): values per scale
):
    token = tl.program_id(0)  # b * S + i
    b = token // S
    i = token % S
    pos = tl.load(seqlens_ptr + b) + i  # scalar position of this token
    if CACHE_V2:
        limit = position_limit(Smax, max_pages, page_size)
    else:
        limit = Smax
    pos_safe = tl.where((pos >= 0) & (pos < limit), pos, 0)

    k = tl.arange(0, HALF_BLOCK)  # [HALF_BLOCK] pair index
    k_ok = k < DR // 2  # [HALF_BLOCK]
    # Scalar conditions are broadcast before `&` (the interpreter mis-types scalar & vector masks).
    k_pos = pos + 0 * k  # [HALF_BLOCK]
    k_write = k_ok & (k_pos >= 0) & (k_pos < limit)  # [HALF_BLOCK] false outside the cache
    cos = tl.load(cos_sin_ptr + pos_safe * DR + k, mask=k_ok, other=0.0)  # [HALF_BLOCK] f32
    sin = tl.load(cos_sin_ptr + pos_safe * DR + DR // 2 + k, mask=k_ok, other=0.0)  # [HALF_BLOCK] f32

    token64 = token.to(tl.int64)
    c = tl.arange(0, DC)  # [DC]
    if not CACHE_V2:
        # Cache row p = [kv_latent ; rotated k_pe] (contract version 1; this order keeps its images bit for bit).
        row_ptr = cache_ptr + (b.to(tl.int64) * Smax + pos_safe) * (DC + DR)  # -> [Dc+Dr] row
        kv = tl.load(kv_latent_ptr + token64 * DC + c)  # [DC] T
        c_pos = pos + 0 * c  # [DC]
        tl.store(row_ptr + c, kv, mask=(c_pos >= 0) & (c_pos < Smax))
        k_even = tl.load(k_pe_ptr + token64 * DR + 2 * k, mask=k_ok, other=0.0).to(tl.float32)  # [HALF_BLOCK]
        k_odd = tl.load(k_pe_ptr + token64 * DR + 2 * k + 1, mask=k_ok, other=0.0).to(tl.float32)  # [HALF_BLOCK]
        out_ty = kv.dtype
        tl.store(row_ptr + DC + 2 * k, (k_even * cos - k_odd * sin).to(out_ty), mask=k_write)
        tl.store(row_ptr + DC + 2 * k + 1, (k_even * sin + k_odd * cos).to(out_ty), mask=k_write)
    else:
        kv = tl.load(kv_latent_ptr + token64 * DC + c)  # [DC] T
        c_pos = pos + 0 * c  # [DC]
        c_row, c_write = pool_rows(b, c_pos, (c_pos >= 0) & (c_pos < limit), Smax, block_table_ptr, num_pages,
                                   max_pages, page_size)  # [DC] pool row (the same in every lane), write mask
        k_row, k_in = pool_rows(b, k_pos, k_write, Smax, block_table_ptr, num_pages, max_pages,
                                page_size)  # [HALF_BLOCK]
        if KV_FP8:
            NT: tl.constexpr = DC // CACHE_TILE
            codes, scales = quantize_tiles(tl.reshape(kv.to(tl.float32), [NT, CACHE_TILE]))  # [NT, TILE], [NT]
            tl.store(cache_ptr + c_row * DC + c, tl.reshape(codes, [DC]), mask=c_write)
            t = tl.arange(0, NT)  # [NT]
            t_pos = pos + 0 * t  # [NT]
            t_row, t_write = pool_rows(b, t_pos, (t_pos >= 0) & (t_pos < limit), Smax, block_table_ptr, num_pages,
                                       max_pages, page_size)
            tl.store(scale_ptr + t_row * NT + t, scales, mask=t_write)
            rope_row = rope_ptr + k_row * DR  # [HALF_BLOCK] -> this token's k_pe row
        else:
            tl.store(cache_ptr + c_row * (DC + DR) + c, kv, mask=c_write)
            rope_row = cache_ptr + k_row * (DC + DR) + DC  # [HALF_BLOCK]
        k_even = tl.load(k_pe_ptr + token64 * DR + 2 * k, mask=k_ok, other=0.0).to(tl.float32)  # [HALF_BLOCK]
        k_odd = tl.load(k_pe_ptr + token64 * DR + 2 * k + 1, mask=k_ok, other=0.0).to(tl.float32)  # [HALF_BLOCK]
        out_ty = kv.dtype
        tl.store(rope_row + 2 * k, (k_even * cos - k_odd * sin).to(out_ty), mask=k_in)
        tl.store(rope_row + 2 * k + 1, (k_even * sin + k_odd * cos).to(out_ty), mask=k_in)

    # q_pe of every head, rotated at the same position, into the workspace.
    q_base = token64 * H * DR  # start of this token's [H, Dr] block
    for h0 in range(0, H, BLOCK_H):
        h = h0 + tl.arange(0, BLOCK_H)  # [BLOCK_H]
        ok = (h[:, None] < H) & k_ok[None, :]  # [BLOCK_H, HALF_BLOCK]
        offs = q_base + h[:, None] * DR + 2 * k[None, :]  # [BLOCK_H, HALF_BLOCK] even elements
        q_even = tl.load(q_pe_ptr + offs, mask=ok, other=0.0).to(tl.float32)  # [BLOCK_H, HALF_BLOCK]
        q_odd = tl.load(q_pe_ptr + offs + 1, mask=ok, other=0.0).to(tl.float32)  # [BLOCK_H, HALF_BLOCK]
        tl.store(q_rot_ptr + offs, (q_even * cos[None, :] - q_odd * sin[None, :]).to(out_ty), mask=ok)
        tl.store(q_rot_ptr + offs + 1, (q_even * sin[None, :] + q_odd * cos[None, :]).to(out_ty), mask=ok)
