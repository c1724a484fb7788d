"""The MoE layer in float64 against a plain per-token loop written apart from it, for every routing rule of
DeepSeek's code (V2 greedy, V2 group-limited, V3/Kimi noaux_tc), and the rule read from each preset."""

import math

import pytest
import torch

from mla_export.common import contract
from mla_export.model.hf_config import load_preset
from mla_export.model.model import MoeMlp
from mla_export.model.moe import RoutingRule, moe_reference, route, router_logits
from mla_export.weights.weights import init_random_weights

from helpers import ROUTING_MARGIN, routing_margin

SOFTMAX, SIGMOID = contract.MOE_SCORING_SOFTMAX, contract.MOE_SCORING_SIGMOID
MAX, TOP2 = contract.MOE_GROUP_SCORE_MAX, contract.MOE_GROUP_SCORE_TOP2_SUM

RULES = {
    "v2-greedy": RoutingRule(16, 6, scoring=SOFTMAX, weight_scale=1.0),
    "v2-greedy-normalized": RoutingRule(16, 3, scoring=SOFTMAX, normalize=True),
    "v2-group-limited": RoutingRule(16, 3, n_group=4, topk_group=2, scoring=SOFTMAX, group_score=MAX,
                                    weight_scale=16.0),
    "v3-noaux-tc": RoutingRule(16, 4, n_group=4, topk_group=2, scoring=SIGMOID, group_score=TOP2, use_bias=True,
                               normalize=True, weight_scale=2.5),
    "kimi-one-group": RoutingRule(16, 4, n_group=1, topk_group=1, scoring=SIGMOID, group_score=TOP2, use_bias=True,
                                  normalize=True, weight_scale=2.827),
    "one-expert-per-token": RoutingRule(8, 1, n_group=2, topk_group=1, scoring=SIGMOID, group_score=TOP2,
                                        use_bias=True, normalize=True, weight_scale=1.5),
}


def loop_route(logits_row: list[float], rule: RoutingRule, bias: list[float]) -> list[tuple[int, float]]:
    """One token's (expert, weight) pairs by the rule, with Python lists and sorts."""
    if rule.scoring == SIGMOID:
        scores = [1 / (1 + math.exp(-v)) for v in logits_row]
    else:
        top = max(logits_row)
        exps = [math.exp(v - top) for v in logits_row]
        scores = [e / sum(exps) for e in exps]
    choice = [s + (bias[e] if rule.use_bias else 0.0) for e, s in enumerate(scores)]
    allowed = set(range(rule.num_experts))
    if rule.topk_group < rule.n_group:
        size = rule.num_experts // rule.n_group
        group_scores = []
        for g in range(rule.n_group):
            members = sorted(choice[g * size:(g + 1) * size], reverse=True)
            group_scores.append(members[0] if rule.group_score == MAX else members[0] + members[1])
        kept = sorted(range(rule.n_group), key=lambda g: (-group_scores[g], g))[:rule.topk_group]
        allowed = {e for g in kept for e in range(g * size, (g + 1) * size)}
    experts = sorted(allowed, key=lambda e: (-choice[e], e))[:rule.top_k]
    weights = [scores[e] for e in experts]
    if rule.normalize:
        total = sum(weights) + 1e-20
        weights = [w / total for w in weights]
    return [(e, w * rule.weight_scale) for e, w in zip(experts, weights)]


def loop_moe(x, router_weight, bias, gate_up, down, rule):
    """The routed output token by token: sum over the token's experts of weight * SwiGLU expert."""
    inter = down.shape[-1]
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        logits = router_logits(x[t:t + 1], router_weight)[0].double().tolist()
        for expert, weight in loop_route(logits, rule, bias.double().tolist()):
            gu = gate_up[expert] @ x[t]  # [2I]
            out[t] += weight * (down[expert] @ (torch.nn.functional.silu(gu[:inter]) * gu[inter:]))
    return out


def random_layer(rule: RoutingRule, d=24, inter=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    router = torch.randn(rule.num_experts, d, generator=g)  # [E, d] float32
    bias = 0.1 * torch.randn(rule.num_experts, generator=g)  # [E]
    gate_up = torch.randn(rule.num_experts, 2 * inter, d, generator=g, dtype=torch.float64) / d ** 0.5
    down = torch.randn(rule.num_experts, d, inter, generator=g, dtype=torch.float64) / inter ** 0.5
    return router, bias, gate_up, down


@pytest.mark.parametrize("name", list(RULES))
@pytest.mark.parametrize("tokens", [1, 7, 64])
def test_layer_equals_per_token_loop_in_float64(name, tokens):
    rule = RULES[name]
    router, bias, gate_up, down = random_layer(rule)
    x = torch.randn(tokens, 24, generator=torch.Generator().manual_seed(tokens), dtype=torch.float64)
    got = moe_reference(x, router, bias, gate_up, down, rule)
    want = loop_moe(x, router, bias, gate_up, down, rule)
    # Routing runs in float32 (as in DeepSeek's code); the loop's weights are exact: 1e-6 of the weights' scale
    # covers their rounding. Every expert choice is the loop's (a wrong one would be off by O(1)): no choice of
    # these tokens is within rounding of a tie, so no CPU or thread count can flip one.
    assert routing_margin(router_logits(x, router), rule, bias) > ROUTING_MARGIN
    torch.testing.assert_close(got, want, atol=1e-6 * rule.weight_scale, rtol=1e-6)


def test_routing_weights_and_experts_match_the_loop():
    rule = RULES["v3-noaux-tc"]
    router, bias, _, _ = random_layer(rule)
    x = torch.randn(32, 24, generator=torch.Generator().manual_seed(5))
    weights, experts = route(router_logits(x, router), rule, bias)
    assert routing_margin(router_logits(x, router), rule, bias) > ROUTING_MARGIN  # so experts compare exactly
    for t in range(32):
        pairs = loop_route(router_logits(x[t:t + 1], router)[0].double().tolist(), rule, bias.double().tolist())
        assert experts[t].tolist() == [e for e, _ in pairs]
        assert weights[t].double().tolist() == pytest.approx([w for _, w in pairs], rel=1e-6)
        groups = {int(e) // rule.group_size for e in experts[t]}
        assert len(groups) <= rule.topk_group  # only kept groups' experts


def test_bias_picks_but_never_weighs():
    """noaux_tc: a large bias on one expert makes every token pick it, with its unbiased score as weight."""
    rule = RoutingRule(8, 2, scoring=SIGMOID, group_score=TOP2, use_bias=True, normalize=False)
    router, bias, _, _ = random_layer(rule)
    bias = torch.zeros(8)
    bias[5] = 10.0
    x = torch.randn(16, 24, generator=torch.Generator().manual_seed(1))
    logits = router_logits(x, router)
    weights, experts = route(logits, rule, bias)
    assert (experts[:, 0] == 5).all()
    torch.testing.assert_close(weights[:, 0], logits[:, 5].sigmoid())


def test_ties_go_to_the_lower_index():
    rule = RoutingRule(8, 3, n_group=4, topk_group=2, scoring=SIGMOID, group_score=TOP2, use_bias=True)
    logits = torch.zeros(2, 8)  # every score equal: groups 0 and 1, experts 0, 1, 2
    weights, experts = route(logits, rule, torch.zeros(8))
    assert experts.tolist() == [[0, 1, 2], [0, 1, 2]]
    assert torch.equal(weights, torch.full((2, 3), 0.5))  # exact: sigmoid(0) is 0.5, unnormalized


def test_empty_experts_and_all_tokens_on_one_expert():
    """Experts no token routes to are never read (NaN weights there change nothing); one expert taking every
    token is summed like any other."""
    rule = RoutingRule(8, 1, scoring=SOFTMAX)
    router, bias, gate_up, down = random_layer(rule)
    router = torch.zeros_like(router)
    router[3] = 50.0  # every token's logits favour expert 3
    x = torch.rand(10, 24, generator=torch.Generator().manual_seed(2), dtype=torch.float64) + 0.1
    gate_up[torch.arange(8) != 3] = float("nan")
    down[torch.arange(8) != 3] = float("nan")
    got = moe_reference(x, router, bias, gate_up, down, rule)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, loop_moe(x, router, bias, gate_up.nan_to_num(), down.nan_to_num(), rule),
                               atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("preset, expected", [
    ("deepseek-v2-lite", dict(num_experts=64, top_k=6, n_group=1, topk_group=1, scoring=SOFTMAX, use_bias=False,
                              normalize=False, weight_scale=1.0)),
    ("deepseek-v2", dict(num_experts=160, top_k=6, n_group=8, topk_group=3, scoring=SOFTMAX, group_score=MAX,
                         use_bias=False, normalize=False, weight_scale=16.0)),
    ("deepseek-v3", dict(num_experts=256, top_k=8, n_group=8, topk_group=4, scoring=SIGMOID, group_score=TOP2,
                         use_bias=True, normalize=True, weight_scale=2.5)),
    ("kimi-k2", dict(num_experts=384, top_k=8, n_group=1, topk_group=1, scoring=SIGMOID, group_score=TOP2,
                     use_bias=True, normalize=True, weight_scale=2.827)),
    ("tiny-moe", dict(num_experts=8, top_k=2, n_group=4, topk_group=2, scoring=SIGMOID, group_score=TOP2,
                      use_bias=True, normalize=True, weight_scale=2.5)),
])
def test_presets_route_by_deepseeks_rule(preset, expected):
    rule = RoutingRule.from_config(load_preset(preset))
    assert {k: getattr(rule, k) for k in expected} == expected


def test_v2_normalized_weights_are_not_scaled():
    """DeepSeek-V2's code normalizes *or* scales, never both (V3 does both)."""
    config = load_preset("deepseek-v2-lite")
    import dataclasses

    rule = RoutingRule.from_config(dataclasses.replace(config, norm_topk_prob=True, routed_scaling_factor=3.0))
    assert rule.normalize and rule.weight_scale == 1.0
    v3 = dataclasses.replace(load_preset("deepseek-v3"), routed_scaling_factor=3.0)
    assert RoutingRule.from_config(v3).weight_scale == 3.0 and RoutingRule.from_config(v3).normalize


def test_moe_mlp_adds_shared_experts_and_keeps_the_router_float32():
    config = load_preset("tiny-moe")
    mlp = MoeMlp(config)
    init_random_weights(mlp, 3)
    mlp = mlp.double()
    assert mlp.gate.weight.dtype == torch.float32 and mlp.experts.gate_up_proj.dtype == torch.float64
    x = torch.randn(2, 5, config.hidden_size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    routed = loop_moe(x.reshape(10, -1), mlp.gate.weight, mlp.gate.e_score_correction_bias,
                      mlp.experts.gate_up_proj, mlp.experts.down_proj, mlp.rule).reshape(2, 5, -1)
    torch.testing.assert_close(mlp(x), routed + mlp.shared_experts(x), atol=1e-6, rtol=1e-6)
