"""The ONNX side of the `DeepseekMoE` op: its schema, the exporter's translation, and the model-local
function whose body computes the contract with standard ONNX ops, driven by the node's attributes.

The body is exact, not fast: it routes every token (both scoring functions and both group scores are
computed and the attributes pick), then evaluates every expert for every token and weighs them with a
dense routing matrix that is zero outside each token's top_k. TensorRT with our plugin replaces the node;
ONNX Runtime and TensorRT without it inline this body, so one file serves both. A rank's node (contract
version 3) routes over all num_experts and keeps the routing matrix's columns of its E_local experts only.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from ..common import contract
from .onnx_fp8 import dequantized
from .onnx_node import BODY_OPSET, FunctionBody, schema_attributes


def moe_op_schema(fp8: bool = False) -> onnx.defs.OpSchema:
    """The node's schema: five inputs (seven with FP8 experts and their scales), one output, T in {float,
    float16, bfloat16}."""
    t = onnx.defs.OpSchema.FormalParameter
    hidden, router, bias, gate_up, down = contract.MOE_INPUTS
    expert = "tensor(float8e4m3fn)" if fp8 else "T"
    inputs = [t(hidden, "T"), t(router, "tensor(float)"), t(bias, "tensor(float)"), t(gate_up, expert),
              t(down, expert)]
    if fp8:
        inputs += [t(name, "tensor(float)") for name in contract.MOE_FP8_INPUTS[5:]]
    outputs = [t(name, "T") for name in contract.MOE_OUTPUTS]
    return onnx.defs.OpSchema(
        contract.MOE_OP_TYPE, contract.OP_DOMAIN, contract.OP_DOMAIN_VERSION, inputs=inputs, outputs=outputs,
        type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "activations, experts")],
        attributes=schema_attributes(contract.MOE_ATTRIBUTES | contract.MOE_SLICE_ATTRIBUTES))


def moe_translation() -> dict:
    """The `custom_translation_table` entry: mla::deepseek_moe -> DeepseekMoE."""
    import torch
    from onnxscript import values

    from ..model import moe  # noqa: F401  (registers the op)

    op = values.Op(values.Opset(contract.OP_DOMAIN, contract.OP_DOMAIN_VERSION), contract.MOE_OP_TYPE,
                   moe_op_schema())

    fp8_op = values.Op(values.Opset(contract.OP_DOMAIN, contract.OP_DOMAIN_VERSION), contract.MOE_OP_TYPE,
                       moe_op_schema(fp8=True))

    def deepseek_moe(hidden, router_weight, score_bias, gate_up_proj, down_proj, num_experts, top_k, n_group,
                     topk_group, scoring_func, group_score, use_bias, normalize, weight_scale, gate_up_scale=None,
                     down_scale=None, first_expert=0):
        attributes = dict(num_experts=num_experts, top_k=top_k, n_group=n_group, topk_group=topk_group,
                          scoring_func=scoring_func, group_score=group_score, use_bias=use_bias, normalize=normalize,
                          weight_scale=weight_scale, first_expert=first_expert, **contract.PLUGIN_LOOKUP_ATTRIBUTES)
        if gate_up_scale is not None:
            return fp8_op(hidden, router_weight, score_bias, gate_up_proj, down_proj, gate_up_scale, down_scale,
                          **attributes)
        return op(hidden, router_weight, score_bias, gate_up_proj, down_proj, **attributes)

    return {torch.ops.mla.deepseek_moe.default: deepseek_moe}


def _route(g: FunctionBody, logits: str) -> tuple[str, str]:
    """Routing of `logits [T, E]` float by the node's attributes: (weights [T, k] float, experts [T, k] int64)."""
    router_bias = contract.MOE_INPUTS[2]
    sigmoid_scoring = g.attribute_flag("scoring_func")
    scores = g("Where", sigmoid_scoring, g("Sigmoid", logits), g("Softmax", logits, axis=-1))  # [T, E]
    bias = g("Mul", router_bias, g("Cast", g.attribute_flag("use_bias"), to=TensorProto.FLOAT))  # [E] or zeros
    choice = g("Add", scores, bias)  # [T, E]

    n_group = g("Reshape", g.attribute_int("n_group"), g.const([1]))
    grouped = g("Reshape", choice, g("Concat", g.const([0]), n_group, g.const([-1]), axis=0))  # [T, G, E/G]
    group_max = g("ReduceMax", grouped, g.const([-1]), keepdims=0)  # [T, G]
    two = g("Min", g.const([2]), g("Slice", g("Shape", grouped), g.const([2]), g.const([3])))  # 2, or E/G if 1
    top2, _ = g("TopK", grouped, two, axis=-1, outputs=2)  # [T, G, 2]
    group_top2 = g("ReduceSum", top2, g.const([-1]), keepdims=0)  # [T, G]
    group_scores = g("Where", g.attribute_flag("group_score"), group_top2, group_max)  # [T, G]
    topk_group = g("Reshape", g.attribute_int("topk_group"), g.const([1]))
    _, kept_groups = g("TopK", group_scores, topk_group, axis=-1, outputs=2)  # [T, kg]: ties to the lower index
    kept = g("ScatterElements", g("ConstantOfShape", g("Shape", group_scores)),
             kept_groups, g("Expand", g.const(1.0), g("Shape", kept_groups)), axis=1)  # [T, G] 1.0 where kept
    expert_kept = g("Reshape", g("Expand", g("Unsqueeze", kept, g.const([-1])), g("Shape", grouped)),
                    g("Shape", choice))  # [T, E]
    masked = g("Where", g("Cast", expert_kept, to=TensorProto.BOOL), choice, g.const(float("-inf")))  # [T, E]
    top_k = g("Reshape", g.attribute_int("top_k"), g.const([1]))
    _, experts = g("TopK", masked, top_k, axis=-1, outputs=2)  # [T, k]
    weights = g("GatherElements", scores, experts, axis=1)  # [T, k]
    total = g("Add", g("ReduceSum", weights, g.const([-1]), keepdims=1), g.const(1e-20))  # [T, 1]
    divisor = g("Where", g.attribute_flag("normalize"), total, g.const(1.0))
    return g("Mul", g("Div", weights, divisor), g.attribute_float("weight_scale")), experts


def moe_function_proto(fp8: bool = False) -> onnx.FunctionProto:
    """`DeepseekMoE` as a model-local function (domain `mla`): the contract in standard ONNX ops. With `fp8`
    (contract version 2, seven inputs) the experts are dequantized to T first. The routing matrix is cut to the
    node's experts first_expert .. first_expert + E_local - 1 (version 3; E_local = gate_up_proj's dim 0)."""
    g = FunctionBody()
    hidden, router_weight, _, gate_up_proj, down_proj = contract.MOE_INPUTS
    (routed_output,) = contract.MOE_OUTPUTS
    if fp8:
        gate_up_scale, down_scale = contract.MOE_FP8_INPUTS[5:]
        block = g.scalar_int(contract.FP8_BLOCK)
        gate_up_proj = g("CastLike", dequantized(g, gate_up_proj, gate_up_scale, block), hidden)  # [E, 2I, d]
        down_proj = g("CastLike", dequantized(g, down_proj, down_scale, block), hidden)  # [E, d, I]

    hidden_shape = g("Shape", hidden)  # [B, S, d]
    x = g("Reshape", hidden, g("Concat", g.const([-1]), g("Slice", hidden_shape, g.const([2]), g.const([3])),
                                axis=0))  # [T, d]
    logits = g("MatMul", g("Cast", x, to=TensorProto.FLOAT), g("Transpose", router_weight, perm=[1, 0]))  # [T, E]
    weights, experts = _route(g, logits)  # [T, k], [T, k]
    dense = g("ScatterElements", g("ConstantOfShape", g("Shape", logits)), experts, weights, axis=1)  # [T, E]
    first = g("Reshape", g.attribute_int("first_expert"), g.const([1]))  # [1]
    held = g("Slice", g("Shape", gate_up_proj), g.const([0]), g.const([1]))  # [1] E_local
    dense = g("Slice", dense, first, g("Add", first, held), g.const([1]))  # [T, E_local] this node's experts

    gate_up = g("MatMul", x, g("Transpose", gate_up_proj, perm=[0, 2, 1]))  # [El, T, 2I]
    inter = g("Slice", g("Shape", down_proj), g.const([2]), g.const([3]))  # [I]
    gate, up = g("Split", gate_up, g("Concat", inter, inter, axis=0), axis=-1, outputs=2)  # [El, T, I] each
    act = g("Mul", g("Mul", gate, g("Sigmoid", gate)), up)  # silu(gate) * up: [El, T, I]
    expert_out = g("MatMul", act, g("Transpose", down_proj, perm=[0, 2, 1]))  # [El, T, d]
    weighted = g("Mul", g("Cast", expert_out, to=TensorProto.FLOAT),
                 g("Unsqueeze", g("Transpose", dense, perm=[1, 0]), g.const([-1])))  # [El, T, d]
    out = g("ReduceSum", weighted, g.const([0]), keepdims=0)  # [T, d] float
    g.nodes.append(helper.make_node("CastLike", [g("Reshape", out, hidden_shape), hidden], [routed_output]))

    inputs = contract.MOE_FP8_INPUTS if fp8 else contract.MOE_INPUTS
    return helper.make_function(
        contract.OP_DOMAIN, contract.MOE_OP_TYPE, list(inputs), list(contract.MOE_OUTPUTS), g.nodes,
        opset_imports=[helper.make_opsetid("", BODY_OPSET)],
        attributes=list(contract.MOE_ATTRIBUTES) + list(contract.MOE_SLICE_ATTRIBUTES)
        + list(contract.PLUGIN_LOOKUP_ATTRIBUTES))
