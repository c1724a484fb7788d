"""Writing a traced graph's weights into one external data file, one layer (and one expert) at a time.

Every weight comes from the spec's weight source by name (`weights.py`): a decoder layer's unfolded
attention parameters are read and folded (pre-folded or laid out per head:
`folding.export_attention_state`), every other parameter is read as it is, and the routed experts are read
and written one expert at a time. Memory is therefore set by the largest layer's attention and dense
weights, not by the model or its experts. Every value is checked finite in the export's dtype as it is
written (a weight of 1e30 is inf in float16): the weight is named, and the export stops.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from ..model.folding import export_attention_state
from ..model.model import DecoderLayer, MlaAttention
from ..model.rope import rope_cos_sin
from ..model.spec import ModelSpec, torch_dtype
from ..model.parallel import TensorParallel
from .tp_shards import rank_slice
from .tracing import ROPE_TABLE, TracedGraph, WeightRef, meta_model
from ..common.errors import UserError
from ..weights.fp8_values import attention_fp8_state, expert_fp8, kept_fp8
from ..weights.weights import WeightSource, checkpoint_name, expert_chunks, is_expert_stack, parameter_value

# An FP8 export's routed experts: the stacks and their block scales (`fp8_forms.Fp8RoutedExperts`).
FP8_MLP = re.compile(r"^.*\.mlp\.(shared_experts\.)?(gate|up|down)_proj\.weight(_scale_inv)?$")
FP8_EXPERTS = re.compile(r"^(?P<prefix>.*\.mlp\.experts)\.(?P<kind>gate_up_proj|down_proj|gate_up_scale|down_scale)$")

ALIGN = 4096  # each tensor starts on a page: ONNX Runtime can map the file


@dataclass(frozen=True)
class Placement:
    """Where one initializer's bytes go in the data file."""

    name: str
    ref: WeightRef
    offset: int
    length: int
    shape: tuple[int, ...]
    dtype: torch.dtype


def _torch_dtype(value) -> torch.dtype:
    import onnx_ir as ir

    table = {ir.DataType.FLOAT: torch.float32, ir.DataType.FLOAT16: torch.float16,
             ir.DataType.BFLOAT16: torch.bfloat16, ir.DataType.FLOAT8E4M3FN: torch.float8_e4m3fn}
    return table[value.dtype]


def _order(ref: WeightRef) -> tuple:
    """Data-file order: embeddings, then layer by layer, then final norm, LM head, rope table."""
    if ref.layer is not None:
        return (1, ref.layer)
    return (0, 0) if ref.param.startswith("embed_tokens") else (2, 0)


def plan_layout(traced: TracedGraph) -> list[Placement]:
    """Every weight initializer's offset and length, in the order `write_weights` produces them."""
    graph = traced.model.graph
    placements, offset = [], 0
    for name, ref in sorted(traced.weights.items(), key=lambda item: (_order(item[1]), item[0])):
        value = graph.initializers[name]
        shape = tuple(int(d) for d in value.shape)
        dtype = _torch_dtype(value)
        length = dtype.itemsize
        for d in shape:
            length *= d
        placements.append(Placement(name, ref, offset, length, shape, dtype))
        offset += -(-length // ALIGN) * ALIGN
    return placements


def data_bytes(layout: list[Placement]) -> int:
    """Size of the data file the layout describes."""
    return max((p.offset + p.length for p in layout), default=0)


class LayerValues:
    """The export form's parameter values (pre-folded or run-time, FP8 or not), produced for one decoder
    layer at a time (and, for the routed experts, one expert at a time). Under --tp, rank `spec.tp_rank`'s
    slices of the single-device values (`tp_shards`), and only its own experts."""

    def __init__(self, spec: ModelSpec, source: WeightSource):
        self.spec, self.source = spec, source
        self.tp = TensorParallel(spec.tp_size, spec.tp_rank)
        self.full_shapes = {}  # the single-device shape of every parameter (--tp only)
        if self.tp.enabled:
            self.full_shapes = {name: tuple(p.shape) for name, p in meta_model(spec.single_device()).named_parameters()}
        self.layer: int | None = None
        self.values: dict[str, torch.Tensor] = {}
        self.expert_scales: dict[tuple[str, int], torch.Tensor] = {}  # FP8 experts' scales, kept from their weights

    def _load_layer(self, index: int) -> None:
        config, dtype = self.spec.config, torch_dtype(self.spec.dtype)
        with torch.device("meta"):
            unfolded = DecoderLayer(config, MlaAttention(config), moe=config.is_moe_layer(index))
        prefix = f"layers.{index}."
        attention = {name[len("self_attn."):]: parameter_value(self.source, prefix + name, tuple(p.shape))
                     for name, p in unfolded.named_parameters() if name.startswith("self_attn.")}
        if self.spec.quant == "fp8":
            state = attention_fp8_state(config, self.source, attention, prefix + "self_attn.", self.spec.absorb)
        else:
            state = export_attention_state(config, attention, dtype, self.spec.absorb)
        self.values = {prefix + "self_attn." + name: value for name, value in state.items()}
        self.expert_scales.clear()
        self.layer = index

    def chunks(self, ref: WeightRef, shape: tuple[int, ...]) -> Iterator[torch.Tensor]:
        """The value of `ref` (the export form's parameter, or the rope table) as consecutive chunks."""
        if ref.param == ROPE_TABLE:
            yield rope_cos_sin(self.spec.config, self.spec.max_seq_len, torch.float32)
            return
        if ref.layer is not None and ref.layer != self.layer:
            self._load_layer(ref.layer)
        value_shape = shape[::-1] if ref.transposed else shape
        full_shape = self.full_shapes.get(ref.param, value_shape)  # the single-device shape
        if self.spec.quant == "fp8" and FP8_EXPERTS.match(ref.param):
            yield from self._fp8_experts(ref.param, self.tp.part(full_shape[0]))
            return
        if is_expert_stack(ref.param):
            yield from expert_chunks(self.source, ref.param, full_shape, self.tp.part(full_shape[0]))
            return
        value = self.values.get(ref.param)
        if value is None and self.spec.quant == "fp8" and FP8_MLP.match(ref.param):
            value = self._fp8_linear(ref.param)
        if value is None:
            value = parameter_value(self.source, ref.param, full_shape)
        value = rank_slice(value, ref.param, self.tp, self.full_shapes)
        yield value.T if ref.transposed else value

    def _fp8_linear(self, param: str) -> torch.Tensor:
        """A dense or shared-expert MLP's FP8 weight or its scale (the pair made once per layer)."""
        weight = param.removesuffix("_scale_inv")
        if weight not in self.values:
            q, scale = kept_fp8(self.source, checkpoint_name(weight), self._mlp_shape(weight))
            self.values[weight], self.values[weight + "_scale_inv"] = q, scale
        return self.values[param]

    def _mlp_shape(self, weight: str) -> tuple[int, int]:
        """The [out, in] shape of a dense or shared-expert MLP weight."""
        c = self.spec.config
        shared = ".shared_experts." in weight
        inter = c.n_shared_experts * c.moe_intermediate_size if shared else c.intermediate_size
        return (c.hidden_size, inter) if weight.endswith("down_proj.weight") else (inter, c.hidden_size)

    def _fp8_experts(self, param: str, experts: range) -> Iterator[torch.Tensor]:
        """An FP8 expert stack (`gate_up_proj`, `down_proj`) or its scales, one expert at a time."""
        match = FP8_EXPERTS.match(param)
        kind = "gate_up_proj" if match["kind"].startswith("gate_up") else "down_proj"
        prefix = checkpoint_name(match["prefix"])
        for j in experts:
            if match["kind"].endswith("_scale") and (kind, j) in self.expert_scales:
                yield self.expert_scales.pop((kind, j))
                continue
            q, scale = expert_fp8(self.source, prefix, kind, j, self.spec.config)
            if match["kind"].endswith("_scale"):
                yield scale
            else:
                self.expert_scales[(kind, j)] = scale
                yield q

    def label(self, ref: WeightRef, chunk: int) -> str:
        """What the user knows chunk `chunk` of `ref` as: a checkpoint name, or the folded weight's name."""
        if ref.param == ROPE_TABLE:
            return "the RoPE cos/sin table"
        if is_expert_stack(ref.param) or FP8_EXPERTS.match(ref.param):
            return f"{checkpoint_name(ref.param.rsplit('.', 1)[0])}.{chunk}.*"
        if ref.param in self.values:
            return f"{ref.param} (folded from layer {ref.layer}'s attention weights)"
        return checkpoint_name(ref.param)


def _check_finite(value: torch.Tensor, data: torch.Tensor, label: str) -> None:
    """Refuse a weight `value` that is not finite once cast to the export's dtype (`data`; 1e30 is inf in
    float16): the checkpoint's values are checked finite when read, so this is the cast (or the fold)
    overflowing."""
    if bool(torch.isfinite(data).all()):
        return
    kind = str(data.dtype).removeprefix("torch.")
    instead = {"float16": "--dtype bfloat16 or float32", "bfloat16": "--dtype float32"}.get(kind)
    fix = f"export with {instead}" if instead else "the checkpoint's weights are too large"
    largest = float(value.double().abs().max())
    raise UserError(f"weight {label} holds {largest:.3g}, past {kind}'s largest value "
                    f"({torch.finfo(data.dtype).max:.3g}): {fix}")


def write_weights(path: Path, layout: list[Placement], spec: ModelSpec, source: WeightSource,
                  progress: Callable[[int, int, str], None] | None = None) -> None:
    """Write every placement's bytes to `path` (a new file), in layout order; UserError, naming the weight,
    for one that is not finite in the export's dtype.

    `progress(done_bytes, total_bytes, what)` is called as tensors are written.
    """
    values = LayerValues(spec, source)
    total = data_bytes(layout)
    with open(path, "wb") as out:
        for p in layout:
            out.seek(p.offset)
            written = 0
            for index, chunk in enumerate(values.chunks(p.ref, p.shape)):
                data = chunk.to(p.dtype).contiguous()
                if p.dtype != torch.float8_e4m3fn:  # FP8 values are finite by construction (and checked when read)
                    _check_finite(chunk, data, values.label(p.ref, index))
                out.write(memoryview(data.view(-1).view(torch.uint8).numpy()))
                written += data.numel() * data.element_size()
            if written != p.length:
                raise RuntimeError(f"weight {p.name}: wrote {written} bytes for a {p.shape} {p.dtype} tensor")
            if progress is not None:
                layer = p.ref.layer
                progress(p.offset + p.length, total, f"layer {layer}" if layer is not None else p.ref.param)
        out.truncate(total)
