"""The ONNX side of the collectives (`--tp N`): the `AllReduce` and `AllGather` nodes' schemas and the
exporter's translation of `mla::all_reduce` / `mla::all_gather` (`model/parallel.py`).

The nodes have no function body (`contract.py` says why): TensorRT's build rewrites them to its own
`DistCollective` layer, and validation cuts each rank's graph at them (`graph/collective_parts.py`).
"""

from __future__ import annotations

import onnx

from ..common import contract

_TYPES = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]


def collective_schema(op_type: str, attributes: dict[str, str]) -> onnx.defs.OpSchema:
    """A collective's schema: one input, one output of the same element type T."""
    t = onnx.defs.OpSchema.FormalParameter
    attr = onnx.defs.OpSchema.Attribute
    return onnx.defs.OpSchema(
        op_type, contract.OP_DOMAIN, contract.OP_DOMAIN_VERSION,
        inputs=[t(name, "T") for name in contract.COLLECTIVE_INPUTS],
        outputs=[t(name, "T") for name in contract.COLLECTIVE_OUTPUTS],
        type_constraints=[("T", _TYPES, "activations")],
        attributes=[attr(name, onnx.defs.OpSchema.AttrType.INT, name) for name in attributes])


def collective_translation() -> dict:
    """The `custom_translation_table` entries: mla::all_reduce -> AllReduce, mla::all_gather -> AllGather."""
    import torch
    from onnxscript import values

    from ..model import parallel  # noqa: F401  (registers the ops)

    opset = values.Opset(contract.OP_DOMAIN, contract.OP_DOMAIN_VERSION)
    reduce_op = values.Op(opset, contract.ALL_REDUCE_OP_TYPE,
                          collective_schema(contract.ALL_REDUCE_OP_TYPE, contract.ALL_REDUCE_ATTRIBUTES))
    gather_op = values.Op(opset, contract.ALL_GATHER_OP_TYPE,
                          collective_schema(contract.ALL_GATHER_OP_TYPE, contract.ALL_GATHER_ATTRIBUTES))

    def all_reduce(x, world_size):
        return reduce_op(x, world_size=world_size)

    def all_gather(x, world_size, axis):
        return gather_op(x, world_size=world_size, axis=axis)

    return {torch.ops.mla.all_reduce.default: all_reduce, torch.ops.mla.all_gather.default: all_gather}


def collective_nodes(graph) -> list:
    """The `AllReduce` / `AllGather` nodes of an ONNX graph (GraphProto), in graph order."""
    kinds = {contract.ALL_REDUCE_OP_TYPE, contract.ALL_GATHER_OP_TYPE}
    return [n for n in graph.node if n.domain == contract.OP_DOMAIN and n.op_type in kinds]
