"""Tracing without weights: the pre-folded model of a spec, built on PyTorch's meta device (shapes and
dtypes, no data), traced to an ONNX graph whose weight initializers hold no values yet.

`trace_graph` returns that graph and, for each weight initializer, which parameter of the pre-folded
model it holds (and whether transposed); `weight_stream` then writes the values one layer at a time. So
tracing costs the same for a tiny model and for DeepSeek-V3, and never holds a weight in memory.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import torch

from ..common import contract
from ..model.fp8_forms import to_fp8_form
from ..model.model import MlaModel
from ..model.parallel import TensorParallel
from .onnx_cache import cache_translation
from .onnx_collective import collective_translation
from .onnx_fp8 import fp8_translation
from .onnx_moe import moe_translation
from .onnx_node import translation_table
from ..model.spec import ModelSpec, torch_dtype

ONNX_OPSET = 18
ROPE_TABLE = "rope_cos_sin_float32"  # the model's rope table attribute, lifted into an initializer


@dataclass(frozen=True)
class WeightRef:
    """What a weight initializer of the traced graph holds: parameter `param` of the pre-folded model
    (or the rope table, ROPE_TABLE), transposed when `transposed` (a 2-D weight feeding a MatMul)."""

    param: str
    transposed: bool = False

    @property
    def layer(self) -> int | None:
        """The decoder layer the parameter belongs to, or None (embeddings, final norm, LM head, rope table)."""
        parts = self.param.split(".")
        return int(parts[1]) if parts[0] == "layers" else None


@dataclass
class TracedGraph:
    """The traced graph (`onnx_ir.Model`) and, by initializer name, the weight each one holds."""

    model: object
    weights: dict[str, WeightRef]


def meta_model(spec: ModelSpec) -> MlaModel:
    """The export form of `spec` (pre-folded or run-time absorbed) on the meta device, in the spec's dtype."""
    with torch.device("meta"):
        model = MlaModel(spec.config, spec.max_seq_len, folded=True, absorb=spec.absorb,
                         with_embeddings=spec.io == "tokens", tp=TensorParallel(spec.tp_size, spec.tp_rank),
                         cache=spec.cache, kv_cache_dtype=spec.kv_cache_dtype, page_size=spec.page_size)
    model = model.to(torch_dtype(spec.dtype))
    if spec.quant == "fp8":
        with torch.device("meta"):
            to_fp8_form(model)
    return model.eval()


def _example_inputs(model: MlaModel, spec: ModelSpec) -> tuple:
    batch, new_tokens = 2, 2  # >1 so the tracer keeps both axes symbolic
    if spec.io == "tokens":
        x = torch.zeros(batch, new_tokens, dtype=torch.long, device="meta")
    else:
        x = torch.zeros(batch, new_tokens, spec.config.hidden_size, dtype=torch_dtype(spec.dtype), device="meta")
    cache = model.new_cache(batch)
    if not spec.cache_contract:
        return x, cache.seqlens, tuple(cache.layers), ({0: "batch"},) * len(cache.layers)
    c, dtype = spec.config, torch_dtype(spec.dtype)
    paged = spec.cache == "paged"
    rows = (EXAMPLE_PAGES, spec.page_size) if paged else (batch, spec.max_seq_len)  # [P, page] or [B, Smax]
    pool_axis = {0: "num_pages"} if paged else {0: "batch"}
    caches, axes = [], []
    if paged:
        caches.append(torch.zeros(batch, spec.max_pages, dtype=torch.int32, device="meta"))  # block_table
        axes.append({0: "batch"})
    for _ in range(c.num_hidden_layers):
        if spec.kv_cache_dtype == "fp8":
            tiles = -(-c.kv_lora_rank // contract.FP8_CACHE_TILE)
            caches += [torch.zeros(*rows, c.kv_lora_rank, dtype=torch.float8_e4m3fn, device="meta"),
                       torch.zeros(*rows, tiles, dtype=torch.float32, device="meta"),
                       torch.zeros(*rows, c.qk_rope_head_dim, dtype=dtype, device="meta")]
            axes += [pool_axis] * 3
        else:
            caches.append(torch.zeros(*rows, c.cache_width, dtype=dtype, device="meta"))
            axes.append(pool_axis)
    return x, cache.seqlens, tuple(caches), tuple(axes)


EXAMPLE_PAGES = 7  # pool pages in the traced example: a size no other axis has, so the tracer keeps it apart


def _fold_weight_transposes(graph, weights: dict[str, WeightRef]) -> None:
    """Replace each Transpose of a 2-D weight initializer by an initializer `<name>.T` holding it transposed,
    so the stored weights feed their MatMuls directly (as the exporter's optimizer does when it has values)."""
    import onnx_ir as ir

    for node in list(graph):
        source = node.inputs[0] if node.op_type == "Transpose" and node.inputs else None
        if source is None or source.name not in weights or len(source.shape) != 2:
            continue
        perm = node.attributes.get("perm")
        if perm is not None and list(perm.as_ints()) != [1, 0]:
            continue
        name = source.name + ".T"
        if name not in graph.initializers:
            rows, cols = source.shape
            value = ir.Value(name=name, shape=ir.Shape([cols, rows]), type=ir.TensorType(source.dtype))
            graph.initializers[name] = value
            weights[name] = WeightRef(weights[source.name].param, transposed=True)
        node.outputs[0].replace_all_uses_with(graph.initializers[name])
        graph.remove(node, safe=True)
    for name in [n for n, v in graph.initializers.items() if n in weights and not v.uses()]:
        del graph.initializers[name]
        del weights[name]


def trace_graph(spec: ModelSpec) -> TracedGraph:
    """Trace the pre-folded model of `spec` (weightless) to an optimized ONNX graph.

    Inputs and outputs are named as in `contract.graph_io_names`; batch and new tokens are dynamic. The
    graph's weight initializers are listed in `weights` and hold no values (`const_value` None).
    """
    _quiet_exporter()
    model = meta_model(spec)
    x, seqlens, caches, axes = _example_inputs(model, spec)
    dims = {"batch": torch.export.Dim("batch", min=1, max=1 << 16),
            "num_pages": torch.export.Dim("num_pages", min=1, max=1 << 24)}
    new_tokens = torch.export.Dim("new_tokens", min=1, max=spec.max_seq_len)
    dynamic_shapes = ({0: dims["batch"], 1: new_tokens}, {0: dims["batch"]},
                      tuple({axis: dims[name] for axis, name in spec_axes.items()} for spec_axes in axes))
    inputs, outputs = spec.graph_io_names()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model, (x, seqlens, *caches), dynamo=True, dynamic_shapes=dynamic_shapes, input_names=inputs,
            output_names=outputs, opset_version=ONNX_OPSET,
            custom_translation_table={**translation_table(), **moe_translation(), **fp8_translation(),
                                      **collective_translation(), **cache_translation()},
            optimize=False, verbose=False, report=False)
    graph = program.model.graph
    params = {name for name, _ in model.named_parameters()} | {ROPE_TABLE}
    weights = {name: WeightRef(name) for name in graph.initializers if name in params}
    unknown = [name for name, v in graph.initializers.items() if name not in weights]
    if unknown:
        raise RuntimeError(f"traced graph holds initializers that are no model weight: {unknown[:5]}")
    for name in weights:  # meta tensors: nothing to fold, nothing to read
        graph.initializers[name].const_value = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program.optimize()
    _fold_weight_transposes(graph, weights)
    _name_nodes(graph)
    return TracedGraph(program.model, weights)


def _quiet_exporter() -> None:
    """The exporter's own chatter (registration notes, optimizer notes about weightless initializers) off."""
    for name in ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript", "onnx_ir"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _name_nodes(graph) -> None:
    """Give every node a unique name (`<op>_<n>`), as builders that report per-node messages expect."""
    seen: set[str] = set()
    for index, node in enumerate(graph):
        name = node.name or f"{node.op_type}_{index}"
        if name in seen:
            name = f"{name}_{index}"
        seen.add(name)
        node.name = name


def attention_node_count(traced: TracedGraph) -> tuple[int, int]:
    """(MlaAttention nodes, DeepseekMoE nodes) of the traced graph."""
    nodes = [(n.op_type, n.domain) for n in traced.model.graph]
    return (nodes.count((contract.OP_TYPE, contract.OP_DOMAIN)), nodes.count((contract.MOE_OP_TYPE, contract.OP_DOMAIN)))
