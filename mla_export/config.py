"""Typed, frozen MLA model configuration with DeepSeek's field names.

`MlaConfig.from_hf_dict` reads a DeepseekV2/V3 or Kimi K2 `config.json` in both of its formats:
DeepSeek's hub files (`rope_theta` + `rope_scaling`) and what transformers 5.x's `save_pretrained`
writes (`rope_parameters`, `rope_interleave`). The presets in `models/` are files of that format, so
one reader serves both. `HF_FIELDS` says what happens to every field those files and transformers'
`DeepseekV2Config`/`DeepseekV3Config` define; keys outside it are ignored.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

PRESET_DIR = Path(__file__).resolve().parent.parent / "models"

MODEL_TYPES = ("deepseek_v2", "deepseek_v3", "kimi_k2")
ROPE_TYPES = ("default", "yarn")
TOPK_METHODS = ("greedy", "group_limited_greedy", "noaux_tc")
SCORING_FUNCS = ("softmax", "sigmoid")
DEFAULT_ROPE_THETA = 10000.0
LATENT_NORM_EPS = 1e-6  # q_a_layernorm, kv_a_layernorm: DeepSeek's and transformers' code leave them at this default

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
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"config field model_type={self.model_type!r}: mla-export runs "
                             f"{', '.join(MODEL_TYPES)} (DeepSeek-V2/V3 and Kimi K2 architectures)")
        if self.model_type == "deepseek_v2" and not self.rope_interleave:
            raise ValueError("config field rope_interleave=false with model_type='deepseek_v2': DeepSeek-V2's code "
                             "(DeepSeek's and transformers') always rotates interleaved pairs and ignores it; remove "
                             "the field, or set model_type 'deepseek_v3' if the weights are in halves layout")
        self._check_moe()

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
            raise ValueError(f"config field topk_method={self.topk_method!r}: expected one of {', '.join(TOPK_METHODS)}")
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
            raise UserError(f"--layers {num_layers}: expected a positive number of layers")
        if num_layers > self.num_hidden_layers:
            raise UserError(f"--layers {num_layers}: the model has only {self.num_hidden_layers} layers")
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

    @classmethod
    def from_hf_dict(cls, data: dict, name: str = "custom") -> "MlaConfig":
        """Build from a DeepseekV2/V3 or Kimi K2 `config.json` dict (either format); raises UserError
        naming a bad field."""
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
            return cls(rope_theta=rope_theta, rope_scaling=rope_scaling, name=data.get("mla_export_name", name),
                       **kwargs)
        except (TypeError, ValueError) as exc:
            raise UserError(str(exc)) from None


def _check_unimplemented(data: dict) -> None:
    """Refuse known fields set to values mla-export does not implement (HF_FIELDS' CHECKED rows)."""
    accepted = {"hidden_act": ("silu", "swish"), "attention_bias": (False,), "mlp_bias": (False,),
                "tie_word_embeddings": (False,)}
    for key, values in accepted.items():
        value = data.get(key, values[0])
        if not any(value is v or (isinstance(v, str) and value == v) for v in values):
            raise UserError(f"config field {key}={value!r}: not implemented; mla-export runs "
                            f"{' or '.join(map(repr, values))} ({HF_FIELDS[key][1]})")
    partial = data.get("partial_rotary_factor", 1)
    if partial is not None and partial != 1:
        raise UserError(f"config field partial_rotary_factor={partial!r}: not implemented; "
                        f"{HF_FIELDS['partial_rotary_factor'][1]}")
    quant = data.get("quantization_config")
    if quant is None:
        return
    fp8 = {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128], "activation_scheme": "dynamic"}
    if not isinstance(quant, dict):
        raise UserError(f"config field quantization_config={quant!r}: expected an object or null")
    for key, expected in fp8.items():
        value = quant.get(key, expected)
        if value != expected:
            raise UserError(f"config field quantization_config.{key}={value!r}: not implemented; mla-export reads "
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
    if not _number(value):
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
    if _number(original) and float(original).is_integer():
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


def _describe_rope(theta: float, yarn: YarnScaling | None) -> str:
    if yarn is None:
        return f"plain RoPE, rope_theta {theta:g}"
    return f"yarn, rope_theta {theta:g}, " + ", ".join(f"{k} {v:g}" for k, v in dataclasses.asdict(yarn).items())


def read_rope(data: dict) -> tuple[float, YarnScaling | None]:
    """The effective (rope_theta, YaRN parameters or None) of a config.json dict.

    DeepSeek's files hold `rope_theta` and `rope_scaling`; transformers 5.x writes `rope_parameters`
    instead. Either is read; when both are present they must agree (transformers would silently let
    `rope_scaling` win over `rope_parameters`, and `rope_parameters.rope_theta` over `rope_theta`).
    """
    top_theta = data.get("rope_theta")
    if top_theta is not None and not _number(top_theta):
        raise UserError(f"config field rope_theta={top_theta!r}: expected a number")
    old = data.get("rope_scaling")
    old_theta, old_yarn = read_rope_object(old, "rope_scaling") if old is not None else (None, None)
    if old_theta is not None and top_theta is not None and old_theta != top_theta:
        raise UserError(f"config fields rope_theta={top_theta!r} and rope_scaling.rope_theta={old_theta!r} disagree")
    theta = next((t for t in (top_theta, old_theta) if t is not None), DEFAULT_ROPE_THETA)
    new = data.get("rope_parameters")
    if not new:  # absent, null or {}: DeepSeek's format
        return float(theta), old_yarn
    new_theta, new_yarn = read_rope_object(new, "rope_parameters")
    if new_theta is not None and top_theta is not None and new_theta != top_theta:
        raise UserError(f"config fields rope_theta={top_theta!r} and rope_parameters.rope_theta={new_theta!r} "
                        "disagree; keep one of DeepSeek's rope_theta + rope_scaling or transformers' rope_parameters")
    theta = next((t for t in (new_theta, top_theta, old_theta) if t is not None), DEFAULT_ROPE_THETA)
    if "rope_scaling" in data and old_yarn != new_yarn:
        raise UserError(f"config fields rope_scaling ({_describe_rope(theta, old_yarn)}) and rope_parameters "
                        f"({_describe_rope(theta, new_yarn)}) disagree; keep one of DeepSeek's rope_theta + "
                        "rope_scaling or transformers' rope_parameters")
    return float(theta), new_yarn


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
    """One of the presets in models/ by name (e.g. 'tiny', 'deepseek-v3', 'kimi-k2')."""
    path = PRESET_DIR / f"{name}.json"
    if not path.is_file():
        raise UserError(f"unknown preset {name!r}; choose one of: {', '.join(preset_names())}")
    return load_config_file(path)
