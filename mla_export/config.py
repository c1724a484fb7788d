"""Typed, frozen MLA model configuration with DeepSeek's field names.

`MlaConfig.from_hf_dict` reads a DeepseekV2/V3 `config.json` (as in the HF repositories); the
presets in `models/` are files of that same format, so one reader serves both.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

from .errors import FieldError, UserError

PRESET_DIR = Path(__file__).resolve().parent.parent / "models"


@dataclass(frozen=True)
class YarnScaling:
    """YaRN context extension (`rope_scaling` with `type: yarn`).

    factor: context extension factor s.
    original_max_position_embeddings: context length the base RoPE was trained for.
    beta_fast, beta_slow: rotation counts bounding the frequency blend ramp.
    mscale, mscale_all_dim: attention-temperature coefficients; the softmax scale is multiplied
        by get_mscale(factor, mscale_all_dim)**2 and cos/sin by
        get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim).
    """

    factor: float
    original_max_position_embeddings: int
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 1.0
    mscale_all_dim: float = 0.0


def yarn_get_mscale(factor: float, mscale: float) -> float:
    """YaRN's attention temperature: 0.1 * mscale * ln(factor) + 1 (1 when factor <= 1)."""
    if factor <= 1.0:
        return 1.0
    return 0.1 * mscale * math.log(factor) + 1.0


@dataclass(frozen=True)
class MlaConfig:
    """One MLA decoder stack.

    hidden_size: model width d.
    num_attention_heads: query heads n_h.
    q_lora_rank: query compression rank d_c'; None means queries come straight from h.
    kv_lora_rank: latent KV width d_c (cached).
    qk_nope_head_dim: per-head query/key width without RoPE d_h.
    qk_rope_head_dim: decoupled RoPE width d_r (one key shared by all heads; cached).
    v_head_dim: per-head value width.
    intermediate_size: width of the dense SwiGLU MLP.
    num_hidden_layers: decoder layers in the full model.
    vocab_size: token vocabulary (embeddings and LM head).
    rms_norm_eps: RMSNorm epsilon.
    rope_theta: RoPE base.
    max_position_embeddings: longest context the model supports.
    rope_scaling: YaRN parameters, or None for plain RoPE.
    first_k_dense_replace, n_routed_experts, moe_layer_freq: which layers use an MoE MLP
        (DeepSeek's rule); MoE layers are not supported yet.
    name: a label for reports.
    """

    hidden_size: int
    num_attention_heads: int
    q_lora_rank: int | None
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    intermediate_size: int
    num_hidden_layers: int
    vocab_size: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 4096
    rope_scaling: YarnScaling | None = None
    first_k_dense_replace: int = 0
    n_routed_experts: int | None = None
    moe_layer_freq: int = 1
    name: str = "custom"

    def __post_init__(self) -> None:
        positive = ("hidden_size", "num_attention_heads", "kv_lora_rank", "qk_nope_head_dim",
                    "qk_rope_head_dim", "v_head_dim", "intermediate_size", "num_hidden_layers",
                    "vocab_size", "max_position_embeddings")
        for field in positive:
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"config field {field}={value!r}: expected a positive integer")
        if self.q_lora_rank is not None and (not isinstance(self.q_lora_rank, int) or self.q_lora_rank <= 0):
            raise ValueError(f"config field q_lora_rank={self.q_lora_rank!r}: expected a positive integer or null")
        if self.qk_rope_head_dim % 2:
            raise ValueError(f"config field qk_rope_head_dim={self.qk_rope_head_dim}: expected an even number "
                             "(RoPE rotates pairs)")
        if not (self.rms_norm_eps > 0):
            raise ValueError(f"config field rms_norm_eps={self.rms_norm_eps!r}: expected a positive number")
        if not (self.rope_theta > 1):
            raise ValueError(f"config field rope_theta={self.rope_theta!r}: expected a number > 1")
        if self.rope_scaling is not None:
            rs = self.rope_scaling
            if not (rs.factor >= 1):
                raise ValueError(f"config field rope_scaling.factor={rs.factor!r}: expected >= 1")
            if rs.original_max_position_embeddings <= 0:
                raise ValueError("config field rope_scaling.original_max_position_embeddings="
                                 f"{rs.original_max_position_embeddings!r}: expected a positive integer")
            if not (rs.beta_fast > rs.beta_slow > 0):
                raise ValueError(f"config fields rope_scaling.beta_fast={rs.beta_fast!r}, beta_slow={rs.beta_slow!r}: "
                                 "expected beta_fast > beta_slow > 0")

    # Derived sizes.
    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def cache_width(self) -> int:
        """Values cached per token per layer: kv_lora_rank + qk_rope_head_dim."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    @property
    def softmax_scale(self) -> float:
        """1/sqrt(d_h + d_r), times mscale**2 when YaRN is on."""
        scale = self.qk_head_dim ** -0.5
        if self.rope_scaling is not None and self.rope_scaling.mscale_all_dim:
            m = yarn_get_mscale(self.rope_scaling.factor, self.rope_scaling.mscale_all_dim)
            scale *= m * m
        return scale

    def is_moe_layer(self, layer: int) -> bool:
        """DeepSeek's rule: MoE from layer first_k_dense_replace on, every moe_layer_freq layers."""
        return (self.n_routed_experts is not None and layer >= self.first_k_dense_replace
                and layer % self.moe_layer_freq == 0)

    def with_layers(self, num_layers: int) -> "MlaConfig":
        """The same model truncated (or not) to its first `num_layers` layers."""
        if num_layers <= 0:
            raise FieldError("num_layers", num_layers, "expected a positive number of layers")
        if num_layers > self.num_hidden_layers:
            raise FieldError("num_layers", num_layers, f"the model has only {self.num_hidden_layers} layers")
        return dataclasses.replace(self, num_hidden_layers=num_layers)

    # Serialization in DeepSeek's config.json format.
    def to_hf_dict(self) -> dict:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("rope_scaling", "name")}
        out["rope_scaling"] = None
        if self.rope_scaling is not None:
            out["rope_scaling"] = {"type": "yarn", **dataclasses.asdict(self.rope_scaling)}
        out["mla_export_name"] = self.name
        return out

    @classmethod
    def from_hf_dict(cls, data: dict, name: str = "custom") -> "MlaConfig":
        """Build from a DeepseekV2/V3 `config.json` dict; raises UserError naming a bad field."""
        if not isinstance(data, dict):
            raise UserError("config: expected a JSON object with DeepSeek's field names")
        required = ("hidden_size", "num_attention_heads", "kv_lora_rank", "qk_nope_head_dim",
                    "qk_rope_head_dim", "v_head_dim", "intermediate_size", "num_hidden_layers", "vocab_size")
        missing = [k for k in required if k not in data]
        if missing:
            raise UserError(f"config: missing field(s) {', '.join(missing)}; expected a DeepseekV2/V3 config.json "
                            "(see models/ for examples)")
        rope = data.get("rope_scaling")
        scaling = None
        if rope is not None:
            if not isinstance(rope, dict):
                raise UserError(f"config field rope_scaling={rope!r}: expected an object or null")
            kind = rope.get("type", rope.get("rope_type"))
            if kind not in ("yarn",):
                raise UserError(f"config field rope_scaling.type={kind!r}: only 'yarn' (DeepSeek-V2/V3) is supported")
            try:
                scaling = YarnScaling(
                    factor=float(rope["factor"]),
                    original_max_position_embeddings=int(rope["original_max_position_embeddings"]),
                    beta_fast=float(rope.get("beta_fast", 32)),
                    beta_slow=float(rope.get("beta_slow", 1)),
                    mscale=float(rope.get("mscale", 1)),
                    mscale_all_dim=float(rope.get("mscale_all_dim", 0)),
                )
            except KeyError as exc:
                raise UserError(f"config field rope_scaling.{exc.args[0]} is missing (needed for YaRN)") from None
            except (TypeError, ValueError) as exc:
                raise UserError(f"config field rope_scaling: {exc}") from None
        kwargs = {k: data[k] for k in required}
        optional = ("q_lora_rank", "rms_norm_eps", "rope_theta", "max_position_embeddings",
                    "first_k_dense_replace", "n_routed_experts", "moe_layer_freq")
        kwargs.update({k: data[k] for k in optional if k in data})
        kwargs.setdefault("q_lora_rank", None)
        try:
            return cls(rope_scaling=scaling, name=data.get("mla_export_name", name), **kwargs)
        except (TypeError, ValueError) as exc:
            raise UserError(str(exc)) from None


def preset_names() -> list[str]:
    """Names of the presets shipped in models/."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def load_config_file(path: str | Path) -> MlaConfig:
    """Read a DeepSeek `config.json` (or a directory holding one)."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise UserError(f"config {path}: no such file; pass a DeepSeek config.json or a checkpoint directory")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"config {path}: not valid JSON ({exc})") from None
    return MlaConfig.from_hf_dict(data, name=path.parent.name if path.name == "config.json" else path.stem)


def load_preset(name: str) -> MlaConfig:
    """One of the presets in models/ by name (e.g. 'tiny', 'deepseek-v3')."""
    path = PRESET_DIR / f"{name}.json"
    if not path.is_file():
        raise UserError(f"unknown preset {name!r}; choose one of: {', '.join(preset_names())}")
    return load_config_file(path)
