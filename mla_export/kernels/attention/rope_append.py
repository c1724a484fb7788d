"""Kernel 1 of 3: rotate the new tokens' q_pe and k_pe and append [kv_latent ; rotated k_pe] to the cache.

One program per new token (b, i), at position p = cache_seqlens[b] + i. Rotation follows DeepSeek's
interleaved pairs: (x[2k], x[2k+1]) -> (x0 cos - x1 sin, x0 sin + x1 cos) with cos = rope_cos_sin[p, k],
sin = rope_cos_sin[p, Dr/2 + k], computed in float32 and stored in T. Writes happen only when
0 <= p < Smax, so no call writes outside the cache (rows past Smax are out of contract and skipped).

Bytes moved per token: read Dc + Dr + H*Dr elements and 2*Dr floats of the table, write Dc + Dr
cache elements and H*Dr rotated-query elements (to the workspace, for the attention kernel).
"""

from __future__ import annotations

import triton
import triton.language as tl


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
    Smax,  # cache rows
    DC: tl.constexpr,  # kv_lora_rank (power of two)
    DR: tl.constexpr,  # qk_rope_head_dim (even)
    HALF_BLOCK: tl.constexpr,  # power of two >= DR // 2
    BLOCK_H: tl.constexpr,  # heads per step of the q loop
):
    token = tl.program_id(0)  # b * S + i
    b = token // S
    i = token % S
    pos = tl.load(seqlens_ptr + b) + i  # scalar position of this token
    pos_safe = tl.where((pos >= 0) & (pos < Smax), pos, 0)

    k = tl.arange(0, HALF_BLOCK)  # [HALF_BLOCK] pair index
    k_ok = k < DR // 2  # [HALF_BLOCK]
    # Scalar conditions are broadcast before `&` (the interpreter mis-types scalar & vector masks).
    k_pos = pos + 0 * k  # [HALF_BLOCK]
    k_write = k_ok & (k_pos >= 0) & (k_pos < Smax)  # [HALF_BLOCK] false outside the cache
    cos = tl.load(cos_sin_ptr + pos_safe * DR + k, mask=k_ok, other=0.0)  # [HALF_BLOCK] f32
    sin = tl.load(cos_sin_ptr + pos_safe * DR + DR // 2 + k, mask=k_ok, other=0.0)  # [HALF_BLOCK] f32

    # Cache row p = [kv_latent ; rotated k_pe].
    row_ptr = cache_ptr + (b.to(tl.int64) * Smax + pos_safe) * (DC + DR)  # -> [Dc+Dr] row
    token64 = token.to(tl.int64)
    c = tl.arange(0, DC)  # [DC]
    kv = tl.load(kv_latent_ptr + token64 * DC + c)  # [DC] T
    c_pos = pos + 0 * c  # [DC]
    tl.store(row_ptr + c, kv, mask=(c_pos >= 0) & (c_pos < Smax))
    k_even = tl.load(k_pe_ptr + token64 * DR + 2 * k, mask=k_ok, other=0.0).to(tl.float32)  # [HALF_BLOCK]
    k_odd = tl.load(k_pe_ptr + token64 * DR + 2 * k + 1, mask=k_ok, other=0.0).to(tl.float32)  # [HALF_BLOCK]
    out_ty = kv.dtype
    tl.store(row_ptr + DC + 2 * k, (k_even * cos - k_odd * sin).to(out_ty), mask=k_write)
    tl.store(row_ptr + DC + 2 * k + 1, (k_even * sin + k_odd * cos).to(out_ty), mask=k_write)

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
