"""BlockFp8MatMul kernels 1-3 of 3: activation quantization, the block-scaled FP8 GEMM and its split-K reduction,
one source for every dtype.

Kernel 1, `block_fp8_act_quant_kernel`, grid (cdiv(G*M, BLOCK_R), k_blocks), native path with the prefill config
only: xq [G*M, K] e4m3 codes and sx [G*M, k_blocks] float32 of every [row, 128 columns] block (below), once, so
that the GEMM's programs of one row tile do not each quantize it again (decode quantizes in the GEMM: M <= 16).
Kernel 2, `block_fp8_matmul_kernel`, grid (m_tiles * n_tiles, splits, G): program (t, s, g) computes the
[BLOCK_M, BLOCK_N] tile t of y[g] = x[g] @ dequantize(w[g])^T over K-blocks [s * kb_per_split, (s+1) *
kb_per_split). BLOCK_K is the scale block (128) and BLOCK_N divides it, so each K-step has one weight scale sw:
    NATIVE (sm_89+): xf = x tile in float32; per row, sx = max(amax(|xf|), MIN_AMAX) / 448 over the step's 128
        columns (DeepSeek's act_quant block); xq = e4m3(xf / sx) (round to nearest even, |.| <= 448), or both
        read from kernel 1 (X_FP8); acc += tl.dot(xq, wq^T) * sx * sw  (FP8 tensor cores, float32 sums)
    weight-only (sm_80/86): the weight bytes decoded in registers to fp16 holding q/256 exactly, cast to the
        activation dtype (exact: 3 mantissa bits) for tl.dot in that dtype; acc += dot * (sw * 256)
Every K-step's dot is scaled and added to the float32 accumulator (the scale is never folded into an FP8 or
16-bit operand, so zero, tiny and huge scales next to each other are exact). With one split the tile is stored in
T, else as float32 partials [splits, G, M, N]. Masked (ragged) rows, columns and K load as zeros.

Kernel 3, `block_fp8_reduce_kernel`, grid (cdiv(G*M*N, BLOCK),): y = sum over s = 0, 1, ... of the partials,
in float32 in that order, stored in T. Deterministic: no atomics, every sum in a fixed order.

Error of the native path against float64 on the dequantized weight (tests/test_fp8_kernels.py bounds it): the
activation rounding, |x - sx * xq| <= 2^-4 |x| (normal e4m3) or <= 2^-10 sx (subnormal), so per output
|err| <= sum_k (2^-4 |x_k| + 2^-10 sx_k) |w_k| plus float32 accumulation; the weight-only path has only the latter.
The e4m3 NaN codes (0x7F, 0xFF) decode as +-480 in the weight-only path; quantized weights never hold them.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .plan import FP8_MAX, MIN_AMAX

_E4M3_MAX = tl.constexpr(FP8_MAX)
_MIN_AMAX = tl.constexpr(MIN_AMAX)
_MIN_NORMAL = tl.constexpr(0.015625)  # 2^-6, the smallest normal e4m3
_ROUND_MAGIC = tl.constexpr(12582912.0)  # 1.5 * 2^23: (v + magic) - magic rounds v to an integer, nearest even


@triton.jit
def round_to_e4m3(v):
    """v (float32, |v| <= 448 after the clamp) rounded to the nearest e4m3 value, ties to even, in float32.
    Done in float32 so that the cast to float8e4nv that follows is exact on every backend."""
    v = tl.minimum(tl.maximum(v, -_E4M3_MAX), _E4M3_MAX)
    bits = v.to(tl.int32, bitcast=True)
    # Normal range: keep 3 of the 23 mantissa bits, round half to even (a carry moves into the exponent).
    bits = (bits + 0x7FFFF + ((bits >> 20) & 1)) & -1048576  # -1048576 == 0xFFF00000
    normal = bits.to(tl.float32, bitcast=True)
    # Subnormal range (|v| < 2^-6): multiples of 2^-9.
    sub = ((v * 512.0 + _ROUND_MAGIC) - _ROUND_MAGIC) * 0.001953125
    return tl.where(tl.abs(v) < _MIN_NORMAL, sub, normal)


@triton.jit
def _quantize_block(xf):
    """xf [R, BLOCK_K] float32 (masked columns 0) -> (e4m3 values in float32 [R, BLOCK_K], their scale sx [R])."""
    sx = tl.maximum(tl.max(tl.abs(xf), axis=1), _MIN_AMAX) / _E4M3_MAX  # [R]
    return round_to_e4m3(xf / sx[:, None]), sx


@triton.jit
def e4m3_code(v):
    """An e4m3 value held in float32 (|v| <= 448, as round_to_e4m3 returns) -> its uint8 code, integer operations
    only (no FP8 type needed: the kernel compiles for every arch)."""
    bits = v.to(tl.int32, bitcast=True)
    sign = (bits >> 24) & 0x80
    magnitude = tl.abs(v)
    exponent = ((bits >> 23) & 0xFF) - 120  # e4m3's exponent field (bias 7) of a normal value
    normal = (exponent << 3) | ((bits >> 20) & 7)
    subnormal = (magnitude * 512.0).to(tl.int32)  # exact: a multiple of 2^-9 below 2^-6
    return (sign | tl.where(magnitude < _MIN_NORMAL, subnormal, normal)).to(tl.uint8)


@triton.jit
def block_fp8_act_quant_kernel(
    x_ptr,  # [R, K] T  (R = G * M rows)
    xq_ptr,  # [R, K] uint8 e4m3 codes
    sx_ptr,  # [R, cdiv(K, 128)] float32
    R,
    K,
    BLOCK_R: tl.constexpr,
    BLOCK_K: tl.constexpr,  # the scale block, 128
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)  # [BLOCK_R]
    kb = tl.program_id(1)
    k = kb * BLOCK_K + tl.arange(0, BLOCK_K)  # [BLOCK_K]
    row_ok = rows < R
    mask = row_ok[:, None] & (k < K)[None, :]
    offsets = rows.to(tl.int64)[:, None] * K + k[None, :]  # [BLOCK_R, BLOCK_K]
    xf = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    xq, sx = _quantize_block(xf)
    tl.store(xq_ptr + offsets, e4m3_code(xq), mask=mask)
    tl.store(sx_ptr + rows.to(tl.int64) * tl.cdiv(K, BLOCK_K) + kb, sx, mask=row_ok)


@triton.jit
def e4m3_bits_over_256(b):
    """uint8 e4m3 codes -> fp16 holding exactly e4m3(b) / 256 (normals and subnormals alike: fp16's exponent field
    is e4m3's plus 8 below the same mantissa bits), with integer operations only (no FP8 type on sm_80/86)."""
    magnitude = (b & 0x7F).to(tl.int16) << 7
    sign = (b & 0x80).to(tl.int16) << 8
    return (magnitude | sign).to(tl.float16, bitcast=True)


@triton.jit
def block_fp8_matmul_kernel(
    x_ptr,  # [G, M, K] T, or (X_FP8) uint8 e4m3 codes of kernel 1
    w_ptr,  # [G, N, K] uint8: float8e4m3fn codes
    s_ptr,  # [G, cdiv(N, 128), cdiv(K, 128)] float32 scale_inv
    sx_ptr,  # (X_FP8) [G, M, cdiv(K, 128)] float32 activation scales of kernel 1; else unused
    y_ptr,  # [G, M, N] T (splits == 1)
    part_ptr,  # [splits, G, M, N] float32 (splits > 1)
    M,
    N,
    K,
    k_blocks_per_split,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,  # the scale block, 128
    GROUP_M: tl.constexpr,
    NATIVE: tl.constexpr,  # FP8 tl.dot (sm_89+), else weight-only
    X_FP8: tl.constexpr,  # NATIVE with x quantized by kernel 1 (prefill)
    UPCAST_DOT: tl.constexpr,  # weight-only: dot in float32 (the interpreter's bfloat16 runs only)
    INPUT_PRECISION: tl.constexpr,  # "ieee" for float32 activations (weight-only), else unused
):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    g = tl.program_id(2).to(tl.int64)
    groups = tl.num_programs(2)
    splits = tl.num_programs(1)
    m_tiles = tl.cdiv(M, BLOCK_M)
    n_tiles = tl.cdiv(N, BLOCK_N)
    # GROUP_M row tiles per column tile: the programs of a wave share weight tiles (from L2).
    per_group = GROUP_M * n_tiles
    first_m = (pid // per_group) * GROUP_M
    group_rows = tl.minimum(m_tiles - first_m, GROUP_M)
    m_tile = first_m + (pid % per_group) % group_rows
    n_tile = (pid % per_group) // group_rows
    rows = m_tile * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    cols = n_tile * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    row_ok = rows < M
    col_ok = cols < N
    k_blocks = tl.cdiv(K, BLOCK_K)
    n_blocks = tl.cdiv(N, BLOCK_K)
    kb_first = split * k_blocks_per_split
    kb_last = tl.minimum(kb_first + k_blocks_per_split, k_blocks)
    x_rows = x_ptr + g * M * K + rows.to(tl.int64)[:, None] * K  # [BLOCK_M, 1]
    w_rows = w_ptr + g * N * K + cols.to(tl.int64)[:, None] * K  # [BLOCK_N, 1]
    s_row = s_ptr + (g * n_blocks + (n_tile * BLOCK_N) // BLOCK_K) * k_blocks  # this tile's scale row
    sx_rows = sx_ptr + (g * M + rows.to(tl.int64)) * k_blocks  # [BLOCK_M] (X_FP8)
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)  # [BLOCK_M, BLOCK_N]
    for kb in range(kb_first, kb_last):
        k = kb * BLOCK_K + tl.arange(0, BLOCK_K)  # [BLOCK_K]
        k_ok = k < K
        x = tl.load(x_rows + k[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)  # [BLOCK_M, BLOCK_K] T
        wb = tl.load(w_rows + k[None, :], mask=col_ok[:, None] & k_ok[None, :], other=0)  # [BLOCK_N, BLOCK_K] u8
        sw = tl.load(s_row + kb)  # float32 scale of the weight block
        if NATIVE:
            if X_FP8:
                xq = x.to(tl.float8e4nv, bitcast=True)  # [BLOCK_M, BLOCK_K] kernel 1's codes
                sx = tl.load(sx_rows + kb, mask=row_ok, other=0.0)  # [BLOCK_M]
            else:
                xe, sx = _quantize_block(x.to(tl.float32))  # [BLOCK_M, BLOCK_K], [BLOCK_M]
                xq = xe.to(tl.float8e4nv)  # exact cast: xe holds e4m3 values
            wq = wb.to(tl.float8e4nv, bitcast=True)  # [BLOCK_N, BLOCK_K]
            part = tl.dot(xq, tl.trans(wq), out_dtype=tl.float32)  # [BLOCK_M, BLOCK_N]
            acc += part * (sx[:, None] * sw)
        else:
            wh = e4m3_bits_over_256(wb)  # [BLOCK_N, BLOCK_K] fp16, q / 256
            if UPCAST_DOT:
                part = tl.dot(x.to(tl.float32), tl.trans(wh.to(tl.float32)), input_precision="ieee")
            else:
                part = tl.dot(x, tl.trans(wh.to(x.dtype)), input_precision=INPUT_PRECISION)
            acc += part * (sw * 256.0)
    mask = row_ok[:, None] & col_ok[None, :]
    if splits == 1:
        y_rows = y_ptr + g * M * N + rows.to(tl.int64)[:, None] * N  # [BLOCK_M, 1]
        tl.store(y_rows + cols[None, :], acc.to(y_ptr.dtype.element_ty), mask=mask)
    else:
        p_rows = part_ptr + ((split * groups + g) * M + rows.to(tl.int64)[:, None]) * N  # [BLOCK_M, 1]
        tl.store(p_rows + cols[None, :], acc, mask=mask)


@triton.jit
def block_fp8_reduce_kernel(
    part_ptr,  # [splits, total] float32
    y_ptr,  # [total] T  (total = G * M * N)
    total,
    splits,
    BLOCK: tl.constexpr,
):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # [BLOCK]
    ok = offsets < total
    acc = tl.zeros([BLOCK], tl.float32)
    for s in range(0, splits):
        acc += tl.load(part_ptr + s * total.to(tl.int64) + offsets, mask=ok, other=0.0)
    tl.store(y_ptr + offsets, acc.to(y_ptr.dtype.element_ty), mask=ok)
