"""The DeepseekMoE Triton kernels with FP8 experts (contract version 2) against float64 on the dequantized experts,
on the CPU under the Triton interpreter, or on a GPU.

Both code paths of experts.py run under the interpreter: weight-only dequantization (sm_80/86) in float32 and
float16, and FP8 x FP8 products with on-the-fly activation quantization (sm_89+) in float32, float16 and
bfloat16 (its dots take FP8 operands, which the interpreter computes right; bf16 dots it does not, so the
weight-only bf16 path is a GPU test). The interpreter's own float -> fp8 rounding is wrong (not nearest-even),
which is why the kernels round onto the e4m3 grid themselves: test_e4m3_helpers_match_torch proves that rounding
and the integer decoding bit for bit against torch. Tolerances: the per-element bound of fp8_moe_reference.py,
derived from the kernels' roundings; the tests also check the bound is tight enough to mean something.
"""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

from mla_export.common import contract
from mla_export.kernels.moe import experts as moe_experts, plan as moe_plan
from mla_export.model.moe import RoutingRule, route, router_logits

from fp8_moe_reference import check_within, dequantize64, expected_and_bound, quantize_blocks
from helpers import ROUTING_MARGIN, routing_margin
from test_moe import RULES, random_layer

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
RAGGED = (200, 150)  # d = 128 + 72, I = 150: partial last blocks; the up rows (150..299) straddle scale rows
SMALL = (24, 10)  # one partial block each way
PATHS = {"weight-only": False, "native": True}
INTERPRETER_CASES = [("weight-only", torch.float32), ("weight-only", torch.float16), ("native", torch.float32),
                     ("native", torch.float16), ("native", torch.bfloat16)]


def api():
    from mla_export.kernels.moe import api as moe_api

    return moe_api


def fp8_layer(rule: RoutingRule, dims=SMALL, seed=0):
    """(router, bias, (gate_up q, gate_up scale, down q, down scale)) of a random layer quantized to FP8."""
    router, bias, gate_up, down = random_layer(rule, d=dims[0], inter=dims[1], seed=seed)
    return router, bias, quantize_blocks(gate_up) + quantize_blocks(down)


def run_and_check(rule, x, router, bias, experts, dtype, native, emulate=False, **overrides):
    """The kernels' routed output for FP8 experts within the float64 bound (fp8_moe_reference.expected_and_bound;
    `emulate`: against DeepSeek's act_quant numerics); returns (output, worst error / bound)."""
    gq, gs, dq, ds = experts
    xs = x.to(dtype)
    assert routing_margin(router_logits(xs.float(), router), rule, bias) > ROUTING_MARGIN  # same experts as ref
    args = [t.to(DEVICE) for t in (xs, router, bias, gq, dq)]
    out = torch.full_like(args[0], float("nan"))  # every element must be written
    got = api().deepseek_moe_triton(*args, rule, gs.to(DEVICE), ds.to(DEVICE), out=out, native_fp8=native,
                                    **overrides)
    assert got is out
    want, bound = expected_and_bound(xs, router, bias, dequantize64(gq, gs), dequantize64(dq, ds), rule, dtype, native,
                                     emulate)
    return got.cpu(), check_within(got, want, bound, f"{rule} {dtype} native={native} emulate={emulate}")


def tokens_of(count: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(count, d, generator=torch.Generator().manual_seed(seed))  # [T, d]


@triton.jit
def _e4m3_probe(bits_ptr, decoded_ptr, values_ptr, rounded_ptr, N: tl.constexpr):
    i = tl.arange(0, N)
    tl.store(decoded_ptr + i, moe_experts.e4m3_to_float16(tl.load(bits_ptr + i)).to(tl.float32))
    rounded = moe_experts.round_to_e4m3(tl.load(values_ptr + i)).to(tl.float8e4nv)
    tl.store(rounded_ptr + i, rounded.to(tl.uint8, bitcast=True))


def test_e4m3_helpers_match_torch():
    """The integer decoding of all 256 codes and the rounding onto the e4m3 grid (random values over the whole
    range, every midpoint between neighbours, signed zeros) equal torch's float8_e4m3fn, bit for bit: both are
    exact definitions (decoding) or round to nearest even (rounding), so any difference is a bug."""
    n = 4096
    bits = torch.arange(n, dtype=torch.int64).remainder(256).to(torch.uint8)
    grid = torch.arange(127, dtype=torch.uint8).view(torch.float8_e4m3fn).double()  # 0 .. 448, ascending
    midpoints = ((grid[1:] + grid[:-1]) / 2).float()
    g = torch.Generator().manual_seed(0)
    values = torch.cat([midpoints, -midpoints, torch.tensor([0.0, -0.0, 448.0, -448.0, 2.0 ** -10, 2.0 ** -9 * 3]),
                        torch.randn(n, generator=g) * 100, torch.randn(n, generator=g) * 0.01,
                        torch.randn(n, generator=g) * 1e-3])[:n].clamp(-448, 448)
    decoded, rounded = torch.empty(n), torch.empty(n, dtype=torch.uint8)
    _e4m3_probe[(1,)](*(t.to(DEVICE) for t in (bits, decoded, values, rounded)), N=n)
    want = bits.view(torch.float8_e4m3fn).float()
    nan = want.isnan()
    assert torch.equal(decoded.cpu().isnan(), nan)
    assert torch.equal(decoded.cpu()[~nan].view(torch.int32), want[~nan].view(torch.int32))
    assert torch.equal(rounded.cpu(), values.to(torch.float8_e4m3fn).view(torch.uint8))


def test_reference_dequantization_is_the_checkpoint_convention():
    """dequantize64 (float64) equals the checkpoint reader's dequantize_fp8_blocks (float32) to float32 rounding,
    and quantize_blocks reproduces a weight to e4m3's relative precision."""
    from mla_export.weights.checkpoint import dequantize_fp8_blocks

    w = torch.randn(2, 300, 200, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    q, s = quantize_blocks(w)
    assert s.shape == (2, 3, 2)
    ours = dequantize64(q, s)
    for e in range(2):
        torch.testing.assert_close(dequantize_fp8_blocks(q[e], s[e]).double(), ours[e], rtol=2 ** -23, atol=0)
    assert ((ours - w).abs() <= 2 ** -4 * w.abs() + 2 ** -10 * s.double().max()).all()


@pytest.mark.parametrize("path, dtype", INTERPRETER_CASES, ids=str)
@pytest.mark.parametrize("name", list(RULES))
def test_every_routing_rule_matches_float64(name, path, dtype):
    rule = RULES[name]
    router, bias, experts = fp8_layer(rule)
    run_and_check(rule, tokens_of(29, SMALL[0], 2), router, bias, experts, dtype, PATHS[path])


@pytest.mark.parametrize("path, dtype", INTERPRETER_CASES, ids=str)
@pytest.mark.parametrize("tokens, config, chunk", [
    (1, None, None),  # decode
    (100, None, None),  # 400 slots: the prefill config
    (9, "prefill", None),
    (23, "decode", 10),  # three chunks, the last of 3 tokens
])
def test_ragged_blocks_configs_and_chunks(tokens, config, chunk, path, dtype):
    """d = 200 and I = 150: partial last blocks in both weights, up rows straddling scale rows, K-tiles past d."""
    rule = RULES["v3-noaux-tc"]
    dims = moe_plan.MoeDims(tokens, *RAGGED, 16, rule.top_k, rule.n_group, "float16", fp8_experts=1)
    plan = moe_plan.make_plan(dims, chunk_tokens=chunk, config=config)
    assert plan.full.config.fp8 and plan.full.config.block_k == contract.FP8_BLOCK
    if config is None and chunk is None:
        assert plan.full.config.name == ("decode" if tokens == 1 else "prefill")
    router, bias, experts = fp8_layer(rule, RAGGED, seed=1)
    run_and_check(rule, tokens_of(tokens, RAGGED[0], 3), router, bias, experts, dtype, PATHS[path],
                  chunk_tokens=chunk, config=config)


@pytest.mark.parametrize("path, dtype", INTERPRETER_CASES[1:4], ids=str)
def test_zero_and_tiny_scales_and_a_zero_token(path, dtype):
    """Blocks with scale 0 (their expert's gate_up then yields 0 and down reads all-zero activation rows), scales
    of 1e-30 and a float32 subnormal (1e-40), and a token that is all zeros (activation amax 0)."""
    rule = RULES["v3-noaux-tc"]
    router, bias, (gq, gs, dq, ds) = fp8_layer(rule, RAGGED, seed=2)
    gs[0::3] = 0.0  # experts 0, 3, 6, ...: every gate_up block 0
    gs[1, :, 1] = 1e-30
    ds[1, 0] = 1e-40
    ds[2] = 0.0
    x = tokens_of(12, RAGGED[0], 4)
    x[5] = 0.0
    got, _ = run_and_check(rule, x, router, bias, (gq, gs, dq, ds), dtype, PATHS[path])
    _, experts = route(router_logits(x.to(dtype).float(), router), rule, bias)
    assert (experts % 3 == 0).any() and (experts == 1).any()  # the zeroed and the tiny experts were used


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("config", ["decode", "prefill"])
def test_unrouted_experts_are_never_read(config, path):
    """NaN scales and NaN weight bytes (0x7F) in every expert no token routes to change nothing."""
    rule = RoutingRule(8, 1, scoring=contract.MOE_SCORING_SOFTMAX)
    router, bias, (gq, gs, dq, ds) = fp8_layer(rule, RAGGED, seed=3)
    router = torch.zeros_like(router)
    router[3] = 50.0  # every token's logits favour expert 3
    x = torch.rand(70, RAGGED[0], generator=torch.Generator().manual_seed(4)) + 0.1  # [70, d]: 70 slots > BLOCK_M
    others = torch.arange(8) != 3
    for q, s in ((gq, gs), (dq, ds)):
        q.view(torch.uint8)[others] = 0x7F
        s[others] = float("nan")
    run_and_check(rule, x, router, bias, (gq, gs, dq, ds), torch.float16, PATHS[path], config=config)


def test_native_path_quantizes_and_weight_only_does_not():
    """The two paths differ by the activation quantization: weight-only lies within float16 rounding of float64,
    native within its larger bound but measurably off (so the switch really changes the computation)."""
    rule = RULES["v2-greedy"]
    router, bias, experts = fp8_layer(rule, RAGGED, seed=5)
    x = tokens_of(7, RAGGED[0], 6)
    outputs = {}
    for path, native in PATHS.items():
        outputs[path], _ = run_and_check(rule, x, router, bias, experts, torch.float32, native)
    gq, gs, dq, ds = experts
    want, _ = expected_and_bound(x, router, bias, dequantize64(gq, gs), dequantize64(dq, ds), rule, torch.float32,
                                 False)
    scale = want.abs().max()
    assert (outputs["weight-only"].double() - want).abs().max() < 1e-5 * scale
    assert (outputs["native"].double() - want).abs().max() > 1e-3 * scale


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name, dims, tokens", [("v3-noaux-tc", RAGGED, 30), ("kimi-one-group", RAGGED, 3),
                                                ("v2-greedy", SMALL, 40)])
def test_native_path_is_deepseeks_act_quant_to_float32(name, dims, tokens, dtype):
    """The tight check of the native path: against float64 with DeepSeek's act_quant applied to both products'
    inputs, within a bound of float32 arithmetic and T roundings (no quantization term left)."""
    rule = RULES[name]
    router, bias, experts = fp8_layer(rule, dims, seed=8)
    _, worst = run_and_check(rule, tokens_of(tokens, dims[0], 9), router, bias, experts, dtype, True, emulate=True)
    gq, gs, dq, ds = experts
    x = tokens_of(tokens, dims[0], 9).to(dtype)
    want, tight = expected_and_bound(x, router, bias, dequantize64(gq, gs), dequantize64(dq, ds), rule, dtype, True,
                                     emulate=True)
    _, loose = expected_and_bound(x, router, bias, dequantize64(gq, gs), dequantize64(dq, ds), rule, dtype, True)
    assert float((tight / want.abs().max()).median()) < {torch.float32: 1e-2, torch.float16: 3e-2,
                                                          torch.bfloat16: 0.2}[dtype]  # the bound means something
    assert float((tight / loose).median()) < 0.1


def test_two_runs_are_bit_identical():
    rule = RULES["v2-group-limited"]
    router, bias, (gq, gs, dq, ds) = fp8_layer(rule, RAGGED)
    args = [t.to(DEVICE) for t in (tokens_of(40, RAGGED[0], 7).half(), router, bias, gq, dq)]
    for native in PATHS.values():
        first = api().deepseek_moe_triton(*args, rule, gs.to(DEVICE), ds.to(DEVICE), native_fp8=native)
        second = api().deepseek_moe_triton(*args, rule, gs.to(DEVICE), ds.to(DEVICE), native_fp8=native)
        assert torch.equal(first.view(torch.int16), second.view(torch.int16))  # exact: the same kernels twice


def test_fp8_arguments_are_checked_before_launch():
    rule = RULES["v2-greedy"]
    router, bias, (gq, gs, dq, ds) = fp8_layer(rule, RAGGED)
    x = tokens_of(4, RAGGED[0], 9)
    good = dict(hidden=x, router_weight=router, score_bias=bias, gate_up_proj=gq, down_proj=dq, rule=rule,
                gate_up_scale=gs, down_scale=ds)
    cases = [
        (dict(down_scale=None), ValueError, "pass both or neither"),
        (dict(gate_up_proj=gq.float()), TypeError, "gate_up_proj must be float8_e4m3fn"),
        (dict(gate_up_scale=gs.half()), TypeError, "gate_up_scale must be float32"),
        (dict(down_scale=ds[:, :1]), ValueError, r"down_scale must have shape \[16, 2, 2\]"),
        (dict(gate_up_scale=gs.transpose(1, 2).contiguous().transpose(1, 2)), ValueError, "contiguous"),
        (dict(gate_up_scale=None, down_scale=None), TypeError, "gate_up_proj must have hidden_states' dtype"),
    ]
    for change, error, message in cases:
        with pytest.raises(error, match=message):
            api().deepseek_moe_triton(**{**good, **change})


def test_plan_tables_hold_the_fp8_kernels():
    """FP8 dims choose the FP8 configs (BLOCK_K = the scale block: one activation group per K-tile), and the AOT
    table holds gate_up and down for both configs and both AOT dtypes, native on sm_89+ only."""
    for cfg in moe_plan.GEMM_CONFIGS:
        twin = moe_plan.config_named(cfg.name, not cfg.fp8)
        assert twin.block_m == cfg.block_m and twin.block_n == cfg.block_n
        if cfg.fp8:
            assert cfg.block_k == contract.FP8_BLOCK and moe_plan.GEMM_CONFIGS.index(cfg) >= moe_plan.FP8_CONFIG_OFFSET
    for tokens in (1, 4096):
        dims = moe_plan.MoeDims(tokens, 7168, 2048, 256, 8, 8, "bfloat16", fp8_experts=1)
        plan = moe_plan.make_plan(dims)
        assert plan.full.config.fp8
        indices = moe_plan.kernel_indices(plan, plan.full, "bfloat16")
        table = moe_plan.aot_kernel_table()
        for kind in ("gate_up", "down"):
            spec = table[indices[moe_plan.KERNEL_KINDS.index(kind)]]
            signature = {arch: moe_plan.kernel_signature(spec, arch) for arch in (80, 86, 89, 90, 100, 120)}
            assert {a: s[1]["NATIVE_FP8"] for a, s in signature.items()} == {80: 0, 86: 0, 89: 1, 90: 1, 100: 1,
                                                                                 120: 1}
            assert all(s[0]["w_ptr"] == "*u8" and s[1]["FP8"] == 1 for s in signature.values())


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("path", list(PATHS))
def test_both_paths_on_gpu(path, dtype):
    """On a GPU: weight-only bf16 (wrong under the interpreter), and native where the GPU has FP8 tensor cores."""
    if PATHS[path] and not api().device_native_fp8(torch.device("cuda")):
        pytest.skip("FP8 tensor cores need compute capability 8.9 or later")
    for name in ("v3-noaux-tc", "v2-group-limited"):
        rule = RULES[name]
        router, bias, experts = fp8_layer(rule, RAGGED)
        for tokens in (1, 64, 300):
            run_and_check(rule, tokens_of(tokens, RAGGED[0], tokens), router, bias, experts, dtype, PATHS[path])


@pytest.mark.gpu
def test_deepseek_v3_expert_sizes_on_gpu():
    """V3's expert sizes (d 7168, I 2048) in FP8 with 16 experts, top 4, bfloat16 activations, the device's own
    path: 1 and 300 tokens within the float64 bound on the first 4 tokens."""
    rule = RoutingRule(16, 4, scoring=contract.MOE_SCORING_SIGMOID, normalize=True)
    router, bias, experts = fp8_layer(rule, (7168, 2048), seed=7)
    native = api().device_native_fp8(torch.device("cuda"))
    gq, gs, dq, ds = experts
    for tokens in (1, 300):
        x = tokens_of(tokens, 7168, tokens).bfloat16()
        got = api().deepseek_moe_triton(*(t.cuda() for t in (x, router, bias, gq, dq)), rule, gs.cuda(), ds.cuda())
        want, bound = expected_and_bound(x[:4], router, bias, dequantize64(gq, gs), dequantize64(dq, ds), rule,
                                         torch.bfloat16, native)
        check_within(got[:4], want, bound, f"V3 sizes, {tokens} tokens, native={native}")
