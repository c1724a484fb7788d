"""Kernel 3 of 3: merge the split partials of `attention.py` by their log-sum-exp.

One program per (b, token, head) row: out = sum_j w_j o_j / sum_j w_j with w_j = 2^(lse_j - max lse).
Empty splits carry lse = -inf and o = 0, so their weight is exactly 0. Bytes moved: read
splits * (Dc + 1) * 4 and write Dc * elem per row.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def mla_combine_kernel(
    o_part_ptr,  # [B*S*H, num_splits, Dc] float32
    lse_part_ptr,  # [B*S*H, num_splits] float32 (base 2)
    out_ptr,  # [B*S*H, Dc] T
    num_splits,
    DC: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    dc = tl.arange(0, DC)  # [DC]
    lse_max = tl.full([], float("-inf"), tl.float32)  # scalar
    for j in range(0, num_splits):
        lse_max = tl.maximum(lse_max, tl.load(lse_part_ptr + row * num_splits + j))
    lse_max = tl.where(lse_max == float("-inf"), 0.0, lse_max)  # every split empty: output 0
    acc = tl.zeros([DC], tl.float32)  # [DC]
    weight_sum = tl.zeros([], tl.float32)  # scalar
    for j in range(0, num_splits):
        w = tl.exp2(tl.load(lse_part_ptr + row * num_splits + j) - lse_max)  # scalar, 0 for empty splits
        o = tl.load(o_part_ptr + (row * num_splits + j) * DC + dc)  # [DC]
        acc += w * o
        weight_sum += w
    out = acc / tl.where(weight_sum > 0.0, weight_sum, 1.0)  # [DC]
    tl.store(out_ptr + row * DC + dc, out.to(out_ptr.dtype.element_ty))
