"""DeepseekMoE kernels 1-2 of 7: the router (logits, then the grouped top-k of the contract, mla_export/model/moe.py).

Kernel 1, `moe_router_logits_kernel`, grid (cdiv(T, BLOCK_T), cdiv(E, BLOCK_E)): logits = hidden @ router^T in
float32 (hidden converted from T, the router weight float32, `tl.dot` in IEEE float32 as torch's float32
matmul), into the workspace. Bytes: reads E*d*4 of router weight once per token block, T*d*elem of hidden
once per expert block.

Kernel 2, `moe_topk_kernel`, grid (cdiv(T, BLOCK_T),): per token, in float32, exactly `moe.route`:

    scores = sigmoid(logits) or softmax(logits)       scoring (runtime)
    choice = scores + bias                            use_bias (selection only)
    groups (when topk_group < n_group): group score = max, or the sum of the top 2 (group_score); the
            topk_group best groups kept; every expert of the others -inf
    experts = top_k best of choice; weights = their scores, / (sum + 1e-20) when normalize, * weight_scale

Tie rule (moe.py's, and ONNX TopK's): the higher value first; equal values go to the lower index, for groups
and experts alike. Every selection is an argmax whose ties resolve to the smallest index: the max m, then the
smallest index whose value equals m. Equal inputs give equal float32 values here, so exact ties in the
reference are exact ties here and resolve the same way. Masked experts and groups are -inf and stay
selectable after every finite one, in index order, as in the reference's stable sort.
"""

from __future__ import annotations

import triton
import triton.language as tl

SCORING_SIGMOID = tl.constexpr(1)  # contract.MOE_SCORING_SIGMOID (a test checks they agree)
GROUP_SCORE_TOP2_SUM = tl.constexpr(1)  # contract.MOE_GROUP_SCORE_TOP2_SUM


@triton.jit
def moe_router_logits_kernel(
    hidden_ptr,  # [T, D] T
    router_ptr,  # [E, D] float32
    logits_ptr,  # [T, E] float32 (workspace)
    T,  # tokens
    E,  # routed experts
    D,  # hidden size
    BLOCK_T: tl.constexpr,
    BLOCK_E: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)  # [BLOCK_T]
    e = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)  # [BLOCK_E]
    t_ok = t < T
    e_ok = e < E
    x_rows = hidden_ptr + t.to(tl.int64)[:, None] * D  # [BLOCK_T, 1]
    w_rows = router_ptr + e.to(tl.int64)[:, None] * D  # [BLOCK_E, 1]
    acc = tl.zeros([BLOCK_T, BLOCK_E], tl.float32)  # [BLOCK_T, BLOCK_E]
    for d0 in range(0, D, BLOCK_D):
        k = d0 + tl.arange(0, BLOCK_D)  # [BLOCK_D]
        k_ok = k < D
        x = tl.load(x_rows + k[None, :], mask=t_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
        w = tl.load(w_rows + k[None, :], mask=e_ok[:, None] & k_ok[None, :], other=0.0)  # [BLOCK_E, BLOCK_D]
        acc = tl.dot(x, tl.trans(w), acc=acc, input_precision="ieee")  # [BLOCK_T, BLOCK_E]
    tl.store(logits_ptr + t.to(tl.int64)[:, None] * E + e[None, :], acc, mask=t_ok[:, None] & e_ok[None, :])


@triton.jit
def moe_topk_kernel(
    logits_ptr,  # [T, E] float32
    bias_ptr,  # [E] float32, read when use_bias
    ids_ptr,  # [T, top_k] int32: experts, best first
    weights_ptr,  # [T, top_k] float32: their routing weights
    T,
    E,
    top_k,
    n_group,  # E % n_group == 0
    topk_group,
    scoring,  # 0 softmax, 1 sigmoid
    group_score,  # 0 max, 1 sum of the top 2
    use_bias,
    normalize,
    weight_scale,  # float32
    BLOCK_T: tl.constexpr,
    BLOCK_E: tl.constexpr,  # power of two >= E
    BLOCK_G: tl.constexpr,  # power of two >= n_group
    BLOCK_K: tl.constexpr,  # power of two >= top_k
):
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)  # [BLOCK_T]
    e = tl.arange(0, BLOCK_E)  # [BLOCK_E]
    t_ok = t < T
    valid = t_ok[:, None] & (e < E)[None, :]  # [BLOCK_T, BLOCK_E]
    neg_inf = float("-inf")
    logits = tl.load(logits_ptr + t.to(tl.int64)[:, None] * E + e[None, :], mask=valid, other=neg_inf)
    if scoring == SCORING_SIGMOID:
        scores = 1.0 / (1.0 + tl.exp(-logits))  # [BLOCK_T, BLOCK_E], 0 where not valid
    else:
        row_max = tl.max(logits, axis=1)  # [BLOCK_T]
        row_max = tl.where(t_ok, row_max, 0.0)
        p = tl.where(valid, tl.exp(logits - row_max[:, None]), 0.0)  # [BLOCK_T, BLOCK_E]
        total = tl.sum(p, axis=1)  # [BLOCK_T]
        scores = p / tl.where(total > 0.0, total, 1.0)[:, None]  # [BLOCK_T, BLOCK_E]
    choice = scores
    if use_bias != 0:
        bias = tl.load(bias_ptr + e, mask=e < E, other=0.0)  # [BLOCK_E]
        choice = scores + bias[None, :]  # [BLOCK_T, BLOCK_E]
    choice = tl.where(valid, choice, neg_inf)

    if topk_group < n_group:
        group = e // (E // n_group)  # [BLOCK_E] group of each expert
        g = tl.arange(0, BLOCK_G)  # [BLOCK_G]
        group_scores = tl.full([BLOCK_T, BLOCK_G], neg_inf, tl.float32)  # [BLOCK_T, BLOCK_G]
        for gi in range(0, n_group):
            member = valid & (group == gi)[None, :]  # [BLOCK_T, BLOCK_E]
            v = tl.where(member, choice, neg_inf)  # [BLOCK_T, BLOCK_E]
            best = tl.max(v, axis=1)  # [BLOCK_T]
            if group_score == GROUP_SCORE_TOP2_SUM:
                first = tl.min(tl.where(member & (v == best[:, None]), e[None, :], BLOCK_E), axis=1)  # [BLOCK_T]
                second = tl.max(tl.where(member & (e[None, :] != first[:, None]), choice, neg_inf), axis=1)
                best = best + second
            group_scores = tl.where(g[None, :] == gi, best[:, None], group_scores)
        free = (g[None, :] < n_group) & t_ok[:, None]  # [BLOCK_T, BLOCK_G] groups not yet kept
        kept = tl.zeros([BLOCK_T, BLOCK_E], tl.int1)  # [BLOCK_T, BLOCK_E] experts of kept groups
        for _ in range(0, topk_group):
            top = tl.max(tl.where(free, group_scores, neg_inf), axis=1)  # [BLOCK_T]
            pick = tl.min(tl.where(free & (group_scores == top[:, None]), g[None, :], BLOCK_G), axis=1)
            free = free & (g[None, :] != pick[:, None])
            kept = kept | (group[None, :] == pick[:, None])
        choice = tl.where(kept, choice, neg_inf)

    k = tl.arange(0, BLOCK_K)  # [BLOCK_K]
    ids = tl.zeros([BLOCK_T, BLOCK_K], tl.int32)  # [BLOCK_T, BLOCK_K]
    weights = tl.zeros([BLOCK_T, BLOCK_K], tl.float32)  # [BLOCK_T, BLOCK_K]
    free = valid  # [BLOCK_T, BLOCK_E] experts not yet picked
    for j in range(0, top_k):
        top = tl.max(tl.where(free, choice, neg_inf), axis=1)  # [BLOCK_T]
        pick = tl.min(tl.where(free & (choice == top[:, None]), e[None, :], BLOCK_E), axis=1)  # [BLOCK_T]
        hit = e[None, :] == pick[:, None]  # [BLOCK_T, BLOCK_E]
        free = free & ~hit
        w = tl.sum(tl.where(hit, scores, 0.0), axis=1)  # [BLOCK_T] the unbiased score
        ids = tl.where(k[None, :] == j, pick[:, None], ids)
        weights = tl.where(k[None, :] == j, w[:, None], weights)
    if normalize != 0:
        weights = weights / (tl.sum(weights, axis=1) + 1e-20)[:, None]
    weights = weights * weight_scale
    out = t.to(tl.int64)[:, None] * top_k + k[None, :]  # [BLOCK_T, BLOCK_K]
    keep = t_ok[:, None] & (k < top_k)[None, :]
    tl.store(ids_ptr + out, ids, mask=keep)
    tl.store(weights_ptr + out, weights, mask=keep)
