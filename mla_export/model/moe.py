"""DeepSeek's mixture-of-experts MLP: routing (`route`; its rule as data is `moe_rule.RoutingRule`) and the
`DeepseekMoE` op (reference and custom op). The eager module that holds the weights and calls the op is
`model.MoeMlp`.

Routing (`route`), following DeepSeek's own code (DeepSeek-V3 `inference/model.py` `Gate`, and the
`modeling_deepseek.py` shipped with the V2 and V3 checkpoints), for a token's router logits
`x @ W_gate^T` computed in float32:

    scores  = softmax(logits) or sigmoid(logits)                          scoring_func
    choice  = scores + e_score_correction_bias   (noaux_tc only: the bias picks, it never weighs)
    groups  = choice split into n_group groups of E/n_group experts; group score = max (V2's
              group_limited_greedy) or sum of the group's top 2 (V3/Kimi noaux_tc); the topk_group best
              groups are kept, every expert of the others masked with -inf
    experts = the top_k best of `choice`                                  num_experts_per_tok
    weights = scores of those experts, divided by their sum (+1e-20) when normalized, times weight_scale

Ties: the higher score wins; equal scores go to the lower index (groups and experts alike), which is
also ONNX TopK's rule, so the eager model, the ONNX function body and the kernels pick the same.

Where the references differ, DeepSeek's code decides (tests compare with transformers only where both
agree): masked groups are -inf before the final top-k (transformers' V2 router fills 0.0, which differs
only when fewer than top_k experts remain unmasked); V2 (greedy, group_limited_greedy) normalizes iff
`top_k > 1 and norm_topk_prob`, *else* scales by routed_scaling_factor (transformers' V2 router always
scales); V3 (noaux_tc) normalizes iff `top_k > 1 and norm_topk_prob`, then scales. Routing runs in
float32 whatever the model's dtype, as in both references.

The routed output of a token is `sum_j weights_j * down_j(silu(gate_j(x)) * up_j(x))`; the shared
experts (a SwiGLU of `n_shared_experts * moe_intermediate_size`) are added outside the op. A rank of a
`--tp N` export (contract version 3, DeepSeek-V3's `inference/model.py` MoE layout) holds the E_local
experts `first_expert .. first_expert + E_local - 1`, routes over all E alike, and sums only the token's
experts it holds; the ranks' outputs are summed by an AllReduce outside the op.
"""

from __future__ import annotations


import torch
from torch import nn

from ..common import contract
from ..common.moe_rule import RoutingRule
from .fp8 import dequantize_blocks

def top_indices(values: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest entries along the last axis, best first; equal values: lower index first."""
    return torch.sort(values, dim=-1, descending=True, stable=True).indices[..., :k]


def route(logits: torch.Tensor, rule: RoutingRule, bias: torch.Tensor | None = None
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Routing of `logits [T, E]` (float32): (weights [T, top_k] float32, experts [T, top_k] int64)."""
    tokens = logits.shape[0]
    if rule.scoring == contract.MOE_SCORING_SIGMOID:
        scores = logits.sigmoid()  # [T, E]
    else:
        scores = logits.softmax(dim=-1)  # [T, E]
    choice = scores + bias.to(scores.dtype) if rule.use_bias and bias is not None else scores  # [T, E]
    if rule.topk_group < rule.n_group:
        grouped = choice.view(tokens, rule.n_group, rule.group_size)  # [T, G, E/G]
        if rule.group_score == contract.MOE_GROUP_SCORE_TOP2_SUM:
            group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)  # [T, G]
        else:
            group_scores = grouped.amax(dim=-1)  # [T, G]
        kept = torch.zeros_like(group_scores, dtype=torch.bool)  # [T, G]
        kept.scatter_(1, top_indices(group_scores, rule.topk_group), True)
        choice = grouped.masked_fill(~kept[..., None], float("-inf")).view(tokens, -1)  # [T, E]
    experts = top_indices(choice, rule.top_k)  # [T, k]
    weights = scores.gather(1, experts)  # [T, k]
    if rule.normalize:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return weights * rule.weight_scale, experts


def router_logits(hidden: torch.Tensor, router_weight: torch.Tensor) -> torch.Tensor:
    """`hidden [T, d]` times the router `[E, d]`, in float32: `[T, E]`."""
    return hidden.to(torch.float32) @ router_weight.to(torch.float32).T


def moe_reference(hidden: torch.Tensor, router_weight: torch.Tensor, score_bias: torch.Tensor,
                  gate_up_proj: torch.Tensor, down_proj: torch.Tensor, rule: RoutingRule,
                  gate_up_scale: torch.Tensor | None = None, down_scale: torch.Tensor | None = None,
                  first_expert: int = 0) -> torch.Tensor:
    """The `DeepseekMoE` op computed plainly: the routed experts' output `[..., d]` in hidden's dtype.

    hidden [..., d] T; router_weight [E, d] float32; score_bias [E] float32 (used when rule.use_bias);
    gate_up_proj [E, 2I, d] T (gate rows, then up rows); down_proj [E, d, I] T. Only the experts some
    token routes to are read. Products in T, the weighted sum over a token's experts in float32
    (float64 for float64 inputs), added in expert order. With `gate_up_scale`/`down_scale` (contract
    version 2) the experts are FP8 blocks: each used expert is dequantized (`fp8.dequantize_blocks`) to
    float32 (float64 for float64 inputs) and its products run in that type, rounded to T. A rank's slice
    (contract version 3): the stacks (and scales) hold E_local = gate_up_proj.shape[0] experts, global ids
    first_expert + j; routing is over all rule.num_experts, the other experts contribute nothing.
    """
    if first_expert < 0 or first_expert + gate_up_proj.shape[0] > rule.num_experts:
        raise ValueError(f"experts {first_expert} .. {first_expert + gate_up_proj.shape[0] - 1} (first_expert, "
                         f"gate_up_proj's E_local) lie outside the num_experts={rule.num_experts} routed experts")
    shape = hidden.shape
    x = hidden.reshape(-1, shape[-1])  # [T, d]
    weights, experts = route(router_logits(x, router_weight), rule, score_bias)  # [T, k], [T, k]
    acc = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    out = torch.zeros(x.shape, dtype=acc, device=x.device)  # [T, d]
    inter = down_proj.shape[-1]

    def expert_weights(expert: int) -> tuple[torch.Tensor, torch.Tensor]:  # ([2I, d], [d, I]), one expert
        if gate_up_scale is None:
            return gate_up_proj[expert], down_proj[expert]
        return (dequantize_blocks(gate_up_proj[expert], gate_up_scale[expert], acc),
                dequantize_blocks(down_proj[expert], down_scale[expert], acc))

    held = range(first_expert, first_expert + gate_up_proj.shape[0])  # the global ids of the stacks' experts
    for expert in torch.unique(experts).tolist():  # ascending: a fixed order for every token's sum
        if expert not in held:
            continue  # another rank's expert
        tokens, slot = (experts == expert).nonzero(as_tuple=True)  # [n], [n]
        w_gate_up, w_down = expert_weights(expert - first_expert)
        gate_up = (x[tokens].to(w_gate_up.dtype) @ w_gate_up.T).to(hidden.dtype)  # [n, 2I]
        act = nn.functional.silu(gate_up[:, :inter]) * gate_up[:, inter:]  # [n, I]
        y = (act.to(w_down.dtype) @ w_down.T).to(hidden.dtype)  # [n, d]
        out.index_add_(0, tokens, y.to(acc) * weights[tokens, slot, None].to(acc))
    return out.to(hidden.dtype).reshape(shape)


@torch.library.custom_op("mla::deepseek_moe", mutates_args=())
def deepseek_moe(hidden: torch.Tensor, router_weight: torch.Tensor, score_bias: torch.Tensor,
                 gate_up_proj: torch.Tensor, down_proj: torch.Tensor, num_experts: int, top_k: int, n_group: int,
                 topk_group: int, scoring_func: int, group_score: int, use_bias: int, normalize: int,
                 weight_scale: float, gate_up_scale: torch.Tensor | None = None,
                 down_scale: torch.Tensor | None = None, first_expert: int = 0) -> torch.Tensor:
    """`DeepseekMoE` as a PyTorch op (the routed part of a DeepSeek MoE MLP); export turns it into the node.
    With the two scales, the experts are FP8 blocks (contract version 2); with first_expert, the stacks are a
    rank's slice of the experts from that global id (contract version 3)."""
    rule = RoutingRule(num_experts, top_k, n_group, topk_group, scoring_func, group_score, bool(use_bias),
                       bool(normalize), weight_scale)
    return moe_reference(hidden, router_weight, score_bias, gate_up_proj, down_proj, rule, gate_up_scale, down_scale,
                         first_expert)


@deepseek_moe.register_fake
def _deepseek_moe_fake(hidden, router_weight, score_bias, gate_up_proj, down_proj, num_experts, top_k, n_group,
                       topk_group, scoring_func, group_score, use_bias, normalize, weight_scale, gate_up_scale=None,
                       down_scale=None, first_expert=0):
    return torch.empty_like(hidden)


@deepseek_moe.register_kernel("cuda")
def _deepseek_moe_cuda(hidden, router_weight, score_bias, gate_up_proj, down_proj, num_experts, top_k, n_group,
                       topk_group, scoring_func, group_score, use_bias, normalize, weight_scale, gate_up_scale=None,
                       down_scale=None, first_expert=0):
    """The CUDA implementation: the Triton kernels (Triton is imported at the first call, not before)."""
    from ..kernels.moe.api import deepseek_moe_triton

    rule = RoutingRule(num_experts, top_k, n_group, topk_group, scoring_func, group_score, bool(use_bias),
                       bool(normalize), weight_scale)
    scales = {} if gate_up_scale is None else {"gate_up_scale": gate_up_scale.float().contiguous(),
                                               "down_scale": down_scale.float().contiguous()}
    return deepseek_moe_triton(hidden.contiguous(), router_weight.float().contiguous(),
                               score_bias.float().contiguous(), gate_up_proj.contiguous(), down_proj.contiguous(), rule,
                               **scales, first_expert=first_expert)
