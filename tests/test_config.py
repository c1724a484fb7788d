import json
import math

import pytest

from mla_export.config import MlaConfig, load_config_file, load_preset, preset_names, yarn_get_mscale
from mla_export.errors import UserError


def test_presets_load_with_deepseek_dims():
    assert {"tiny", "deepseek-v2-lite", "deepseek-v2", "deepseek-v3"} <= set(preset_names())
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
        MlaConfig.from_hf_dict(data)


def test_missing_fields_and_bad_files(tmp_path):
    with pytest.raises(UserError, match="missing field"):
        MlaConfig.from_hf_dict({"hidden_size": 8})
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_config_file(tmp_path / "bad.json")
    with pytest.raises(UserError, match="no such file"):
        load_config_file(tmp_path / "absent.json")
    with pytest.raises(UserError, match="unknown preset 'nope'"):
        load_preset("nope")


def test_round_trip_and_layers():
    tiny = load_preset("tiny")
    assert MlaConfig.from_hf_dict(tiny.to_hf_dict()) == tiny
    assert tiny.with_layers(1).num_hidden_layers == 1
    with pytest.raises(UserError, match="only 2 layers"):
        tiny.with_layers(3)


def test_moe_layers_follow_deepseek_rule():
    v3 = load_preset("deepseek-v3")
    assert [v3.is_moe_layer(i) for i in range(5)] == [False, False, False, True, True]
