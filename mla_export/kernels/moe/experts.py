"""DeepseekMoE kernels 5-7 of 7: the grouped expert GEMMs and the combine, one source for every dtype.

Rows are the padded slots of `moe_align.py` (row r holds slot sorted_slots[r] of expert block_expert[r //
BLOCK_M]; padding rows hold the sentinel num_slots and are masked). Program (b, n) handles the BLOCK_M rows of
block b, all of one expert, and BLOCK_N output columns; a block whose expert is -1 returns before any load.

Kernel 5, `moe_gate_up_kernel`, grid (max_blocks, cdiv(I, BLOCK_N)): for the rows' tokens x = hidden[s // K],
    gate = x W_gate[e]^T, up = x W_up[e]^T  (float32 accumulators, W_gate = gate_up_proj[e, :I],
    W_up = gate_up_proj[e, I:]), act[r] = silu(gate) * up  stored in T.
Kernel 6, `moe_down_kernel`, grid (max_blocks, cdiv(D, BLOCK_N)):
    y[s] = weight[s] * (act[r] W_down[e]^T)  (float32, stored in T at the slot's own row, token order)
Kernel 7, `moe_combine_kernel`, grid (T, cdiv(D, BLOCK_D)):
    out[t] = sum_{k=0}^{K-1} y[t*K + k]  in float32, k in increasing order, stored in T.

Deterministic: every output element is written by one program, each sum runs in a fixed order (the K loop of
the GEMMs, then k = 0..K-1 in the combine); no atomics.

Bytes (per chunk): each used block reads its expert's 2*I*D (gate_up) and D*I (down) weights once; blocks of
one expert are adjacent on the grid's fastest axis, so an expert with more than BLOCK_M slots re-reads the same
tiles from L2 at about the same time, not from DRAM. Experts with no slot own no block and are never read.
Decode (BLOCK_M 16, few slots per expert) is bound by those weight bytes; prefill (BLOCK_M 64) by the
2 * slots * 3 * I * D flops. Activations: slots * (D + 2 I + 2 D) elements written and read back.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def moe_gate_up_kernel(
    hidden_ptr,  # [T, D] T
    w_ptr,  # [E, 2I, D] T: gate rows, then up rows
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
):
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
    acc_gate = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)  # [BLOCK_M, BLOCK_N]
    acc_up = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)  # [BLOCK_M, BLOCK_N]
    for k0 in range(0, D, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)  # [BLOCK_K]
        k_ok = k < D
        x = tl.load(x_rows + k[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)  # [BLOCK_M, BLOCK_K]
        w_mask = n_ok[:, None] & k_ok[None, :]
        gate_w = tl.load(gate_rows + k[None, :], mask=w_mask, other=0.0)  # [BLOCK_N, BLOCK_K]
        up_w = tl.load(up_rows + k[None, :], mask=w_mask, other=0.0)  # [BLOCK_N, BLOCK_K]
        acc_gate = tl.dot(x, tl.trans(gate_w), acc=acc_gate, input_precision=INPUT_PRECISION)
        acc_up = tl.dot(x, tl.trans(up_w), acc=acc_up, input_precision=INPUT_PRECISION)
    act = acc_gate / (1.0 + tl.exp(-acc_gate)) * acc_up  # [BLOCK_M, BLOCK_N] silu(gate) * up
    tl.store(act_ptr + rows.to(tl.int64)[:, None] * I + n[None, :], act.to(act_ptr.dtype.element_ty),
             mask=row_ok[:, None] & n_ok[None, :])


@triton.jit
def moe_down_kernel(
    act_ptr,  # [max_blocks * BLOCK_M, I] T
    w_ptr,  # [E, D, I] T
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
):
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
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)  # [BLOCK_M, BLOCK_N]
    for k0 in range(0, I, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)  # [BLOCK_K]
        k_ok = k < I
        a = tl.load(a_rows + k[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)  # [BLOCK_M, BLOCK_K]
        w = tl.load(w_rows + k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)  # [BLOCK_N, BLOCK_K]
        acc = tl.dot(a, tl.trans(w), acc=acc, input_precision=INPUT_PRECISION)
    weight = tl.load(weights_ptr + slots, mask=row_ok, other=0.0)  # [BLOCK_M] float32
    y = acc * weight[:, None]  # [BLOCK_M, BLOCK_N]
    safe_slots = tl.where(row_ok, slots, 0).to(tl.int64)
    tl.store(y_ptr + safe_slots[:, None] * D + n[None, :], y.to(y_ptr.dtype.element_ty),
             mask=row_ok[:, None] & n_ok[None, :])


@triton.jit
def moe_combine_kernel(
    y_ptr,  # [T * top_k, D] T
    out_ptr,  # [T, D] T
    top_k,
    D,
    BLOCK_D: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    n = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)  # [BLOCK_D]
    n_ok = n < D
    acc = tl.zeros([BLOCK_D], tl.float32)  # [BLOCK_D]
    for k in range(0, top_k):
        acc += tl.load(y_ptr + (token * top_k + k) * D + n, mask=n_ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + token * D + n, acc.to(out_ptr.dtype.element_ty), mask=n_ok)
