"""An export cut into parts that run alone: the embedding (with `--io tokens`), each decoder layer, the head
(final norm and LM head, with `--io tokens`). Per-layer validation runs one part at a time on ONNX Runtime,
so memory holds one layer's weights, never the model's.

A layer's input is the hidden state its `input_layernorm` reads; its outputs are the next layer's input (or
the head's, or the graph's hidden-state output) and its `present_latent_cache.i` (contract version 2: the
block table among its inputs, and its pool or FP8 planes in and out). The cut is found in the
graph itself (the norm's weight initializer names the layer), so any export of ours can be cut; a part is
every node between its inputs and outputs, with the initializers, model-local functions and opsets they use.
Weights stay where they are where they can: a part of an export with an external data file points into a
hard link to that file (`part_directory`), else it holds a copy of its own weights, removed after use.
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
    planes = 3 if spec.kv_cache_dtype == "fp8" else 1  # cache tensors per layer (contract.graph_io_names)
    shared = tuple(inputs[1:3 if spec.cache == "paged" else 2])  # cache_seqlens (and the block table)
    first = 1 + len(shared)
    parts = []
    if tokens:
        parts.append(Part("embedding", (inputs[0],), (boundaries[0],)))
    for i in range(config.num_hidden_layers):
        caches_in = tuple(inputs[first + i * planes:first + (i + 1) * planes])
        caches_out = tuple(outputs[1 + i * planes:1 + (i + 1) * planes])
        parts.append(Part(f"layer {i}", (boundaries[i], *shared, *caches_in), (boundaries[i + 1], *caches_out),
                          layer=i))
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


def part_directory(data_file: Path | None):
    """A temporary directory for the parts of an export whose weights are in `data_file` (None: inside the
    .onnx), removed on exit. ONNX Runtime reads external data only from inside a model's own directory
    (symbolic links resolved), so where it can the directory sits beside the export, hidden, and holds a hard
    link to the data file; elsewhere (an unwritable directory, a file system without hard links) each part
    gets a copy of its own weights."""
    import tempfile

    if data_file is not None:
        try:
            directory = tempfile.TemporaryDirectory(prefix=".mla-export-parts-", dir=data_file.parent)
        except OSError:
            pass
        else:
            try:
                os.link(data_file, Path(directory.name) / data_file.name)
                return directory
            except OSError:
                directory.cleanup()
    return tempfile.TemporaryDirectory(prefix="mla-export-parts-")


def _inline_external(model, data_file: Path) -> None:
    """Read each external initializer of `model` (a part: one layer's weights) from `data_file` into it."""
    from onnx import TensorProto

    with open(data_file, "rb") as data:
        for init in model.graph.initializer:
            if init.data_location != TensorProto.EXTERNAL:
                continue
            info = {e.key: e.value for e in init.external_data}
            data.seek(int(info.get("offset", 0)))
            init.raw_data = data.read(int(info["length"]))
            del init.external_data[:]
            init.data_location = TensorProto.DEFAULT


def write_part(header, part: Part, hidden_elem_type: int, data_file: Path | None, directory: Path) -> Path:
    """`part` as `directory/<label>.onnx` (a `part_directory`). Its initializers point into the export's data
    file where the directory links it; otherwise the part's weights are copied beside it."""
    import onnx

    model = part_model(header, part, hidden_elem_type)
    path = directory / (part.label.replace(" ", "_") + ".onnx")
    if data_file is None or (directory / data_file.name).exists():
        onnx.save(model, str(path))
    else:
        _inline_external(model, data_file)
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=path.name + ".data", size_threshold=1024)
    return path


def remove_part(path: Path) -> None:
    """Delete a written part and its own data file (if it has one); the linked export data stays."""
    for file in (path, path.with_name(path.name + ".data")):
        file.unlink(missing_ok=True)
