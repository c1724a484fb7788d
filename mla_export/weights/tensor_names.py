"""Which tensors of a checkpoint a model reads (the checkpoint name of each eager parameter), and which
others a checkpoint of the same model may hold.

A checkpoint is read by name (`weights.py`), so a checkpoint of another model can share most names with
the config's and be read without a word, its other tensors left behind: a stray
`self_attn.<name>.weight`, a top-level name of another architecture, expert tensors in a dense layer.
`check_tensor_names` refuses every tensor the config's model has no place for, naming it, except the
known extras, which it returns so that the caller can name them as skipped:

- DeepSeek-V3's multi-token-prediction layers, stored after the last decoder layer as
  `model.layers.{num_hidden_layers}.*` (`num_nextn_predict_layers` of them, one when unset), which
  transformers also skips (`_keys_to_ignore_on_load_unexpected`);
- RoPE's `rotary_emb.inv_freq` buffers that older checkpoints saved (recomputed from the config).

The layers of the checkpoint past the ones exported (`--layers N`) are the model's own: their names are
checked like the exported layers', by the same dense/MoE rule.
"""

from __future__ import annotations

import re
from typing import Iterable

import torch

from ..common.errors import UserError
from ..model.config import MlaConfig
from .checkpoint import SCALE_SUFFIX

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
# The eager model stacks each MoE layer's routed experts: `layers.{i}.mlp.experts.{gate_up_proj,down_proj}`.
EXPERT_STACK = re.compile(r"^(?P<prefix>.*\.mlp\.experts)\.(?P<kind>gate_up_proj|down_proj)$")


def checkpoint_name(param: str) -> str:
    """The checkpoint name of an eager (unstacked) parameter name."""
    name = param.replace(".q_compression.", ".")
    return name if name == "lm_head.weight" else "model." + name


def is_expert_stack(param: str) -> bool:
    return EXPERT_STACK.match(param) is not None
RECOMPUTED = ("rotary_emb.inv_freq",)  # buffers a checkpoint may hold that are computed from the config


def _layer_names(config: MlaConfig, moe: bool) -> frozenset[str]:
    """The checkpoint names of one decoder layer's tensors, without the `model.layers.{i}.` prefix."""
    from ..model.model import DecoderLayer, MlaAttention

    with torch.device("meta"):
        layer = DecoderLayer(config, MlaAttention(config), moe=moe)
    names = set()
    for param, value in layer.named_parameters():
        if is_expert_stack("layers.0." + param):
            prefix = param.rsplit(".", 1)[0]  # mlp.experts
            kinds = ("gate_proj", "up_proj") if param.endswith("gate_up_proj") else ("down_proj",)
            names.update(f"{prefix}.{j}.{kind}.weight" for j in range(value.shape[0]) for kind in kinds)
        else:
            names.add(checkpoint_name("layers.0." + param).removeprefix("model.layers.0."))
    return frozenset(names)


def _top_names(config: MlaConfig) -> frozenset[str]:
    """Checkpoint names outside the decoder layers: embeddings, final norm, LM head."""
    from ..model.model import MlaModel

    with torch.device("meta"):
        model = MlaModel(config.with_layers(1), 2, with_embeddings=True)
    return frozenset(checkpoint_name(p) for p, _ in model.named_parameters() if not p.startswith("layers."))


def _int_field(data: dict, *keys: str) -> int | None:
    for key in keys:
        value = data.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def checkpoint_layout(checkpoint_config: dict, names: Iterable[str], model_layers: int) -> tuple[int, int]:
    """(decoder layers, multi-token-prediction layers after them) a checkpoint holds: num_hidden_layers and
    num_nextn_predict_layers (or num_mtp_layers) of its config.json; where those are unset, from its names
    (an MTP layer holds `eh_proj.weight`, the decoder layers come before it)."""
    indices, mtp = set(), set()
    for name in names:
        match = _LAYER.match(name)
        if match:
            indices.add(int(match[1]))
            if match[2] == "eh_proj.weight":
                mtp.add(int(match[1]))
    layers = _int_field(checkpoint_config, "num_hidden_layers")
    if layers is None:
        layers = min(mtp) if mtp else max(indices, default=-1) + 1
    layers = max(layers, model_layers)
    count = _int_field(checkpoint_config, "num_nextn_predict_layers", "num_mtp_layers")
    return layers, count if count is not None else sum(i >= layers for i in mtp)


def check_tensor_names(names: Iterable[str], config: MlaConfig, checkpoint_config: dict, where: str) -> list[str]:
    """Refuse the tensors of `names` (a checkpoint's) that `config`'s model has no place for; return the
    known extras among them (sorted), which the model does not read. `checkpoint_config`: the checkpoint's
    config.json ({} when it has none); `where` names the checkpoint in the message."""
    names = list(names)
    layers, mtp_layers = checkpoint_layout(checkpoint_config, names, config.num_hidden_layers)
    kinds = {moe: _layer_names(config, moe) for moe in {config.is_moe_layer(i) for i in range(layers)}}
    top = _top_names(config)
    extras, unknown = [], []
    for name in names:
        base = name.removesuffix(SCALE_SUFFIX) if name.endswith(".weight" + SCALE_SUFFIX) else name
        match = _LAYER.match(base)
        if name.endswith(RECOMPUTED) or (match and layers <= int(match[1]) < layers + mtp_layers):
            extras.append(name)
        elif match and int(match[1]) < layers and match[2] in kinds[config.is_moe_layer(int(match[1]))]:
            continue
        elif base not in top:
            unknown.append(name)
    if unknown:
        unknown.sort(key=_natural)
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise UserError(f"{where}: tensor {unknown[0]}{more} has no place in the config's model: the checkpoint "
                        "and the config are of different models")
    return sorted(extras, key=_natural)


def _natural(name: str) -> list:
    """Sort key putting layer 2 before layer 10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def skipped_summary(extras: list[str]) -> str | None:
    """One line naming the known extras a checkpoint holds and the export skips, by layer prefix."""
    if not extras:
        return None
    groups: dict[tuple[str, str], int] = {}
    for name in extras:
        match = _LAYER.match(name)
        key = (f"*.{RECOMPUTED[0]}", "recomputed") if name.endswith(RECOMPUTED) else \
            (f"model.layers.{match[1]}.*", "multi-token prediction")
        groups[key] = groups.get(key, 0) + 1
    parts = ", ".join(f"{prefix} ({what}, {count} tensor{'s' if count > 1 else ''})"
                      for (prefix, what), count in groups.items())
    return f"checkpoint: skipped what the export does not use: {parts}"
