"""The ONNX side of the `MlaAttention` op: its schema, the exporter's translation, and the
model-local function whose body computes the contract with standard ONNX ops (`FunctionBody`, which
`onnx_moe` shares for `DeepseekMoE`).

TensorRT's parser with our plugin loaded turns the node into the plugin; ONNX Runtime (and TensorRT
without the plugin) inline the function body, so one file serves both.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from ..common import contract

BODY_OPSET = 18  # Split(num_outputs) needs 18


def schema_attributes(attributes: dict[str, str]) -> list:
    """OpSchema attributes for a contract's {name: "INT" | "FLOAT"}, plus the plugin look-up strings."""
    attr = onnx.defs.OpSchema.Attribute
    kinds = {"INT": onnx.defs.OpSchema.AttrType.INT, "FLOAT": onnx.defs.OpSchema.AttrType.FLOAT}
    return ([attr(name, kinds[kind], name) for name, kind in attributes.items()]
            + [attr(name, onnx.defs.OpSchema.AttrType.STRING, name) for name in contract.PLUGIN_LOOKUP_ATTRIBUTES])


def op_schema() -> onnx.defs.OpSchema:
    """The node's schema: seven inputs, two outputs, T in {float, float16, bfloat16}."""
    t = onnx.defs.OpSchema.FormalParameter
    inputs = [t(name, "T") for name in contract.OP_INPUTS[:5]]
    inputs += [t(contract.OP_INPUTS[5], "tensor(int32)"), t(contract.OP_INPUTS[6], "tensor(float)")]
    outputs = [t(name, "T") for name in contract.OP_OUTPUTS]
    return onnx.defs.OpSchema(
        contract.OP_TYPE, contract.OP_DOMAIN, contract.OP_DOMAIN_VERSION,
        inputs=inputs, outputs=outputs,
        type_constraints=[("T", ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"], "cache and activations")],
        attributes=schema_attributes(contract.OP_ATTRIBUTES),
    )


def translation_table() -> dict:
    """`custom_translation_table` for `torch.onnx.export(dynamo=True)`: mla::mla_attention -> MlaAttention."""
    import torch
    from onnxscript import values

    op = values.Op(values.Opset(contract.OP_DOMAIN, contract.OP_DOMAIN_VERSION), contract.OP_TYPE, op_schema())

    def mla_attention(q_latent, q_pe, kv_latent, k_pe, past_cache, cache_seqlens, rope_cos_sin,
                      num_heads, kv_lora_rank, qk_rope_head_dim, softmax_scale):
        return op(q_latent, q_pe, kv_latent, k_pe, past_cache, cache_seqlens, rope_cos_sin,
                  num_heads=num_heads, kv_lora_rank=kv_lora_rank, qk_rope_head_dim=qk_rope_head_dim,
                  softmax_scale=softmax_scale, _num_outputs=2, **contract.PLUGIN_LOOKUP_ATTRIBUTES)

    from ..model import ops  # noqa: F401  (registers the op)
    return {torch.ops.mla.mla_attention.default: mla_attention}


class FunctionBody:
    """Accumulates a function body's nodes with fresh value names (shared by the ops' function bodies)."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.count = 0

    def __call__(self, op_type: str, *inputs: str, outputs: int = 1, **attrs) -> str | list[str]:
        names = [f"_{op_type.lower()}_{self.count}_{i}" for i in range(outputs)]
        self.count += 1
        self.nodes.append(helper.make_node(op_type, list(inputs), names, **attrs))
        return names[0] if outputs == 1 else names

    def const(self, values: list[int] | float) -> str:
        if isinstance(values, float):
            return self("Constant", value=helper.make_tensor("v", TensorProto.FLOAT, [], [values]))
        return self("Constant", value=helper.make_tensor("v", TensorProto.INT64, [len(values)], values))

    def scalar_int(self, value: int) -> str:
        return self("Constant", value=helper.make_tensor("v", TensorProto.INT64, [], [value]))

    def _attribute(self, name: str, field: str, kind: int) -> str:
        out = self("Constant")
        self.nodes[-1].attribute.append(helper.make_attribute_ref(field, kind, ref_attr_name=name))
        return out

    def attribute_int(self, name: str) -> str:
        """The calling node's INT attribute `name` as a scalar int64 tensor."""
        return self._attribute(name, "value_int", onnx.AttributeProto.INT)

    def attribute_float(self, name: str) -> str:
        """The calling node's FLOAT attribute `name` as a scalar float tensor."""
        return self._attribute(name, "value_float", onnx.AttributeProto.FLOAT)

    def attribute_flag(self, name: str) -> str:
        """The calling node's INT attribute `name` as a scalar bool (nonzero: true)."""
        return self("Cast", self.attribute_int(name), to=TensorProto.BOOL)


def _rotate_pairs(g: FunctionBody, x_float: str, cos: str, sin: str) -> str:
    """Rotate pairs (2k, 2k+1) of `x_float [..., Dr]` by cos/sin broadcast as `[..., Dr/2, 1]`."""
    shape = g("Shape", x_float)
    lead = g("Slice", shape, g.const([0]), g.const([-1]))
    pairs = g("Reshape", x_float, g("Concat", lead, g.const([-1, 2]), axis=0))  # [..., Dr/2, 2]
    even, odd = g("Split", pairs, axis=-1, num_outputs=2, outputs=2)  # [..., Dr/2, 1]
    new_even = g("Sub", g("Mul", even, cos), g("Mul", odd, sin))
    new_odd = g("Add", g("Mul", even, sin), g("Mul", odd, cos))
    return g("Reshape", g("Concat", new_even, new_odd, axis=-1), shape)  # [..., Dr]


def _attention_body(g: FunctionBody, past_cache: str, present_cache: str, kv_latent: str) -> str:
    """Emit the contract over a contiguous cache `past_cache [B, Smax, Dc+Dr]` (version 1, or a version-2
    node's gathered view) into `g`: the updated cache is named `present_cache`; returns the new rows
    `[B, S, Dc+Dr]` (as the cache stores them). `kv_latent` is the c_kv the rows hold."""
    q_latent, q_pe, _, k_pe, _, cache_seqlens, rope_cos_sin = contract.OP_INPUTS
    attn_latent = contract.OP_OUTPUTS[0]

    q_shape = g("Shape", q_latent)  # [B, S, H, Dc]
    batch = g("Gather", q_shape, g.scalar_int(0))
    new_tokens = g("Gather", q_shape, g.scalar_int(1))
    zero, one = g.scalar_int(0), g.scalar_int(1)
    seqlens = g("Cast", cache_seqlens, to=TensorProto.INT64)  # [B]
    positions = g("Add", g("Unsqueeze", seqlens, g.const([1])), g("Range", zero, new_tokens, one))  # [B, S]

    cos_sin = g("Gather", rope_cos_sin, positions, axis=0)  # [B, S, Dr]
    cos, sin = g("Split", cos_sin, axis=-1, num_outputs=2, outputs=2)  # [B, S, Dr/2]
    k_cos, k_sin = g("Unsqueeze", cos, g.const([-1])), g("Unsqueeze", sin, g.const([-1]))  # [B, S, Dr/2, 1]
    q_cos, q_sin = g("Unsqueeze", cos, g.const([2, -1])), g("Unsqueeze", sin, g.const([2, -1]))  # [B,S,1,Dr/2,1]
    q_pe_rot = _rotate_pairs(g, g("Cast", q_pe, to=TensorProto.FLOAT), q_cos, q_sin)  # [B, S, H, Dr]
    k_pe_rot = _rotate_pairs(g, g("Cast", k_pe, to=TensorProto.FLOAT), k_cos, k_sin)  # [B, S, Dr]

    new_rows = g("Concat", kv_latent, g("CastLike", k_pe_rot, kv_latent), axis=-1)  # [B, S, Dc+Dr]
    batch_index = g("Expand", g("Unsqueeze", g("Range", zero, batch, one), g.const([1])),
                    g("Shape", positions))  # [B, S]
    scatter_index = g("Concat", g("Unsqueeze", batch_index, g.const([-1])),
                      g("Unsqueeze", positions, g.const([-1])), axis=-1)  # [B, S, 2]
    g.nodes.append(helper.make_node("ScatterND", [past_cache, scatter_index, new_rows], [present_cache]))

    max_seq_len = g("Gather", g("Shape", past_cache), g.scalar_int(1))
    slots = g("Range", zero, max_seq_len, one)  # [Smax]
    filled = g("Add", seqlens, new_tokens)  # [B]
    readable = g("Less", g("Unsqueeze", slots, g.const([0])), g("Unsqueeze", filled, g.const([1])))  # [B, Smax]
    cache = g("Where", g("Unsqueeze", readable, g.const([-1])), g("Cast", present_cache, to=TensorProto.FLOAT),
              g.const(0.0))  # [B, Smax, Dc+Dr], unread rows zeroed (they may hold NaN)

    query = g("Concat", g("Cast", q_latent, to=TensorProto.FLOAT), q_pe_rot, axis=-1)  # [B, S, H, Dc+Dr]
    flat_query = g("Reshape", query, g("Concat", g("Unsqueeze", batch, g.const([0])), g.const([-1]),
                                        g("Slice", g("Shape", query), g.const([3]), g.const([4])), axis=0))
    scores = g("MatMul", flat_query, g("Transpose", cache, perm=[0, 2, 1]))  # [B, S*H, Smax]
    scale = g.attribute_float("softmax_scale")
    scores = g("Reshape", g("Mul", scores, scale),
               g("Concat", g("Slice", q_shape, g.const([0]), g.const([3])), g.const([-1]), axis=0))  # [B,S,H,Smax]
    causal = g("LessOrEqual", g("Unsqueeze", slots, g.const([0, 1, 2])),
               g("Unsqueeze", positions, g.const([2, 3])))  # [B, S, 1, Smax]
    probs = g("Softmax", g("Where", causal, scores, g.const(float("-inf"))), axis=-1)  # [B, S, H, Smax]
    flat_probs = g("Reshape", probs, g("Concat", g("Unsqueeze", batch, g.const([0])), g.const([-1]),
                                        g("Unsqueeze", max_seq_len, g.const([0])), axis=0))  # [B, S*H, Smax]
    d_c = g("Slice", g("Shape", kv_latent), g.const([2]), g.const([3]))
    values = g("Slice", cache, g.const([0]), d_c, g.const([2]))  # [B, Smax, Dc]
    out = g("Reshape", g("MatMul", flat_probs, values), q_shape)  # [B, S, H, Dc]
    g.nodes.append(helper.make_node("CastLike", [out, q_latent], [attn_latent]))
    return new_rows


def function_proto() -> onnx.FunctionProto:
    """`MlaAttention` as a model-local function (domain `mla`): contract version 1 in standard ONNX ops
    (version 2, a paged and/or FP8 cache: `onnx_cache.cache_function_proto`)."""
    g = FunctionBody()
    _attention_body(g, contract.OP_INPUTS[4], contract.OP_OUTPUTS[1], contract.OP_INPUTS[2])
    return helper.make_function(
        contract.OP_DOMAIN, contract.OP_TYPE, list(contract.OP_INPUTS), list(contract.OP_OUTPUTS), g.nodes,
        opset_imports=[helper.make_opsetid("", BODY_OPSET)],
        attributes=list(contract.OP_ATTRIBUTES) + list(contract.PLUGIN_LOOKUP_ATTRIBUTES),
    )
