"""The DeepseekMoE Triton kernels against the float64 per-token loop of tests/test_moe.py: on the CPU under the
Triton interpreter (float16, float32), or on a GPU.

Without CUDA, conftest.py sets TRITON_INTERPRET=1 before triton is imported, so the kernels' own source runs
on CPU tensors. bf16 `tl.dot` is wrong under the interpreter, so the bf16 checks and the real-size runs are GPU
tests (`@pytest.mark.gpu`, skipped without CUDA).

Checked: routing (experts equal to `moe.route`'s, ties included; weights to float32 rounding) for every
routing variant; the alignment's definition (moe_align.py) on random, one-expert and empty-expert routings;
the routed output against float64 for one token, many tokens, both GEMM configs, several chunks, experts with
no token (their weights NaN: never read), all tokens on one expert; two runs bit-identical.
"""

from __future__ import annotations

import pytest
import torch

from mla_export.common import contract
from mla_export.run.compare import compare, tolerance_for
from mla_export.kernels.moe import plan as moe_plan
from mla_export.model.moe import RoutingRule, route, router_logits

from helpers import ROUTING_MARGIN, routing_margin
from test_moe import RULES, loop_moe, random_layer

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
D, INTER = 24, 10  # test_moe.random_layer's dims: neither a multiple of any block size
INTERPRETER_DTYPES = [torch.float32, torch.float16]


@pytest.fixture(scope="module", autouse=True)
def _kernels_can_run():
    if not ON_GPU:
        from mla_export.kernels.moe.api import interpreting

        assert interpreting(), "TRITON_INTERPRET=1 must be set before triton is imported (tests/conftest.py does)"


def api():
    from mla_export.kernels.moe import api as moe_api

    return moe_api


def tokens_of(count: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(count, D, generator=torch.Generator().manual_seed(seed)).to(dtype)  # [T, d]


def run_and_check(rule: RoutingRule, x, router, bias, gate_up, down, dtype, **overrides):
    """The kernels' routed output in `dtype` against the float64 loop on the same (rounded) weights."""
    xs, gu, dn = x.to(dtype), gate_up.to(dtype), down.to(dtype)
    args = [t.to(DEVICE) for t in (xs, router, bias, gu, dn)]
    out = torch.full_like(args[0], float("nan"))  # every element must be written
    # The kernels route in their own float32 arithmetic: the loop picks the same experts only away from ties.
    assert routing_margin(router_logits(xs.float(), router), rule, bias) > ROUTING_MARGIN
    got = api().deepseek_moe_triton(*args, rule, out=out, **overrides)
    assert got is out
    want = loop_moe(xs.double(), router, bias, gu.double().nan_to_num(), dn.double().nan_to_num(), rule)
    atol, rtol = tolerance_for(str(dtype).removeprefix("torch."))
    result = compare("routed_output", got.cpu(), want, atol * rule.weight_scale, rtol)
    assert result.passed, result
    return got.cpu(), result


@pytest.mark.parametrize("name", list(RULES))
def test_routing_equals_moe_route(name):
    rule = RULES[name]
    router, bias, _, _ = random_layer(rule)
    x = tokens_of(37, 1)
    weights, experts = api().moe_route_triton(x.to(DEVICE), router.to(DEVICE), bias.to(DEVICE), rule)
    want_w, want_e = route(router_logits(x, router), rule, bias)
    assert routing_margin(router_logits(x, router), rule, bias) > ROUTING_MARGIN  # so experts compare exactly
    assert torch.equal(experts.cpu().long(), want_e)
    torch.testing.assert_close(weights.cpu(), want_w, rtol=2e-6, atol=1e-7 * rule.weight_scale)


@pytest.mark.parametrize("name", ["v2-greedy", "v2-group-limited", "v3-noaux-tc", "kimi-one-group"])
def test_routing_ties_go_to_the_lower_index(name):
    """Exact ties in scores and in group scores resolve as moe.route (and ONNX TopK): the lower index first."""
    rule = RULES[name]
    router, bias, _, _ = random_layer(rule)
    router[:] = 0.0  # every logit 0: every score equal
    router[7] = router[12] = 0.5 * torch.ones(D)  # two equal winners in two groups
    router[9] = router[12]  # and a third, equal, in another group
    bias = torch.zeros_like(bias)
    x = torch.cat([torch.ones(3, D), torch.zeros(2, D), -torch.ones(2, D)])  # [7, d]
    weights, experts = api().moe_route_triton(x.to(DEVICE), router.to(DEVICE), bias.to(DEVICE), rule)
    want_w, want_e = route(router_logits(x, router), rule, bias)
    assert torch.equal(experts.cpu().long(), want_e)  # exact: logits are sums of ±0.5, exact in any order
    torch.testing.assert_close(weights.cpu(), want_w, rtol=2e-6, atol=1e-7 * rule.weight_scale)
    assert want_e[3].tolist() == sorted(want_e[3].tolist())  # all equal: the lowest indices of the kept groups


def check_alignment(experts: torch.Tensor, num_experts: int, block_m: int):
    """sorted_slots / block_expert against their definition (moe_align.py)."""
    sorted_slots, block_expert = (t.cpu() for t in api().moe_align_triton(experts.to(DEVICE), num_experts, block_m))
    ids = experts.reshape(-1)
    slots = ids.numel()
    offset = 0
    for e in range(num_experts):
        mine = (ids == e).nonzero().reshape(-1).int()  # its slots, in slot order
        rows = -(-mine.numel() // block_m) * block_m
        assert torch.equal(sorted_slots[offset:offset + mine.numel()], mine), f"expert {e}"
        assert (sorted_slots[offset + mine.numel():offset + rows] == slots).all(), f"expert {e} padding"
        assert (block_expert[offset // block_m:(offset + rows) // block_m] == e).all(), f"expert {e} blocks"
        offset += rows
    assert (block_expert[offset // block_m:] == -1).all()  # the tail up to the grid's bound
    assert block_expert.numel() == moe_plan.max_blocks(slots, num_experts, block_m)


@pytest.mark.parametrize("block_m", [16, 64])
def test_alignment_random_routing(block_m):
    g = torch.Generator().manual_seed(0)
    experts = torch.stack([torch.randperm(24, generator=g)[:6] for _ in range(53)]).int()  # [53, 6]
    check_alignment(experts, 24, block_m)


def test_alignment_one_expert_and_empty_experts():
    check_alignment(torch.full((70, 1), 5, dtype=torch.int32), 8, 16)  # every slot on expert 5, 7 experts empty
    check_alignment(torch.tensor([[3, 0]], dtype=torch.int32), 512, 16)  # one token, 510 empty experts
    check_alignment(torch.tensor([[1, 2], [2, 1]], dtype=torch.int32), 3, 64)


@pytest.mark.parametrize("dtype", INTERPRETER_DTYPES, ids=str)
@pytest.mark.parametrize("name", list(RULES))
def test_every_routing_variant_matches_float64(name, dtype):
    rule = RULES[name]
    router, bias, gate_up, down = random_layer(rule)
    run_and_check(rule, tokens_of(29, 2), router, bias, gate_up, down, dtype)


@pytest.mark.parametrize("dtype", INTERPRETER_DTYPES, ids=str)
@pytest.mark.parametrize("tokens, config, chunk", [
    (1, None, None),  # one token (decode)
    (100, None, None),  # many tokens: 400 slots > 16 per expert: the prefill config
    (64, "decode", None),
    (9, "prefill", None),
    (23, None, 5),  # five chunks, the last of 3 tokens
])
def test_token_counts_configs_and_chunks(tokens, config, chunk, dtype):
    rule = RULES["v3-noaux-tc"]
    plan = moe_plan.make_plan(moe_plan.MoeDims(tokens, D, INTER, 16, rule.top_k, rule.n_group, "float16"),
                              chunk_tokens=chunk, config=config)
    if config is None and chunk is None:
        assert plan.full.config.name == ("decode" if tokens == 1 else "prefill")
    router, bias, gate_up, down = random_layer(rule)
    run_and_check(rule, tokens_of(tokens, 3), router, bias, gate_up, down, dtype, chunk_tokens=chunk, config=config)


@pytest.mark.parametrize("dtype", INTERPRETER_DTYPES, ids=str)
@pytest.mark.parametrize("config", ["decode", "prefill"])
def test_experts_with_no_token_are_never_read(config, dtype):
    """NaN in every weight of the experts no token routes to changes nothing; all tokens on one expert."""
    rule = RoutingRule(8, 1, scoring=contract.MOE_SCORING_SOFTMAX)
    router, bias, gate_up, down = random_layer(rule)
    router = torch.zeros_like(router)
    router[3] = 50.0  # every token's logits favour expert 3
    x = torch.rand(70, D, generator=torch.Generator().manual_seed(4)) + 0.1  # [70, d], 70 slots > BLOCK_M
    gate_up[torch.arange(8) != 3] = float("nan")
    down[torch.arange(8) != 3] = float("nan")
    got, _ = run_and_check(rule, x, router, bias, gate_up, down, dtype, config=config)
    assert torch.isfinite(got).all()


@pytest.mark.parametrize("dtype", INTERPRETER_DTYPES, ids=str)
def test_unrouted_experts_poisoned_under_grouped_routing(dtype):
    """V3's rule on 40 tokens leaves some experts without a token: poison exactly those."""
    rule = RULES["v3-noaux-tc"]
    router, bias, gate_up, down = random_layer(rule, seed=5)
    x = tokens_of(6, 6)
    _, experts = route(router_logits(x.to(dtype).float(), router), rule, bias)
    unused = torch.ones(rule.num_experts, dtype=torch.bool)
    unused[experts.unique()] = False
    assert unused.any()
    gate_up[unused] = float("nan")
    down[unused] = float("nan")
    got, _ = run_and_check(rule, x, router, bias, gate_up, down, dtype)
    assert torch.isfinite(got).all()


def test_two_runs_are_bit_identical():
    rule = RULES["v2-group-limited"]
    router, bias, gate_up, down = random_layer(rule)
    args = [t.to(DEVICE) for t in (tokens_of(40, 7, torch.float16), router, bias, gate_up.half(), down.half())]
    first = api().deepseek_moe_triton(*args, rule)
    second = api().deepseek_moe_triton(*args, rule)
    assert torch.equal(first.view(torch.int16), second.view(torch.int16))  # exact: the same kernels run twice


def test_leading_shape_and_empty_input():
    rule = RULES["v2-greedy"]
    router, bias, gate_up, down = random_layer(rule)
    x = tokens_of(6, 8).reshape(2, 3, D)
    got = api().deepseek_moe_triton(*(t.to(DEVICE) for t in (x, router, bias, gate_up.float(), down.float())), rule)
    assert got.shape == (2, 3, D)
    want = loop_moe(x.reshape(6, D).double(), router, bias, gate_up, down, rule).reshape(2, 3, D)
    torch.testing.assert_close(got.cpu().double(), want, atol=2e-4, rtol=2e-3)
    empty = torch.empty(0, 5, D, device=DEVICE)
    assert api().deepseek_moe_triton(empty, *(t.to(DEVICE) for t in (router, bias, gate_up.float(), down.float())),
                                     rule).shape == (0, 5, D)


def test_arguments_are_checked_before_launch():
    rule = RULES["v2-greedy"]
    router, bias, gate_up, down = (t.to(DEVICE) for t in random_layer(rule))
    x = tokens_of(4, 9).to(DEVICE)
    good = dict(hidden=x, router_weight=router, score_bias=bias, gate_up_proj=gate_up.float(), down_proj=down.float())
    cases = [
        (dict(gate_up_proj=gate_up.float()[:, :-1]), ValueError, r"gate_up_proj must be \[E_local, 2I, d=24\]"),
        (dict(down_proj=down.float()[..., :-1]), ValueError, "down_proj must have shape"),
        (dict(router_weight=router.half()), TypeError, "router_weight must be float32"),
        (dict(gate_up_proj=gate_up.half()), TypeError, "gate_up_proj must have hidden_states' dtype"),
        (dict(hidden=x.to(torch.int32)), TypeError, "float16, bfloat16 or float32"),
        (dict(down_proj=down.float().transpose(1, 2).contiguous().transpose(1, 2)), ValueError, "contiguous"),
    ]
    for change, error, message in cases:
        with pytest.raises(error, match=message):
            api().deepseek_moe_triton(*{**good, **change}.values(), rule)
    with pytest.raises(TypeError, match="RoutingRule"):
        api().deepseek_moe_triton(*good.values(), rule.attributes())


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name", list(RULES))
def test_bfloat16_and_every_rule_on_gpu(name, dtype):
    rule = RULES[name]
    router, bias, gate_up, down = random_layer(rule)
    for tokens in (1, 64, 300):
        run_and_check(rule, tokens_of(tokens, tokens), router, bias, gate_up, down, dtype)


def float64_rows(x, router, bias, gate_up, down, rule) -> torch.Tensor:
    """The routed output of a few tokens in float64, fetching only the experts they route to (real sizes)."""
    weights, experts = route(router_logits(x, router), rule, bias)  # [n, K]
    inter = down.shape[-1]
    out = torch.zeros(x.shape, dtype=torch.float64)
    for t in range(x.shape[0]):
        for w, e in zip(weights[t].tolist(), experts[t].tolist()):
            gu = gate_up[e].double().cpu() @ x[t].double().cpu()  # [2I]
            act = torch.nn.functional.silu(gu[:inter]) * gu[inter:]
            out[t] += w * (down[e].double().cpu() @ act)
    return out


@pytest.mark.gpu
@pytest.mark.parametrize("preset", ["deepseek-v2-lite", "deepseek-v3"])
def test_real_sizes_on_gpu(preset):
    """V2-Lite and V3 expert sizes in bfloat16 (V3's 256 experts: 16 random ones repeated, 22.5 GB, made once),
    1, 64 and 4097 tokens (two chunks): against float64 on 8 tokens, and bit-identical across two runs."""
    from mla_export.model.hf_config import load_preset
    from mla_export.kernels.moe.api import deepseek_moe_triton

    config = load_preset(preset)
    rule = RoutingRule.from_config(config)
    d, inter, experts = config.hidden_size, config.moe_intermediate_size, config.n_routed_experts
    g = torch.Generator().manual_seed(0)
    distinct = min(experts, 16)
    gate_up = (torch.randn(distinct, 2 * inter, d, generator=g) / d ** 0.5).bfloat16().cuda()
    down = (torch.randn(distinct, d, inter, generator=g) / inter ** 0.5).bfloat16().cuda()
    gate_up = gate_up.repeat(experts // distinct, 1, 1)
    down = down.repeat(experts // distinct, 1, 1)
    router = (torch.randn(experts, d, generator=g) / d ** 0.5).cuda()
    bias = (0.01 * torch.randn(experts, generator=g)).cuda()
    atol, rtol = tolerance_for("bfloat16")
    for tokens in (1, 64, 4097):
        x = torch.randn(tokens, d, generator=g).bfloat16().cuda()
        out = deepseek_moe_triton(x, router, bias, gate_up, down, rule)
        again = deepseek_moe_triton(x, router, bias, gate_up, down, rule)
        assert torch.equal(out.view(torch.int16), again.view(torch.int16)), tokens  # exact: the same run twice
        sample = slice(0, min(tokens, 8))
        want = float64_rows(x[sample].float().cpu(), router.cpu(), bias.cpu(), gate_up, down, rule)
        result = compare(f"routed_output ({tokens} tokens)", out[sample].cpu(), want, atol * rule.weight_scale, rtol)
        assert result.passed, result


def test_cuda_implementation_of_the_op_is_registered():
    import mla_export.model.moe  # noqa: F401  (registers the op and its CUDA implementation)

    assert torch._C._dispatch_has_kernel_for_dispatch_key("mla::deepseek_moe", "CUDA")


@pytest.mark.gpu
def test_moe_model_on_cuda_runs_the_kernels():
    """torch.ops.mla.deepseek_moe on CUDA tensors (the eager MoE layer on a GPU) runs the Triton kernels and
    equals the float64 reference."""
    from mla_export.model.model import MoeMlp
    from mla_export.model.hf_config import load_preset
    from mla_export.weights.weights import init_random_weights

    config = load_preset("tiny-moe")
    mlp = MoeMlp(config)
    init_random_weights(mlp, 1)
    x = torch.randn(3, 9, config.hidden_size, generator=torch.Generator().manual_seed(0))
    want = mlp.double()(x.double())
    got = mlp.to("cuda", torch.bfloat16)(x.to("cuda", torch.bfloat16))
    assert mlp.gate.weight.dtype == torch.float32 and mlp.gate.weight.is_cuda
    result = compare("MoE layer", got, want, *tolerance_for("bfloat16"))
    assert result.passed, result
