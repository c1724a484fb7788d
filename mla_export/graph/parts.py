"""An export cut into parts that run alone: the embedding (with `--io tokens`), each decoder layer, the head
(final norm and LM head, with `--io tokens`). Per-layer validation runs one part at a time on ONNX Runtime,
so memory holds one layer's weights, never the model's.

A layer's input is the hidden state its `input_layernorm` reads; its outputs are the next layer's input (or
the head's, or the graph's hidden-state output) and its `present_latent_cache.i`. The cut is found in the
graph itself (the norm's weight initializer names the layer), so any export of ours can be cut; a part is
every node between its inputs and outputs, with the initializers, model-local functions and opsets they use.
Weights stay where they are: a part of an export with an external data file points into that file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..common.errors import UserError


@dataclass(frozen=True)
class Part:
    """One runnable piece: `inputs` it is fed (boundary tensors and graph inputs), `outputs` it returns."""

    label: str  # "embedding", "layer 3", "head"
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    layer: int | None = None  # the decoder layer, for a layer's part
    graph_inputs: tuple[str, ...] = field(default=())  # graph inputs the part reads beside `inputs` (shapes)


def _norm_input(graph, weight: str, source: str) -> str:
    """The tensor an RMSNorm with weight initializer `weight` normalizes: `x` of `Mul(Mul(x, rsqrt), weight)`
    where `x` is squared (`Pow`), through the Casts a half-precision graph puts around the float32 norm."""
    produced = {out: node for node in graph.node for out in node.output}
    squared = {n.input[0] for n in graph.node if n.op_type == "Pow"}
    weights = {weight} | {n.output[0] for n in graph.node if n.op_type == "Cast" and n.input[0] == weight}
    for node in graph.node:
        if node.op_type != "Mul" or not weights & set(node.input):
            continue
        scaled = produced.get(next((i for i in node.input if i not in weights), ""))
        found = [i for i in scaled.input if i in squared] if scaled is not None and scaled.op_type == "Mul" else []
        if found:
            cast = produced.get(found[0])
            return cast.input[0] if cast is not None and cast.op_type == "Cast" else found[0]
    raise UserError(f"{source}: no RMSNorm with weight {weight} in the graph, so it cannot be cut per layer; "
                    "validate it whole (--whole), or re-export it with mla-export")


def layer_parts(header, spec, source: str) -> list[Part]:
    """The parts of an export, in order; `header` is its ModelProto (weights need not be loaded)."""
    graph = header.graph
    inputs, outputs = spec.graph_io_names()
    config = spec.config
    boundaries = [_norm_input(graph, f"layers.{i}.input_layernorm.weight", source)
                  for i in range(config.num_hidden_layers)]
    tokens = spec.io == "tokens"
    boundaries.append(_norm_input(graph, "norm.weight", source) if tokens else outputs[0])
    parts = []
    if tokens:
        parts.append(Part("embedding", (inputs[0],), (boundaries[0],)))
    for i in range(config.num_hidden_layers):
        parts.append(Part(f"layer {i}", (boundaries[i], inputs[1], inputs[2 + i]),
                          (boundaries[i + 1], outputs[1 + i]), layer=i))
    if tokens:
        parts.append(Part("head", (boundaries[-1],), (outputs[0],)))
    return [_with_graph_inputs(graph, part) for part in parts]


def _needed_nodes(graph, part: Part) -> tuple[list, set[str]]:
    """The nodes (in graph order) between the part's inputs and outputs, and the graph inputs they reach."""
    produced = {out: index for index, node in enumerate(graph.node) for out in node.output}
    graph_inputs = {i.name for i in graph.input}
    keep, reached, stack, seen = set(), set(), list(part.outputs), set()
    while stack:
        name = stack.pop()
        if name in seen or name in part.inputs or not name:
            continue
        seen.add(name)
        if name in produced:
            index = produced[name]
            if index not in keep:
                keep.add(index)
                stack.extend(graph.node[index].input)
        elif name in graph_inputs:
            reached.add(name)
    return [graph.node[i] for i in sorted(keep)], reached


def _with_graph_inputs(graph, part: Part) -> Part:
    _, reached = _needed_nodes(graph, part)
    return Part(part.label, part.inputs, part.outputs, part.layer, tuple(sorted(reached)))


def part_model(header, part: Part, hidden_elem_type: int):
    """A ModelProto of `part` alone. Boundary tensors are typed `hidden_elem_type` `[batch, new_tokens, d]`."""
    import onnx
    from onnx import helper

    graph = header.graph
    nodes, _ = _needed_nodes(graph, part)
    used = {name for node in nodes for name in node.input}
    initializers = [t for t in graph.initializer if t.name in used]
    declared = {v.name: v for v in list(graph.input) + list(graph.output) + list(graph.value_info)}

    def value(name: str):
        if name in declared:
            return declared[name]
        return helper.make_tensor_value_info(name, hidden_elem_type, ["batch", "new_tokens", None])

    sub = helper.make_graph(nodes, f"{graph.name} {part.label}",
                            [value(n) for n in part.inputs + part.graph_inputs],
                            [value(n) for n in part.outputs], initializers)
    model = helper.make_model(sub, opset_imports=list(header.opset_import), ir_version=header.ir_version)
    used_ops = {(node.domain, node.op_type) for node in nodes}
    model.functions.extend(f for f in header.functions if (f.domain, f.name) in used_ops)
    return model


def write_part(header, part: Part, hidden_elem_type: int, data_file: Path | None, directory: Path) -> Path:
    """`part` as `directory/<label>.onnx`, beside a link to the export's external data file `data_file` (None:
    the weights are inside), which its initializers point into; ONNX Runtime reads only the part's weights."""
    import onnx

    model = part_model(header, part, hidden_elem_type)
    if data_file is not None and not (directory / data_file.name).exists():
        os.symlink(data_file.resolve(), directory / data_file.name)
    path = directory / (part.label.replace(" ", "_") + ".onnx")
    onnx.save(model, str(path))
    return path
