"""Against transformers' own DeepSeek-V2/V3 modeling code (transformers 5.24, CPU, random weights, no hub).

Small dense models are built in transformers' `DeepseekV2Config`/`DeepseekV3Config`, saved with
`save_pretrained` (safetensors, `rope_parameters`), optionally rewritten into DeepSeek's own config
format (`rope_theta` + `rope_scaling`), and loaded by mla-export with `--checkpoint`. The logits of the
eager model and of the exported ONNX (ONNX Runtime) are compared with transformers' forward over a
prefill past YaRN's `original_max_position_embeddings` and decode steps with transformers' own cache.

Where transformers differs from DeepSeek's reference code (the `modeling_deepseek.py` shipped with
the checkpoints), mla-export follows DeepSeek; the cases tested here are ones where both agree:
- YaRN's cos/sin scale: DeepSeek always uses mscale(factor, mscale) / mscale(factor, mscale_all_dim)
  (defaults mscale 1, mscale_all_dim 0); transformers uses that ratio only when both are set and
  non-zero, else mscale(factor, 1), and it honours an explicit `attention_factor`. Equal when both are
  set, or when mscale is 1 and mscale_all_dim unset (mla-export refuses an attention_factor that differs).
- Both `rope_scaling` and `rope_parameters` present: transformers silently takes `rope_scaling` (and
  `rope_parameters.rope_theta` over `rope_theta`); mla-export refuses them when they disagree.
- transformers' YaRN `truncate: false` and a missing `factor` (inferred from max_position_embeddings)
  have no DeepSeek counterpart: refused. `rope_interleave: null` reads as false in transformers: refused.
- MoE layers: transformers makes every layer from `first_k_dense_replace` on MoE and ignores
  `moe_layer_freq` (DeepSeek: also needs layer % moe_layer_freq == 0). The models here are dense.
- `q_a_layernorm`/`kv_a_layernorm` use eps 1e-6 in both, not `rms_norm_eps` (so does mla-export; the
  `large-eps` case below would fail otherwise).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mla_export.common import contract
from mla_export.weights.weights import CheckpointWeights, load_weights
from mla_export.ui.cli import main
from mla_export.model.hf_config import load_config_file
from mla_export.model.model import MlaModel

transformers = pytest.importorskip("transformers")

TOLERANCE = 1e-4  # of the logits' scale (max |logit|), float32
DIMS = dict(vocab_size=96, hidden_size=64, intermediate_size=96, moe_intermediate_size=16, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=16,
            v_head_dim=16, first_k_dense_replace=2, n_routed_experts=4, max_position_embeddings=512)
ORIGINAL = 16  # YaRN's original_max_position_embeddings; the sequences run to position PREFILL + STEPS - 1
BATCH, PREFILL, STEPS, MAX_SEQ_LEN = 2, 40, 3, 64


@dataclasses.dataclass(frozen=True)
class Case:
    """One transformers model: architecture, RoPE settings and how its config.json is written."""

    name: str
    model_type: str = "deepseek_v3"
    rope_type: str = "yarn"
    rope_theta: float = 10000.0
    interleave: bool = True
    q_lora_rank: int | None = 48
    config_format: str = "transformers"  # transformers (rope_parameters), deepseek (rope_scaling), both
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 1.0
    mscale_all_dim: float = 0.8
    rms_norm_eps: float = 1e-6

    def rope_parameters(self) -> dict:
        params = {"rope_type": self.rope_type, "rope_theta": self.rope_theta}
        if self.rope_type == "yarn":
            params.update(factor=4.0, original_max_position_embeddings=ORIGINAL, beta_fast=self.beta_fast,
                          beta_slow=self.beta_slow, mscale=self.mscale, mscale_all_dim=self.mscale_all_dim)
        return params


CASES = [
    Case("v3-yarn"),
    Case("v3-yarn-halves-no-q-lora", interleave=False, q_lora_rank=None),
    Case("v3-theta50000", rope_type="default", rope_theta=50000.0, q_lora_rank=None, config_format="deepseek"),
    Case("v3-theta50000-halves", rope_type="default", rope_theta=50000.0, interleave=False),
    Case("v3-yarn-halves-deepseek-format", interleave=False, config_format="deepseek", mscale=0.707,
         mscale_all_dim=0.707),
    Case("v3-kimi-like-both-formats", rope_theta=50000.0, beta_fast=1.0, beta_slow=1.0, mscale_all_dim=1.0,
         config_format="both"),
    Case("v3-large-eps", rms_norm_eps=1e-2, mscale_all_dim=0.0),
    Case("v2-yarn-no-q-lora-deepseek-format", model_type="deepseek_v2", q_lora_rank=None, config_format="deepseek",
         mscale=0.707, mscale_all_dim=0.707),
    Case("v2-theta50000", model_type="deepseek_v2", rope_type="default", rope_theta=50000.0),
]
# Export + ONNX Runtime + validate take ~2.5 s a case: three run by default in both export forms (YaRN,
# rope_theta 50000, both with rope_interleave false; rms_norm_eps 1e-2, which the latent norms must not
# take), the rest are marked slow.
ONNX_CASES = [pytest.param("v3-yarn-halves-no-q-lora"), pytest.param("v3-theta50000-halves"),
              pytest.param("v3-large-eps"),
              pytest.param("v3-yarn", marks=pytest.mark.slow), pytest.param("v3-theta50000", marks=pytest.mark.slow),
              pytest.param("v2-yarn-no-q-lora-deepseek-format", marks=pytest.mark.slow)]


def case_named(name: str) -> Case:
    return next(c for c in CASES if c.name == name)


def scale_weights(model: torch.nn.Module, seed: int) -> None:
    """Weights of std ~1/sqrt(fan_in) (attention projections x2), norms near 1, embeddings N(0, 1):
    transformers' default init (std 0.02) makes attention nearly uniform, which would hide RoPE errors."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            noise = torch.randn(param.shape, generator=gen)
            if name.endswith("norm.weight"):
                param.copy_(1 + 0.1 * noise)
            elif name.endswith("embed_tokens.weight"):
                param.copy_(noise)
            else:
                gain = 2.0 if any(p in name for p in ("q_proj", "q_a_proj", "q_b_proj", "kv_a_proj")) else 1.0
                param.copy_(noise * gain / param.shape[-1] ** 0.5)


def to_deepseek_format(directory: Path, keep_rope_parameters: bool = False) -> None:
    """Rewrite a transformers-saved config.json with DeepSeek's keys: rope_theta + rope_scaling."""
    path = directory / "config.json"
    data = json.loads(path.read_text())
    params = dict(data["rope_parameters"]) if keep_rope_parameters else data.pop("rope_parameters")
    data["rope_theta"] = params.pop("rope_theta")
    kind = params.pop("rope_type")
    data["rope_scaling"] = None if kind == "default" else {"type": kind, **params}
    path.write_text(json.dumps(data, indent=2))


def save_hf_model(case: Case, directory: Path, seed: int = 0):
    """A transformers model for `case` with scaled random weights, saved to `directory`; returns it."""
    config_class = {"deepseek_v2": transformers.DeepseekV2Config, "deepseek_v3": transformers.DeepseekV3Config}
    model_class = {"deepseek_v2": transformers.DeepseekV2ForCausalLM,
                   "deepseek_v3": transformers.DeepseekV3ForCausalLM}
    extra = {"rope_interleave": case.interleave} if case.model_type == "deepseek_v3" else {}
    config = config_class[case.model_type](**DIMS, q_lora_rank=case.q_lora_rank, rms_norm_eps=case.rms_norm_eps,
                                           rope_parameters=case.rope_parameters(), **extra)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = model_class[case.model_type](config).eval()
    scale_weights(model, seed)
    model.save_pretrained(directory)
    if case.config_format != "transformers":
        to_deepseek_format(directory, keep_rope_parameters=case.config_format == "both")
    return model


def token_steps(seed: int = 1) -> list[torch.Tensor]:
    """Input ids of the prefill [B, PREFILL] and of each decode step [B, 1]."""
    gen = torch.Generator().manual_seed(seed)
    prefill = torch.randint(0, DIMS["vocab_size"], (BATCH, PREFILL), generator=gen)
    return [prefill] + [torch.randint(0, DIMS["vocab_size"], (BATCH, 1), generator=gen) for _ in range(STEPS)]


@torch.no_grad()
def transformers_logits(model, steps: list[torch.Tensor]) -> list[torch.Tensor]:
    """transformers' logits [B, S, vocab] per step, decoding with its own cache."""
    out = model(input_ids=steps[0], use_cache=True)
    logits, cache = [out.logits], out.cache
    for ids in steps[1:]:
        out = model(input_ids=ids, cache=cache, use_cache=True)
        logits.append(out.logits)
        cache = out.cache
    return logits


@torch.no_grad()
def eager_logits(directory: Path, steps: list[torch.Tensor]) -> list[torch.Tensor]:
    """mla-export's eager model, weights loaded from `directory` as `--checkpoint` does."""
    config = load_config_file(directory)
    model = MlaModel(config, MAX_SEQ_LEN, with_embeddings=True)
    load_weights(model, CheckpointWeights(directory, model.config))
    model.eval()
    cache = model.new_cache(BATCH, fill=float("nan"))
    return [model.step(ids, cache) for ids in steps]


def onnx_logits(path: Path, steps: list[torch.Tensor], num_layers: int, cache_width: int) -> list[torch.Tensor]:
    """The exported graph on ONNX Runtime (CPU), caches fed back step by step."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    caches = [np.full((BATCH, MAX_SEQ_LEN, cache_width), np.nan, np.float32) for _ in range(num_layers)]
    seqlens = np.zeros(BATCH, np.int32)
    logits = []
    for ids in steps:
        feeds = {contract.INPUT_IDS: ids.numpy(), contract.CACHE_SEQLENS: seqlens}
        feeds.update({contract.past_cache_name(i): c for i, c in enumerate(caches)})
        out = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
        logits.append(torch.from_numpy(out[contract.LOGITS]))
        caches = [out[contract.present_cache_name(i)] for i in range(num_layers)]
        seqlens = seqlens + ids.shape[1]
    return logits


def relative_error(ours: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    """max |ours - reference| / max |reference| over every step."""
    scale = max(r.abs().max().item() for r in reference)
    return max((o.double() - r.double()).abs().max().item() for o, r in zip(ours, reference)) / scale


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Case name -> (directory, transformers' logits), each model built and saved once per module."""
    cache = {}

    def get(name: str):
        if name not in cache:
            directory = tmp_path_factory.mktemp(name)
            model = save_hf_model(case_named(name), directory)
            cache[name] = directory, transformers_logits(model, token_steps())
        return cache[name]

    return get


@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_eager_model_matches_transformers(saved, name):
    directory, reference = saved(name)
    case = case_named(name)
    config = load_config_file(directory)
    assert (config.rope_type, config.rope_theta, config.rope_interleave) == (case.rope_type, case.rope_theta,
                                                                             case.interleave)
    assert PREFILL + STEPS > ORIGINAL
    error = relative_error(eager_logits(directory, token_steps()), reference)
    print(f"{name}: eager vs transformers {error:.2e}")
    assert error < TOLERANCE, f"{name}: eager logits differ from transformers' by {error:.2e} of their scale"


def edit_config(directory: Path, tmp_path: Path, edit) -> Path:
    """A copy of a saved checkpoint whose config.json went through `edit(data)`."""
    copy = tmp_path / "edited"
    shutil.copytree(directory, copy)
    data = json.loads((copy / "config.json").read_text())
    edit(data)
    (copy / "config.json").write_text(json.dumps(data))
    return copy


def _flip_interleave(data):
    data["rope_interleave"] = not data["rope_interleave"]


def _theta_times_two(data):
    data["rope_parameters"]["rope_theta"] *= 2


def _drop_rope_parameters(data):
    del data["rope_parameters"]  # what a reader of DeepSeek's keys alone sees: plain RoPE, theta 10000


@pytest.mark.parametrize("name, edit", [
    ("v3-yarn-halves-no-q-lora", _flip_interleave),
    ("v3-yarn", _flip_interleave),
    ("v3-yarn", _theta_times_two),
    ("v3-yarn", _drop_rope_parameters),
    ("v2-theta50000", _drop_rope_parameters),
])
def test_planted_rope_error_fails(saved, tmp_path, name, edit):
    """Negative control: the comparison above catches a wrong RoPE setting by a wide margin."""
    directory, reference = saved(name)
    error = relative_error(eager_logits(edit_config(directory, tmp_path, edit), token_steps()), reference)
    print(f"{name} {edit.__name__}: {error:.2e}")
    assert error > 100 * TOLERANCE


@pytest.mark.parametrize("absorb", ["prefolded", "runtime"])
@pytest.mark.parametrize("name", ONNX_CASES)
def test_exported_onnx_matches_transformers(saved, tmp_path, name, absorb):
    directory, reference = saved(name)
    out = tmp_path / f"{name}.onnx"
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(directory), "--io", "tokens", "--absorb", absorb,
                                       "--max-seq-len", str(MAX_SEQ_LEN), "-o", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    config = load_config_file(directory)
    error = relative_error(onnx_logits(out, token_steps(), config.num_hidden_layers, config.cache_width), reference)
    print(f"{name}: ONNX Runtime vs transformers {error:.2e}")
    assert error < TOLERANCE, f"{name}: ONNX logits differ from transformers' by {error:.2e} of their scale"

    import onnx

    meta = {p.key: p.value for p in onnx.load(str(out), load_external_data=False).metadata_props}
    recorded = json.loads(meta[contract.META_CONFIG])
    case = case_named(name)
    assert recorded["rope_parameters"] == config.rope_parameters
    assert recorded["rope_parameters"]["rope_type"] == case.rope_type
    assert math.isclose(recorded["rope_parameters"]["rope_theta"], case.rope_theta)
    assert recorded["rope_interleave"] is case.interleave
    result = CliRunner().invoke(main, ["validate", "--onnx", str(out), "--steps", "2", "--prefill-len", "20"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
