"""Export: eager model -> export form (pre-folded, or run-time absorbed: `ModelSpec.absorb`) -> ONNX
with one `MlaAttention` node per layer.

`export_onnx` traces the export form with `torch.onnx.export(dynamo=True)`, maps the custom op to the
contract's node, adds the node's model-local function, records config and contract in the metadata,
checks the result with `onnx.checker` (full check) and moves it into place atomically.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from . import __version__, contract
from .eager import eager_model
from .errors import FieldError
from .folding import fold_model
from .onnx_node import function_proto, translation_table
from .spec import ModelSpec, torch_dtype

ONNX_IR_VERSION = 10  # ONNX Runtime 1.22+ reads it; recent onnx writes 11+ by default
ONNX_OPSET = 18
EXTERNAL_DATA_THRESHOLD = 1 << 31  # protobuf's 2 GB limit


def _example_inputs(model, spec: ModelSpec, dtype: torch.dtype) -> tuple:
    batch, new_tokens = 2, 2  # >1 so the tracer keeps both axes symbolic
    c = spec.config
    if spec.io == "tokens":
        x = torch.zeros(batch, new_tokens, dtype=torch.long)
    else:
        x = torch.zeros(batch, new_tokens, c.hidden_size, dtype=dtype)
    cache = model.new_cache(batch, dtype)
    return (x, cache.seqlens, tuple(cache.layers))


def _trace(folded, spec: ModelSpec, path: Path) -> None:
    """Trace `folded` to `path` (external data beside it when large)."""
    dtype = torch_dtype(spec.dtype)
    args = _example_inputs(folded, spec, dtype)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    new_tokens = torch.export.Dim("new_tokens", min=1, max=spec.max_seq_len)
    first = {0: batch, 1: new_tokens}
    dynamic_shapes = (first, {0: batch}, tuple({0: batch} for _ in args[2]))
    inputs, outputs = spec.graph_io_names()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            folded, (args[0], args[1], *args[2]), dynamo=True, dynamic_shapes=dynamic_shapes,
            input_names=inputs, output_names=outputs, opset_version=ONNX_OPSET,
            custom_translation_table=translation_table(), optimize=False, verbose=False, report=False)
        # TensorRT needs the optimized graph (constant axes, folded shapes), where each weight that
        # feeds a MatMul through a Transpose is folded into an anonymous initializer: name it back.
        transposed = {node.outputs[0].name: node.inputs[0].name for node in program.model.graph
                      if node.op_type == "Transpose" and node.inputs[0].is_initializer()}
        program.optimize()
        for name, value in list(program.model.graph.initializers.items()):
            if name in transposed:
                value.name = transposed[name] + ".T"
    program.save(str(path), external_data=_weight_bytes(folded) >= EXTERNAL_DATA_THRESHOLD)


def _weight_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _finish(path: Path, spec: ModelSpec) -> None:
    """Add the op's function, metadata and IR version to the saved model, in place."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    model.ir_version = ONNX_IR_VERSION
    model.functions.append(function_proto())
    if not any(o.domain == contract.OP_DOMAIN for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid(contract.OP_DOMAIN, contract.OP_DOMAIN_VERSION))
    model.producer_name, model.producer_version = "mla_export", __version__
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, spec.metadata())
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path), full_check=True)


def export_onnx(spec: ModelSpec, output: str | Path) -> Path:
    """Export `spec` to `output` (plus `output.data` when past 2 GB); nothing is left behind on failure."""
    output = Path(output)
    if output.suffix != ".onnx":
        raise FieldError("output", str(output), "expected a path ending in .onnx")
    if not output.parent.is_dir():
        raise FieldError("output", str(output), f"directory {output.parent} does not exist")
    model = eager_model(spec)
    folded = fold_model(model, torch_dtype(spec.dtype), spec.absorb).eval()
    del model
    staging = Path(tempfile.mkdtemp(prefix=".mla-export-", dir=output.parent))
    try:
        staged = staging / output.name
        _trace(folded, spec, staged)
        _finish(staged, spec)
        for produced in sorted(staging.iterdir(), key=lambda p: p.suffix == ".onnx"):  # the .onnx last
            os.replace(produced, output.parent / produced.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output
