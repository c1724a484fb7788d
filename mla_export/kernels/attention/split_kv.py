"""Kernel 2 of 3: split-KV attention over the latent cache, decode and causal prefill in one source.

Absorbed MLA is multi-query attention with a (Dc+Dr)-wide key [c_kv ; k_pe] and a Dc-wide value c_kv,
both read from the same cache row. The M dimension of both products is the (token, head) pair: row
m = i*H + h of sequence b (i.e. q_latent[b] viewed as [S*H, Dc], contiguous). One program handles
BLOCK_M such rows of one sequence over one split of the cache:

    s   = q_lat @ c_kv^T + q_rot @ k_pe^T        [BLOCK_M, BLOCK_N]  (K = Dc, then K = Dr padded to BLOCK_DR)
    acc = acc * alpha + softmax_part(s) @ c_kv    [BLOCK_M, Dc]       float32 online softmax (base 2)

Row m may see cache rows 0..p with p = cache_seqlens[b] + m // H (causal for S > 1). Split j of
`num_splits` covers row blocks [j*per, (j+1)*per) of ceil((cache_seqlens[b] + S) / BLOCK_N) blocks
(ragged: computed on the device from cache_seqlens). With one split the program normalizes and
writes attn_latent; otherwise it writes its normalized partial and log2-sum-exp for `combine.py`.

Bytes moved (decode, S*H rows per sequence, L = cache_seqlens[b] + S rows):
    DRAM reads  ~ B * L * (Dc+Dr) * elem   (the grid's fastest axis is the head group, so the
                  ceil(S*H/BLOCK_M) programs of one (sequence, split) run together and re-read the
                  same rows from L2, not DRAM)
              + B * S*H * (Dc+Dr) * elem   (queries)
    writes      B * S*H * Dc * elem          (splits == 1), or
                B * S*H * splits * (Dc+1) * 4 partials, read back once by the combine kernel.
For prefill (S*H >> BLOCK_M) the cache is re-read once per head group from L2; the work is
2 * H * sum_i(p_i + 1) * (Dc+Dr + Dc) flops, compute-bound.

Rows past L (and NaN there) are never loaded: loads are masked (other=0) and scores of invisible
columns are set with tl.where to -inf before the max, never multiplied by zero.

Cache layouts (contract version 2, `cache_io`): CACHE_V2 == 0 is contract version 1 (the cache [B, Smax,
Dc+Dr]; the cache arguments are constexpr None). CACHE_V2 == 1: page_size > 0 (a run-time argument) reads
row p of sequence b from page block_table[b, p // page_size], row p % page_size, of a pool [P, page_size,
width]: the tile's page ids are gathered per column, only for columns below L, and a column whose id lies
outside [0, P) is not loaded; page_size 0 reads the contiguous pool [B, Smax, width]. Either way the
arithmetic is contract version 1's in the same order (only addresses differ), so a paged call's results
equal the contiguous call's bit for bit. KV_FP8 reads c_kv as e4m3 codes [P, rows, Dc] uint8 with scales
[P, rows, Dc / CACHE_TILE] float32, dequantized to T before the dots (exact: power-of-two scales), and k_pe
from rope [P, rows, Dr] T.
DRAM reads per row: (Dc+Dr) * elem, or Dc + 4 * Dc / CACHE_TILE + Dr * elem with the FP8 cache.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .cache_io import dequantize_tiles, pool_rows, position_limit


@triton.jit
def mla_attention_kernel(
    q_lat_ptr,  # [B, S*H, Dc] T
    q_rot_ptr,  # [B, S*H, Dr] T, rotated q_pe (workspace)
    cache_ptr,  # [B, Smax, Dc+Dr] T, new rows already appended
    seqlens_ptr,  # [B] int32, rows held before this call
    out_ptr,  # [B, S*H, Dc] T, written when num_splits == 1
    o_part_ptr,  # [B, S*H, num_splits, Dc] float32, written when num_splits > 1
    lse_part_ptr,  # [B, S*H, num_splits] float32, log2-sum-exp of the scaled scores
    softmax_scale,  # float32
    S,  # new tokens per sequence
    H,  # heads
    Smax,  # cache rows (paged: rope table rows)
    num_splits,
    block_table_ptr,  # [B, max_pages] int32 (page_size > 0)
    scale_ptr,  # [P, rows, Dc / CACHE_TILE] float32 (KV_FP8)
    rope_ptr,  # [P, rows, Dr] T (KV_FP8)
    num_pages,  # P
    max_pages,  # block table slots per sequence (page_size > 0)
    page_size,  # rows per page; 0: contiguous
    DC: tl.constexpr,
    DR: tl.constexpr,
    BLOCK_DR: tl.constexpr,  # power of two >= max(16, DR)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,  # "ieee" for float32 inputs, else "tf32" (unused for 16-bit types)
    CACHE_V2: tl.constexpr,  # 1: the contract-2 cache arguments above are used
    KV_FP8: tl.constexpr,  # 1: the FP8 cache (cache_ptr holds uint8 codes)
    CACHE_TILE: tl.constexpr,  # min(DC, FP8_CACHE_TILE): values per scale
):
    pid_m = tl.program_id(0)
    split = tl.program_id(1)
    b = tl.program_id(2)
    M = S * H
    seqlen = tl.load(seqlens_ptr + b)
    if CACHE_V2:
        limit = position_limit(Smax, max_pages, page_size)
    else:
        limit = Smax
    total = tl.maximum(tl.minimum(seqlen + S, limit), 0)  # rows any token of b may read, clamped to the cache

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M] (token, head) rows
    row_ok = rows < M  # [BLOCK_M]
    pos = seqlen + rows // H  # [BLOCK_M] last visible cache row per query row

    n_blocks = tl.cdiv(total, BLOCK_N)
    per_split = tl.cdiv(n_blocks, num_splits)
    start = split * per_split * BLOCK_N
    last_token = tl.minimum((pid_m * BLOCK_M + BLOCK_M - 1) // H, S - 1)
    end = tl.minimum(tl.minimum(start + per_split * BLOCK_N, total), seqlen + last_token + 1)

    b64 = b.to(tl.int64)
    dc = tl.arange(0, DC)  # [DC]
    dr = tl.arange(0, BLOCK_DR)  # [BLOCK_DR]
    dr_ok = dr < DR  # [BLOCK_DR]
    q_rows = b64 * M + rows  # [BLOCK_M] int64 global row index
    q = tl.load(q_lat_ptr + q_rows[:, None] * DC + dc[None, :], mask=row_ok[:, None], other=0.0)  # [BLOCK_M, DC]
    q_r = tl.load(q_rot_ptr + q_rows[:, None] * DR + dr[None, :], mask=row_ok[:, None] & dr_ok[None, :],
                  other=0.0)  # [BLOCK_M, BLOCK_DR]

    scale_log2 = softmax_scale * 1.4426950408889634  # scores in base 2
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # [BLOCK_M] running max
    l_i = tl.zeros([BLOCK_M], tl.float32)  # [BLOCK_M] running sum
    acc = tl.zeros([BLOCK_M, DC], tl.float32)  # [BLOCK_M, DC]
    seq_cache = cache_ptr + b64 * Smax * (DC + DR)  # -> [Smax, Dc+Dr]
    for n0 in range(start, end, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)  # [BLOCK_N] cache rows
        col_ok = cols < end  # [BLOCK_N]
        if not CACHE_V2:
            row_ptr = seq_cache + cols[:, None] * (DC + DR)  # [BLOCK_N, 1]
            kv = tl.load(row_ptr + dc[None, :], mask=col_ok[:, None], other=0.0)  # [BLOCK_N, DC] c_kv
            k_r = tl.load(row_ptr + DC + dr[None, :], mask=col_ok[:, None] & dr_ok[None, :],
                          other=0.0)  # [BLOCK_N, BLOCK_DR] k_pe
        else:
            pool_row, in_pool = pool_rows(b, cols, col_ok, Smax, block_table_ptr, num_pages, max_pages,
                                          page_size)  # [BLOCK_N] int64 rows, [BLOCK_N] loadable
            if KV_FP8:
                NT: tl.constexpr = DC // CACHE_TILE
                codes = tl.load(cache_ptr + pool_row[:, None] * DC + dc[None, :], mask=in_pool[:, None],
                                other=0)  # [BLOCK_N, DC] uint8
                scales = tl.load(scale_ptr + pool_row[:, None] * NT + tl.arange(0, NT)[None, :],
                                 mask=in_pool[:, None], other=0.0)  # [BLOCK_N, NT] float32
                kv = dequantize_tiles(codes, scales, BLOCK_N, DC, CACHE_TILE).to(q.dtype)  # [BLOCK_N, DC] T
                k_r = tl.load(rope_ptr + pool_row[:, None] * DR + dr[None, :], mask=in_pool[:, None] & dr_ok[None, :],
                              other=0.0)  # [BLOCK_N, BLOCK_DR] k_pe
            else:
                row_ptr = cache_ptr + pool_row[:, None] * (DC + DR)  # [BLOCK_N, 1]
                kv = tl.load(row_ptr + dc[None, :], mask=in_pool[:, None], other=0.0)  # [BLOCK_N, DC] c_kv
                k_r = tl.load(row_ptr + DC + dr[None, :], mask=in_pool[:, None] & dr_ok[None, :],
                              other=0.0)  # [BLOCK_N, BLOCK_DR] k_pe
        s = tl.dot(q, tl.trans(kv), input_precision=INPUT_PRECISION)  # [BLOCK_M, BLOCK_N]
        s = tl.dot(q_r, tl.trans(k_r), acc=s, input_precision=INPUT_PRECISION)  # [BLOCK_M, BLOCK_N]
        visible = (cols[None, :] <= pos[:, None]) & col_ok[None, :]  # [BLOCK_M, BLOCK_N]
        s = tl.where(visible, s * scale_log2, float("-inf"))  # [BLOCK_M, BLOCK_N]
        m_new = tl.maximum(m_i, tl.max(s, axis=1))  # [BLOCK_M]
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # [BLOCK_M] no (-inf) - (-inf)
        alpha = tl.exp2(m_i - m_use)  # [BLOCK_M], 0 while m_i is -inf
        p = tl.exp2(s - m_use[:, None])  # [BLOCK_M, BLOCK_N], 0 where invisible
        l_i = l_i * alpha + tl.sum(p, axis=1)  # [BLOCK_M]
        acc = acc * alpha[:, None]  # [BLOCK_M, DC]
        acc = tl.dot(p.to(kv.dtype), kv, acc=acc, input_precision=INPUT_PRECISION)  # [BLOCK_M, DC]
        m_i = m_new

    has_rows = l_i > 0.0  # [BLOCK_M]
    o = acc / tl.where(has_rows, l_i, 1.0)[:, None]  # [BLOCK_M, DC], 0 for rows with nothing visible
    if num_splits == 1:
        tl.store(out_ptr + q_rows[:, None] * DC + dc[None, :], o.to(out_ptr.dtype.element_ty),
                 mask=row_ok[:, None])
    else:
        part = q_rows * num_splits + split  # [BLOCK_M] int64 partial index
        lse = tl.where(has_rows, m_i + tl.log2(tl.where(has_rows, l_i, 1.0)), float("-inf"))  # [BLOCK_M]
        tl.store(o_part_ptr + part[:, None] * DC + dc[None, :], o, mask=row_ok[:, None])
        tl.store(lse_part_ptr + part, lse, mask=row_ok)
