"""FP8 block-scaled weights (`--quant fp8`): the format, the op, exports that ONNX Runtime runs, and an FP8
checkpoint's bytes carried into the export."""

import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from mla_export.common import contract
from mla_export.common.errors import UserError
from mla_export.graph.export import written_files
from mla_export.graph.tracing import trace_graph
from mla_export.graph.weight_stream import data_bytes, plan_layout
from mla_export.model.config import MlaConfig
from mla_export.model.fp8 import block_fp8_matmul_reference, dequantize_blocks, quantize_blocks
from mla_export.model.hf_config import config_from_hf_dict, load_preset
from mla_export.model.model import MlaModel
from mla_export.model.spec import ModelSpec, spec_from_metadata
from mla_export.ui.cli import main

E4M3_HALF_ULP = 2.0**-4  # e4m3 keeps 3 fraction bits: rounding to nearest errs by at most 2^-4 of the value
E4M3_SUBNORMAL_HALF_STEP = 2.0**-10  # below 2^-6, steps of 2^-9: at most 2^-10 (times the block's scale)


def test_quantize_blocks_bounds_each_element_by_e4m3_rounding():
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(200, 300, generator=gen) * torch.logspace(-3, 1, 300)  # ragged blocks, wide range
    weight[128:, 256:] = 0.0  # an all-zero (partial) block
    q, scale = quantize_blocks(weight)
    assert q.dtype == torch.float8_e4m3fn and q.shape == weight.shape
    assert scale.shape == (2, 3) and scale.dtype == torch.float32
    assert scale[1, 2] == 1.0 and not bool(q[128:, 256:].float().any())
    back = dequantize_blocks(q, scale, torch.float64)
    bound = torch.maximum(E4M3_HALF_ULP * weight.double().abs(),
                          E4M3_SUBNORMAL_HALF_STEP * dequantize_blocks(torch.ones_like(q), scale, torch.float64))
    assert bool(((back - weight.double()).abs() <= bound * (1 + 1e-6)).all())
    # each block's largest magnitude maps onto e4m3's largest value, 448
    assert float(q.float().abs().amax()) == contract.FP8_MAX


def test_quantize_blocks_is_deterministic_and_handles_tiny_blocks():
    weight = torch.full((130, 5), 1e-30)
    weight[0, 0] = 3e-30
    q1, s1 = quantize_blocks(weight)
    q2, s2 = quantize_blocks(weight.clone())
    # Bit-identical by promise: quantize_blocks is a fixed sequence of elementwise float32 operations.
    assert torch.equal(q1.view(torch.uint8), q2.view(torch.uint8)) and torch.equal(s1, s2)
    assert bool((s1 > 0).all()) and bool(torch.isfinite(dequantize_blocks(q1, s1)).all())
    rel = (dequantize_blocks(q1, s1, torch.float64) - weight.double()).abs() / weight.double()
    assert float(rel.max()) <= E4M3_HALF_ULP


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)])
def test_block_fp8_matmul_matches_float64_on_the_dequantized_weight(dtype, rtol):
    gen = torch.Generator().manual_seed(1)
    q, scale = quantize_blocks(torch.randn(3, 150, 260, generator=gen))  # G = 3, ragged N and K
    x = torch.randn(3, 7, 260, generator=gen).to(dtype)
    y = torch.ops.mla.block_fp8_matmul(x, q, scale, 128)
    expected = x.double() @ dequantize_blocks(q, scale, torch.float64).transpose(1, 2)
    assert y.dtype == dtype and y.shape == (3, 7, 150)
    torch.testing.assert_close(y.double(), expected, rtol=rtol, atol=rtol * float(expected.abs().max()))
    flat = torch.ops.mla.block_fp8_matmul(x.reshape(1, 21, 260).expand(2, 21, 260), q[0], scale[0], 128)
    torch.testing.assert_close(flat.double(), (x.reshape(21, 260).double() @ dequantize_blocks(q[0], scale[0],
                               torch.float64).T).expand(2, 21, 150), rtol=rtol, atol=rtol * float(expected.abs().max()))
    with pytest.raises(ValueError, match="block_size"):
        torch.ops.mla.block_fp8_matmul(x, q, scale, 64)
    with pytest.raises(ValueError, match="scale_inv"):
        torch.ops.mla.block_fp8_matmul(x, q, scale[:, :1], 128)


def _initializers(path) -> dict[str, onnx.TensorProto]:
    model = onnx.load(str(path), load_external_data=True)
    return {i.name: i for i in model.graph.initializer}, model


@pytest.mark.parametrize("preset,dtype,absorb", [("tiny", "float32", "prefolded"), ("tiny", "float16", "runtime"),
                                                 ("tiny-moe", "float32", "runtime"),
                                                 ("tiny-moe", "float16", "prefolded")])
def test_fp8_export_validates_on_onnx_runtime(tmp_path, preset, dtype, absorb):
    """Each preset, activation dtype and absorb form (MoE included) exports with FLOAT8E4M3FN weights and
    passes validate on ONNX Runtime against the eager model holding the same FP8 weights."""
    out = tmp_path / "m.onnx"
    runner = CliRunner()
    result = runner.invoke(main, ["export", "--preset", preset, "--dtype", dtype, "--absorb", absorb, "--quant",
                                  "fp8", "--max-seq-len", "64", "-q", "-o", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    inits, model = _initializers(out)
    fp8 = [i for i in inits.values() if i.data_type == onnx.TensorProto.FLOAT8E4M3FN]
    nodes = [n for n in model.graph.node if n.op_type == contract.FP8_OP_TYPE]
    assert fp8 and len(nodes) >= 4 * 2  # q_a, kv_a, the query/output projections and the MLP, per layer
    moe = [n for n in model.graph.node if n.op_type == contract.MOE_OP_TYPE]
    assert all(len(n.input) == len(contract.MOE_FP8_INPUTS) for n in moe) and bool(moe) == (preset == "tiny-moe")
    result = runner.invoke(main, ["validate", "--onnx", str(out), "--steps", "3"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output and "vs the unquantized model" in result.output


def _aligned_config() -> MlaConfig:
    """A model whose heads and experts are whole 128-row blocks (as DeepSeek-V3's are), 2 layers: dense, MoE."""
    return config_from_hf_dict({
        "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "hidden_size": 256,
        "num_attention_heads": 2, "q_lora_rank": 96, "kv_lora_rank": 64, "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 16, "v_head_dim": 128, "intermediate_size": 192, "moe_intermediate_size": 128,
        "num_hidden_layers": 2, "vocab_size": 64, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "max_position_embeddings": 256, "first_k_dense_replace": 1, "n_routed_experts": 4, "moe_layer_freq": 1,
        "num_experts_per_tok": 2, "n_shared_experts": 1, "topk_method": "noaux_tc", "n_group": 2, "topk_group": 1,
        "scoring_func": "sigmoid", "norm_topk_prob": True, "routed_scaling_factor": 2.5,
        "quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]}})


def _checkpoint_names(config: MlaConfig) -> dict[str, tuple[int, ...]]:
    """Every HF checkpoint tensor name of `config`'s model and its shape (experts one by one)."""
    with torch.device("meta"):
        model = MlaModel(config, 64)
    shapes = {}
    for name, param in model.named_parameters():
        hf = "model." + name.replace(".q_compression.", ".")
        if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            experts, rows, cols = param.shape
            prefix = hf.rsplit(".", 1)[0]
            for j in range(experts):
                if name.endswith("gate_up_proj"):
                    shapes[f"{prefix}.{j}.gate_proj.weight"] = shapes[f"{prefix}.{j}.up_proj.weight"] = (rows // 2, cols)
                else:
                    shapes[f"{prefix}.{j}.down_proj.weight"] = (rows, cols)
        else:
            shapes[hf] = tuple(param.shape)
    return shapes


def write_fp8_checkpoint(directory, config_json: dict, config: MlaConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """A checkpoint in HF's format: config.json, one safetensors file, every 2-D projection FP8 with its
    `weight_scale_inv` per 128x128 block (DeepSeek-V3's layout), norms bfloat16, the router float32."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in _checkpoint_names(config).items():
        if name.endswith("_proj.weight") or name.endswith("kv_a_proj_with_mqa.weight"):
            q, scale = quantize_blocks(torch.randn(shape, generator=gen) / shape[-1] ** 0.5)
            tensors[name], tensors[name + "_scale_inv"] = q, scale * (1 + torch.rand(scale.shape, generator=gen))
        elif name.endswith("norm.weight"):
            tensors[name] = (1 + 0.1 * torch.randn(shape, generator=gen)).to(torch.bfloat16)
        else:
            tensors[name] = torch.randn(shape, generator=gen) / shape[-1] ** 0.5
    directory.mkdir(exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config_json))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(directory / "model.safetensors"))
    return tensors


@pytest.fixture(scope="module")
def fp8_checkpoint(tmp_path_factory):
    config = _aligned_config()
    directory = tmp_path_factory.mktemp("fp8ckpt") / "ckpt"
    tensors = write_fp8_checkpoint(directory, config.to_hf_dict() | {"quantization_config": {
        "quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]}}, config)
    return directory, tensors


def _bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().view(torch.uint8).numpy().tobytes() if t.dtype == torch.float8_e4m3fn else \
        t.float().contiguous().numpy().tobytes()


def _export(directory, tmp_path, absorb, dtype="bfloat16"):
    out = tmp_path / f"{absorb}-{dtype}.onnx"
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(directory), "--quant", "fp8", "--dtype",
                                       dtype, "--absorb", absorb, "--max-seq-len", "64", "-q", "-o", str(out)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


def test_fp8_checkpoint_bytes_are_kept_bit_for_bit(fp8_checkpoint, tmp_path):
    """--absorb runtime at 128-aligned dims: every FP8 weight is a checkpoint weight or whole blocks of one,
    so its bytes and scales are the checkpoint's; dequantizing the export gives the checkpoint's values."""
    directory, tensors = fp8_checkpoint
    inits, _ = _initializers(_export(directory, tmp_path, "runtime"))
    config = _aligned_config()
    heads, d_h, d_c = config.num_attention_heads, config.qk_nope_head_dim, config.kv_lora_rank

    def stored(name):
        init = inits[name]
        raw = np.frombuffer(init.raw_data, dtype=np.uint8 if init.data_type == onnx.TensorProto.FLOAT8E4M3FN
                            else np.float32)
        return raw.tobytes()

    for layer in range(2):
        ckpt, graph = f"model.layers.{layer}.self_attn.", f"layers.{layer}.self_attn."
        pairs = {"q_compression.q_a_proj": "q_a_proj", "kv_a_proj_with_mqa": "kv_a_proj_with_mqa",
                 "q_up_proj": "q_b_proj", "o_proj": "o_proj"}
        for ours, theirs in pairs.items():  # bit for bit: the export copies the checkpoint's bytes
            assert stored(graph + ours + ".weight") == _bytes(tensors[ckpt + theirs + ".weight"])
            assert stored(graph + ours + ".weight_scale_inv") == _bytes(tensors[ckpt + theirs + ".weight_scale_inv"])
        kv_b = tensors[ckpt + "kv_b_proj.weight"].view(torch.uint8).view(heads, -1, d_c)  # [H, Dn + Dv, Dc]
        kv_b_scale = tensors[ckpt + "kv_b_proj.weight_scale_inv"].view(heads, -1, 1)  # [H, (Dn + Dv)/128, 1]
        assert stored(graph + "w_uk.weight") == kv_b[:, :d_h].transpose(1, 2).contiguous().numpy().tobytes()
        assert stored(graph + "w_uv.weight") == kv_b[:, d_h:].contiguous().numpy().tobytes()
        assert stored(graph + "w_uk.weight_scale_inv") == _bytes(kv_b_scale[:, :1].transpose(1, 2))
    mlp = "model.layers.1.mlp."
    gate_up = torch.stack([torch.cat([tensors[f"{mlp}experts.{j}.gate_proj.weight"],
                                      tensors[f"{mlp}experts.{j}.up_proj.weight"]]) for j in range(4)])
    assert stored("layers.1.mlp.experts.gate_up_proj") == _bytes(gate_up)
    assert stored("layers.1.mlp.experts.down_scale") == _bytes(torch.stack(
        [tensors[f"{mlp}experts.{j}.down_proj.weight_scale_inv"] for j in range(4)]))
    assert stored("layers.0.mlp.down_proj.weight") == _bytes(tensors["model.layers.0.mlp.down_proj.weight"])
    # the round trip: the export read back and dequantized is the checkpoint's dequantization
    for name, ckpt_name in (("layers.1.mlp.shared_experts.up_proj", f"{mlp}shared_experts.up_proj"),
                            ("layers.0.self_attn.o_proj", "model.layers.0.self_attn.o_proj")):
        weight = torch.frombuffer(bytearray(stored(name + ".weight")), dtype=torch.uint8).view(torch.float8_e4m3fn)
        scale = torch.frombuffer(bytearray(stored(name + ".weight_scale_inv")), dtype=torch.float32)
        q, q_scale = tensors[ckpt_name + ".weight"], tensors[ckpt_name + ".weight_scale_inv"]
        back = dequantize_blocks(weight.view(q.shape), scale.view(q_scale.shape), torch.float64)
        # Exact: dequantization is one float64 product of an e4m3 value and a float32 scale on both sides.
        assert torch.equal(back, dequantize_blocks(q, q_scale, torch.float64))


def test_fp8_checkpoint_prefolded_requantizes_the_folds_only(fp8_checkpoint, tmp_path):
    """--absorb prefolded: the folded products are re-quantized from the float64 fold of the dequantized
    factors (error within e4m3 rounding of each block), the unfolded weights keep their bytes."""
    directory, tensors = fp8_checkpoint
    inits, _ = _initializers(_export(directory, tmp_path, "prefolded"))
    config = _aligned_config()
    ckpt = "model.layers.0.self_attn."
    assert inits["layers.0.self_attn.kv_a_proj_with_mqa.weight"].raw_data == \
        _bytes(tensors[ckpt + "kv_a_proj_with_mqa.weight"])
    from mla_export.model.folding import fold_attention_weights

    def deq(name):
        return dequantize_blocks(tensors[ckpt + name + ".weight"], tensors[ckpt + name + ".weight_scale_inv"],
                                 torch.float64)

    folded = fold_attention_weights(config, deq("q_b_proj"), deq("kv_b_proj"), deq("o_proj"), torch.float64)
    init, scale_init = inits["layers.0.self_attn.out_proj.weight"], inits["layers.0.self_attn.out_proj.weight_scale_inv"]
    q = torch.frombuffer(bytearray(init.raw_data), dtype=torch.uint8).view(torch.float8_e4m3fn).view(*init.dims)
    scale = torch.frombuffer(bytearray(scale_init.raw_data), dtype=torch.float32).view(*scale_init.dims)
    error = (dequantize_blocks(q, scale, torch.float64) - folded.out_proj).abs()
    block_max = dequantize_blocks(torch.ones_like(q), scale, torch.float64) * contract.FP8_MAX
    assert float(error.max()) > 0  # a product of FP8 factors is not itself FP8: it is re-quantized
    assert bool((error <= E4M3_HALF_ULP * torch.maximum(folded.out_proj.abs(),
                                                          block_max * 2.0**-6) * (1 + 1e-6)).all())


def test_fp8_export_from_an_fp8_checkpoint_validates(fp8_checkpoint, tmp_path):
    directory, _ = fp8_checkpoint
    out = _export(directory, tmp_path, "runtime", "float16")  # ONNX Runtime's CPU provider lacks bfloat16 kernels
    result = CliRunner().invoke(main, ["validate", "--onnx", str(out), "--steps", "2"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output


SCALE = "model.layers.0.self_attn.o_proj.weight_scale_inv"


def _zero_scale(t):
    t = t.clone()
    t[0, 0] = 0.0
    return t


def _nan_scale(t):
    t = t.clone()
    t[-1, -1] = float("nan")
    return t


@pytest.mark.parametrize("edit,expected", [
    (lambda tensors: tensors | {SCALE: _zero_scale(tensors[SCALE])}, ["o_proj.weight_scale_inv", "> 0"]),
    (lambda tensors: tensors | {SCALE: _nan_scale(tensors[SCALE])}, ["o_proj.weight_scale_inv", "NaN"]),
    (lambda tensors: tensors | {SCALE: tensors[SCALE].repeat(1, 2)}, ["o_proj.weight_scale_inv", "128x128 blocks"]),
    (lambda tensors: {k: v for k, v in tensors.items() if k != SCALE}, ["o_proj.weight", "weight_scale_inv"]),
], ids=["non-positive scale", "NaN scale", "scale not one per block", "scale missing"])
def test_fp8_checkpoint_with_bad_scales_is_refused(fp8_checkpoint, tmp_path, edit, expected):
    """Each bad FP8 checkpoint: one message naming the tensor, exit 1, nothing written."""
    directory, tensors = fp8_checkpoint
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text((directory / "config.json").read_text())
    save_file({k: v.contiguous() for k, v in edit(dict(tensors)).items()}, str(bad / "model.safetensors"))
    out = tmp_path / "bad.onnx"
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(bad), "--quant", "fp8", "--absorb", "runtime",
                                       "--max-seq-len", "64", "-q", "-o", str(out)])
    assert result.exit_code == 1, result.output
    assert all(text in result.output for text in expected), result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) <= 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("bad.onnx") or p.name.startswith(".mla-export")]


def test_fp8_checkpoint_with_another_block_size_is_refused(fp8_checkpoint, tmp_path):
    directory, _ = fp8_checkpoint
    bad = tmp_path / "bad"
    bad.mkdir()
    config = json.loads((directory / "config.json").read_text())
    config["quantization_config"]["weight_block_size"] = [64, 64]
    (bad / "config.json").write_text(json.dumps(config))
    (bad / "model.safetensors").symlink_to(directory / "model.safetensors")
    result = CliRunner().invoke(main, ["export", "--checkpoint", str(bad), "--quant", "fp8", "-q", "-o",
                                       str(tmp_path / "bad.onnx")])
    assert result.exit_code == 1 and "weight_block_size" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "bad.onnx").exists()


def test_build_refuses_fp8_with_float32_activations_on_the_plugin_path(tmp_path):
    """Before TensorRT is imported: the plugins take FP8 weights with 16-bit activations only."""
    onnx_path, engine = tmp_path / "f32.onnx", tmp_path / "f32.engine"
    runner = CliRunner()
    assert runner.invoke(main, ["export", "--preset", "tiny", "--quant", "fp8", "--max-seq-len", "32", "-q", "-o",
                                str(onnx_path)]).exit_code == 0
    result = runner.invoke(main, ["build", "--onnx", str(onnx_path), "-o", str(engine)])
    assert result.exit_code == 1 and "--quant fp8" in result.output and "--dtype bfloat16" in result.output
    assert "Traceback" not in result.output and not engine.exists()


def test_v3_layer_in_fp8_is_at_most_055_of_bfloat16():
    """The acceptance size: one DeepSeek-V3 layer (dense, with the embedding-free hidden I/O) in FP8 is at most
    0.55x its bfloat16 bytes (traced without weights: the layout gives the exact sizes)."""
    config = load_preset("deepseek-v3").with_layers(1)
    sizes = {quant: data_bytes(plan_layout(trace_graph(ModelSpec(config, dtype="bfloat16", max_seq_len=256,
                                                                 quant=quant))))
             for quant in ("none", "fp8")}
    assert sizes["fp8"] <= 0.55 * sizes["none"], sizes


def test_moe_contract_version_1_files_still_read():
    spec = ModelSpec(load_preset("tiny-moe"), max_seq_len=64)
    meta = spec.metadata() | {contract.META_MOE_CONTRACT_VERSION: "1"}
    assert spec_from_metadata(meta, "test") == spec
    with pytest.raises(UserError, match="DeepseekMoE contract version 9"):
        spec_from_metadata(meta | {contract.META_MOE_CONTRACT_VERSION: "9"}, "test")


def test_written_files_of_an_fp8_export(tmp_path):
    out = tmp_path / "t.onnx"
    result = CliRunner().invoke(main, ["export", "--preset", "tiny", "--quant", "fp8", "--max-seq-len", "32", "-q",
                                       "-o", str(out)], catch_exceptions=False)
    assert result.exit_code == 0 and "--quant fp8" in result.output
    assert written_files(out) == [out]


@pytest.mark.parametrize("quant", ["none", "fp8"])
@pytest.mark.parametrize("absorb", ["prefolded", "runtime"])
def test_info_weight_bytes_are_the_exports_bytes(quant, absorb):
    """`info`'s bytes per layer and in all (footprint.weight_bytes) equal what the export's layout stores."""
    from mla_export.graph.tracing import ROPE_TABLE
    from mla_export.model.footprint import weight_bytes

    config = load_preset("tiny-moe")
    layout = plan_layout(trace_graph(ModelSpec(config, dtype="float16", max_seq_len=32, absorb=absorb, quant=quant)))
    per_layer = [sum(p.length for p in layout if p.ref.layer == i) for i in range(config.num_hidden_layers)]
    sizes = weight_bytes(config, 2, quant, absorb, with_embeddings=False)
    assert sizes["layers"] == per_layer
    assert sizes["total"] == sum(p.length for p in layout if p.ref.param != ROPE_TABLE)


def test_fp8_validate_per_layer_reports_the_quantization_error(tmp_path):
    """Per layer, as whole: judged against the FP8 reference, the unquantized model's error reported beside."""
    out, report = tmp_path / "m.onnx", tmp_path / "r.json"
    runner = CliRunner()
    assert runner.invoke(main, ["export", "--preset", "tiny-moe", "--quant", "fp8", "--absorb", "runtime",
                                "--max-seq-len", "64", "-q", "-o", str(out)]).exit_code == 0
    result = runner.invoke(main, ["validate", "--onnx", str(out), "--per-layer", "--steps", "2", "--json",
                                  str(report)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "vs the unquantized model" in result.output
    errors = json.loads(report.read_text())["quantization_error"]
    assert len(errors) == 3 and all(0 < e["rel_rms"] < 1 and 0 < e["cosine"] < 1 for e in errors)
