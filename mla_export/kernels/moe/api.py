"""`deepseek_moe_triton`: the DeepseekMoE op (routed experts, router included) on torch tensors through the
seven Triton kernels of `moe_route`, `moe_align` and `moe_experts`.

Runs on CUDA tensors, or on CPU tensors when the kernels were imported under TRITON_INTERPRET=1 (the
tests). Arguments are checked before anything is launched; launch choices come from `moe_plan.make_plan`,
the table the AOT-compiled plugin kernels use. `moe_route_triton` and `moe_align_triton` run the first
kernels alone (tests compare them with `moe.route` and with the alignment's definition).
"""

from __future__ import annotations

import torch

from ...common.moe_rule import RoutingRule
from . import align as moe_align, experts as moe_experts, route as moe_route
from .plan import (ALIGN_NUM_WARPS, COMBINE_NUM_WARPS, COUNT_NUM_WARPS, FP8_BLOCK, FP32_NUM_STAGES, FP_FUSION,
                   ROUTER_NUM_WARPS, TOPK_NUM_WARPS, ChunkPlan, MoeDims, MoePlan, kernel_constexprs, kernel_variant,
                   make_plan, native_fp8)

_DTYPES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}


def interpreting() -> bool:
    """True when the kernels were decorated under TRITON_INTERPRET=1 (they then run on CPU tensors)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(moe_route.moe_topk_kernel, InterpretedFunction)


def _check_device(named: dict) -> None:
    device = next(iter(named.values())).device
    for name, t in named.items():
        if t.device != device:
            raise ValueError(f"{name} is on {t.device} but hidden_states is on {device}; put every tensor on one device")
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous (call .contiguous())")
    if device.type != "cuda" and not (device.type == "cpu" and interpreting()):
        raise ValueError(f"the Triton kernels need CUDA tensors (got {device}); CPU tensors run only when "
                         "mla_export.kernels was imported with TRITON_INTERPRET=1")


def _check_router(named: dict, rule) -> int:
    """Checks shared by both entry points (named: hidden_states, router_weight, score_bias, ...); returns d."""
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not isinstance(rule, RoutingRule):
        raise TypeError(f"rule must be a mla_export.model.moe.RoutingRule, got {type(rule).__name__}")
    hidden = named["hidden_states"]
    if hidden.dim() < 1:
        raise ValueError("hidden_states must be [..., d]")
    d = hidden.shape[-1]
    for name, shape in (("router_weight", (rule.num_experts, d)), ("score_bias", (rule.num_experts,))):
        if tuple(named[name].shape) != shape:
            raise ValueError(f"{name} must have shape {list(shape)} (num_experts={rule.num_experts}, d={d}), "
                             f"got {list(named[name].shape)}")
        if named[name].dtype != torch.float32:
            raise TypeError(f"{name} must be float32 (routing runs in float32), got {named[name].dtype}")
    if hidden.dtype not in _DTYPES:
        raise TypeError(f"hidden_states must be float16, bfloat16 or float32, got {hidden.dtype}")
    return d


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _check_scales(named: dict, experts: int, d: int, inter: int) -> None:
    """FP8 experts: float8_e4m3fn weights and float32 scales of one entry per 128 x 128 block."""
    for name in ("gate_up_proj", "down_proj"):
        if named[name].dtype != torch.float8_e4m3fn:
            raise TypeError(f"{name} must be float8_e4m3fn when its block scales are given, got {named[name].dtype}")
    expected = {"gate_up_scale": (experts, _cdiv(2 * inter, FP8_BLOCK), _cdiv(d, FP8_BLOCK)),
                "down_scale": (experts, _cdiv(d, FP8_BLOCK), _cdiv(inter, FP8_BLOCK))}
    for name, shape in expected.items():
        if not isinstance(named[name], torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(named[name]).__name__}")
        if named[name].dtype != torch.float32:
            raise TypeError(f"{name} must be float32, got {named[name].dtype}")
        if tuple(named[name].shape) != shape:
            raise ValueError(f"{name} must have shape {list(shape)} (one scale per {FP8_BLOCK}x{FP8_BLOCK} block "
                             f"of its weight), got {list(named[name].shape)}")


def _check_slice(first_expert, held: int, experts: int) -> None:
    """A rank's expert slice (contract version 3): experts first_expert .. first_expert + held - 1 of E."""
    if isinstance(first_expert, bool) or not isinstance(first_expert, int):
        raise TypeError(f"first_expert must be an int, got {type(first_expert).__name__}")
    if first_expert < 0 or held < 1 or first_expert + held > experts:
        raise ValueError(f"the expert stacks hold {held} experts from first_expert={first_expert}: they must lie "
                         f"in the num_experts={experts} routed experts (0 <= first_expert, first_expert + "
                         f"{held} <= {experts})")


def _check_args(hidden, router_weight, score_bias, gate_up_proj, down_proj, rule, out, gate_up_scale=None,
                down_scale=None, first_expert: int = 0) -> MoeDims:
    named = {"hidden_states": hidden, "router_weight": router_weight, "score_bias": score_bias,
             "gate_up_proj": gate_up_proj, "down_proj": down_proj}
    if out is not None:
        named["out"] = out
    if (gate_up_scale is None) != (down_scale is None):
        raise ValueError("FP8 experts take both gate_up_scale and down_scale; pass both or neither")
    fp8 = gate_up_scale is not None
    d = _check_router(named, rule)
    if gate_up_proj.dim() != 3 or gate_up_proj.shape[2] != d or gate_up_proj.shape[1] % 2:
        raise ValueError(f"gate_up_proj must be [E_local, 2I, d={d}], got {list(gate_up_proj.shape)}")
    experts = gate_up_proj.shape[0]  # E_local: the experts held, first_expert .. first_expert + E_local - 1
    _check_slice(first_expert, experts, rule.num_experts)
    inter = gate_up_proj.shape[1] // 2
    expected = {"down_proj": (experts, d, inter)}
    if out is not None:
        expected["out"] = tuple(hidden.shape)
    for name, shape in expected.items():
        if tuple(named[name].shape) != shape:
            raise ValueError(f"{name} must have shape {list(shape)} (from hidden_states [..., d={d}] and "
                             f"gate_up_proj [E_local={experts}, 2I={2 * inter}, d]), got {list(named[name].shape)}")
    dtype = hidden.dtype
    for name in (() if fp8 else ("gate_up_proj", "down_proj")) + (("out",) if out is not None else ()):
        if named[name].dtype != dtype:
            raise TypeError(f"{name} must have hidden_states' dtype {dtype}, got {named[name].dtype}")
    if fp8:
        named.update(gate_up_scale=gate_up_scale, down_scale=down_scale)
        _check_scales(named, experts, d, inter)
    _check_device(named)
    return MoeDims(hidden.numel() // d if d else 0, d, inter, rule.num_experts, rule.top_k, rule.n_group,
                   _DTYPES[dtype], int(fp8), local_experts=experts)


def device_native_fp8(device: torch.device) -> bool:
    """Whether the FP8 expert kernels use FP8 x FP8 products on `device` (compute capability 8.9 or later);
    False under the interpreter (CPU tensors)."""
    if device.type != "cuda":
        return False
    major, minor = torch.cuda.get_device_capability(device)
    return native_fp8(10 * major + minor)


def plan_for(dims: MoeDims, chunk_tokens: int | None = None, config: str | None = None) -> MoePlan:
    """The launch plan `deepseek_moe_triton` uses for `dims`."""
    return make_plan(dims, chunk_tokens=chunk_tokens, config=config)


class _Workspace:
    """Typed views of one workspace buffer laid out by a MoePlan."""

    def __init__(self, plan: MoePlan, dims: MoeDims, device, dtype: torch.dtype):
        self.raw = torch.empty(plan.workspace_bytes, dtype=torch.uint8, device=device)
        ends = (plan.ids_offset, plan.weights_offset, plan.counts_offset, plan.sorted_offset,
                plan.block_expert_offset, plan.act_offset, plan.y_offset, plan.workspace_bytes)
        starts = (plan.logits_offset,) + ends[:-1]
        kinds = (torch.float32, torch.int32, torch.float32, torch.int32, torch.int32, torch.int32, dtype, dtype)
        (self.logits, self.ids, self.weights, self.counts, self.sorted, self.block_expert, self.act,
         self.y) = (self.raw[a:b].view(t) for a, b, t in zip(starts, ends, kinds))


def _route(hidden, router_weight, score_bias, rule: RoutingRule, dims: MoeDims, plan: MoePlan, chunk: ChunkPlan,
           ws: _Workspace) -> None:
    """Kernels 1-2 on the chunk's tokens `hidden [Tc, d]`: ws.ids / ws.weights [Tc*K]."""
    moe_route.moe_router_logits_kernel[chunk.logits_grid](
        hidden, router_weight, ws.logits, chunk.tokens, dims.num_experts, dims.hidden,
        **kernel_constexprs("router_logits", 0, dims.dtype), num_warps=ROUTER_NUM_WARPS, num_stages=2,
        enable_fp_fusion=FP_FUSION)
    moe_route.moe_topk_kernel[chunk.topk_grid](
        ws.logits, score_bias, ws.ids, ws.weights, chunk.tokens, dims.num_experts, rule.top_k, rule.n_group,
        rule.topk_group, rule.scoring, rule.group_score, int(rule.use_bias), int(rule.normalize),
        float(rule.weight_scale), **kernel_constexprs("topk", plan.topk_block_e, dims.dtype),
        num_warps=TOPK_NUM_WARPS, num_stages=1, enable_fp_fusion=FP_FUSION)


def _align(dims: MoeDims, chunk: ChunkPlan, ws: _Workspace, first_expert: int) -> None:
    """Kernels 3-4: ws.counts, ws.sorted, ws.block_expert from ws.ids (the local experts' slots only)."""
    moe_align.moe_count_kernel[chunk.count_grid](
        ws.ids, ws.counts, chunk.slots, dims.held_experts, first_expert, **kernel_constexprs("count", 0, dims.dtype),
        num_warps=COUNT_NUM_WARPS, num_stages=1, enable_fp_fusion=FP_FUSION)
    moe_align.moe_align_kernel[chunk.align_grid](
        ws.ids, ws.counts, ws.sorted, ws.block_expert, chunk.slots, dims.held_experts, first_expert,
        chunk.config.block_m,
        chunk.max_blocks, **kernel_constexprs("align", 0, dims.dtype), num_warps=ALIGN_NUM_WARPS, num_stages=1,
        enable_fp_fusion=FP_FUSION)


def _experts(hidden, experts: tuple, out, dims: MoeDims, plan: MoePlan, chunk: ChunkPlan, ws: _Workspace,
             native: bool, first_expert: int) -> None:
    """Kernels 5-7: `out [Tc, d]` from the chunk's tokens and the alignment in `ws`. experts: (gate_up_proj,
    gate_up_scale, down_proj, down_scale), the weights as uint8 views and the scales given for FP8 experts,
    the scales None otherwise (the kernels then never read them)."""
    gate_up_proj, gate_up_scale, down_proj, down_scale = experts
    variant = kernel_variant("gate_up", plan, chunk)
    gemm = kernel_constexprs("gate_up", variant, dims.dtype, native)
    stages = FP32_NUM_STAGES if dims.dtype == "float32" else chunk.config.num_stages
    moe_experts.moe_gate_up_kernel[chunk.gate_up_grid](
        hidden, gate_up_proj, gate_up_scale, ws.sorted, ws.block_expert, ws.act, chunk.slots, dims.top_k,
        dims.hidden, dims.inter, **gemm, num_warps=chunk.config.num_warps, num_stages=stages,
        enable_fp_fusion=FP_FUSION)
    moe_experts.moe_down_kernel[chunk.down_grid](
        ws.act, down_proj, down_scale, ws.sorted, ws.block_expert, ws.weights, ws.y, chunk.slots, dims.hidden,
        dims.inter, **gemm, num_warps=chunk.config.num_warps, num_stages=stages, enable_fp_fusion=FP_FUSION)
    moe_experts.moe_combine_kernel[chunk.combine_grid](
        ws.y, ws.ids, out, dims.top_k, dims.hidden, first_expert, dims.held_experts,
        **kernel_constexprs("combine", 0, dims.dtype),
        num_warps=COMBINE_NUM_WARPS, num_stages=1, enable_fp_fusion=FP_FUSION)


def deepseek_moe_triton(hidden: torch.Tensor, router_weight: torch.Tensor, score_bias: torch.Tensor,
                        gate_up_proj: torch.Tensor, down_proj: torch.Tensor, rule: RoutingRule,
                        gate_up_scale: torch.Tensor | None = None, down_scale: torch.Tensor | None = None, *,
                        out: torch.Tensor | None = None, chunk_tokens: int | None = None,
                        config: str | None = None, native_fp8: bool | None = None,
                        first_expert: int = 0) -> torch.Tensor:
    """DeepseekMoE (contract.py, semantics of moe.moe_reference) with the Triton kernels: the routed output.

    hidden [..., d] T (T float16, bfloat16 or float32); router_weight [E, d] float32; score_bias [E] float32
    (read when rule.use_bias); gate_up_proj [E, 2I, d] T (gate rows, then up rows); down_proj [E, d, I] T; all
    contiguous and on one device. FP8 experts (contract version 2): gate_up_proj and down_proj float8_e4m3fn with
    gate_up_scale [E, ceil(2I/128), ceil(d/128)] and down_scale [E, ceil(d/128), ceil(I/128)] float32, each
    weight being q * scale per 128 x 128 block (experts.py says how the product is formed on each GPU).
    A rank's slice (contract version 3): the stacks (and scales) hold E_local <= E experts, global ids
    first_expert .. first_expert + E_local - 1; routing is over all E, and only the token's top-k experts in
    the slice are summed (the ranks' outputs add up to the whole op's). Returns [..., d] T (into `out` when given). Routing runs in float32 with moe.route's tie rule; the sum over
    a token's experts in float32, in top-k order; deterministic. chunk_tokens, config ("decode" / "prefill")
    and native_fp8 (FP8 x FP8 products or weight-only; default: the device's) override the plan (tests).
    """
    dims = _check_args(hidden, router_weight, score_bias, gate_up_proj, down_proj, rule, out, gate_up_scale,
                       down_scale, first_expert)
    result = out if out is not None else torch.empty_like(hidden)
    plan = plan_for(dims, chunk_tokens, config)
    if plan.num_chunks == 0 or dims.hidden == 0:
        return result
    x = hidden.view(dims.tokens, dims.hidden)  # [T, d]
    y = result.view(dims.tokens, dims.hidden)  # [T, d]
    ws = _Workspace(plan, dims, hidden.device, hidden.dtype)
    if dims.fp8_experts:  # the kernels read e4m3 bytes (sm_80/86 cannot load float8 types)
        experts = (gate_up_proj.view(torch.uint8), gate_up_scale, down_proj.view(torch.uint8), down_scale)
    else:
        experts = (gate_up_proj, None, down_proj, None)
    native = device_native_fp8(hidden.device) if native_fp8 is None else bool(native_fp8)
    for index in range(plan.num_chunks):
        start, chunk = plan.chunk(index)
        rows = slice(start, start + chunk.tokens)
        _route(x[rows], router_weight, score_bias, rule, dims, plan, chunk, ws)
        _align(dims, chunk, ws, first_expert)
        _experts(x[rows], experts, y[rows], dims, plan, chunk, ws, native, first_expert)
    return result


def moe_route_triton(hidden: torch.Tensor, router_weight: torch.Tensor, score_bias: torch.Tensor,
                     rule: RoutingRule) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernels 1-2 alone: (weights [T, K] float32, experts [T, K] int32) of `hidden [T, d]`, as moe.route."""
    named = {"hidden_states": hidden, "router_weight": router_weight, "score_bias": score_bias}
    d = _check_router(named, rule)
    if hidden.dim() != 2:
        raise ValueError(f"hidden must be [T, d], got {list(hidden.shape)}")
    _check_device(named)
    dims = MoeDims(hidden.shape[0], d, 16, rule.num_experts, rule.top_k, rule.n_group, _DTYPES[hidden.dtype])
    plan = make_plan(dims, chunk_tokens=max(dims.tokens, 1))  # one chunk: the routing of every token
    ws = _Workspace(plan, dims, hidden.device, hidden.dtype)
    if dims.tokens:
        _route(hidden, router_weight, score_bias, rule, dims, plan, plan.full, ws)
    k = rule.top_k
    return ws.weights[:dims.tokens * k].view(dims.tokens, k).clone(), ws.ids[:dims.tokens * k].view(-1, k).clone()


def moe_align_triton(experts: torch.Tensor, num_experts: int, block_m: int, first_expert: int = 0
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernels 3-4 alone on `experts [T, K]` int32 for the `num_experts` local experts from global id
    `first_expert`: (sorted_slots [max_blocks*block_m], block_expert [max_blocks], local ids) with max_blocks =
    moe_plan.max_blocks(T*K, num_experts, block_m)."""
    from .plan import ALIGN_CHUNK, COUNT_BLOCK_E, COUNT_CHUNK, _cdiv, max_blocks

    if experts.dtype != torch.int32 or experts.dim() != 2 or not experts.is_contiguous():
        raise ValueError("experts must be a contiguous [T, K] int32 tensor")
    _check_device({"experts": experts})
    slots = experts.numel()
    blocks = max_blocks(slots, num_experts, block_m)
    counts = torch.empty(num_experts, dtype=torch.int32, device=experts.device)
    sorted_slots = torch.full((blocks * block_m,), -7, dtype=torch.int32, device=experts.device)  # -7: never written
    block_expert = torch.full((blocks,), -7, dtype=torch.int32, device=experts.device)
    moe_align.moe_count_kernel[(_cdiv(num_experts, COUNT_BLOCK_E), 1, 1)](
        experts, counts, slots, num_experts, first_expert, BLOCK_E=COUNT_BLOCK_E, CHUNK=COUNT_CHUNK,
        num_warps=COUNT_NUM_WARPS)
    moe_align.moe_align_kernel[(num_experts, 1, 1)](
        experts, counts, sorted_slots, block_expert, slots, num_experts, first_expert, block_m, blocks,
        CHUNK=ALIGN_CHUNK,
        num_warps=ALIGN_NUM_WARPS)
    return sorted_slots, block_expert
