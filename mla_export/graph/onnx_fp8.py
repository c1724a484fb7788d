"""The ONNX side of FP8 weights: the `BlockFp8MatMul` node (schema, the exporter's translation, its
model-local function) and the dequantization the function bodies share (`dequantized`).

Why a custom node: ONNX's own `DequantizeLinear` (opset 21) blocks along one axis only, and TensorRT maps
FP8 Q/DQ to its fast GEMMs for per-tensor or per-channel scales (and MXFP8's 32-element blocks, E8M0
scales), not DeepSeek's 128 x 128 float32 blocks; so the node carries the format as it is, TensorRT runs it
as our plugin (Triton block-scaled GEMM), and ONNX Runtime runs the function body: Cast the FP8 weight to
float32, multiply by each block's scale, MatMul in float32, Cast to T.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from ..common import contract
from .onnx_node import FunctionBody, schema_attributes

FP8_OPSET = 19  # Shape and Cast accept float8 types from opset 19 on
FLOAT_TYPES = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]


def fp8_op_schema() -> onnx.defs.OpSchema:
    """The node's schema: input T, weight float8e4m3fn, weight_scale_inv float, output T."""
    t = onnx.defs.OpSchema.FormalParameter
    x, weight, scale = contract.FP8_INPUTS
    return onnx.defs.OpSchema(
        contract.FP8_OP_TYPE, contract.OP_DOMAIN, contract.OP_DOMAIN_VERSION,
        inputs=[t(x, "T"), t(weight, "tensor(float8e4m3fn)"), t(scale, "tensor(float)")],
        outputs=[t(name, "T") for name in contract.FP8_OUTPUTS],
        type_constraints=[("T", FLOAT_TYPES, "activations")],
        attributes=schema_attributes(contract.FP8_ATTRIBUTES))


def fp8_translation() -> dict:
    """The `custom_translation_table` entry: mla::block_fp8_matmul -> BlockFp8MatMul."""
    import torch
    from onnxscript import values

    from ..model import fp8  # noqa: F401  (registers the op)

    op = values.Op(values.Opset(contract.OP_DOMAIN, contract.OP_DOMAIN_VERSION), contract.FP8_OP_TYPE,
                   fp8_op_schema())

    def block_fp8_matmul(x, weight, scale_inv, block_size):
        return op(x, weight, scale_inv, block_size=block_size, **contract.PLUGIN_LOOKUP_ATTRIBUTES)

    return {torch.ops.mla.block_fp8_matmul.default: block_fp8_matmul}


def dequantized(g: FunctionBody, weight: str, scale_inv: str, block: str) -> str:
    """`weight [..., R, C]` (float8e4m3fn) times the scale of its block (`scale_inv [..., R/b, C/b]`, `block`
    a scalar int64 b), as float32 `[G, R, C]` (the leading dims, if any, flattened into G; 1 for a matrix)."""
    w_shape = g("Shape", weight)
    rows_cols = g("Slice", w_shape, g.const([-2]), g.const([2**62]))  # [R, C]
    w = g("Reshape", g("Cast", weight, to=TensorProto.FLOAT), g("Concat", g.const([-1]), rows_cols, axis=0))
    s_shape = g("Shape", scale_inv)
    grid = g("Slice", s_shape, g.const([-2]), g.const([2**62]))  # [R/b, C/b]
    s = g("Reshape", scale_inv, g("Concat", g.const([-1]), grid, axis=0))  # [G, R/b, C/b]
    s = g("Unsqueeze", s, g.const([2, 4]))  # [G, R/b, 1, C/b, 1]
    b = g("Unsqueeze", block, g.const([0]))  # [1]
    lead = g("Slice", g("Shape", s), g.const([0]), g.const([2]))  # [G, R/b]
    kb = g("Slice", g("Shape", s), g.const([3]), g.const([4]))  # [C/b]
    s = g("Expand", s, g("Concat", lead, b, kb, b, axis=0))  # [G, R/b, b, C/b, b]
    s = g("Reshape", s, g("Concat", g.const([0]), g("Mul", g("Slice", grid, g.const([0]), g.const([1])), b),
                          g("Mul", g("Slice", grid, g.const([1]), g.const([2])), b), axis=0))  # [G, R/b*b, C/b*b]
    s = g("Slice", s, g.const([0, 0]), rows_cols, g.const([1, 2]))  # [G, R, C]
    return g("Mul", w, s)


def fp8_function_proto() -> onnx.FunctionProto:
    """`BlockFp8MatMul` as a model-local function (domain `mla`): the contract in standard ONNX ops."""
    g = FunctionBody()
    x, weight, scale_inv = contract.FP8_INPUTS
    (output,) = contract.FP8_OUTPUTS
    w = dequantized(g, weight, scale_inv, g.attribute_int("block_size"))  # [G, N, K] float
    w_shape = g("Shape", weight)
    w_t_shape = g("Concat", g("Slice", w_shape, g.const([0]), g.const([-2])), g("Slice", w_shape, g.const([-1]),
                  g.const([2**62])), g("Slice", w_shape, g.const([-2]), g.const([-1])), axis=0)  # [(G,) K, N]
    w_t = g("Reshape", g("Transpose", w, perm=[0, 2, 1]), w_t_shape)  # [K, N] or [G, K, N]
    y = g("MatMul", g("Cast", x, to=TensorProto.FLOAT), w_t)  # [..., N] or [G, M, N]
    g.nodes.append(helper.make_node("CastLike", [y, x], [output]))
    return helper.make_function(
        contract.OP_DOMAIN, contract.FP8_OP_TYPE, list(contract.FP8_INPUTS), list(contract.FP8_OUTPUTS), g.nodes,
        opset_imports=[helper.make_opsetid("", FP8_OPSET)],
        attributes=list(contract.FP8_ATTRIBUTES) + list(contract.PLUGIN_LOOKUP_ATTRIBUTES))
