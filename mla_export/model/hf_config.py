"""Reading a DeepSeek-V2/V3 or Kimi K2 `config.json` into an `MlaConfig`, in both of its formats, from
a file, a checkpoint directory or a preset of `models/` (`load_config_file`, `load_preset`).

DeepSeek's hub files hold the RoPE settings as `rope_theta` + `rope_scaling`; transformers 5.x's
`save_pretrained` writes them as one `rope_parameters` object (and adds `rope_interleave`). Either is
read; when both are present they must agree. `HF_FIELDS` says what happens to every field of those
files and of transformers' `DeepseekV2Config`/`DeepseekV3Config`: used, refused when set to a value
mla-export does not implement, or shown not to affect inference. Keys outside it are ignored.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from .config import DEFAULT_ROPE_THETA, PRESET_DIR, ROPE_TYPES, MlaConfig, YarnScaling
from ..common.errors import UserError
from ..common.fileio import check_input_file

USED, NO_EFFECT, CHECKED = "used", "no effect on inference", "checked"
# What mla-export does with every field of DeepSeek's config.json files (V2, V2-Lite, V3, Kimi K2) and
# of transformers 5.24's DeepseekV2Config/DeepseekV3Config. USED: read into MlaConfig. CHECKED: only
# the values we implement are accepted, anything else is refused by name. NO_EFFECT: cannot change
# the forward pass of an inference model (the reason given). tests/test_config.py checks that
# transformers' classes define no field that is missing here.
HF_FIELDS: dict[str, tuple[str, str]] = {
    "hidden_size": (USED, "model width d"),
    "num_attention_heads": (USED, "query heads n_h"),
    "q_lora_rank": (USED, "query compression; null: queries straight from h"),
    "kv_lora_rank": (USED, "latent KV width (cached)"),
    "qk_nope_head_dim": (USED, "per-head query/key width without RoPE"),
    "qk_rope_head_dim": (USED, "decoupled RoPE width (cached)"),
    "v_head_dim": (USED, "per-head value width"),
    "intermediate_size": (USED, "dense SwiGLU MLP width"),
    "num_hidden_layers": (USED, "decoder layers"),
    "vocab_size": (USED, "embeddings and LM head (--io tokens)"),
    "rms_norm_eps": (USED, "decoder and final norms; q_a_layernorm and kv_a_layernorm use 1e-6 whatever "
                           "its value, as DeepSeek's and transformers' code do"),
    "max_position_embeddings": (USED, "upper bound of --max-seq-len"),
    "rope_theta": (USED, "RoPE base (DeepSeek's format)"),
    "rope_scaling": (USED, "null or YaRN (DeepSeek's format); other types refused by name"),
    "rope_parameters": (USED, "transformers 5.x's format of the two above; both present must agree"),
    "rope_interleave": (USED, "false: q_pe/k_pe weight rows in halves layout, permuted to pairs at load"),
    "partial_rotary_factor": (CHECKED, "1 only: MLA rotates all qk_rope_head_dim values"),
    "n_routed_experts": (USED, "with first_k_dense_replace and moe_layer_freq: which layers are MoE "
                               "(refused until the MoE model exists)"),
    "num_local_experts": (USED, "transformers' DeepseekV3 alias of n_routed_experts"),
    "num_experts": (USED, "transformers' DeepseekV2 alias of n_routed_experts"),
    "first_k_dense_replace": (USED, "layers before it are dense"),
    "moe_layer_freq": (USED, "every moe_layer_freq-th layer from first_k_dense_replace on is MoE "
                             "(DeepSeek's rule; transformers ignores it)"),
    "num_experts_per_tok": (USED, "MoE routing (read and checked; used by the MoE model)"),
    "n_group": (USED, "MoE routing (read and checked; used by the MoE model)"),
    "topk_group": (USED, "MoE routing (read and checked; used by the MoE model)"),
    "topk_method": (USED, "MoE routing: greedy, group_limited_greedy or noaux_tc"),
    "scoring_func": (USED, "MoE routing: softmax or sigmoid"),
    "norm_topk_prob": (USED, "MoE routing (read and checked; used by the MoE model)"),
    "routed_scaling_factor": (USED, "MoE routing (read and checked; used by the MoE model)"),
    "n_shared_experts": (USED, "MoE shared experts (read and checked; used by the MoE model)"),
    "moe_intermediate_size": (USED, "MoE expert width (read and checked; used by the MoE model)"),
    "model_type": (CHECKED, "deepseek_v2, deepseek_v3 or kimi_k2 (absent: deepseek_v3)"),
    "hidden_act": (CHECKED, "silu (or its other name, swish)"),
    "attention_bias": (CHECKED, "false: no biases in the attention projections"),
    "mlp_bias": (CHECKED, "false: no biases in the MLP (transformers' DeepseekV2)"),
    "tie_word_embeddings": (CHECKED, "false: a separate lm_head.weight"),
    "quantization_config": (CHECKED, "null or DeepSeek's FP8 (e4m3, 128x128 blocks), dequantized at load"),
    "num_key_value_heads": (NO_EFFECT, "MLA has no KV heads: every head's k_nope and v come from kv_b_proj; "
                                       "DeepSeek's code stores it unused (transformers needs it equal to "
                                       "num_attention_heads)"),
    "head_dim": (NO_EFFECT, "derived: transformers sets it to qk_rope_head_dim"),
    "qk_head_dim": (NO_EFFECT, "derived: qk_nope_head_dim + qk_rope_head_dim"),
    "attention_dropout": (NO_EFFECT, "training only"),
    "initializer_range": (NO_EFFECT, "training only (initial weights)"),
    "aux_loss_alpha": (NO_EFFECT, "MoE balance loss, training only"),
    "seq_aux": (NO_EFFECT, "MoE balance loss, training only"),
    "output_router_logits": (NO_EFFECT, "extra router outputs for the balance loss"),
    "use_cache": (NO_EFFECT, "runtime switch; the exported graph always takes and returns the latent cache"),
    "pretraining_tp": (NO_EFFECT, "tensor-parallel split of the same matmuls"),
    "ep_size": (NO_EFFECT, "expert-parallel placement"),
    "num_nextn_predict_layers": (NO_EFFECT, "multi-token-prediction modules after the last layer, for "
                                            "speculative decoding only; not exported"),
    "num_mtp_layers": (NO_EFFECT, "transformers' alias of num_nextn_predict_layers"),
    "bos_token_id": (NO_EFFECT, "generation"),
    "eos_token_id": (NO_EFFECT, "generation"),
    "pad_token_id": (NO_EFFECT, "padding_idx of the embedding: only affects that row's gradient"),
    "torch_dtype": (NO_EFFECT, "storage type of the weights; the export type is --dtype"),
    "dtype": (NO_EFFECT, "storage type of the weights; the export type is --dtype"),
    "architectures": (NO_EFFECT, "metadata (model_type is checked)"),
    "auto_map": (NO_EFFECT, "metadata (remote-code class names)"),
    "transformers_version": (NO_EFFECT, "metadata"),
    "_name_or_path": (NO_EFFECT, "metadata"),
}

# Keys a RoPE object (rope_scaling or rope_parameters) may hold.
_YARN_KEYS = ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "mscale", "mscale_all_dim",
              "attention_factor", "truncate")
_ROPE_KEYS = ("type", "rope_type", "rope_theta", "partial_rotary_factor") + _YARN_KEYS


def config_from_hf_dict(data: dict, name: str = "custom") -> MlaConfig:
    """`MlaConfig` of a config.json dict (either format); UserError naming the first bad field."""
    if not isinstance(data, dict):
        raise UserError("config: expected a JSON object with DeepSeek's field names")
    required = ("hidden_size", "num_attention_heads", "kv_lora_rank", "qk_nope_head_dim",
                "qk_rope_head_dim", "v_head_dim", "intermediate_size", "num_hidden_layers", "vocab_size")
    missing = [k for k in required if k not in data]
    if missing:
        raise UserError(f"config: missing field(s) {', '.join(missing)}; expected a DeepseekV2/V3 config.json "
                        "(see models/ for examples)")
    _check_unimplemented(data)
    rope_theta, rope_scaling = read_rope(data)
    kwargs = {k: data[k] for k in required}
    optional = ("q_lora_rank", "rms_norm_eps", "max_position_embeddings", "rope_interleave", "model_type",
                "first_k_dense_replace", "moe_layer_freq", "num_experts_per_tok", "n_group", "topk_group",
                "topk_method", "scoring_func", "norm_topk_prob", "routed_scaling_factor", "n_shared_experts",
                "moe_intermediate_size")
    kwargs.update({k: data[k] for k in optional if k in data})
    kwargs.setdefault("q_lora_rank", None)
    if kwargs.get("norm_topk_prob", False) is None:
        kwargs["norm_topk_prob"] = False  # transformers' type allows null; both codes read it as false
    kwargs["n_routed_experts"] = _routed_experts(data)
    try:
        return MlaConfig(rope_theta=rope_theta, rope_scaling=rope_scaling, name=name if data.get("mla_export_name") is None else data["mla_export_name"],
                         **kwargs)
    except (TypeError, ValueError) as exc:
        raise UserError(str(exc)) from None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# CHECKED fields with one implemented value: (accepted values, what mla-export runs instead).
_IMPLEMENTED = {
    "hidden_act": (("silu", "swish"), "SwiGLU MLPs (hidden_act 'silu', also called 'swish')"),
    "attention_bias": ((False,), "attention projections without biases (attention_bias false)"),
    "mlp_bias": ((False,), "MLP projections without biases (mlp_bias false)"),
    "tie_word_embeddings": ((False,), "an LM head of its own, lm_head.weight (tie_word_embeddings false)"),
}


def _check_unimplemented(data: dict) -> None:
    """Refuse known fields set to values mla-export does not implement (HF_FIELDS' CHECKED rows)."""
    for key, (values, runs) in _IMPLEMENTED.items():
        value = data.get(key, values[0])
        if not any(value is v or (isinstance(v, str) and value == v) for v in values):
            raise UserError(f"config field {key}={value!r}: not implemented; mla-export runs {runs}")
    partial = data.get("partial_rotary_factor", 1)
    if partial is not None and partial != 1:
        raise UserError(f"config field partial_rotary_factor={partial!r}: not implemented; "
                        f"{HF_FIELDS['partial_rotary_factor'][1]}")
    check_quantization(data.get("quantization_config"), "config")


def check_quantization(quant, where: str) -> None:
    """Refuse a `quantization_config` other than none or DeepSeek's FP8 (e4m3, 128x128 block scales); `where`
    ("config", "checkpoint DIR/config.json") starts the message."""
    if quant is None:
        return
    fp8 = {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128], "activation_scheme": "dynamic"}
    if not isinstance(quant, dict):
        raise UserError(f"{where} field quantization_config={quant!r}: expected an object or null")
    for key, expected in fp8.items():
        value = quant.get(key, expected)
        if value != expected:
            raise UserError(f"{where} field quantization_config.{key}={value!r}: not implemented; mla-export reads "
                            f"unquantized checkpoints and DeepSeek's FP8 ones ({key} {expected!r})")


def _routed_experts(data: dict) -> int | None:
    """n_routed_experts, or transformers' alias of it (num_local_experts, num_experts); refuse a mismatch."""
    given = {k: data[k] for k in ("n_routed_experts", "num_local_experts", "num_experts") if data.get(k) is not None}
    if len(set(map(repr, given.values()))) > 1:
        raise UserError("config fields " + ", ".join(f"{k}={v!r}" for k, v in given.items()) +
                        " disagree; they name the same thing (keep n_routed_experts)")
    return next(iter(given.values()), None)


def _rope_number(obj: dict, key: str, where: str, default):
    value = obj.get(key)
    if value is None:
        return default
    if not _is_number(value):
        raise UserError(f"config field {where}.{key}={value!r}: expected a number")
    return value


def read_rope_object(obj, where: str) -> tuple[float | None, YarnScaling | None]:
    """(rope_theta if given, YaRN parameters or None) of one RoPE object, `rope_scaling` (DeepSeek) or
    `rope_parameters` (transformers 5.x); UserError for a type or a value that is not implemented."""
    if not isinstance(obj, dict):
        raise UserError(f"config field {where}={obj!r}: expected an object or null")
    nested = [k for k, v in obj.items() if isinstance(v, dict)]
    if nested:
        raise UserError(f"config field {where}.{nested[0]}: per-layer RoPE parameters are not implemented; "
                        "DeepSeek and Kimi models use one set for every layer")
    kinds = {k: obj[k] for k in ("type", "rope_type") if k in obj}
    if len(set(map(repr, kinds.values()))) > 1:
        raise UserError(f"config fields {where}.type={kinds['type']!r} and {where}.rope_type={kinds['rope_type']!r} "
                        "disagree")
    key, kind = next(iter(kinds.items()), ("rope_type", "default"))
    if kind not in ROPE_TYPES:
        raise UserError(f"config field {where}.{key}={kind!r}: RoPE type {kind!r} is not implemented; mla-export "
                        "runs 'default' (plain RoPE) and 'yarn' (DeepSeek-V2/V3, Kimi K2)")
    unknown = sorted(set(obj) - set(_ROPE_KEYS))
    if unknown:
        raise UserError(f"config field {where}.{unknown[0]}: not a RoPE parameter mla-export knows; it understands "
                        f"{', '.join(_ROPE_KEYS)}")
    partial = obj.get("partial_rotary_factor")
    if partial is not None and partial != 1:
        raise UserError(f"config field {where}.partial_rotary_factor={partial!r}: not implemented; "
                        f"{HF_FIELDS['partial_rotary_factor'][1]}")
    theta = _rope_number(obj, "rope_theta", where, None)
    if kind == "default":
        extra = [k for k in _YARN_KEYS if obj.get(k) is not None]
        if extra:
            raise UserError(f"config field {where}.{extra[0]}={obj[extra[0]]!r}: set, but {where} says plain RoPE "
                            f"({key} {kind!r}), which has no {extra[0]}; set {key} 'yarn' or remove it")
        return theta, None
    for required in ("factor", "original_max_position_embeddings"):
        if obj.get(required) is None:
            raise UserError(f"config field {where}.{required} is missing (needed for YaRN)")
    if obj.get("truncate", True) is not True:
        raise UserError(f"config field {where}.truncate={obj['truncate']!r}: not implemented; DeepSeek's YaRN "
                        "rounds the correction range to whole dimensions (truncate true)")
    original = obj["original_max_position_embeddings"]
    if _is_number(original) and float(original).is_integer():
        original = int(original)
    yarn = YarnScaling(factor=float(_rope_number(obj, "factor", where, None)),
                       original_max_position_embeddings=original,
                       beta_fast=float(_rope_number(obj, "beta_fast", where, 32.0)),
                       beta_slow=float(_rope_number(obj, "beta_slow", where, 1.0)),
                       mscale=float(_rope_number(obj, "mscale", where, 1.0)),
                       mscale_all_dim=float(_rope_number(obj, "mscale_all_dim", where, 0.0)))
    given = _rope_number(obj, "attention_factor", where, None)
    # transformers takes an explicit cos/sin scale; DeepSeek's code always derives it from mscale and
    # mscale_all_dim. Accept it only where both give the same model.
    derived = yarn.cos_sin_scale
    if given is not None and not math.isclose(given, derived, rel_tol=1e-6):
        raise UserError(f"config field {where}.attention_factor={given!r}: not implemented; DeepSeek's YaRN scales "
                        f"cos/sin by mscale(factor, mscale) / mscale(factor, mscale_all_dim) = {derived:.6g}")
    return theta, yarn


def _rope_difference(old: YarnScaling | None, new: YarnScaling | None) -> str:
    """What differs between rope_scaling's and rope_parameters' YaRN settings, both values named."""
    if old is None or new is None:
        old_kind, new_kind = ("plain RoPE" if yarn is None else "yarn" for yarn in (old, new))
        return f"rope_scaling is {old_kind}, rope_parameters is {new_kind}"
    old_values, new_values = dataclasses.asdict(old), dataclasses.asdict(new)
    return ", ".join(f"rope_scaling.{k}={old_values[k]!r} vs rope_parameters.{k}={new_values[k]!r}"
                     for k in old_values if old_values[k] != new_values[k])


def read_rope(data: dict) -> tuple[float, YarnScaling | None]:
    """The effective (rope_theta, YaRN parameters or None) of a config.json dict.

    DeepSeek's files hold `rope_theta` and `rope_scaling`; transformers 5.x writes `rope_parameters`
    instead. Either is read; when both are present they must agree (transformers would silently let
    `rope_scaling` win over `rope_parameters`, and `rope_parameters.rope_theta` over `rope_theta`).
    """
    top_theta = data.get("rope_theta")
    if top_theta is not None and not _is_number(top_theta):
        raise UserError(f"config field rope_theta={top_theta!r}: expected a number")
    old, new = data.get("rope_scaling"), data.get("rope_parameters") or None  # {} reads as absent
    old_theta, old_yarn = read_rope_object(old, "rope_scaling") if old is not None else (None, None)
    new_theta, new_yarn = read_rope_object(new, "rope_parameters") if new is not None else (None, None)
    thetas = {k: v for k, v in (("rope_theta", top_theta), ("rope_scaling.rope_theta", old_theta),
                                ("rope_parameters.rope_theta", new_theta)) if v is not None}
    if len(set(thetas.values())) > 1:
        raise UserError("config fields " + " and ".join(f"{k}={v!r}" for k, v in thetas.items()) + " disagree; "
                        "keep one of DeepSeek's rope_theta + rope_scaling or transformers' rope_parameters")
    theta = float(next(iter(thetas.values()), DEFAULT_ROPE_THETA))
    if new is None:  # DeepSeek's format
        return theta, old_yarn
    if "rope_scaling" in data and old_yarn != new_yarn:
        raise UserError(f"config fields rope_scaling and rope_parameters disagree "
                        f"({_rope_difference(old_yarn, new_yarn)}); keep one of DeepSeek's rope_theta + "
                        "rope_scaling or transformers' rope_parameters")
    return theta, new_yarn


def preset_names() -> list[str]:
    """Names of the presets shipped in models/."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def load_config_file(path: str | Path) -> MlaConfig:
    """Read a DeepSeek `config.json` (or a directory holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    check_input_file("config", path, "; pass a DeepSeek config.json or a checkpoint directory")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"config {path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise UserError(f"config {path}: JSON nested too deeply; expected a DeepSeek config.json") from None
    except OSError as exc:
        raise UserError(f"config {path}: cannot be read ({exc.strerror or exc})") from None
    label = path.resolve().parent.name if path.name == "config.json" else path.stem
    return config_from_hf_dict(data, name=label if label and label.isprintable() else "custom")


def load_preset(name: str) -> MlaConfig:
    """One of the presets in models/ by name (e.g. 'tiny', 'deepseek-v3', 'kimi-k2')."""
    path = PRESET_DIR / f"{name}.json"
    if not path.is_file():
        raise UserError(f"unknown preset {name!r}; choose one of: {', '.join(preset_names())}")
    return load_config_file(path)
