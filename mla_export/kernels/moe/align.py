"""DeepseekMoE kernels 3-4 of 7: token-to-expert alignment on the device (no host sync, no atomics).

A slot is one (token, k) pair, s = t * top_k + k; `ids[s]` is its (global) expert. The call holds the E_local
experts first_expert .. first_expert + E_local - 1 (a `--tp` rank's slice, contract version 3; first_expert 0 and
E_local = num_experts on one device): local expert e is global first_expert + e, and a slot routed elsewhere is
dropped here (no row: it contributes nothing on this rank; the combine skips it too). The expert GEMMs need the
local slots grouped by local expert, each group padded to a multiple of BLOCK_M, and the local expert of every
BLOCK_M-row block:

    counts[e]        = #{s : ids[s] == first_expert + e}   for e < E_local
    padded[e]        = cdiv(counts[e], BLOCK_M) * BLOCK_M
    offset[e]        = sum_{e' < e} padded[e']
    sorted_slots[offset[e] + r] = the r-th slot (in slot order) routed to e, for r < counts[e];
                                  num_slots (a sentinel) for counts[e] <= r < padded[e]
    block_expert[b]  = e for b in [offset[e], offset[e] + padded[e]) / BLOCK_M; -1 from sum(padded) / BLOCK_M
                       to max_blocks (the grid the host launched, an upper bound; see moe_plan.max_blocks)

Everything is computed on the device from `ids`, so the launches never wait for the host (CUDA-graph safe),
and the result is a pure function of `ids`: slots keep their order within an expert, so two runs place every
slot at the same row. An expert with no slot owns no block: the GEMMs never read its weights.

Kernel 3, `moe_count_kernel`, grid (cdiv(E_local, BLOCK_E),): each program counts BLOCK_E local experts over
all slots.
Kernel 4, `moe_align_kernel`, grid (E_local,): program e computes offset[e] from the counts, writes its slots
with a prefix sum of matches per chunk, its padding and its blocks; program 0 also writes the -1 tail.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def moe_count_kernel(
    ids_ptr,  # [num_slots] int32
    counts_ptr,  # [E_local] int32, per local expert
    num_slots,
    E_local,  # local experts
    first_expert,  # global id of local expert 0
    BLOCK_E: tl.constexpr,
    CHUNK: tl.constexpr,
):
    e = tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)  # [BLOCK_E]
    acc = tl.zeros([BLOCK_E], tl.int32)  # [BLOCK_E]
    for s0 in range(0, num_slots, CHUNK):
        s = s0 + tl.arange(0, CHUNK)  # [CHUNK]
        ids = tl.load(ids_ptr + s, mask=s < num_slots, other=-1)  # [CHUNK]
        acc += tl.sum((ids[:, None] == (e + first_expert)[None, :]).to(tl.int32), axis=0)
    tl.store(counts_ptr + e, acc, mask=e < E_local)


@triton.jit
def moe_align_kernel(
    ids_ptr,  # [num_slots] int32
    counts_ptr,  # [E_local] int32
    sorted_ptr,  # [max_blocks * block_m] int32
    block_expert_ptr,  # [max_blocks] int32
    num_slots,
    E_local,  # local experts
    first_expert,  # global id of local expert 0
    block_m,
    max_blocks,
    CHUNK: tl.constexpr,
):
    expert = tl.program_id(0)
    offset = 0  # rows of the experts before this one
    total = 0  # rows of all experts
    for e0 in range(0, E_local, CHUNK):
        j = e0 + tl.arange(0, CHUNK)  # [CHUNK]
        c = tl.load(counts_ptr + j, mask=j < E_local, other=0)  # [CHUNK]
        padded = (c + block_m - 1) // block_m * block_m  # [CHUNK]
        offset += tl.sum(tl.where(j < expert, padded, 0), axis=0)
        total += tl.sum(padded, axis=0)
    count = tl.load(counts_ptr + expert)
    rows = (count + block_m - 1) // block_m * block_m

    if count > 0:
        placed = 0
        for s0 in range(0, num_slots, CHUNK):
            s = s0 + tl.arange(0, CHUNK)  # [CHUNK]
            ids = tl.load(ids_ptr + s, mask=s < num_slots, other=-1)  # [CHUNK]
            hit = ids == expert + first_expert  # [CHUNK]
            rank = tl.cumsum(hit.to(tl.int32), axis=0) - 1  # [CHUNK] position among this chunk's hits
            tl.store(sorted_ptr + offset + placed + rank, s, mask=hit)
            placed += tl.sum(hit.to(tl.int32), axis=0)
        for p0 in range(count, rows, CHUNK):
            p = p0 + tl.arange(0, CHUNK)  # [CHUNK]
            tl.store(sorted_ptr + offset + p, num_slots + 0 * p, mask=p < rows)
        first_block = offset // block_m
        for b0 in range(0, rows // block_m, CHUNK):
            b = b0 + tl.arange(0, CHUNK)  # [CHUNK]
            tl.store(block_expert_ptr + first_block + b, expert + 0 * b, mask=b < rows // block_m)
    if expert == 0:
        for b0 in range(total // block_m, max_blocks, CHUNK):
            b = b0 + tl.arange(0, CHUNK)  # [CHUNK]
            tl.store(block_expert_ptr + b, -1 + 0 * b, mask=b < max_blocks)
