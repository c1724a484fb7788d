import dataclasses
import json
import math
import re

import pytest
from click.testing import CliRunner

from mla_export.ui.cli import main
from mla_export.model.config import PRESET_DIR, MlaConfig, YarnScaling, yarn_get_mscale
from mla_export.common.errors import UserError
from mla_export.model.hf_config import (CHECKED, HF_FIELDS, NO_EFFECT, USED, config_from_hf_dict, load_config_file,
                                  load_preset, preset_names)


def test_presets_load_with_deepseek_dims():
    assert {"tiny", "deepseek-v2-lite", "deepseek-v2", "deepseek-v3", "kimi-k2"} <= set(preset_names())
    v3 = load_preset("deepseek-v3")
    assert (v3.hidden_size, v3.num_attention_heads, v3.q_lora_rank, v3.kv_lora_rank) == (7168, 128, 1536, 512)
    assert (v3.qk_nope_head_dim, v3.qk_rope_head_dim, v3.v_head_dim) == (128, 64, 128)
    assert v3.cache_width == 576
    assert v3.rope_scaling is not None and v3.rope_scaling.factor == 40
    lite = load_preset("deepseek-v2-lite")
    assert lite.q_lora_rank is None and lite.num_attention_heads == 16 and lite.hidden_size == 2048


def test_softmax_scale_includes_yarn_mscale_squared():
    v3 = load_preset("deepseek-v3")
    mscale = 0.1 * 1.0 * math.log(40) + 1
    assert v3.softmax_scale == pytest.approx(192 ** -0.5 * mscale ** 2, rel=1e-12)
    v2 = load_preset("deepseek-v2")
    assert v2.softmax_scale == pytest.approx(192 ** -0.5 * yarn_get_mscale(40, 0.707) ** 2, rel=1e-12)
    assert yarn_get_mscale(1.0, 1.0) == 1.0


def test_hf_config_json_with_rope_scaling(tmp_path):
    data = json.loads((load_preset.__globals__["PRESET_DIR"] / "deepseek-v3.json").read_text())
    data["rope_scaling"] = {"rope_type": "yarn", "factor": 16, "original_max_position_embeddings": 2048,
                            "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 0.5}
    data["quantization_config"] = {"quant_method": "fp8", "weight_block_size": [128, 128]}
    (tmp_path / "config.json").write_text(json.dumps(data))
    config = load_config_file(tmp_path)  # a checkpoint directory works too
    assert config.rope_scaling.factor == 16 and config.rope_scaling.original_max_position_embeddings == 2048
    assert config.rope_scaling.mscale_all_dim == 0.5
    assert config.name == tmp_path.name


@pytest.mark.parametrize("change, message", [
    ({"kv_lora_rank": 0}, "kv_lora_rank=0"),
    ({"qk_rope_head_dim": 7}, "qk_rope_head_dim=7"),
    ({"num_attention_heads": "8"}, "num_attention_heads='8'"),
    ({"rope_scaling": {"type": "linear", "factor": 2}}, "rope_scaling.type='linear'"),
    ({"rope_scaling": {"type": "yarn", "factor": 4}}, "original_max_position_embeddings"),
    ({"q_lora_rank": -1}, "q_lora_rank=-1"),
])
def test_bad_config_fields_are_named(change, message):
    data = load_preset("tiny").to_hf_dict()
    data.update(change)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("[", r"\[")):
        config_from_hf_dict(data)


def test_missing_fields_and_bad_files(tmp_path):
    with pytest.raises(UserError, match="missing field"):
        config_from_hf_dict({"hidden_size": 8})
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_config_file(tmp_path / "bad.json")
    with pytest.raises(UserError, match="no such file"):
        load_config_file(tmp_path / "absent.json")
    with pytest.raises(UserError, match="unknown preset 'nope'"):
        load_preset("nope")


def test_round_trip_and_layers():
    tiny = load_preset("tiny")
    assert config_from_hf_dict(tiny.to_hf_dict()) == tiny
    assert tiny.with_layers(1).num_hidden_layers == 1
    with pytest.raises(UserError, match="only 2 layers"):
        tiny.with_layers(3)


def test_moe_layers_follow_deepseek_rule():
    v3 = load_preset("deepseek-v3")
    assert [v3.is_moe_layer(i) for i in range(5)] == [False, False, False, True, True]


# Moonshot's published moonshotai/Kimi-K2-Instruct config.json, which models/kimi-k2.json copies verbatim.
KIMI_K2_DIMS = dict(hidden_size=7168, num_attention_heads=64, q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128,
                    qk_rope_head_dim=64, v_head_dim=128, intermediate_size=18432, num_hidden_layers=61,
                    vocab_size=163840, max_position_embeddings=131072, rms_norm_eps=1e-6)
KIMI_K2_MOE = dict(n_routed_experts=384, num_experts_per_tok=8, n_group=1, topk_group=1, topk_method="noaux_tc",
                   scoring_func="sigmoid", norm_topk_prob=True, routed_scaling_factor=2.827, n_shared_experts=1,
                   moe_intermediate_size=2048, first_k_dense_replace=1, moe_layer_freq=1)


def test_kimi_k2_preset():
    k2 = load_preset("kimi-k2")
    assert {k: getattr(k2, k) for k in KIMI_K2_DIMS} == KIMI_K2_DIMS
    assert {k: getattr(k2, k) for k in KIMI_K2_MOE} == KIMI_K2_MOE
    assert (k2.model_type, k2.rope_theta, k2.rope_interleave, k2.cache_width) == ("kimi_k2", 50000.0, True, 576)
    assert k2.rope_scaling == YarnScaling(factor=32.0, original_max_position_embeddings=4096, beta_fast=1.0,
                                          beta_slow=1.0, mscale=1.0, mscale_all_dim=1.0)
    assert k2.softmax_scale == pytest.approx(192 ** -0.5 * (0.1 * math.log(32) + 1) ** 2, rel=1e-12)
    assert [k2.is_moe_layer(i) for i in range(3)] == [False, True, True]
    assert config_from_hf_dict(k2.to_hf_dict()) == k2


def test_every_transformers_and_deepseek_field_has_a_disposition():
    """HF_FIELDS covers every field of transformers' DeepseekV2Config/DeepseekV3Config (and what their
    save_pretrained writes), of DeepSeek's own configuration_deepseek.py and of the presets' files."""
    transformers = pytest.importorskip("transformers")
    generic = {f.name for f in dataclasses.fields(transformers.PreTrainedConfig)} - {"architectures", "dtype",
                                                                                       "transformers_version"}
    fields = set()
    for cls in (transformers.DeepseekV2Config, transformers.DeepseekV3Config):
        fields |= {f.name for f in dataclasses.fields(cls)} | set(cls.attribute_map) | set(cls.attribute_map.values())
        fields |= set(cls(num_attention_heads=4, num_key_value_heads=4).to_diff_dict())
    # DeepSeek's configuration_deepseek.py (V2 and V3 checkpoints) takes these arguments.
    fields |= {"vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
               "num_nextn_predict_layers", "num_attention_heads", "num_key_value_heads", "n_shared_experts",
               "n_routed_experts", "ep_size", "routed_scaling_factor", "kv_lora_rank", "q_lora_rank",
               "qk_rope_head_dim", "v_head_dim", "qk_nope_head_dim", "topk_method", "n_group", "topk_group",
               "num_experts_per_tok", "moe_layer_freq", "first_k_dense_replace", "norm_topk_prob", "scoring_func",
               "aux_loss_alpha", "seq_aux", "hidden_act", "max_position_embeddings", "initializer_range",
               "rms_norm_eps", "use_cache", "pad_token_id", "bos_token_id", "eos_token_id", "pretraining_tp",
               "tie_word_embeddings", "rope_theta", "rope_scaling", "attention_bias", "attention_dropout"}
    for name in preset_names():
        fields |= set(json.loads((PRESET_DIR / f"{name}.json").read_text()))
    missing = sorted(fields - generic - set(HF_FIELDS))
    assert not missing, f"fields with no disposition in hf_config.HF_FIELDS: {missing}"
    assert {kind for kind, _ in HF_FIELDS.values()} == {USED, CHECKED, NO_EFFECT}


def transformers_style(**changes) -> dict:
    """A DeepseekV3 config.json as transformers 5.x writes it: rope_parameters, rope_interleave."""
    data = {k: v for k, v in load_preset("tiny").to_hf_dict().items()
            if k not in ("rope_scaling", "rope_theta", "mla_export_name")}
    data["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 50000.0, "factor": 8.0,
                               "original_max_position_embeddings": 32, "beta_fast": 32, "beta_slow": 1,
                               "mscale": 0.707, "mscale_all_dim": 0.707}
    data.update(changes)
    return data


def deepseek_style(**changes) -> dict:
    """The same model in DeepSeek's format: rope_theta + rope_scaling, no rope_parameters."""
    data = transformers_style()
    params = dict(data.pop("rope_parameters"))
    data["rope_theta"] = params.pop("rope_theta")
    data["rope_scaling"] = {"type": params.pop("rope_type"), **params}
    data.update(changes)
    return data


def test_both_config_formats_read_alike():
    new = config_from_hf_dict(transformers_style())
    assert new.rope_theta == 50000.0 and new.rope_scaling.factor == 8.0 and new.rope_scaling.mscale == 0.707
    assert config_from_hf_dict(deepseek_style()) == new
    both = deepseek_style(rope_parameters=transformers_style()["rope_parameters"])  # transformers' to_dict writes both
    assert config_from_hf_dict(both) == new
    plain = config_from_hf_dict(transformers_style(rope_parameters={"rope_type": "default", "rope_theta": 5e4}))
    assert plain.rope_scaling is None and plain.rope_theta == 50000.0 and plain.rope_type == "default"
    inherited = config_from_hf_dict(transformers_style(rope_parameters={"rope_type": "default"}, rope_theta=2e4))
    assert inherited.rope_theta == 20000.0
    assert config_from_hf_dict(deepseek_style(rope_scaling=None, rope_theta=None)).rope_theta == 10000.0


def test_to_hf_dict_records_effective_rope_parameters():
    config = config_from_hf_dict(transformers_style(rope_interleave=False))
    data = config.to_hf_dict()
    assert data["rope_parameters"] == {"rope_type": "yarn", "rope_theta": 50000.0, "factor": 8.0,
                                       "original_max_position_embeddings": 32, "beta_fast": 32.0, "beta_slow": 1.0,
                                       "mscale": 0.707, "mscale_all_dim": 0.707}
    assert data["rope_interleave"] is False and data["rope_theta"] == 50000.0 and data["rope_scaling"]["type"] == "yarn"
    assert config_from_hf_dict(json.loads(json.dumps(data))) == config


@pytest.mark.parametrize("data, message", [
    (transformers_style(rope_theta=10000.0),
     "rope_theta=10000.0 and rope_parameters.rope_theta=50000.0 disagree"),
    (deepseek_style(rope_parameters=dict(transformers_style()["rope_parameters"], factor=32.0)),
     r"rope_scaling and rope_parameters disagree \(rope_scaling.factor=8.0 vs rope_parameters.factor=32.0\)"),
    (transformers_style(rope_scaling=None), r"disagree \(rope_scaling is plain RoPE, rope_parameters is yarn\)"),
    (deepseek_style(rope_scaling={"type": "yarn", "rope_type": "linear", "factor": 2}),
     "rope_scaling.type='yarn' and rope_scaling.rope_type='linear' disagree"),
])
def test_disagreeing_rope_settings_are_refused_naming_both(data, message):
    with pytest.raises(UserError, match=message):
        config_from_hf_dict(data)


@pytest.mark.parametrize("where", ["rope_parameters", "rope_scaling"])
@pytest.mark.parametrize("kind", ["linear", "dynamic", "longrope", "llama3", "proportional"])
def test_unknown_rope_types_are_refused_by_name(where, kind):
    obj = {"rope_type" if where == "rope_parameters" else "type": kind, "factor": 2.0}
    data = transformers_style(rope_parameters=obj) if where == "rope_parameters" else deepseek_style(rope_scaling=obj)
    with pytest.raises(UserError, match=f"RoPE type '{kind}' is not implemented; mla-export runs 'default'"):
        config_from_hf_dict(data)


def rope_parameters(**changes) -> dict:
    return transformers_style(rope_parameters={**transformers_style()["rope_parameters"], **changes})


@pytest.mark.parametrize("data, message", [
    (rope_parameters(truncate=False), r"rope_parameters.truncate=False: not implemented"),
    (rope_parameters(attention_factor=1.5), r"rope_parameters.attention_factor=1.5: not implemented.* = 1"),
    (rope_parameters(partial_rotary_factor=0.5), r"rope_parameters.partial_rotary_factor=0.5: not implemented"),
    (transformers_style(partial_rotary_factor=0.5), r"partial_rotary_factor=0.5: not implemented"),
    (rope_parameters(extrapolation_factor=1.0), r"rope_parameters.extrapolation_factor: not a RoPE parameter"),
    (rope_parameters(factor=None), r"rope_parameters.factor is missing \(needed for YaRN\)"),
    (rope_parameters(beta_fast=1.0, beta_slow=2.0), "beta_fast=1.0, beta_slow=2.0: expected beta_fast >= beta_slow"),
    (rope_parameters(mscale="1"), r"rope_parameters.mscale='1': expected a number"),
    (transformers_style(rope_parameters={"rope_type": "default", "rope_theta": 5e4, "factor": 4}),
     r"rope_parameters.factor=4: set, but rope_parameters says plain RoPE"),
    (transformers_style(rope_parameters={"full_attention": {"rope_type": "default"}}),
     "rope_parameters.full_attention: per-layer RoPE parameters are not implemented"),
    (transformers_style(rope_parameters="yarn"), "rope_parameters='yarn': expected an object or null"),
    (transformers_style(attention_bias=True), "attention_bias=True: not implemented; mla-export runs attention"),
    (transformers_style(mlp_bias=True), "mlp_bias=True: not implemented"),
    (transformers_style(hidden_act="gelu"), "hidden_act='gelu': not implemented; mla-export runs SwiGLU"),
    (transformers_style(tie_word_embeddings=True), "tie_word_embeddings=True: not implemented"),
    (transformers_style(model_type="llama"), "model_type='llama': mla-export runs deepseek_v2, deepseek_v3, kimi_k2"),
    (transformers_style(model_type="deepseek_v2", rope_interleave=False),
     "rope_interleave=false with model_type='deepseek_v2'"),
    (transformers_style(rope_interleave=None), "rope_interleave=None: expected true or false"),
    (transformers_style(quantization_config={"quant_method": "compressed-tensors"}),
     "quantization_config.quant_method='compressed-tensors': not implemented"),
    (transformers_style(quantization_config={"quant_method": "fp8", "weight_block_size": [64, 64]}),
     r"quantization_config.weight_block_size=\[64, 64\]: not implemented"),
    (transformers_style(topk_method="random"), "topk_method='random': expected one of greedy"),
    (transformers_style(scoring_func="relu"), "scoring_func='relu': expected one of softmax, sigmoid"),
    (transformers_style(first_k_dense_replace=None), "first_k_dense_replace=None: expected an integer >= 0"),
    (transformers_style(n_routed_experts=4, num_local_experts=8), "n_routed_experts=4, num_local_experts=8 disagree"),
    (transformers_style(n_routed_experts=4, first_k_dense_replace=1, num_experts_per_tok=8),
     "num_experts_per_tok=8: exceeds n_routed_experts=4"),
    (transformers_style(n_routed_experts=6, first_k_dense_replace=1, n_group=4), "n_group=4: n_routed_experts=6"),
])
def test_unimplemented_values_are_refused_by_name(data, message):
    with pytest.raises(UserError, match=message):
        config_from_hf_dict(data)


def test_implemented_values_are_accepted():
    ok = config_from_hf_dict(rope_parameters(attention_factor=1.0, truncate=True, partial_rotary_factor=1.0))
    assert ok.rope_scaling.cos_sin_scale == 1.0
    kimi_like = config_from_hf_dict(rope_parameters(beta_fast=1.0, beta_slow=1.0))
    assert kimi_like.rope_scaling.beta_fast == kimi_like.rope_scaling.beta_slow == 1.0
    assert config_from_hf_dict(transformers_style(hidden_act="swish", model_type="kimi_k2"))
    # transformers writes its MoE defaults into dense models too (8 experts per token of 4): unused, accepted.
    dense = config_from_hf_dict(transformers_style(n_routed_experts=4, num_experts_per_tok=8, n_group=8,
                                                      topk_group=4, first_k_dense_replace=2, norm_topk_prob=None))
    assert dense.num_experts_per_tok == 8 and dense.norm_topk_prob is False
    assert config_from_hf_dict(transformers_style(num_experts=16)).n_routed_experts == 16
    fp8 = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [128, 128]}
    assert config_from_hf_dict(transformers_style(quantization_config=fp8))


@pytest.mark.parametrize("command", ["info", "export"])
@pytest.mark.parametrize("data, message", [
    (rope_parameters(rope_type="longrope"), "rope_parameters.rope_type='longrope': RoPE type 'longrope' is not"),
    (deepseek_style(rope_scaling={"type": "dynamic", "factor": 2.0}), "rope_scaling.type='dynamic'"),
    (transformers_style(attention_bias=True), "attention_bias=True: not implemented"),
    (transformers_style(rope_theta=1e4), "rope_theta=10000.0 and rope_parameters.rope_theta=50000.0 disagree"),
])
def test_cli_refuses_with_one_message(tmp_path, command, data, message):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    args = [command, "--config", str(path)] + (["-o", str(tmp_path / "x.onnx")] if command == "export" else [])
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and result.output.startswith("error: config field")
    assert message in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_info_shows_kimi_k2_dims_and_rope_parameters():
    result = CliRunner().invoke(main, ["info", "--preset", "kimi-k2", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    dims, rope = info["dims"], info["rope"]
    assert {k: dims[k] for k in ("hidden_size", "num_attention_heads", "kv_lora_rank", "qk_rope_head_dim")} == \
        {"hidden_size": 7168, "num_attention_heads": 64, "kv_lora_rank": 512, "qk_rope_head_dim": 64}
    assert {k: rope[k] for k in ("rope_type", "rope_theta", "factor", "original_max_position_embeddings",
                                 "beta_fast", "beta_slow", "mscale", "mscale_all_dim")} == \
        {"rope_type": "yarn", "rope_theta": "50000", "factor": "32", "original_max_position_embeddings": "4096",
         "beta_fast": "1", "beta_slow": "1", "mscale": "1", "mscale_all_dim": "1"}
    assert rope["rope_interleave"] == "true (pairs)"
    table = CliRunner().invoke(main, ["info", "--preset", "kimi-k2"], catch_exceptions=False).stdout
    assert re.search(r"^rope_theta +50000 *$", table, re.M) and re.search(r"^num_attention_heads +64 *$", table, re.M)
