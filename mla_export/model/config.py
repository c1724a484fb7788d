"""Typed, frozen MLA model configuration with DeepSeek's field names.

`hf_config` reads a DeepseekV2/V3 or Kimi K2 `config.json` into an `MlaConfig`, DeepSeek's format or
transformers 5.x's, and lists what happens to every field; the presets in `models/` are files of that
format, so one reader serves both. `MlaConfig.to_hf_dict` writes one back, with the effective RoPE
parameters in both formats.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from ..common.errors import FieldError



def _preset_dir() -> Path:
    """The presets: `mla_export/presets/` in an installed wheel (pyproject.toml maps the repository's `models/`
    there), else `models/` beside the package (a source tree, an editable install)."""
    package = Path(__file__).resolve().parents[1]  # mla_export/ (this file is mla_export/model/config.py)
    installed = package / "presets"
    return installed if installed.is_dir() else package.parent / "models"


PRESET_DIR = _preset_dir()

MODEL_TYPES = ("deepseek_v2", "deepseek_v3", "kimi_k2")
ROPE_TYPES = ("default", "yarn")
TOPK_METHODS = ("greedy", "group_limited_greedy", "noaux_tc")
SCORING_FUNCS = ("softmax", "sigmoid")
DEFAULT_ROPE_THETA = 10000.0
LATENT_NORM_EPS = 1e-6  # q_a_layernorm, kv_a_layernorm: DeepSeek's and transformers' code leave them at this default

@dataclass(frozen=True)
class YarnScaling:
    """YaRN context extension (`rope_scaling`/`rope_parameters` with type `yarn`).

    factor: context extension factor s.
    original_max_position_embeddings: context length the base RoPE was trained for.
    beta_fast, beta_slow: rotation counts bounding the frequency blend ramp.
    mscale, mscale_all_dim: attention-temperature coefficients; the softmax scale is multiplied
        by get_mscale(factor, mscale_all_dim)**2 and cos/sin by
        get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim).
    Defaults are DeepSeek's (`DeepseekV3YarnRotaryEmbedding`).
    """

    factor: float
    original_max_position_embeddings: int
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 1.0
    mscale_all_dim: float = 0.0

    @property
    def cos_sin_scale(self) -> float:
        """YaRN's factor on cos and sin: mscale(factor, mscale) / mscale(factor, mscale_all_dim)."""
        return yarn_get_mscale(self.factor, self.mscale) / yarn_get_mscale(self.factor, self.mscale_all_dim)


def yarn_get_mscale(factor: float, mscale: float) -> float:
    """YaRN's attention temperature: 0.1 * mscale * ln(factor) + 1 (1 when factor <= 1)."""
    if factor <= 1.0:
        return 1.0
    return 0.1 * mscale * math.log(factor) + 1.0


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


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
    rms_norm_eps: RMSNorm epsilon of the decoder and final norms.
    rope_theta: RoPE base.
    max_position_embeddings: longest context the model supports.
    rope_scaling: YaRN parameters, or None for plain RoPE.
    rope_interleave: True when the checkpoint's q_pe/k_pe rows are in DeepSeek's pair layout; False
        (transformers' DeepseekV3 option) when in halves layout, which loading permutes to pairs.
    model_type: deepseek_v2, deepseek_v3 or kimi_k2 (the V2 and V3 MoE routers differ).
    first_k_dense_replace, n_routed_experts, moe_layer_freq: which layers use an MoE MLP
        (DeepSeek's rule); MoE layers are not supported yet.
    num_experts_per_tok, n_group, topk_group, topk_method, scoring_func, norm_topk_prob,
        routed_scaling_factor, n_shared_experts, moe_intermediate_size: the MoE router and experts,
        read and checked for the MoE model to come.
    name: a label for reports (config.json's `mla_export_name`): a non-empty string on one line.
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
    rope_theta: float = DEFAULT_ROPE_THETA
    max_position_embeddings: int = 4096
    rope_scaling: YarnScaling | None = None
    rope_interleave: bool = True
    model_type: str = "deepseek_v3"
    first_k_dense_replace: int = 0
    n_routed_experts: int | None = None
    moe_layer_freq: int = 1
    num_experts_per_tok: int | None = None
    n_group: int | None = None
    topk_group: int | None = None
    topk_method: str | None = None
    scoring_func: str | None = None
    norm_topk_prob: bool = False
    routed_scaling_factor: float = 1.0
    n_shared_experts: int | None = None
    moe_intermediate_size: int | None = None
    name: str = "custom"

    def __post_init__(self) -> None:
        positive = ("hidden_size", "num_attention_heads", "kv_lora_rank", "qk_nope_head_dim",
                    "qk_rope_head_dim", "v_head_dim", "intermediate_size", "num_hidden_layers",
                    "vocab_size", "max_position_embeddings")
        for field in positive:
            if not _positive_int(getattr(self, field)):
                raise ValueError(f"config field {field}={getattr(self, field)!r}: expected a positive integer")
        if self.q_lora_rank is not None and not _positive_int(self.q_lora_rank):
            raise ValueError(f"config field q_lora_rank={self.q_lora_rank!r}: expected a positive integer or null")
        if self.qk_rope_head_dim % 2:
            raise ValueError(f"config field qk_rope_head_dim={self.qk_rope_head_dim}: expected an even number "
                             "(RoPE rotates pairs)")
        if not (_number(self.rms_norm_eps) and self.rms_norm_eps > 0):
            raise ValueError(f"config field rms_norm_eps={self.rms_norm_eps!r}: expected a positive number")
        self._check_rope()
        try:
            derived = (("softmax_scale", self.softmax_scale),
                       ("cos/sin scale", 1.0 if self.rope_scaling is None else self.rope_scaling.cos_sin_scale))
        except (ZeroDivisionError, OverflowError):
            derived = (("cos/sin scale", float("inf")),)
        for what, value in derived:
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"config fields rope_scaling.factor, mscale, mscale_all_dim give YaRN's {what} "
                                 f"{value!r}: expected a finite positive number")
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"config field model_type={self.model_type!r}: mla-export runs "
                             f"{', '.join(MODEL_TYPES)} (DeepSeek-V2/V3 and Kimi K2 architectures)")
        if self.model_type == "deepseek_v2" and not self.rope_interleave:
            raise ValueError("config field rope_interleave=false with model_type='deepseek_v2': DeepSeek-V2's code "
                             "(DeepSeek's and transformers') always rotates interleaved pairs and ignores it; remove "
                             "the field, or set model_type 'deepseek_v3' if the weights are in halves layout")
        self._check_moe()
        if not (isinstance(self.name, str) and self.name and self.name.isprintable()):
            shown = repr(self.name)
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            raise ValueError(f"config field mla_export_name={shown}: expected a non-empty string on one line (the "
                             "model's name in reports)")

    def _check_rope(self) -> None:
        if not (_number(self.rope_theta) and self.rope_theta > 1):
            raise ValueError(f"config field rope_theta={self.rope_theta!r}: expected a number > 1")
        if not isinstance(self.rope_interleave, bool):
            raise ValueError(f"config field rope_interleave={self.rope_interleave!r}: expected true or false")
        rs = self.rope_scaling
        if rs is None:
            return
        for field in ("factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim"):
            if not _number(getattr(rs, field)):
                raise ValueError(f"config field rope_scaling.{field}={getattr(rs, field)!r}: expected a number")
        if not (rs.factor >= 1):
            raise ValueError(f"config field rope_scaling.factor={rs.factor!r}: expected >= 1")
        if not _positive_int(rs.original_max_position_embeddings):
            raise ValueError("config field rope_scaling.original_max_position_embeddings="
                             f"{rs.original_max_position_embeddings!r}: expected a positive integer")
        if not (rs.beta_fast >= rs.beta_slow > 0):
            raise ValueError(f"config fields rope_scaling.beta_fast={rs.beta_fast!r}, beta_slow={rs.beta_slow!r}: "
                             "expected beta_fast >= beta_slow > 0")

    def _check_moe(self) -> None:
        fdr = self.first_k_dense_replace
        if not (isinstance(fdr, int) and not isinstance(fdr, bool) and fdr >= 0):
            raise ValueError(f"config field first_k_dense_replace={fdr!r}: expected an integer >= 0")
        if not _positive_int(self.moe_layer_freq):
            raise ValueError(f"config field moe_layer_freq={self.moe_layer_freq!r}: expected a positive integer")
        for field in ("n_routed_experts", "num_experts_per_tok", "n_group", "topk_group", "moe_intermediate_size"):
            value = getattr(self, field)
            if value is not None and not _positive_int(value):
                raise ValueError(f"config field {field}={value!r}: expected a positive integer or null")
        shared = self.n_shared_experts
        if shared is not None and not (isinstance(shared, int) and not isinstance(shared, bool) and shared >= 0):
            raise ValueError(f"config field n_shared_experts={shared!r}: expected an integer >= 0 or null")
        if self.topk_method is not None and self.topk_method not in TOPK_METHODS:
            raise ValueError(f"config field topk_method={self.topk_method!r}: expected one of "
                             f"{', '.join(TOPK_METHODS)}")
        if self.scoring_func is not None and self.scoring_func not in SCORING_FUNCS:
            raise ValueError(f"config field scoring_func={self.scoring_func!r}: expected one of "
                             f"{', '.join(SCORING_FUNCS)}")
        if not isinstance(self.norm_topk_prob, bool):
            raise ValueError(f"config field norm_topk_prob={self.norm_topk_prob!r}: expected true or false")
        if not (_number(self.routed_scaling_factor) and self.routed_scaling_factor > 0):
            raise ValueError(f"config field routed_scaling_factor={self.routed_scaling_factor!r}: "
                             "expected a positive number")
        if not any(self.is_moe_layer(i) for i in range(self.num_hidden_layers)):
            return  # a dense model: the MoE fields are never used (transformers writes its defaults anyway)
        experts, top_k, groups = self.n_routed_experts, self.num_experts_per_tok, self.n_group
        if top_k is not None and top_k > experts:
            raise ValueError(f"config field num_experts_per_tok={top_k}: exceeds n_routed_experts={experts}")
        if groups is not None and experts % groups:
            raise ValueError(f"config field n_group={groups}: n_routed_experts={experts} is not divisible by it")
        if groups is not None and self.topk_group is not None and self.topk_group > groups:
            raise ValueError(f"config field topk_group={self.topk_group}: exceeds n_group={groups}")
        for field in ("num_experts_per_tok", "moe_intermediate_size"):
            if getattr(self, field) is None:
                raise ValueError(f"config field {field} is missing: layer {self.first_k_dense_replace} is a "
                                 f"mixture-of-experts layer (n_routed_experts={experts}) and needs it")
        method = self.routing_method
        if method != "greedy" and groups:
            allowed = (self.topk_group or 1) * (experts // groups)
            if top_k > allowed:
                raise ValueError(f"config field num_experts_per_tok={top_k}: the topk_group={self.topk_group} groups "
                                 f"kept of n_group={groups} hold only {allowed} experts")
            if method == "noaux_tc" and groups > 1 and experts // groups < 2:
                raise ValueError(f"config fields n_group={groups}, n_routed_experts={experts}: noaux_tc scores a "
                                 "group by its top 2 experts, so each group needs at least 2")

    @property
    def routing_method(self) -> str:
        """topk_method, or the architecture's when the config has none (transformers' DeepseekV3Config writes
        none: its router is always noaux_tc): noaux_tc for V3 and Kimi, greedy for V2."""
        return self.topk_method or ("noaux_tc" if self.model_type in ("deepseek_v3", "kimi_k2") else "greedy")

    @property
    def routing_scoring(self) -> str:
        """scoring_func, or the architecture's when the config has none: sigmoid for V3 and Kimi, softmax for V2."""
        return self.scoring_func or ("sigmoid" if self.model_type in ("deepseek_v3", "kimi_k2") else "softmax")

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

    @property
    def latent_norm_eps(self) -> float:
        """Epsilon of q_a_layernorm and kv_a_layernorm: 1e-6 whatever rms_norm_eps is, as in DeepSeek's and
        transformers' code (both build these norms with RMSNorm's default)."""
        return LATENT_NORM_EPS

    @property
    def rope_type(self) -> str:
        return "default" if self.rope_scaling is None else "yarn"

    @property
    def rope_parameters(self) -> dict:
        """The effective RoPE parameters in transformers 5.x's `rope_parameters` form, defaults filled in."""
        out = {"rope_type": self.rope_type, "rope_theta": self.rope_theta}
        if self.rope_scaling is not None:
            out.update(dataclasses.asdict(self.rope_scaling))
        return out

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
        """A config.json that DeepSeek's code and transformers 5.x read alike: the RoPE settings both as
        `rope_theta` + `rope_scaling` and as `rope_parameters` (effective values, defaults filled in)."""
        out = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("rope_scaling", "name")}
        out["rope_scaling"] = None
        if self.rope_scaling is not None:
            out["rope_scaling"] = {"type": "yarn", **dataclasses.asdict(self.rope_scaling)}
        out["rope_parameters"] = self.rope_parameters
        out["mla_export_name"] = self.name
        return out
