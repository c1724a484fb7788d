"""DeepseekMoE kernels 5-7 of 7: the grouped expert GEMMs and the combine, one source for every dtype.

Rows are the padded slots of `moe_align.py` (row r holds slot sorted_slots[r] of local expert e = block_expert[r //
BLOCK_M], entry e of the weight stacks, which hold the call's E_local experts; padding rows hold the sentinel
num_slots and are masked). Program (b, n) handles the BLOCK_M rows of
block b, all of one expert, and BLOCK_N output columns; a block whose expert is -1 returns before any load.

Kernel 5, `moe_gate_up_kernel`, grid (max_blocks, cdiv(I, BLOCK_N)): for the rows' tokens x = hidden[s // K],
    gate = x W_gate[e]^T, up = x W_up[e]^T  (float32 accumulators, W_gate = gate_up_proj[e, :I],
    W_up = gate_up_proj[e, I:]), act[r] = silu(gate) * up  stored in T.
Kernel 6, `moe_down_kernel`, grid (max_blocks, cdiv(D, BLOCK_N)):
    y[s] = weight[s] * (act[r] W_down[e]^T)  (float32, stored in T at the slot's own row, token order)
Kernel 7, `moe_combine_kernel`, grid (T, cdiv(D, BLOCK_D)):
    out[t] = sum_{k=0}^{K-1} y[t*K + k]  in float32, k in increasing order, stored in T, over the slots whose
    expert is local (ids[t*K + k] - first_expert in [0, E_local)): the others have no row (moe_align.py), their
    y is never written and never read; a token with no local expert gets 0.

Deterministic: every output element is written by one program, each sum runs in a fixed order (the K loop of
the GEMMs, then k = 0..K-1 in the combine); no atomics.

Bytes (per chunk): each used block reads its expert's 2*I*D (gate_up) and D*I (down) weights once; blocks of
one expert are adjacent on the grid's fastest axis, so an expert with more than BLOCK_M slots re-reads the same
tiles from L2 at about the same time, not from DRAM. Experts with no slot own no block and are never read.
Decode (BLOCK_M 16, few slots per expert) is bound by those weight bytes; prefill (BLOCK_M 64) by the
2 * slots * 3 * I * D flops. Activations: slots * (D + 2 I + 2 D) elements written and read back.

FP8 experts (FP8 = 1; contract version 2): the weights are float8e4m3fn bytes (uint8 pointers) with float32
scales per 128 x 128 block, W[e, r, c] = q[e, r, c] * scale[e, r // 128, c // 128]. BLOCK_K divides 128 and
every K-tile starts at a multiple of BLOCK_K, so a tile's columns share one scale column; its rows may straddle
two scale rows (the up rows start at row I of gate_up_proj), so the scale is read per row: a [BLOCK_N] vector.
Each K-tile's product is scaled and added in float32:
    NATIVE_FP8 = 0 (sm_80/86, weight-only): the FP8 bytes decoded exactly to float16 with integer operations,
        cast to T (exact), product in T with float32 accumulation, times the rows' scales.
    NATIVE_FP8 = 1 (sm_89+): the activation tile quantized per [row, K-tile] (DeepSeek's act_quant with
        BLOCK_K = 128: scale = amax / 448, values rounded to nearest even onto the e4m3 grid), FP8 x FP8 product
        in float32, times the activation row scale and the weight row scale. Extra error per activation element:
        at most 2^-4 of its magnitude plus 2^-10 * amax / 448 (tests/fp8_bounds.py bounds the output with it).
FP8 weight bytes per used expert: 3 * I * D (half of bfloat16's), plus 12 * I * D / 128^2 of scales.
"""

from __future__ import annotations

import triton
import triton.language as tl


FP8_BLOCK = tl.constexpr(128)  # the weights' scale blocks (contract.FP8_BLOCK)
E4M3_MAX = tl.constexpr(448.0)  # largest finite float8e4m3fn (contract.FP8_MAX)
E4M3_MIN_NORMAL = tl.constexpr(0.015625)  # 2^-6; below it the e4m3 grid is uniform with step 2^-9
SCALE_FLOOR = tl.constexpr(1.1754944e-38)  # smallest normal float32: an all-zero row divides by it, not by 0


@triton.jit
def e4m3_to_float16(bits):
    """float8e4m3fn bytes (uint8, any shape) -> float16, exact: the e4m3 bits placed in a float16 (exponent bias 7
    vs 15: the value times 2^-8, subnormals included), then times 256. NaN (S.1111.111) stays NaN. Integer
    operations only: sm_80/86 have no FP8 conversion."""
    b = bits.to(tl.uint16)
    mag = b & 0x7F
    h = (mag << 7) | ((b & 0x80) << 8)
    h = tl.where(mag == 0x7F, h | 0x7C00, h)  # exponent all ones, mantissa non-zero: NaN
    return h.to(tl.float16, bitcast=True) * 256.0


@triton.jit
def round_to_e4m3(v):
    """float32 values in [-448, 448] rounded to nearest even onto the e4m3 grid (still float32). The conversion
    to float8e4nv that follows is then exact on every target, the interpreter included (whose own float -> fp8
    rounding is not round-to-nearest-even)."""
    bits = v.to(tl.uint32, bitcast=True)
    normal = (((bits + 0x7FFFF + ((bits >> 20) & 1)) >> 20) << 20).to(tl.float32, bitcast=True)  # 3 mantissa bits
    mag = tl.abs(v)
    sub = (mag + 16384.0) - 16384.0  # one rounding onto multiples of 2^-9 (the float32 step at 2^14)
    sub = tl.where((bits >> 31) != 0, -sub, sub)
    return tl.where(mag < E4M3_MIN_NORMAL, sub, normal)


@triton.jit
def fp8_operand(x, NATIVE_FP8: tl.constexpr):
    """The activation tile x [BLOCK_M, BLOCK_K] (T) as the product's left operand, and its row scales [BLOCK_M]
    float32: per-row FP8 quantization (scale = amax / 448) when NATIVE_FP8, else x itself and scales 1."""
    if NATIVE_FP8:
        xf = x.to(tl.float32)
        scale = tl.maximum(tl.max(tl.abs(xf), axis=1) / E4M3_MAX, SCALE_FLOOR)  # [BLOCK_M]
        v = tl.clamp(xf / scale[:, None], -E4M3_MAX, E4M3_MAX)
        operand = round_to_e4m3(v).to(tl.float8e4nv)
    else:
        operand = x
        scale = tl.full((x.shape[0],), 1.0, tl.float32)
    return operand, scale


@triton.jit
def fp8_tile_dot(acc, a, a_scale, w_bits, w_scale, NATIVE_FP8: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """acc [BLOCK_M, BLOCK_N] float32 + a @ dequantize(w)^T for one K-tile: a, a_scale from fp8_operand; w_bits
    [BLOCK_N, BLOCK_K] uint8 (e4m3 bytes), w_scale [BLOCK_N] float32, the rows' scales of this K-tile."""
    if NATIVE_FP8:
        part = tl.dot(a, tl.trans(w_bits.to(tl.float8e4nv, bitcast=True)))  # [BLOCK_M, BLOCK_N] float32
        acc += part * (a_scale[:, None] * w_scale[None, :])
    else:
        w = e4m3_to_float16(w_bits).to(a.dtype)  # [BLOCK_N, BLOCK_K] exact in float16, bfloat16, float32
        part = tl.dot(a, tl.trans(w), input_precision=INPUT_PRECISION)  # [BLOCK_M, BLOCK_N] float32
        acc += part * w_scale[None, :]
    return acc


@triton.jit
def moe_gate_up_kernel(
    hidden_ptr,  # [T, D] T
    w_ptr,  # [E, 2I, D] T: gate rows, then up rows (FP8: uint8, e4m3 bytes)
    scale_ptr,  # FP8: [E, cdiv(2I, 128), cdiv(D, 128)] float32 block scales; else unused
    sorted_ptr,  # [max_blocks * BLOCK_M] int32 slot per row
    block_expert_ptr,  # [max_blocks] int32, -1 for unused blocks
    act_ptr,  # [max_blocks * BLOCK_M, I] T
    num_slots,  # T * top_k, also the padding sentinel
    top_k,
    D,
    I,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,  # "ieee" for float32 inputs, else "tf32" (unused for 16-bit types)
    FP8: tl.constexpr,  # 1: FP8 weights with block scales
    NATIVE_FP8: tl.constexpr,  # FP8 only: 1 FP8 x FP8 products (sm_89+), 0 weight-only dequantization
):
    tl.static_assert(FP8 == 0 or FP8_BLOCK % BLOCK_K == 0, "an FP8 K-tile must lie in one scale block")
    block = tl.program_id(0)
    expert = tl.load(block_expert_ptr + block)
    if expert < 0:
        return
    rows = block * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    slots = tl.load(sorted_ptr + rows)  # [BLOCK_M]
    row_ok = slots < num_slots  # [BLOCK_M]
    tokens = tl.where(row_ok, slots // top_k, 0).to(tl.int64)  # [BLOCK_M]
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N]
    n_ok = n < I
    x_rows = hidden_ptr + tokens[:, None] * D  # [BLOCK_M, 1]
    gate_rows = w_ptr + expert.to(tl.int64) * 2 * I * D + n.to(tl.int64)[:, None] * D  # [BLOCK_N, 1]
    up_rows = gate_rows + I * D  # [BLOCK_N, 1]
    if FP8:
        scale_cols = tl.cdiv(D, FP8_BLOCK)
        scale_base = scale_ptr + expert.to(tl.int64) * tl.cdiv(2 * I, FP8_BLOCK) * scale_cols
        gate_scale_rows = scale_base + (n // FP8_BLOCK) * scale_cols  # [BLOCK_N] row n's scale row
        up_scale_rows = scale_base + ((I + n) // FP8_BLOCK) * scale_cols  # [BLOCK_N] row I + n's scale row
    acc_gate = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)  # [BLOCK_M, BLOCK_N]
    acc_up = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)  # [BLOCK_M, BLOCK_N]
    for k0 in range(0, D, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)  # [BLOCK_K]
        k_ok = k < D
        x = tl.load(x_rows + k[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)  # [BLOCK_M, BLOCK_K]
        w_mask = n_ok[:, None] & k_ok[None, :]
        gate_w = tl.load(gate_rows + k[None, :], mask=w_mask, other=0)  # [BLOCK_N, BLOCK_K]
        up_w = tl.load(up_rows + k[None, :], mask=w_mask, other=0)  # [BLOCK_N, BLOCK_K]
        if FP8:
            a, a_scale = fp8_operand(x, NATIVE_FP8)  # [BLOCK_M, BLOCK_K], [BLOCK_M]
            scale_col = k0 // FP8_BLOCK
            gate_scale = tl.load(gate_scale_rows + scale_col, mask=n_ok, other=0.0)  # [BLOCK_N]
            up_scale = tl.load(up_scale_rows + scale_col, mask=n_ok, other=0.0)  # [BLOCK_N]
            acc_gate = fp8_tile_dot(acc_gate, a, a_scale, gate_w, gate_scale, NATIVE_FP8, INPUT_PRECISION)
            acc_up = fp8_tile_dot(acc_up, a, a_scale, up_w, up_scale, NATIVE_FP8, INPUT_PRECISION)
        else:
            acc_gate = tl.dot(x, tl.trans(gate_w), acc=acc_gate, input_precision=INPUT_PRECISION)
            acc_up = tl.dot(x, tl.trans(up_w), acc=acc_up, input_precision=INPUT_PRECISION)
    act = acc_gate / (1.0 + tl.exp(-acc_gate)) * acc_up  # [BLOCK_M, BLOCK_N] silu(gate) * up
    tl.store(act_ptr + rows.to(tl.int64)[:, None] * I + n[None, :], act.to(act_ptr.dtype.element_ty),
             mask=row_ok[:, None] & n_ok[None, :])


@triton.jit
def moe_down_kernel(
    act_ptr,  # [max_blocks * BLOCK_M, I] T
    w_ptr,  # [E, D, I] T (FP8: uint8, e4m3 bytes)
    scale_ptr,  # FP8: [E, cdiv(D, 128), cdiv(I, 128)] float32 block scales; else unused
    sorted_ptr,  # [max_blocks * BLOCK_M] int32
    block_expert_ptr,  # [max_blocks] int32
    weights_ptr,  # [num_slots] float32 routing weight per slot
    y_ptr,  # [num_slots, D] T, slot order (token-major)
    num_slots,
    D,
    I,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    FP8: tl.constexpr,
    NATIVE_FP8: tl.constexpr,
):
    tl.static_assert(FP8 == 0 or FP8_BLOCK % BLOCK_K == 0, "an FP8 K-tile must lie in one scale block")
    block = tl.program_id(0)
    expert = tl.load(block_expert_ptr + block)
    if expert < 0:
        return
    rows = block * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    slots = tl.load(sorted_ptr + rows)  # [BLOCK_M]
    row_ok = slots < num_slots
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BLOCK_N] output columns
    n_ok = n < D
    a_rows = act_ptr + rows.to(tl.int64)[:, None] * I  # [BLOCK_M, 1]
    w_rows = w_ptr + expert.to(tl.int64) * D * I + n.to(tl.int64)[:, None] * I  # [BLOCK_N, 1]
    if FP8:
        scale_cols = tl.cdiv(I, FP8_BLOCK)
        scale_rows = scale_ptr + expert.to(tl.int64) * tl.cdiv(D, FP8_BLOCK) * scale_cols \
            + (n // FP8_BLOCK) * scale_cols  # [BLOCK_N]
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)  # [BLOCK_M, BLOCK_N]
    for k0 in range(0, I, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)  # [BLOCK_K]
        k_ok = k < I
        a = tl.load(a_rows + k[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)  # [BLOCK_M, BLOCK_K]
        w = tl.load(w_rows + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0)  # [BLOCK_N, BLOCK_K]
        if FP8:
            a_op, a_scale = fp8_operand(a, NATIVE_FP8)  # [BLOCK_M, BLOCK_K], [BLOCK_M]
            w_scale = tl.load(scale_rows + k0 // FP8_BLOCK, mask=n_ok, other=0.0)  # [BLOCK_N]
            acc = fp8_tile_dot(acc, a_op, a_scale, w, w_scale, NATIVE_FP8, INPUT_PRECISION)
        else:
            acc = tl.dot(a, tl.trans(w), acc=acc, input_precision=INPUT_PRECISION)
    weight = tl.load(weights_ptr + slots, mask=row_ok, other=0.0)  # [BLOCK_M] float32
    y = acc * weight[:, None]  # [BLOCK_M, BLOCK_N]
    safe_slots = tl.where(row_ok, slots, 0).to(tl.int64)
    tl.store(y_ptr + safe_slots[:, None] * D + n[None, :], y.to(y_ptr.dtype.element_ty),
             mask=row_ok[:, None] & n_ok[None, :])


@triton.jit
def moe_combine_kernel(
    y_ptr,  # [T * top_k, D] T, rows of local slots only
    ids_ptr,  # [T * top_k] int32 global expert of each slot
    out_ptr,  # [T, D] T
    top_k,
    D,
    first_expert,  # global id of local expert 0
    E_local,  # local experts
    BLOCK_D: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    n = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)  # [BLOCK_D]
    n_ok = n < D
    acc = tl.zeros([BLOCK_D], tl.float32)  # [BLOCK_D]
    for k in range(0, top_k):
        local = tl.load(ids_ptr + token * top_k + k) - first_expert + 0 * n  # [BLOCK_D] this slot's local expert
        here = n_ok & (local >= 0) & (local < E_local)  # [BLOCK_D]
        acc += tl.load(y_ptr + (token * top_k + k) * D + n, mask=here, other=0.0).to(tl.float32)
    tl.store(out_ptr + token * D + n, acc.to(out_ptr.dtype.element_ty), mask=n_ok)
