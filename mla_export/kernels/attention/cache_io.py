"""Where a cache row lives and how an FP8 cache row is coded: the Triton helpers the RoPE-append and the
attention kernels share (contract version 2, common/contract.py).

Addressing (`pool_rows`, page_size a run-time argument, so one image serves every page size): token
position p of sequence b is row b * Smax + p of the pool viewed as [P * rows, width] when page_size is 0
(contiguous, P = B), else row page * page_size + p % page_size with page = block_table[b, p // page_size].
A lane whose page id lies outside [0, num_pages) comes back masked off, so no kernel loads or stores outside
the pool, whatever the table holds; slots past the positions a call needs are never loaded (the caller's
mask covers them).

FP8 cache (`quantize_tiles`, `dequantize_tiles`): c_kv of one token in tiles of TILE values (TILE =
min(Dc, FP8_CACHE_TILE): Dc is a power of two, so a Dc below 128 is one partial tile); per tile
scale = 2^ceil(log2(max(amax / 448, FP8_CACHE_MIN_SCALE))) and code = e4m3(value / scale), round to
nearest even. The scale comes from the bits of amax (no division, no logarithm: exact at every binade edge
on every backend, the interpreter included), and the codes from integer operations (no FP8 type: the
same source compiles for sm_80/86); value read back = float(code) * scale, exact in float16/bfloat16.
"""

from __future__ import annotations

import math

import triton
import triton.language as tl

from ...common.contract import FP8_CACHE_MIN_SCALE, FP8_CACHE_TILE
from ..fp8.gemm import e4m3_bits_over_256, e4m3_code, round_to_e4m3

assert FP8_CACHE_MIN_SCALE > 0 and FP8_CACHE_TILE == 128
# The smallest scale exponent: 2^ceil(log2(FP8_CACHE_MIN_SCALE)) (-13 for 1e-4).
_MIN_SCALE_EXP = tl.constexpr(math.ceil(math.log2(FP8_CACHE_MIN_SCALE)))
_MANTISSA_1_75 = tl.constexpr(0x600000)  # float32 mantissa bits of 1.75 (448 = 1.75 * 2^8)


@triton.jit
def position_limit(Smax, max_pages, page_size):
    """Positions below this are in the cache: Smax (contiguous, page_size 0), or min(Smax, max_pages *
    page_size) (paged; Smax is then the rope table's row count)."""
    return tl.where(page_size > 0, tl.minimum(Smax, max_pages * page_size), Smax)


@triton.jit
def pool_rows(b, pos, ok, Smax, block_table_ptr, num_pages, max_pages, page_size):
    """(row, ok'): the int64 pool row of position `pos` (a vector) of sequence b, and `ok` narrowed to lanes
    whose page id is inside the pool [0, num_pages). page_size 0: page b of Smax rows (the table is not read);
    else page block_table[b, pos // page_size], row pos % page_size, looked up only where `ok`."""
    b64 = b.to(tl.int64)
    # Scalar conditions are broadcast before `&` (the interpreter mis-types scalar & vector masks).
    paged = (pos * 0 + page_size) > 0  # [N]
    rows_per_page = tl.where(page_size > 0, page_size, Smax)  # scalar
    slot = tl.where(ok & paged, pos // tl.maximum(page_size, 1), 0)  # [N]
    looked_up = tl.load(block_table_ptr + b64 * max_pages + slot, mask=ok & paged, other=-1)  # [N] int32
    page = tl.where(paged, looked_up, b + pos * 0)  # [N]
    inside = ok & (page >= 0) & (page < num_pages)
    return tl.where(inside, page, 0).to(tl.int64) * rows_per_page + (pos - slot * rows_per_page), inside


@triton.jit
def tile_scale_exponent(amax):
    """amax (float32 >= 0, any shape) -> e with 2^e = 2^ceil(log2(max(amax / 448, FP8_CACHE_MIN_SCALE))), int32:
    2^e >= amax / 448 exactly when 448 * 2^e >= amax, read from amax = m * 2^E: e = E - 8 (m <= 1.75) or E - 7."""
    bits = amax.to(tl.int32, bitcast=True)
    exponent = ((bits >> 23) & 0xFF) - 127
    above = ((bits & 0x7FFFFF) > _MANTISSA_1_75).to(tl.int32)
    return tl.maximum(exponent - 8 + above, _MIN_SCALE_EXP)


@triton.jit
def quantize_tiles(x):
    """x [NT, TILE] float32 (one token's c_kv) -> (codes [NT, TILE] uint8 e4m3, scales [NT] float32)."""
    e = tile_scale_exponent(tl.max(tl.abs(x), axis=1))  # [NT]
    scale = ((e + 127) << 23).to(tl.float32, bitcast=True)  # [NT] 2^e
    inverse = ((127 - e) << 23).to(tl.float32, bitcast=True)  # [NT] 2^-e (e in [-13, 121]: normal)
    y = x * inverse[:, None]  # [NT, TILE] exact, |y| <= 448
    sign = (y.to(tl.int32, bitcast=True) >> 24) & 0x80  # keeps -0.0 and negatives that round to zero
    codes = e4m3_code(round_to_e4m3(tl.abs(y))).to(tl.int32) | sign  # [NT, TILE]
    return codes.to(tl.uint8), scale


@triton.jit
def dequantize_tiles(codes, scales, BLOCK_N: tl.constexpr, DC: tl.constexpr, TILE: tl.constexpr):
    """codes [BLOCK_N, DC] uint8, scales [BLOCK_N, DC // TILE] float32 -> float(code) * scale [BLOCK_N, DC]."""
    values = e4m3_bits_over_256(codes).to(tl.float32)  # [BLOCK_N, DC] code / 256, exact
    if DC == TILE:
        return values * (tl.reshape(scales, [BLOCK_N]) * 256.0)[:, None]
    else:
        tiles = tl.reshape(values, [BLOCK_N, DC // TILE, TILE]) * (scales * 256.0)[:, :, None]
        return tl.reshape(tiles, [BLOCK_N, DC])
