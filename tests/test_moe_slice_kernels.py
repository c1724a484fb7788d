"""The DeepseekMoE Triton kernels on a rank's slice of the routed experts (contract version 3, `--tp N`): the
stacks hold experts first_expert .. first_expert + E/N - 1, routing is over all E. On the CPU under the Triton
interpreter (float32, float16; FP8 experts on both paths), or on a GPU.

Checked against float64: each rank's output equals moe_reference with the same slice (itself checked against
the per-token loop on the whole layer with the other experts zeroed); tokens with no expert on the rank get
exactly 0; the N ranks' outputs add up to the single-device kernels' output, N = 2 and 4, with token counts
that leave a ragged last chunk; the alignment of a slice against its definition; slices outside E refused.
"""

from __future__ import annotations

import pytest
import torch

from mla_export.run.compare import compare, tolerance_for
from mla_export.model.moe import moe_reference, route, router_logits

from fp8_moe_reference import check_within, dequantize64, expected_and_bound, quantize_blocks
from helpers import ROUTING_MARGIN, routing_margin
from test_moe import RULES, loop_moe, random_layer

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
D, INTER = 24, 10  # random_layer's dims: no multiple of any block size


@pytest.fixture(scope="module", autouse=True)
def _kernels_can_run():
    if not ON_GPU:
        from mla_export.kernels.moe.api import interpreting

        assert interpreting(), "TRITON_INTERPRET=1 must be set before triton is imported (tests/conftest.py does)"


def triton_moe(*args, **kwargs):
    from mla_export.kernels.moe.api import deepseek_moe_triton

    return deepseek_moe_triton(*(t.to(DEVICE) if isinstance(t, torch.Tensor) else t for t in args), **kwargs).cpu()


def tokens_of(count: int, seed: int) -> torch.Tensor:
    return torch.randn(count, D, generator=torch.Generator().manual_seed(seed))  # [T, d]


def rank_slices(experts: int, ranks: int) -> list[slice]:
    """DeepSeek-V3's layout: rank r holds experts [r * E/N, (r + 1) * E/N)."""
    local = experts // ranks
    return [slice(r * local, (r + 1) * local) for r in range(ranks)]


def test_reference_slice_is_the_whole_layer_with_the_other_experts_zeroed():
    """moe_reference with first_expert (the spec the kernels are held to) against the per-token loop written apart
    from it, on the whole layer with every expert outside the slice zeroed (they then contribute exactly 0)."""
    rule = RULES["v3-noaux-tc"]
    router, bias, gate_up, down = random_layer(rule)
    x = tokens_of(23, 3).double()
    for part in rank_slices(rule.num_experts, 4):
        got = moe_reference(x, router, bias, gate_up[part], down[part], rule, first_expert=part.start)
        zeroed_gate_up, zeroed_down = torch.zeros_like(gate_up), torch.zeros_like(down)
        zeroed_gate_up[part], zeroed_down[part] = gate_up[part], down[part]
        torch.testing.assert_close(got, loop_moe(x, router, bias, zeroed_gate_up, zeroed_down, rule), rtol=1e-5,
                                   atol=1e-6)  # float32 routing weights
    for first, stacks in ((-1, (gate_up[:4], down[:4])), (13, (gate_up[:4], down[:4])),
                          (0, (torch.cat([gate_up, gate_up[:1]]), torch.cat([down, down[:1]])))):
        with pytest.raises(ValueError, match="outside the num_experts=16"):
            moe_reference(x, router, bias, *stacks, rule, first_expert=first)


@pytest.mark.parametrize("ranks", [2, 4])
@pytest.mark.parametrize("name", ["v3-noaux-tc", "v2-group-limited", "v2-greedy"])
def test_ranks_match_float64_and_add_up_to_the_whole_op(name, ranks):
    rule = RULES[name]
    router, bias, gate_up, down = random_layer(rule)
    dtype = torch.float32
    x = tokens_of(29, 7)  # with chunk_tokens 8: chunks of 8, 8, 8 and a ragged 5
    assert routing_margin(router_logits(x, router), rule, bias) > ROUTING_MARGIN  # kernels pick the reference's
    _, chosen = route(router_logits(x, router), rule, bias)  # [T, K] global expert ids
    gu, dn = gate_up.to(dtype), down.to(dtype)
    whole = triton_moe(x, router, bias, gu, dn, rule, chunk_tokens=8)
    total = torch.zeros(x.shape, dtype=torch.float64)
    atol, rtol = tolerance_for("float32")
    zero_rows = 0
    for part in rank_slices(rule.num_experts, ranks):
        got = triton_moe(x, router, bias, gu[part].contiguous(), dn[part].contiguous(), rule, chunk_tokens=8,
                         first_expert=part.start)
        want = moe_reference(x.double(), router, bias, gate_up[part], down[part], rule, first_expert=part.start)
        result = compare(f"rank {part}", got, want, atol * rule.weight_scale, rtol)
        assert result.passed, result
        none_here = ~((chosen >= part.start) & (chosen < part.stop)).any(dim=1)  # [T] no expert on this rank
        assert torch.equal(got[none_here], torch.zeros_like(got[none_here]))  # exact: nothing is summed
        zero_rows += int(none_here.sum())
        total += got.double()
    result = compare("sum of the ranks", total, whole.double(), 4 * atol * rule.weight_scale, rtol)
    assert result.passed, result
    assert zero_rows > 0 or ranks == 2  # with 4 experts a rank, some token has none of them


def test_float16_slice_and_decode_and_prefill_configs():
    rule = RULES["kimi-one-group"]
    router, bias, gate_up, down = random_layer(rule, seed=2)
    x = tokens_of(70, 11).half()
    part = slice(8, 12)  # E/4, neither the first nor the last rank
    atol, rtol = tolerance_for("float16")
    want = moe_reference(x.double(), router, bias, gate_up[part], down[part], rule, first_expert=part.start)
    for config in ("decode", "prefill"):
        got = triton_moe(x, router, bias, gate_up[part].half().contiguous(), down[part].half().contiguous(), rule,
                         config=config, first_expert=part.start)
        result = compare(f"float16 {config}", got, want, atol * rule.weight_scale, rtol)
        assert result.passed, result


@pytest.mark.parametrize("native", [False, True], ids=["weight-only", "native"])
def test_fp8_expert_slices_within_the_float64_bound(native):
    """FP8 experts (contract version 2) sliced by rank: each rank within the float64 bound of fp8_moe_reference on
    the layer with the other experts zeroed; the two ranks add up to the single-device kernels."""
    rule = RULES["v3-noaux-tc"]
    router, bias, gate_up, down = random_layer(rule, seed=4)
    (gq, gs), (dq, ds) = quantize_blocks(gate_up), quantize_blocks(down)
    x = tokens_of(19, 5)
    whole = triton_moe(x, router, bias, gq, dq, rule, gs, ds, native_fp8=native)
    total = torch.zeros(x.shape, dtype=torch.float64)
    for part in rank_slices(rule.num_experts, 2):
        got = triton_moe(x, router, bias, gq[part].contiguous(), dq[part].contiguous(), rule, gs[part].contiguous(),
                         ds[part].contiguous(), native_fp8=native, first_expert=part.start)
        keep = torch.zeros(rule.num_experts, 1, 1, dtype=torch.float64)
        keep[part] = 1.0
        want, bound = expected_and_bound(x, router, bias, dequantize64(gq, gs) * keep, dequantize64(dq, ds) * keep,
                                         rule, torch.float32, native)
        check_within(got, want, bound, f"rank {part} native={native}")
        total += got.double()
    torch.testing.assert_close(total, whole.double(), rtol=1e-5, atol=1e-5 * rule.weight_scale)


def test_alignment_of_a_slice():
    """Kernels 3-4 on a slice: only the slots of experts first_expert .. first_expert + E_local - 1, grouped by local
    id (global - first_expert) in slot order and padded; every other slot dropped."""
    from mla_export.kernels.moe import api as moe_api, plan as moe_plan

    g = torch.Generator().manual_seed(1)
    experts = torch.stack([torch.randperm(24, generator=g)[:6] for _ in range(41)]).int()  # [41, 6] of 24 experts
    first, held, block_m = 12, 6, 16
    sorted_slots, block_expert = (t.cpu() for t in moe_api.moe_align_triton(experts.to(DEVICE), held, block_m, first))
    ids = experts.reshape(-1)
    offset = 0
    for local in range(held):
        mine = (ids == first + local).nonzero().reshape(-1).int()
        rows = -(-mine.numel() // block_m) * block_m
        assert mine.numel() > 0
        assert torch.equal(sorted_slots[offset:offset + mine.numel()], mine), f"local expert {local}"
        assert (sorted_slots[offset + mine.numel():offset + rows] == ids.numel()).all()
        assert (block_expert[offset // block_m:(offset + rows) // block_m] == local).all()
        offset += rows
    assert (block_expert[offset // block_m:] == -1).all()
    assert block_expert.numel() == moe_plan.max_blocks(ids.numel(), held, block_m)


def test_slices_outside_the_experts_are_refused():
    rule = RULES["v2-greedy"]
    router, bias, gate_up, down = (t.float() for t in random_layer(rule))
    x = tokens_of(3, 1)
    for first, held in ((-1, 8), (9, 8), (0, 17)):
        stacks = gate_up[:held] if held <= 16 else torch.cat([gate_up, gate_up[:1]])
        downs = down[:held] if held <= 16 else torch.cat([down, down[:1]])
        with pytest.raises(ValueError, match="must lie in the num_experts=16 routed experts"):
            triton_moe(x, router, bias, stacks.contiguous(), downs.contiguous(), rule, first_expert=first)
    with pytest.raises(TypeError, match="first_expert must be an int"):
        triton_moe(x, router, bias, gate_up, down, rule, first_expert=1.0)
