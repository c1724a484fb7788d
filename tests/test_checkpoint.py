"""Loading a HF DeepSeek checkpoint: a synthetic one written by this test in that exact format
(config.json, sharded safetensors with an index, V3's FP8 weights with 128x128 block scales)."""

import json
import shutil

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from mla_export.weights.checkpoint import CheckpointReader, dequantize_fp8_blocks
from mla_export.ui.cli import main
from mla_export.model.config import MlaConfig
from mla_export.model.hf_config import config_from_hf_dict, load_config_file
from mla_export.common.errors import UserError
from mla_export.model.model import MlaModel
from mla_export.weights.eager import eager_model
from mla_export.model.rope import halves_to_interleaved, interleaved_to_halves
from mla_export.model.spec import ModelSpec

CONFIG = {
    "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
    "hidden_size": 192, "num_attention_heads": 2, "q_lora_rank": 160, "kv_lora_rank": 64,
    "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16, "intermediate_size": 320,
    "moe_intermediate_size": 32, "num_hidden_layers": 2, "vocab_size": 100, "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0, "max_position_embeddings": 512,
    "rope_scaling": {"type": "yarn", "factor": 4, "original_max_position_embeddings": 64, "beta_fast": 32,
                     "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
    "first_k_dense_replace": 1, "n_routed_experts": 4, "moe_layer_freq": 1, "num_experts_per_tok": 2,
    "n_shared_experts": 1, "topk_method": "noaux_tc", "n_group": 2, "topk_group": 1, "scoring_func": "sigmoid",
    "norm_topk_prob": True, "routed_scaling_factor": 2.5,
    "quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]},
}
FP8_SUFFIXES = ("q_a_proj.weight", "q_b_proj.weight", "kv_a_proj_with_mqa.weight", "kv_b_proj.weight",
                "o_proj.weight", "gate_proj.weight", "up_proj.weight", "down_proj.weight")


def hf_tensors(config: MlaConfig, gen) -> dict[str, torch.Tensor]:
    """Dense layer 0 and MoE layer 1 in HF names; 2-D projections FP8 with block scales."""
    shapes = {}
    model = MlaModel(config.with_layers(1), 64, with_embeddings=True)
    for name, param in model.state_dict().items():
        shapes[("lm_head.weight" if name == "lm_head.weight" else "model." + name).replace(".q_compression.", ".")] = \
            tuple(param.shape)
    for name, shape in list(shapes.items()):
        if name.startswith("model.layers.0.") and ".mlp." not in name:
            shapes[name.replace("layers.0.", "layers.1.")] = shape
    shapes["model.layers.1.mlp.gate.weight"] = (4, 192)
    shapes["model.layers.1.mlp.gate.e_score_correction_bias"] = (4,)
    for proj, shape in (("gate_proj", (32, 192)), ("up_proj", (32, 192)), ("down_proj", (192, 32))):
        shapes[f"model.layers.1.mlp.shared_experts.{proj}.weight"] = shape
    for e in range(4):
        for proj, shape in (("gate_proj", (32, 192)), ("up_proj", (32, 192)), ("down_proj", (192, 32))):
            shapes[f"model.layers.1.mlp.experts.{e}.{proj}.weight"] = shape
    tensors = {}
    for name, shape in shapes.items():
        if name.endswith(FP8_SUFFIXES):
            tensors[name] = (torch.randn(shape, generator=gen) * 0.5).to(torch.float8_e4m3fn)
            blocks = (-(-shape[0] // 128), -(-shape[1] // 128))
            tensors[name + "_scale_inv"] = torch.rand(blocks, generator=gen) * 0.2 + 0.05
        elif name.endswith("norm.weight"):
            tensors[name] = (1 + 0.1 * torch.randn(shape, generator=gen)).to(torch.bfloat16)
        elif name.endswith("e_score_correction_bias"):
            tensors[name] = 0.1 * torch.randn(shape, generator=gen)  # float32, as in DeepSeek-V3's files
        else:
            tensors[name] = (torch.randn(shape, generator=gen) / shape[-1] ** 0.5).to(torch.bfloat16)
    return tensors


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("ckpt")
    (directory / "config.json").write_text(json.dumps(CONFIG))
    tensors = hf_tensors(config_from_hf_dict(CONFIG), torch.Generator().manual_seed(0))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    weight_map = {}
    for file, keys in shards.items():
        save_file({k: tensors[k].contiguous() for k in keys}, str(directory / file))
        weight_map.update({k: file for k in keys})
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return directory, tensors


def test_fp8_block_dequantization_partial_blocks():
    weight = torch.randn(130, 200).to(torch.float8_e4m3fn)
    scale = torch.tensor([[2.0, 3.0], [5.0, 7.0]])
    out = dequantize_fp8_blocks(weight, scale)
    w = weight.float()
    # Exact: an e4m3 value (4 significant bits) times 2, 3, 5 or 7 fits float32's 24 bits: no rounding at all.
    assert torch.equal(out[:128, :128], w[:128, :128] * 2) and torch.equal(out[128:, 128:], w[128:, 128:] * 7)
    assert torch.equal(out[:128, 128:], w[:128, 128:] * 3) and torch.equal(out[128:, :128], w[128:, :128] * 5)
    with pytest.raises(UserError, match="does not match"):
        dequantize_fp8_blocks(weight, torch.ones(1, 2))


def test_loads_dense_layers_dequantized(checkpoint):
    directory, tensors = checkpoint
    config = load_config_file(directory).with_layers(1)
    model = eager_model(ModelSpec(config, max_seq_len=64, checkpoint=str(directory), io="tokens"))
    attn = model.layers[0].self_attn
    name = "model.layers.0.self_attn.kv_b_proj.weight"
    expected = dequantize_fp8_blocks(tensors[name], tensors[name + "_scale_inv"])
    # Exact: the loader runs this same elementwise multiply (correctly rounded alike on every CPU) or copies.
    assert torch.equal(attn.kv_b_proj.weight, expected)
    assert torch.equal(attn.q_compression.q_a_layernorm.weight,
                       tensors["model.layers.0.self_attn.q_a_layernorm.weight"].float())
    assert torch.equal(model.lm_head.weight, tensors["lm_head.weight"].float())


def test_loads_moe_layer_experts_dequantized(checkpoint):
    """Layer 1 is MoE: its experts (FP8, per expert in HF names) are stacked, the router stays float32."""
    directory, tensors = checkpoint
    model = eager_model(ModelSpec(load_config_file(directory), max_seq_len=64, checkpoint=str(directory)))
    mlp = model.layers[1].mlp
    prefix = "model.layers.1.mlp."

    def weight(name):
        return dequantize_fp8_blocks(tensors[prefix + name], tensors[prefix + name + "_scale_inv"])

    for j in range(4):  # exact: the same elementwise dequantization as the loader's, then copies (stacking)
        gate_up = torch.cat([weight(f"experts.{j}.gate_proj.weight"), weight(f"experts.{j}.up_proj.weight")])
        assert torch.equal(mlp.experts.gate_up_proj[j], gate_up)
        assert torch.equal(mlp.experts.down_proj[j], weight(f"experts.{j}.down_proj.weight"))
    assert torch.equal(mlp.shared_experts.up_proj.weight, weight("shared_experts.up_proj.weight"))
    assert mlp.gate.weight.dtype == torch.float32
    assert torch.equal(mlp.gate.weight, tensors[prefix + "gate.weight"].float())
    assert torch.equal(mlp.gate.e_score_correction_bias, tensors[prefix + "gate.e_score_correction_bias"])


def test_export_and_validate_from_checkpoint(checkpoint, tmp_path):
    directory, _ = checkpoint
    out = tmp_path / "ckpt.onnx"
    runner = CliRunner()
    result = runner.invoke(main, ["export", "--checkpoint", str(directory), "--layers", "1", "--io", "tokens",
                                  "--max-seq-len", "128", "-o", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["validate", "--onnx", str(out), "--steps", "2", "--prefill-len", "70"],
                           catch_exceptions=False)  # positions past original_max_position_embeddings (64)
    assert result.exit_code == 0, result.output


def test_missing_and_misshapen_tensors(checkpoint, tmp_path):
    directory, tensors = checkpoint
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps(CONFIG))
    subset = {k: v for k, v in tensors.items() if "layers.0.self_attn.kv_b_proj.weight" not in k}
    save_file(subset, str(broken / "model.safetensors"))
    config = load_config_file(broken).with_layers(1)
    with pytest.raises(UserError, match="kv_b_proj.weight' is missing"):
        eager_model(ModelSpec(config, max_seq_len=64, checkpoint=str(broken)))
    subset = dict(tensors)
    subset["model.layers.0.self_attn.kv_a_layernorm.weight"] = torch.ones(7, dtype=torch.bfloat16)
    save_file(subset, str(broken / "model.safetensors"))
    with pytest.raises(UserError, match=r"kv_a_layernorm.weight' has shape \(7,\), expected \(64,\)"):
        eager_model(ModelSpec(config, max_seq_len=64, checkpoint=str(broken)))
    with pytest.raises(UserError, match="found neither"):
        CheckpointReader(tmp_path)
    out = tmp_path / "x.onnx"
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(broken), "--layers", "1", "-o", str(out)])
    assert result.exit_code == 1 and "has shape (7,)" in result.output and not out.exists()


def test_halves_layout_rows_are_permuted_to_pairs(checkpoint, tmp_path):
    """rope_interleave false: the q_pe rows of each head (q_b_proj) and the k_pe rows of
    kv_a_proj_with_mqa are read in halves layout (a0..a3, b0..b3) and stored as pairs (a0, b0, a1, b1, ..),
    after FP8 dequantization (the block scales belong to the file's layout); nothing else moves."""
    directory, _ = checkpoint
    halves = tmp_path / "halves"
    shutil.copytree(directory, halves)
    (halves / "config.json").write_text(json.dumps({**CONFIG, "rope_interleave": False}))
    pairs_model = eager_model(ModelSpec(load_config_file(directory).with_layers(1), max_seq_len=64, checkpoint=str(directory)))
    halves_model = eager_model(ModelSpec(load_config_file(halves).with_layers(1), max_seq_len=64, checkpoint=str(halves)))
    perm = [0, 4, 1, 5, 2, 6, 3, 7]  # d_r = 8: pair k takes rows k and k + 4
    as_read = pairs_model.layers[0].self_attn  # the file's rows, unpermuted
    loaded = halves_model.layers[0].self_attn
    q_read = as_read.q_b_proj.weight.view(2, 24, -1)  # [H, d_h + d_r, q_lora_rank]
    q_loaded = loaded.q_b_proj.weight.view(2, 24, -1)
    # Exact: the same dequantization of the same file, then rows moved (a permutation has no arithmetic).
    assert torch.equal(q_loaded[:, :16], q_read[:, :16]) and torch.equal(q_loaded[:, 16:], q_read[:, 16:][:, perm])
    kv_read, kv_loaded = as_read.kv_a_proj_with_mqa.weight, loaded.kv_a_proj_with_mqa.weight  # [Dc + Dr, d]
    assert torch.equal(kv_loaded[:64], kv_read[:64]) and torch.equal(kv_loaded[64:], kv_read[64:][perm])
    untouched = {k for k in pairs_model.state_dict() if "q_b_proj" not in k and "kv_a_proj" not in k}
    assert all(torch.equal(pairs_model.state_dict()[k], halves_model.state_dict()[k]) for k in untouched)


def test_halves_to_interleaved_inverts_interleaved_to_halves():
    x = torch.randn(3, 8, 5)
    assert torch.equal(halves_to_interleaved(interleaved_to_halves(x, dim=1), dim=1), x)  # exact: permutations
    assert halves_to_interleaved(torch.arange(8.0)).tolist() == [0, 4, 1, 5, 2, 6, 3, 7]
