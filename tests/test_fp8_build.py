"""`build --attention plugin` with FP8 exports: every BlockFp8MatMul node must become a plugin layer of its own
type (TensorRT's parser inlines a node's function body when no creator matches), and a node whose weight the
FP8 kernels cannot take is refused before any TensorRT work, naming the node."""

from types import SimpleNamespace

import pytest
from onnx import TensorProto, helper

from mla_export.common import contract
from mla_export.common.errors import UserError
from mla_export.trt.build import PLUGIN_OPS, check_fp8_supports, check_plugin_layers, plugin_nodes

from plugin_helpers import fp8_initializer, fp8_scale_initializer


def _header(weights: dict[str, list[int]]):
    """An ONNX header with one BlockFp8MatMul node per weight (FLOAT8E4M3FN initializers) and one MlaAttention."""
    nodes, initializers = [], []
    for i, (name, shape) in enumerate(weights.items()):
        scale = [*shape[:-2], -(-shape[-2] // 128), -(-shape[-1] // 128)]
        initializers += [fp8_initializer(name, shape, i), fp8_scale_initializer(f"{name}_scale_inv", scale, i)]
        nodes.append(helper.make_node(contract.FP8_OP_TYPE, [f"x{i}", name, f"{name}_scale_inv"], [f"y{i}"],
                                      name=f"proj_{i}", domain=contract.OP_DOMAIN, block_size=128,
                                      **contract.PLUGIN_LOOKUP_ATTRIBUTES))
    nodes.append(helper.make_node(contract.OP_TYPE, ["a"], ["b"], domain=contract.OP_DOMAIN))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x0", TensorProto.FLOAT16, [1, 64])],
                              [helper.make_tensor_value_info("b", TensorProto.FLOAT16, [1])], initializer=initializers)
    return helper.make_model(graph)


def test_fp8_nodes_are_plugin_ops():
    assert contract.FP8_OP_TYPE in PLUGIN_OPS
    header = _header({"q_a_proj": [48, 64], "w_uk": [4, 32, 64], "o_proj": [64, 128]})
    assert plugin_nodes(header) == {"MlaAttention": 1, "DeepseekMoE": 0, "BlockFp8MatMul": 3}


def test_every_fp8_node_must_be_a_plugin_layer():
    nodes = {"MlaAttention": 2, "DeepseekMoE": 0, "BlockFp8MatMul": 16}
    check_plugin_layers("plugin", {"MlaAttention": 2, "BlockFp8MatMul": 16}, nodes, None)
    with pytest.raises(UserError, match=r"0 BlockFp8MatMul plugin layer\(s\) for 16 BlockFp8MatMul node\(s\): "
                                        r"TensorRT silently inlined"):
        check_plugin_layers("plugin", {"MlaAttention": 2}, nodes, None)  # a library without the FP8 creator
    with pytest.raises(UserError, match=r"BlockFp8MatMul v1"):
        check_plugin_layers("plugin", {"MlaAttention": 2, "BlockFp8MatMul": 15}, nodes, None)
    check_plugin_layers("decomposed", {}, nodes, None)
    with pytest.raises(UserError, match="BlockFp8MatMul"):
        check_plugin_layers("decomposed", {"BlockFp8MatMul": 16}, nodes, None)


def test_fp8_weights_the_kernels_lack_are_refused():
    model = SimpleNamespace(dtype="bfloat16")
    check_fp8_supports(model, _header({"q_a_proj": [48, 64], "w_uk": [4, 32, 64], "ragged": [200, 144]}))
    with pytest.raises(UserError, match=r"BlockFp8MatMul plugin cannot run node proj_1 \(weight odd \[40, 72\], "
                                        r"bfloat16\): K must be a positive multiple of 16"):
        check_fp8_supports(model, _header({"q_a_proj": [48, 64], "odd": [40, 72]}))
    with pytest.raises(UserError, match="float16 and bfloat16 only"):
        check_fp8_supports(SimpleNamespace(dtype="float32"), _header({"q_a_proj": [48, 64]}))


def test_build_refuses_fp8_exports_the_kernels_lack(tmp_path):
    """`build --attention plugin` on `--quant fp8` exports, before any TensorRT work: the 7-input DeepseekMoE is
    checked as FP8 experts (expert dims in multiples of 16), then every BlockFp8MatMul weight (K a multiple of
    16); nothing is written."""
    import dataclasses

    from click.testing import CliRunner

    from mla_export.graph.export import export_onnx
    from mla_export.model.hf_config import load_preset
    from mla_export.model.spec import ModelSpec
    from mla_export.ui.cli import main

    def build(config, name):
        path = export_onnx(ModelSpec(config, dtype="float16", quant="fp8", max_seq_len=64), tmp_path / name)
        result = CliRunner().invoke(main, ["build", "--onnx", str(path), "-o", str(tmp_path / "x.engine"),
                                           "--plugin-lib", str(tmp_path / "nope.so")], catch_exceptions=False)
        assert result.exit_code == 1 and not (tmp_path / "x.engine").exists()
        return result.output

    moe = dataclasses.replace(load_preset("tiny-moe"), moe_intermediate_size=24).with_layers(2)
    output = build(moe, "odd-moe.onnx")
    assert "the DeepseekMoE plugin cannot run this export" in output and "multiples of 16" in output, output
    dense = dataclasses.replace(load_preset("tiny"), intermediate_size=72).with_layers(1)
    output = build(dense, "odd-mlp.onnx")
    assert "the BlockFp8MatMul plugin cannot run node" in output and "[64, 72]" in output, output
    assert "K must be a positive multiple of 16" in output
