"""Planted bugs for `validate`: each edit makes an export (or a runtime) wrong in one known way."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from safetensors.torch import save_file

from mla_export.common import contract
from mla_export.graph.tracing import ROPE_TABLE
from mla_export.model.folding import fold_model
from mla_export.model.model import MlaModel
from mla_export.model.spec import ModelSpec, torch_dtype
from mla_export.run.runners import from_numpy, to_numpy
from mla_export.weights.eager import eager_model
from mla_export.weights.weights import RandomWeights, checkpoint_name, load_weights

ROOT = Path(__file__).resolve().parents[1]


def _edit_initializer(path: Path, name: str, change) -> None:
    model = onnx.load(str(path))
    for init in model.graph.initializer:
        if init.name == name:
            init.CopyFrom(numpy_helper.from_array(change(numpy_helper.to_array(init)).astype(
                numpy_helper.to_array(init).dtype), name))
            break
    else:
        raise KeyError(name)
    onnx.save(model, str(path))


def scale_weight(path: Path, name: str, factor: float) -> None:
    """Initializer `name` (e.g. `layers.1.mlp.down_proj.weight.T`) times `factor`."""
    _edit_initializer(path, name, lambda w: w * factor)


def shift_rope_table(path: Path) -> None:
    """The RoPE table one position late: row p holds position p - 1's angles."""
    _edit_initializer(path, ROPE_TABLE, lambda table: np.roll(table, 1, axis=0))


def misplace_cache_rows(path: Path, layer: int) -> None:
    """Layer `layer`'s MlaAttention is told each sequence holds one row more than it does: it writes its new
    rows one position late (and reads the row it skipped)."""
    model = onnx.load(str(path))
    nodes = [n for n in model.graph.node if n.op_type == contract.OP_TYPE]
    node = nodes[layer]
    index = contract.OP_INPUTS.index("cache_seqlens")
    model.graph.initializer.append(numpy_helper.from_array(np.array(1, dtype=np.int32), "planted_one"))
    shifted = helper.make_node("Add", [node.input[index], "planted_one"], ["planted_seqlens"], name="planted_add")
    node.input[index] = "planted_seqlens"
    position = list(model.graph.node).index(node)
    model.graph.node.insert(position, shifted)
    onnx.save(model, str(path))


def small_logits_checkpoint(directory: Path, layers: int = 2, lm_head_scale: float = 0.01) -> None:
    """tiny's first `layers` layers as a HF checkpoint (float32, RandomWeights(0) values) whose LM head is
    scaled by `lm_head_scale`: logits 100x smaller than normal, all within bfloat16's absolute tolerance."""
    directory.mkdir()
    config = {**json.loads((ROOT / "models" / "tiny.json").read_text()), "num_hidden_layers": layers}
    (directory / "config.json").write_text(json.dumps(config))
    from mla_export.model.hf_config import load_config_file

    model = MlaModel(load_config_file(directory), 64, with_embeddings=True)
    load_weights(model, RandomWeights(0))
    tensors = {checkpoint_name(k): v.detach().clone() for k, v in model.state_dict().items()}
    tensors["lm_head.weight"] *= lm_head_scale
    save_file(tensors, str(directory / "model.safetensors"))


class TorchRunner:
    """The export form of `spec` run eagerly by torch in the spec's dtype (bfloat16 on the CPU, which ONNX
    Runtime's CPU provider cannot run): a `Runner` over the graph's names. `wrong_head` swaps the LM head for
    another matrix of the same scale, a bug that keeps every logit as small as the right ones."""

    name = "torch"

    def __init__(self, spec: ModelSpec, wrong_head: bool = False):
        self.spec = spec
        self.model = fold_model(eager_model(spec), torch_dtype(spec.dtype), spec.absorb).eval()
        if wrong_head:
            head = self.model.lm_head.weight
            gen = torch.Generator().manual_seed(99)
            with torch.no_grad():
                head.copy_(torch.randn(head.shape, generator=gen).to(head.dtype) * head.float().std().to(head.dtype))

    def run(self, feeds: dict) -> dict:
        in_names, out_names = self.spec.graph_io_names()
        with torch.no_grad():
            outputs = self.model(from_numpy(feeds[in_names[0]]), from_numpy(feeds[in_names[1]]),
                                 *(from_numpy(feeds[n]) for n in in_names[2:]))
        return {name: to_numpy(t) for name, t in zip(out_names, outputs)}
