"""The ONNX side of `MlaAttention` contract version 2 (a paged and/or FP8 latent cache): the node's schemas,
the exporter's translation of `mla::mla_attention_paged` / `mla::mla_attention_fp8_cache`, and the function
body ONNX Runtime runs.

The body gathers the pages a call reads (`block_table` slots past each sequence's last needed page read page
0, never their own id) into a contiguous view, runs the version-1 body on it (`onnx_node._attention_body`), and
scatters the new rows into the pool. A page id outside the pool among the needed slots makes Gather/ScatterND
fail: ONNX Runtime never reads or writes outside the pool. FP8: the view holds the dequantized rows; the new
c_kv rows are quantized (the power-of-two scale per 128 values of `contract.py`) and the attention reads them
dequantized, as every implementation stores them. Gather and ScatterND take no float8 (before opset 26), so
the body moves the codes as float32 (exact) and casts them back: a cost of the reference path only.
"""

from __future__ import annotations

import math

import onnx
from onnx import TensorProto, helper

from ..common import contract
from .onnx_node import BODY_OPSET, FunctionBody, _attention_body, schema_attributes

FP8_CACHE_OPSET = 19  # Cast to and from float8 (and Shape of a float8 tensor) need opset 19
_T = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]


def cache_op_schema(fp8: bool) -> onnx.defs.OpSchema:
    """The version-2 node's schema: 8 inputs (model-dtype pool) or 10 (FP8 codes, scales, rope)."""
    t = onnx.defs.OpSchema.FormalParameter
    names = contract.OP_FP8_CACHE_INPUTS if fp8 else contract.OP_PAGED_INPUTS
    types = ["T"] * 4 + ["tensor(float8e4m3fn)" if fp8 else "T", "tensor(int32)", "tensor(float)", "tensor(int32)"]
    types += ["tensor(float)", "T"] if fp8 else []
    outputs = contract.OP_FP8_CACHE_OUTPUTS if fp8 else contract.OP_OUTPUTS
    out_types = ["T", "tensor(float8e4m3fn)" if fp8 else "T"] + (["tensor(float)", "T"] if fp8 else [])
    return onnx.defs.OpSchema(
        contract.OP_TYPE, contract.OP_DOMAIN, contract.OP_DOMAIN_VERSION,
        inputs=[t(n, ty) for n, ty in zip(names, types)], outputs=[t(n, ty) for n, ty in zip(outputs, out_types)],
        type_constraints=[("T", _T, "activations and cache rows")],
        attributes=schema_attributes({**contract.OP_ATTRIBUTES, **contract.OP_CACHE_ATTRIBUTES}))


def cache_translation() -> dict:
    """The `custom_translation_table` entries of the version-2 ops."""
    import torch
    from onnxscript import values

    from ..model import cache_ops  # noqa: F401  (registers the ops)

    opset = values.Opset(contract.OP_DOMAIN, contract.OP_DOMAIN_VERSION)
    paged_op = values.Op(opset, contract.OP_TYPE, cache_op_schema(False))
    fp8_op = values.Op(opset, contract.OP_TYPE, cache_op_schema(True))

    def paged(q_latent, q_pe, kv_latent, k_pe, past_pages, cache_seqlens, rope_cos_sin, block_table, num_heads,
              kv_lora_rank, qk_rope_head_dim, softmax_scale, page_size):
        return paged_op(q_latent, q_pe, kv_latent, k_pe, past_pages, cache_seqlens, rope_cos_sin, block_table,
                        num_heads=num_heads, kv_lora_rank=kv_lora_rank, qk_rope_head_dim=qk_rope_head_dim,
                        softmax_scale=softmax_scale, page_size=page_size,
                        kv_cache_dtype=contract.KV_CACHE_DTYPE_MODEL, _num_outputs=2,
                        **contract.PLUGIN_LOOKUP_ATTRIBUTES)

    def fp8_cache(q_latent, q_pe, kv_latent, k_pe, past_codes, cache_seqlens, rope_cos_sin, block_table, past_scales,
                  past_rope, num_heads, kv_lora_rank, qk_rope_head_dim, softmax_scale, page_size):
        return fp8_op(q_latent, q_pe, kv_latent, k_pe, past_codes, cache_seqlens, rope_cos_sin, block_table,
                      past_scales, past_rope, num_heads=num_heads, kv_lora_rank=kv_lora_rank,
                      qk_rope_head_dim=qk_rope_head_dim, softmax_scale=softmax_scale, page_size=page_size,
                      kv_cache_dtype=contract.KV_CACHE_DTYPE_FP8, _num_outputs=4, **contract.PLUGIN_LOOKUP_ATTRIBUTES)

    return {torch.ops.mla.mla_attention_paged.default: paged,
            torch.ops.mla.mla_attention_fp8_cache.default: fp8_cache}


def _per_value(g: FunctionBody, scales: str, width: str) -> str:
    """Scales `[..., tiles]` repeated over their 128 values and cut to `width`: `[..., Dc]`."""
    tile = contract.FP8_CACHE_TILE
    expanded = g("Expand", g("Unsqueeze", scales, g.const([-1])),
                 g("Concat", g("Shape", scales), g.const([tile]), axis=0))  # [..., tiles, 128]
    lead = g("Slice", g("Shape", scales), g.const([0]), g.const([-1]))
    flat = g("Reshape", expanded, g("Concat", lead, g.const([-1]), axis=0))  # [..., tiles*128]
    return g("Slice", flat, g.const([0]), width, g.const([-1]))  # [..., Dc]


def _quantize(g: FunctionBody, x_float: str, width: str) -> tuple[str, str, str]:
    """c_kv rows `x_float [B, S, Dc]` (float) -> (codes e4m3, scales [B, S, tiles] float, per-value scales)."""
    tile = contract.FP8_CACHE_TILE
    tiles = g("Div", g("Add", width, g.const([tile - 1])), g.const([tile]))  # [1]: ceil(Dc/128)
    pad = g("Sub", g("Mul", tiles, g.const([tile])), width)  # [1]
    pads = g("Concat", g.const([0, 0, 0, 0, 0]), pad, axis=0)  # begin 0,0,0 / end 0,0,pad
    padded = g("Pad", g("Abs", x_float), pads)  # [B, S, tiles*128]
    lead = g("Slice", g("Shape", x_float), g.const([0]), g.const([-1]))
    amax = g("ReduceMax", g("Reshape", padded, g("Concat", lead, tiles, g.const([tile]), axis=0)), g.const([-1]),
             keepdims=0)  # [B, S, tiles]
    bound = g("Max", g("Div", amax, g.const(contract.FP8_MAX)), g.const(contract.FP8_CACHE_MIN_SCALE))
    # ceil(log2(bound)) from the natural log (off by at most one), then corrected exactly with powers of two
    k = g("Ceil", g("Div", g("Log", bound), g.const(math.log(2.0))))
    two = g.const(2.0)
    k = g("Where", g("GreaterOrEqual", g("Pow", two, g("Sub", k, g.const(1.0))), bound), g("Sub", k, g.const(1.0)), k)
    k = g("Where", g("Less", g("Pow", two, k), bound), g("Add", k, g.const(1.0)), k)
    scales = g("Pow", two, k)  # [B, S, tiles] float: exact powers of two
    per_value = _per_value(g, scales, width)  # [B, S, Dc]
    codes = g("Cast", g("Div", x_float, per_value), to=TensorProto.FLOAT8E4M3FN)
    return codes, scales, per_value


def cache_function_proto(fp8: bool) -> onnx.FunctionProto:
    """`MlaAttention` version 2 as a model-local function: 8 inputs (a paged pool in T) or 10 (an FP8 cache,
    paged or contiguous: a contiguous one comes with the identity block table `[B, 1]`)."""
    g = FunctionBody()
    q_latent, _, kv_latent, _, past, cache_seqlens, _, block_table = contract.OP_PAGED_INPUTS
    zero, one = g.scalar_int(0), g.scalar_int(1)
    new_tokens = g("Gather", g("Shape", q_latent), g.scalar_int(1))
    seqlens = g("Cast", cache_seqlens, to=TensorProto.INT64)  # [B]
    table = g("Cast", block_table, to=TensorProto.INT64)  # [B, max_pages]
    sized = contract.OP_FP8_CACHE_INPUTS[9] if fp8 else past  # ONNX Runtime has no Shape of a float8 tensor
    page = g("Gather", g("Shape", sized), g.scalar_int(1))  # rows per page (Smax when contiguous)
    needed = g("Div", g("Add", g("Add", seqlens, new_tokens), g("Sub", page, one)), page)  # [B] pages read
    used = g("Less", g("Unsqueeze", g("Range", zero, g("Gather", g("Shape", table), one), one), g.const([0])),
             g("Unsqueeze", needed, g.const([1])))  # [B, max_pages]
    ids = g("Where", used, table, zero)  # [B, max_pages]: unneeded slots read page 0

    def view(plane: str) -> str:  # [P, page, W] -> the rows of each sequence [B, max_pages*page, W]
        gathered = g("Gather", plane, ids, axis=0)  # [B, max_pages, page, W]
        return g("Reshape", gathered, g("Concat", g("Slice", g("Shape", ids), g.const([0]), g.const([1])),
                                        g.const([-1]), g("Slice", g("Shape", plane), g.const([2]), g.const([3])),
                                        axis=0))

    width = g("Slice", g("Shape", kv_latent), g.const([2]), g.const([3]))  # [1]: Dc
    rows_kv = kv_latent
    if fp8:
        past_scales, past_rope = contract.OP_FP8_CACHE_INPUTS[8:]
        # Gather and ScatterND take no float8 before opset 26 (nor does a byte reinterpretation): the codes are
        # moved as float32 (exact) and cast back once
        codes_float = g("Cast", past, to=TensorProto.FLOAT)  # [P, page, Dc]
        codes_view = view(codes_float)  # [B, rows, Dc]
        scale_view = _per_value(g, view(past_scales), width)  # [B, rows, Dc]
        dequantized = g("CastLike", g("Mul", codes_view, scale_view), kv_latent)
        contiguous = g("Concat", dequantized, g("CastLike", view(past_rope), kv_latent), axis=-1)  # [B, rows, Dc+Dr]
        new_codes, new_scales, per_value = _quantize(g, g("Cast", kv_latent, to=TensorProto.FLOAT), width)
        rows_kv = g("CastLike", g("Mul", g("Cast", new_codes, to=TensorProto.FLOAT), per_value), kv_latent)
    else:
        contiguous = view(past)  # [B, rows, Dc+Dr]
    new_rows = _attention_body(g, contiguous, "_present_view", rows_kv)  # [B, S, Dc+Dr]

    positions = g("Add", g("Unsqueeze", seqlens, g.const([1])), g("Range", zero, new_tokens, one))  # [B, S]
    page_ids = g("GatherElements", table, g("Div", positions, page), axis=1)  # [B, S]
    index = g("Concat", g("Unsqueeze", page_ids, g.const([-1])),
              g("Unsqueeze", g("Mod", positions, page), g.const([-1])), axis=-1)  # [B, S, 2]: (page, row)
    if fp8:
        present_codes, present_scales, present_rope = contract.OP_FP8_CACHE_OUTPUTS[1:]
        rope_rows = g("Slice", new_rows, width, g.const([1 << 30]), g.const([-1]))  # [B, S, Dr]
        written = g("ScatterND", codes_float, index, g("Cast", new_codes, to=TensorProto.FLOAT))
        g.nodes.append(helper.make_node("Cast", [written], [present_codes], to=TensorProto.FLOAT8E4M3FN))
        g.nodes.append(helper.make_node("ScatterND", [past_scales, index, new_scales], [present_scales]))
        g.nodes.append(helper.make_node("ScatterND", [past_rope, index, g("CastLike", rope_rows, past_rope)],
                                        [present_rope]))
        inputs, outputs = contract.OP_FP8_CACHE_INPUTS, contract.OP_FP8_CACHE_OUTPUTS
    else:
        g.nodes.append(helper.make_node("ScatterND", [past, index, new_rows], [contract.OP_OUTPUTS[1]]))
        inputs, outputs = contract.OP_PAGED_INPUTS, contract.OP_OUTPUTS
    return helper.make_function(
        contract.OP_DOMAIN, contract.OP_TYPE, list(inputs), list(outputs), g.nodes,
        opset_imports=[helper.make_opsetid("", FP8_CACHE_OPSET if fp8 else BODY_OPSET)],
        attributes=list(contract.OP_ATTRIBUTES) + list(contract.OP_CACHE_ATTRIBUTES)
        + list(contract.PLUGIN_LOOKUP_ATTRIBUTES))
