"""The export form of a spec as an eager model holding the very values the ONNX file holds.

`validate` compares an FP8 export (`--quant fp8`) with this model, run with float64 activations: its
FP8 weights are the export's bytes and scales (dequantized exactly inside `BlockFp8MatMul` and
`DeepseekMoE`), so the comparison judges the runtime, not the quantization. Its values come from
`weight_stream.LayerValues`, the producer of the data file, one layer at a time.
"""

from __future__ import annotations

import torch

from ..model.fp8_forms import to_fp8_form
from ..model.model import DecoderLayer, MlaModel
from ..model.rope import rope_cos_sin
from ..model.spec import ModelSpec
from ..weights.weights import WeightSource
from .tracing import WeightRef
from .weight_stream import LayerValues


def _fill(module: torch.nn.Module, values: LayerValues, prefix: str) -> None:
    """Every parameter of `module` (`prefix + name` in the export form) from `values`, kept in its type
    (FP8 weights and their float32 scales as stored; every other weight converted to the module's type)."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            chunks = list(values.chunks(WeightRef(prefix + name), tuple(param.shape)))
            value = torch.stack(chunks) if len(chunks) > 1 or chunks[0].shape != param.shape else chunks[0]
            param.data = value.to(param.dtype).reshape(param.shape).clone()


def export_form_layer(spec: ModelSpec, source: WeightSource, index: int, dtype: torch.dtype) -> DecoderLayer:
    """Decoder layer `index` of the spec's export form (pre-folded or run-time, FP8 where `spec.quant` says),
    its float weights in `dtype`, its FP8 weights as the export stores them, eval mode."""
    with torch.device("meta"):
        model = MlaModel(spec.config.with_layers(index + 1), spec.max_seq_len, folded=True, absorb=spec.absorb)
        if spec.quant == "fp8":
            to_fp8_form(model)
    layer = model.layers[index].to_empty(device="cpu")
    layer.to(dtype)
    _fill(layer, LayerValues(spec, source), f"layers.{index}.")
    return layer.eval()


def export_form_model(spec: ModelSpec, source: WeightSource, dtype: torch.dtype) -> MlaModel:
    """The whole export form of `spec` (embeddings and head included for io "tokens"), as `export_form_layer`
    makes each layer."""
    with torch.device("meta"):
        model = MlaModel(spec.config, spec.max_seq_len, folded=True, absorb=spec.absorb,
                         with_embeddings=spec.io == "tokens")
        if spec.quant == "fp8":
            to_fp8_form(model)
    model = model.to_empty(device="cpu")
    model.to(dtype)
    values = LayerValues(spec, source)
    for name, module in model.named_children():
        if name == "layers":
            for index, layer in enumerate(module):
                _fill(layer, values, f"layers.{index}.")
        else:
            _fill(module, values, f"{name}.")
    # the tables were made on the meta device with the model: made again
    model.rope_cos_sin_float64 = rope_cos_sin(spec.config, spec.max_seq_len, torch.float64)
    model.rope_cos_sin_float32 = model.rope_cos_sin_float64.float()
    return model.eval()


def requantization_error(spec: ModelSpec, source: WeightSource, index: int) -> dict[str, float]:
    """For an FP8 spec, layer `index`: each re-quantized attention weight's relative RMS error against its
    float64 value (the fold of the dequantized factors, or the cut weight), {name: error}."""
    from ..model.fp8 import dequantize_blocks
    from ..model.folding import export_attention_state
    from ..model.model import MlaAttention
    from ..weights.fp8_values import requantized_weights
    from ..weights.weights import parameter_value

    names = [n for n in requantized_weights(spec.config, spec.absorb) if not n.startswith("experts.")]
    if not names:
        return {}
    with torch.device("meta"):
        unfolded = MlaAttention(spec.config)
    prefix = f"layers.{index}.self_attn."
    factors = {name: parameter_value(source, prefix + name, tuple(p.shape)).double()
               for name, p in unfolded.named_parameters()}
    exact = export_attention_state(spec.config, factors, torch.float64, spec.absorb)
    if spec.absorb == "runtime":  # the FP8 form's layouts: W_UK^T per head, W_UV per head
        exact = {"w_uk.weight": exact["w_uk"].transpose(1, 2), "w_uv.weight": exact["w_uv"].transpose(1, 2)}
    values = LayerValues(spec, source)
    errors = {}
    for name in names:
        weight = prefix + name + ".weight"
        q = next(values.chunks(WeightRef(weight), ()))
        scale = values.values[weight + "_scale_inv"]
        ref = exact[name + ".weight"]
        errors[name] = float(torch.linalg.norm(dequantize_blocks(q, scale, torch.float64) - ref) / torch.linalg.norm(ref))
    return errors
