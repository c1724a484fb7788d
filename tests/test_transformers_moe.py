"""MoE layers against transformers' own DeepSeek-V2/V3 modeling code (random checkpoints saved by transformers).

Three layers (one dense, two MoE) are built in transformers' configs, saved with `save_pretrained` (which
writes the routed experts per expert, `mlp.experts.{j}.{gate,up,down}_proj.weight`, as the hub files do),
and loaded with `--checkpoint`; the logits of the eager model and of the exported ONNX (ONNX Runtime,
the DeepseekMoE node's function body) are compared with transformers' forward over a prefill and decode
steps. The routing cases are ones where transformers and DeepSeek's code agree (mla_export/model/moe.py says
where they differ): V3 noaux_tc with norm_topk_prob and top_k > 1 (transformers masks groups with -inf
like DeepSeek-V3's code and always routes sigmoid + noaux_tc); V2 greedy and group-limited with
norm_topk_prob false (transformers' V2 router always scales and masks with 0.0, which with softmax
scores and top_k within the kept groups picks what -inf picks).
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from mla_export.model.hf_config import load_config_file
from mla_export.model.moe import RoutingRule

from test_transformers import (BATCH, DIMS, MAX_SEQ_LEN, TOLERANCE, eager_logits, onnx_logits, relative_error,
                               scale_weights, token_steps, transformers_logits)

transformers = pytest.importorskip("transformers")

MOE_DIMS = {**DIMS, "num_hidden_layers": 3, "first_k_dense_replace": 1, "n_routed_experts": 8,
            "num_experts_per_tok": 2, "n_shared_experts": 1, "moe_intermediate_size": 16}
ROPE = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 16,
        "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 0.8}


@dataclasses.dataclass(frozen=True)
class MoeCase:
    name: str
    model_type: str
    router: dict


CASES = [
    MoeCase("v3-noaux-tc", "deepseek_v3", dict(n_group=4, topk_group=2, norm_topk_prob=True,
                                               routed_scaling_factor=2.5)),
    MoeCase("v2-greedy", "deepseek_v2", dict(topk_method="greedy", norm_topk_prob=False, routed_scaling_factor=2.0)),
    MoeCase("v2-group-limited", "deepseek_v2", dict(topk_method="group_limited_greedy", n_group=4, topk_group=2,
                                                    norm_topk_prob=False, routed_scaling_factor=1.5)),
]


def save_moe_model(case: MoeCase, directory, seed: int = 0):
    """A transformers MoE model with scaled random weights (and a random V3 score bias), saved; returns it."""
    classes = {"deepseek_v2": (transformers.DeepseekV2Config, transformers.DeepseekV2ForCausalLM),
               "deepseek_v3": (transformers.DeepseekV3Config, transformers.DeepseekV3ForCausalLM)}
    config_class, model_class = classes[case.model_type]
    config = config_class(**MOE_DIMS, **case.router, q_lora_rank=48, rope_parameters=ROPE)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = model_class(config).eval()
    scale_weights(model, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for layer in model.model.layers[1:]:
            bias = getattr(layer.mlp.gate, "e_score_correction_bias", None)
            if bias is not None:
                bias.copy_(0.1 * torch.randn(bias.shape, generator=gen))
    model.save_pretrained(directory)
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    cache = {}

    def get(name: str):
        if name not in cache:
            case = next(c for c in CASES if c.name == name)
            directory = tmp_path_factory.mktemp(name)
            model = save_moe_model(case, directory)
            cache[name] = directory, transformers_logits(model, token_steps())
        return cache[name]

    return get


@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_eager_moe_matches_transformers(saved, name):
    directory, reference = saved(name)
    config = load_config_file(directory)
    assert [config.is_moe_layer(i) for i in range(3)] == [False, True, True]
    rule = RoutingRule.from_config(config)
    expected_bias = name.startswith("v3")
    assert rule.use_bias == expected_bias and rule.top_k == 2
    error = relative_error(eager_logits(directory, token_steps()), reference)
    print(f"{name}: eager vs transformers {error:.2e}")
    assert error < TOLERANCE, f"{name}: eager logits differ from transformers' by {error:.2e} of their scale"


@pytest.mark.parametrize("name", ["v3-noaux-tc", pytest.param("v2-group-limited", marks=pytest.mark.slow)])
def test_exported_moe_matches_transformers(saved, name, tmp_path):
    from click.testing import CliRunner

    from mla_export.ui.cli import main

    directory, reference = saved(name)
    out = tmp_path / "moe.onnx"
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(directory), "--io", "tokens", "--max-seq-len",
                                       str(MAX_SEQ_LEN), "-o", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    config = load_config_file(directory)
    error = relative_error(onnx_logits(out, token_steps(), config.num_hidden_layers, config.cache_width), reference)
    print(f"{name}: ONNX Runtime vs transformers {error:.2e}")
    assert error < TOLERANCE, f"{name}: ONNX logits differ from transformers' by {error:.2e} of their scale"


def test_wrong_routing_rule_fails(saved, tmp_path):
    """Negative control: the same V3 checkpoint read with another routing rule (no normalization) must miss."""
    import shutil

    directory, reference = saved("v3-noaux-tc")
    edited = tmp_path / "edited"
    shutil.copytree(directory, edited)
    data = json.loads((edited / "config.json").read_text())
    data["norm_topk_prob"] = False
    (edited / "config.json").write_text(json.dumps(data))
    error = relative_error(eager_logits(edited, token_steps()), reference)
    assert error > 100 * TOLERANCE, f"a wrong routing rule went unnoticed ({error:.2e})"
    assert BATCH == 2
