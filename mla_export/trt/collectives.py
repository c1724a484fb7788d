"""A `--tp` rank graph's collectives for TensorRT: `mla::AllReduce` / `mla::AllGather` rewritten to TensorRT's
`DistCollective` ONNX node before parsing, the parsed DIST_COLLECTIVE layers checked after, and the builder's
multi-device switch.

The node form TensorRT's ONNX parser reads (onnx-tensorrt 10.16's importer; seen with TensorRT-RTX 1.7's
parser, tests/test_collectives.py): op `DistCollective` in the default domain, one input, attributes
`collective_operation` ("all_reduce", "all_gather", ...), `reduce_op` ("sum", ... "none"), `root` (-1: none),
`groups` INTS and `group_size` INT (the length of `groups`: the parser refuses a non-zero group_size with empty
groups, "Group size must be 0 if groups is empty"; empty = every rank), `nb_rank` (the layer's num_ranks, which
sets an all-gather's output shape; without it the parser leaves 1). TensorRT gathers along the FIRST dimension,
so an AllGather along axis a becomes Transpose(a to 0) -> DistCollective -> Transpose back.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

from ..common import contract
from ..common.errors import UserError

DIST_OP_TYPE = "DistCollective"
COLLECTIVES = (contract.ALL_REDUCE_OP_TYPE, contract.ALL_GATHER_OP_TYPE)
MIN_TENSORRT = (10, 16)  # the first TensorRT whose ONNX parser reads DistCollective (its CHANGELOG, 10.16 GA)
PREVIEW_UNTIL = (11, 0)  # 10.16 <= v < 11: behind PreviewFeature.MULTIDEVICE_RUNTIME_10_16; GA in 11
PREVIEW_FEATURE = "MULTIDEVICE_RUNTIME_10_16"


def collective_nodes(graph) -> list:
    """The `mla` AllReduce and AllGather nodes of `graph` (an onnx GraphProto), in node order."""
    return [n for n in graph.node if n.domain == contract.OP_DOMAIN and n.op_type in COLLECTIVES]


def _attributes(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _rank_of(model, name: str) -> int | None:
    """The number of dims of value `name` as the model declares it, else as ONNX's shape inference gives it
    with every collective read as Identity (an all-gather keeps the rank); None where neither tells."""
    import onnx

    def declared(graph) -> int | None:
        for value in list(graph.value_info) + list(graph.input) + list(graph.output):
            if value.name == name and value.type.tensor_type.HasField("shape"):
                return len(value.type.tensor_type.shape.dim)
        return None

    rank = declared(model.graph)
    if rank is not None:
        return rank
    probe = copy.deepcopy(model)
    for node in collective_nodes(probe.graph):
        node.domain, node.op_type = "", "Identity"
        del node.attribute[:]
    try:
        return declared(onnx.shape_inference.infer_shapes(probe).graph)
    except Exception:  # shape inference gives up on some graphs: the caller says which value it could not size
        return None


def _dist_node(onnx, source: str, target: str, name: str, operation: str, reduce_op: str, world_size: int):
    node = onnx.helper.make_node(DIST_OP_TYPE, [source], [target], name=name, collective_operation=operation,
                                 reduce_op=reduce_op, root=-1, group_size=0, nb_rank=world_size)
    node.attribute.append(onnx.helper.make_attribute("groups", [], attr_type=onnx.AttributeProto.INTS))
    return node


def rewrite_collectives(model, world_size: int, source: str):
    """A copy of `model` (an onnx ModelProto, weights not needed) with each `mla::AllReduce` replaced by a
    DistCollective all_reduce (sum) and each `mla::AllGather` along axis a by Transpose(a to 0) ->
    DistCollective all_gather -> Transpose back, every node keeping its input and output names; returns
    (the copy, the number of DistCollective nodes). UserError, naming the node and `source`, for a node whose
    world_size is not `world_size` or whose axis is out of range."""
    import onnx

    rewritten = copy.deepcopy(model)
    nodes = []
    count = 0
    for node in rewritten.graph.node:
        if node.domain != contract.OP_DOMAIN or node.op_type not in COLLECTIVES:
            nodes.append(node)
            continue
        attrs = _attributes(node)
        if attrs.get("world_size") != world_size or len(node.input) != 1 or len(node.output) != 1:
            raise UserError(f"{source}: {node.op_type} node {node.name} has world_size {attrs.get('world_size')}, "
                            f"{len(node.input)} input(s), the export says {world_size} ranks; re-export it")
        count += 1
        if node.op_type == contract.ALL_REDUCE_OP_TYPE:
            nodes.append(_dist_node(onnx, node.input[0], node.output[0], node.name, "all_reduce", "sum", world_size))
            continue
        rank = _rank_of(model, node.input[0])
        if rank is None:
            raise UserError(f"{source}: cannot tell the number of dims of {node.input[0]} (AllGather node "
                            f"{node.name}); re-export it with mla-export export")
        axis = attrs.get("axis", 0)
        if not -rank <= axis < rank:
            raise UserError(f"{source}: AllGather node {node.name} has axis {axis} for a {rank}-D input; re-export it")
        axis %= rank
        if axis == 0:
            nodes.append(_dist_node(onnx, node.input[0], node.output[0], node.name, "all_gather", "none", world_size))
            continue
        perm = [axis] + [d for d in range(rank) if d != axis]  # [..., n, ...] -> [n, ...]
        back = [perm.index(d) for d in range(rank)]  # [N*n, ...] -> [..., N*n, ...]
        front, gathered = f"{node.output[0]}.gather_front", f"{node.output[0]}.gathered"
        nodes += [onnx.helper.make_node("Transpose", [node.input[0]], [front], name=f"{node.name}.to_front", perm=perm),
                  _dist_node(onnx, front, gathered, node.name, "all_gather", "none", world_size),
                  onnx.helper.make_node("Transpose", [gathered], [node.output[0]], name=f"{node.name}.back", perm=back)]
    del rewritten.graph.node[:]
    rewritten.graph.node.extend(nodes)
    return rewritten, count


def dist_collective_layers(trt, network) -> list:
    """The DIST_COLLECTIVE layers of a parsed network, in layer order (empty where the bindings lack the type)."""
    kind = getattr(trt.LayerType, "DIST_COLLECTIVE", None)
    return [network.get_layer(i) for i in range(network.num_layers)
            if kind is not None and network.get_layer(i).type == kind]


def check_collective_layers(trt, network, expected: int, world_size: int, source: str) -> int:
    """Check that the parser made one DIST_COLLECTIVE layer per rewritten collective node (`expected`), and
    give every one `world_size` ranks where the parser left 1; returns the layer count. UserError otherwise."""
    layers = dist_collective_layers(trt, network)
    if len(layers) != expected:
        raise UserError(f"{source}: the parser created {len(layers)} DistCollective layer(s) for {expected} "
                        "collective node(s); build with TensorRT 10.16 or later")
    for layer in layers:
        if layer.num_ranks <= 1 < world_size:
            layer.num_ranks = world_size
        if layer.num_ranks != world_size:
            raise UserError(f"{source}: layer {layer.name} is set for {layer.num_ranks} ranks, the export has "
                            f"{world_size}; re-export it")
    return len(layers)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", str(text))[:2])


def require_multidevice(trt, backend: str, world_size: int) -> None:
    """Refuse, before parsing, a TensorRT without DistCollective (before 10.16) for `world_size` > 1 ranks.
    TensorRT-RTX's parser and builder take the layer (seen with 1.7)."""
    if world_size > 1 and backend == "tensorrt" and _version(trt.__version__) < MIN_TENSORRT:
        raise UserError(f"a --tp {world_size} export needs TensorRT 10.16 or later (its DistCollective layer); "
                        f"this is TensorRT {trt.__version__}: upgrade TensorRT")


def enable_multidevice(trt, config, backend: str, world_size: int) -> None:
    """Let `config` build an engine with collectives for `world_size` ranks: PreviewFeature.MULTIDEVICE_RUNTIME_10_16
    on for TensorRT 10.16 <= v < 11 (GA in 11; TensorRT-RTX has no such switch)."""
    require_multidevice(trt, backend, world_size)
    if world_size <= 1 or backend != "tensorrt" or _version(trt.__version__) >= PREVIEW_UNTIL:
        return
    feature = getattr(trt.PreviewFeature, PREVIEW_FEATURE, None)
    if feature is None:
        raise UserError(f"TensorRT {trt.__version__} has no PreviewFeature.{PREVIEW_FEATURE}; upgrade TensorRT")
    config.set_preview_feature(feature, True)


@dataclass(frozen=True)
class RankIdentity:
    """Which rank of which `--tp` export a graph is (size 1, rank 0, export_id None: a single-device export)."""

    size: int = 1
    rank: int = 0
    export_id: str | None = None


def parse_form(trt, backend: str, model, identity: RankIdentity, source: str) -> tuple[bytes | None, int]:
    """What the parser reads for a rank graph `model` (an onnx ModelProto: the header, or its inlined form):
    (serialized bytes with the collectives rewritten, their count), or (None, 0) for a single-device graph,
    which is parsed as it is (the reader refuses collectives in one). Refuses a TensorRT without DistCollective
    first."""
    if identity.size <= 1:
        return None, 0
    require_multidevice(trt, backend, identity.size)
    rewritten, count = rewrite_collectives(model, identity.size, source)
    return rewritten.SerializeToString(), count
