"""The BlockFp8MatMul TensorRT plugin (plugins/blockFp8MatMulPlugin, in libmla_plugin.so) and DeepseekMoE's FP8
experts as TensorRT-RTX's real ONNX parser meets them: FLOAT8E4M3FN initializers feeding the plugin nodes, in
hand-built one-node models (2-D and 3-D weights, ragged blocks, the 7-input DeepseekMoE) and in real
`--quant fp8` exports of `tiny` and `tiny-moe`; the plugin's README against the contract.

What the parser shows (RTX 1.7): it imports every FLOAT8E4M3FN initializer, hands each to the plugin node as a
constant of type FP8 (its VERBOSE log: `[weight -> (40, 64)[FP8]]`), creates the plugin from the node's
attributes, then aborts the process (so each parse runs in a subprocess, plugin_helpers.parse_with_rtx, and the
first plugin it creates is the one checked). The C++ tests (creator, shapes, launch) run under ctest in
test_plugin.py::test_cpp_tests_pass.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mla_export.common import contract

from plugin_helpers import (ROOT, fp8_initializer, fp8_scale_initializer, markdown_table, parse_with_rtx,
                            rtx_missing)

PLUGIN_DIR = ROOT / "plugins" / "blockFp8MatMulPlugin"
CREATED_FP8 = "Successfully created plugin: BlockFp8MatMul"
CREATED_MOE = "Successfully created plugin: DeepseekMoE"
MOE_RULE = (8, 2, 4, 2, 1, 1, 1, 1, 2.5)  # the tiny-moe preset's routing rule, in contract order


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _scale_shape(weight: list[int]) -> list[int]:
    return [*weight[:-2], _cdiv(weight[-2], contract.FP8_BLOCK), _cdiv(weight[-1], contract.FP8_BLOCK)]


def _save(path: Path, node, inputs, outputs, initializers) -> Path:
    import onnx
    from onnx import helper

    graph = helper.make_graph([node], "fp8", inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21),
                                                    helper.make_opsetid(contract.OP_DOMAIN, contract.OP_DOMAIN_VERSION)])
    model.ir_version = 10
    onnx.save(model, str(path))
    return path


def fp8_matmul_model(path: Path, weight: list[int], lead: list, block_size: int = contract.FP8_BLOCK) -> Path:
    """One BlockFp8MatMul node in the exported node's form: input `lead` + [K] float16 (a graph input),
    weight FLOAT8E4M3FN and its scales as initializers, the look-up attributes."""
    from onnx import TensorProto, helper

    x, w, s = contract.FP8_INPUTS
    (y,) = contract.FP8_OUTPUTS
    node = helper.make_node(contract.FP8_OP_TYPE, [x, w, s], [y], domain=contract.OP_DOMAIN, block_size=block_size,
                            **contract.PLUGIN_LOOKUP_ATTRIBUTES)
    inputs = [helper.make_tensor_value_info(x, TensorProto.FLOAT16, [*lead, weight[-1]])]
    outputs = [helper.make_tensor_value_info(y, TensorProto.FLOAT16, [*lead, weight[-2]])]
    return _save(path, node, inputs, outputs, [fp8_initializer(w, weight, 1), fp8_scale_initializer(s, _scale_shape(weight), 2)])


def fp8_moe_model(path: Path, d: int = 64, inter: int = 32) -> Path:
    """One 7-input DeepseekMoE node (contract version 2): FP8 experts and their block scales as initializers."""
    from onnx import TensorProto, helper, numpy_helper
    import numpy as np

    experts = MOE_RULE[0]
    names = contract.MOE_FP8_INPUTS
    node = helper.make_node(contract.MOE_OP_TYPE, list(names), list(contract.MOE_OUTPUTS), domain=contract.OP_DOMAIN,
                            **dict(zip(contract.MOE_ATTRIBUTES, MOE_RULE)), **contract.PLUGIN_LOOKUP_ATTRIBUTES)
    gate_up, down = [experts, 2 * inter, d], [experts, d, inter]
    rng = np.random.default_rng(0)
    initializers = [numpy_helper.from_array(rng.standard_normal((experts, d)).astype(np.float32), names[1]),
                    numpy_helper.from_array(rng.standard_normal(experts).astype(np.float32), names[2]),
                    fp8_initializer(names[3], gate_up, 3), fp8_initializer(names[4], down, 4),
                    fp8_scale_initializer(names[5], _scale_shape(gate_up), 5),
                    fp8_scale_initializer(names[6], _scale_shape(down), 6)]
    inputs = [helper.make_tensor_value_info(names[0], TensorProto.FLOAT16, ["B", "S", d])]
    outputs = [helper.make_tensor_value_info(contract.MOE_OUTPUTS[0], TensorProto.FLOAT16, ["B", "S", d])]
    return _save(path, node, inputs, outputs, initializers)


def _fed_as(log: str, name: str, shape, kind: str) -> bool:
    """The parser's VERBOSE list of a node's inputs shows `name` as a tensor of `shape` and type `kind`."""
    dims = ", ".join(map(str, shape)) if len(shape) != 1 else str(shape[0])
    return f"[{name} -> ({dims})[{kind}]]" in log


@pytest.mark.parametrize("weight, lead", [([40, 64], ["B", "S"]), ([200, 144], ["M"]), ([4, 32, 64], [4, "M"])],
                         ids=["2-D", "2-D ragged blocks", "3-D"])
def test_parser_creates_block_fp8_matmul(plugin_library, tmp_path, weight, lead):
    """RTX's parser feeds the FLOAT8E4M3FN weight to the node as an FP8 constant (and the scales as float32) and
    creates BlockFp8MatMul with block_size 128, received as kINT32."""
    log = parse_with_rtx(plugin_library, fp8_matmul_model(tmp_path / "fp8.onnx", weight, lead))
    assert "library loaded: True" in log and "fp8 creator found: True" in log, log[-3000:]
    assert "Importing initializer: weight" in log, log[-3000:]
    assert _fed_as(log, "weight", weight, "FP8") and _fed_as(log, "weight_scale_inv", _scale_shape(weight), "FLOAT")
    assert "BlockFp8MatMul: field block_size arrived as kINT32, length 1" in log
    assert "BlockFp8MatMul: block_size=128 (build phase" in log
    assert CREATED_FP8 in log, log[-3000:]


def test_parser_reports_bad_block_size(plugin_library, tmp_path):
    log = parse_with_rtx(plugin_library, fp8_matmul_model(tmp_path / "bad.onnx", [40, 64], ["M"], block_size=64))
    assert CREATED_FP8 not in log
    assert "attribute block_size = 64: expected 128" in log, log[-3000:]
    assert "parsed: False" in log


def test_parser_creates_moe_with_fp8_experts(plugin_library, tmp_path):
    """The 7-input DeepseekMoE: FP8 experts and float32 scales reach the node; the plugin is created with the
    node's routing rule."""
    log = parse_with_rtx(plugin_library, fp8_moe_model(tmp_path / "moe.onnx"))
    assert _fed_as(log, "gate_up_proj", (8, 64, 64), "FP8") and _fed_as(log, "down_proj", (8, 64, 32), "FP8"), log[-3000:]
    assert _fed_as(log, "gate_up_scale", (8, 1, 1), "FLOAT") and _fed_as(log, "down_scale", (8, 1, 1), "FLOAT")
    assert ("DeepseekMoE: num_experts=8 top_k=2 n_group=4 topk_group=2 scoring_func=1 group_score=1 use_bias=1 "
            "normalize=1 weight_scale=2.5 first_expert=0 (build phase") in log
    assert CREATED_MOE in log, log[-3000:]


def _fp8_export(tmp_path: Path, preset: str, redirect: tuple[str, ...] = ()) -> tuple[Path, list]:
    """`export --preset <preset> --quant fp8 --dtype float16`, with the nodes of the op types in `redirect` pointed
    at a namespace no library registers (the parser then inlines their function bodies and goes on: RTX stops at
    the first plugin it creates). Returns the model to parse and the export's nodes."""
    import onnx

    from mla_export.graph.export import export_onnx
    from mla_export.model.hf_config import load_preset
    from mla_export.model.spec import ModelSpec

    path = export_onnx(ModelSpec(load_preset(preset), dtype="float16", quant="fp8", max_seq_len=64),
                       tmp_path / f"{preset}.onnx")
    model = onnx.load(str(path), load_external_data=False)
    nodes = list(model.graph.node)
    for node in model.graph.node:
        if node.op_type in redirect:
            for attribute in node.attribute:
                if attribute.name == "plugin_namespace":
                    attribute.s = b"not_registered"
    onnx.save(model, str(tmp_path / f"{preset}-parsed.onnx"))  # the weights stay in the export's data file
    return tmp_path / f"{preset}-parsed.onnx", nodes


@pytest.mark.slow
def test_parser_creates_block_fp8_matmul_from_tiny_export(plugin_library, tmp_path):
    """`export --preset tiny --quant fp8`: the ONNX holds FLOAT8E4M3FN initializers; the first plugin RTX's parser
    creates is the first BlockFp8MatMul node (q_a_proj), its weight fed as FP8."""
    if rtx_missing():
        pytest.skip(rtx_missing())
    import onnx

    path, nodes = _fp8_export(tmp_path, "tiny")
    fp8 = [n for n in nodes if (n.op_type, n.domain) == (contract.FP8_OP_TYPE, contract.OP_DOMAIN)]
    assert len(fp8) == 16  # 8 projections per layer, 2 layers
    header = onnx.load(str(path), load_external_data=False)
    weights = {t.name: list(t.dims) for t in header.graph.initializer if t.data_type == onnx.TensorProto.FLOAT8E4M3FN}
    assert {n.input[1] for n in fp8} <= set(weights)
    log = parse_with_rtx(plugin_library, path)
    first = fp8[0].input[1]
    assert _fed_as(log, first, weights[first], "FP8"), log[-3000:]
    assert CREATED_FP8 in log and "Successfully created plugin: MlaAttention" not in log, log[-3000:]


@pytest.mark.slow
def test_parser_creates_fp8_moe_from_tiny_moe_export(plugin_library, tmp_path):
    """`export --preset tiny-moe --quant fp8`: with the attention and FP8 projection nodes redirected (inlined:
    their function bodies, FP8 casts included, parse), the parser reaches layer 1's 7-input DeepseekMoE and
    creates it with its FP8 experts."""
    if rtx_missing():
        pytest.skip(rtx_missing())
    path, nodes = _fp8_export(tmp_path, "tiny-moe", redirect=(contract.OP_TYPE, contract.FP8_OP_TYPE))
    moe = [n for n in nodes if (n.op_type, n.domain) == (contract.MOE_OP_TYPE, contract.OP_DOMAIN)]
    assert len(moe) == 2 and all(len(n.input) == len(contract.MOE_FP8_INPUTS) for n in moe)
    log = parse_with_rtx(plugin_library, path)
    assert _fed_as(log, moe[0].input[3], (8, 64, 64), "FP8") and _fed_as(log, moe[0].input[4], (8, 64, 32), "FP8")
    assert _fed_as(log, moe[0].input[5], (8, 1, 1), "FLOAT"), log[-3000:]
    assert CREATED_MOE in log, log[-3000:]
    assert CREATED_FP8 not in log and "Successfully created plugin: MlaAttention" not in log


def test_plugin_launches_match_python_plan(plugin_build):
    """enqueue through the plugin's descriptors launches exactly what fp8_plan plans for the same call (kernel,
    grid, block, shared memory, every argument: the tensors' addresses, the workspace), decode and prefill, split
    and not, ragged N/K, per-head 3-D weights."""
    import subprocess

    from test_fp8_kernels_aot import LAUNCH_CASES

    result = subprocess.run([plugin_build / "tests" / "test_fp8_plugin_launch", plugin_build / "fp8_launch_plan.txt"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-8000:]
    assert f"compared {len(LAUNCH_CASES)} planned calls" in result.stdout
    assert re.search(r"test_fp8_plugin_launch: \d+ passed, 0 failed", result.stdout)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype_name", ["bfloat16", "float16"])
@pytest.mark.parametrize("groups, rows, n, k", [(0, 1, 576, 7168), (0, 200, 1536, 7168), (0, 5, 200, 144),
                                                (128, 4, 512, 128)], ids=["decode", "prefill", "ragged", "per-head"])
def test_enqueue_on_gpu(plugin_build, tmp_path, dtype_name, groups, rows, n, k):
    """enqueue through the shipped library's creator on device buffers, captured in a CUDA graph (no host sync):
    kernels only, within the kernels' bound of the float64 product of the dequantized weight (the native path's
    activation quantization included on sm_89+), and two replays bit-identical."""
    import subprocess

    import torch

    import fp8_reference as ref
    from mla_export.run.compare import compare

    dtype = getattr(torch, dtype_name)
    g = torch.Generator().manual_seed(rows + n)
    shape = (n, k) if groups == 0 else (groups, n, k)
    q, s = ref.quantize(torch.randn(*shape, generator=g))
    x = torch.randn(*((rows, k) if groups == 0 else (groups, rows, k)), generator=g).to(dtype)
    x.view(torch.int16).numpy().tofile(tmp_path / "input.bin")
    q.view(torch.uint8).numpy().tofile(tmp_path / "weight.bin")
    s.numpy().tofile(tmp_path / "weight_scale_inv.bin")
    (tmp_path / "meta.txt").write_text(f"{groups} {rows} {n} {k} {1 if dtype == torch.float16 else 2}")
    run = subprocess.run([plugin_build / "tests" / "test_fp8_gpu_enqueue",
                          plugin_build / "mlaAttentionPlugin" / "libmla_plugin.so", tmp_path],
                         capture_output=True, text=True, timeout=300)
    if run.returncode == 77:
        pytest.skip(run.stdout)
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"graph: [12] kernel, 0 memcpy, 0 memset, 0 other nodes", run.stdout), run.stdout

    def read(name):
        import numpy as np

        raw = np.fromfile(tmp_path / name, dtype=np.int16)
        return torch.from_numpy(raw).view(dtype).reshape(*x.shape[:-1], n)

    got, again = read("output.bin"), read("output.again.bin")
    assert torch.equal(got.view(torch.int16), again.view(torch.int16))  # exact: the same graph launched twice
    bound = ref.accumulation_bound(x, q, s, splits=32)  # the plan splits K at most 32 ways
    if torch.cuda.get_device_capability() >= (8, 9):  # the native FP8 path: activations quantized per block
        bound = 1.1 * bound + ref.activation_quant_bound(x, q, s)
    rounding = 2.0 ** -8 if dtype == torch.bfloat16 else 2.0 ** -11
    # The element-wise bound is a worst case (every activation off by 2^-4 on the native path); the cosine (e4m3's
    # rounding is about 4% RMS: cosine ~0.9993) catches a wrong block or layout that stays within it.
    result = compare("output", got, ref.reference(x, q, s), (bound * (1 + rounding)).numpy() + 1e-30, rounding,
                     min_cosine=0.99)
    assert result.passed, result.to_dict()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype_name", ["bfloat16", "float16"])
@pytest.mark.parametrize("batch, tokens", [(3, 5), (2, 300)])
def test_moe_fp8_enqueue_on_gpu(plugin_build, tmp_path, dtype_name, batch, tokens):
    """The 7-input DeepseekMoE through the shipped library's creator on device buffers, captured in a CUDA graph:
    kernels only, within fp8_moe_reference's float64 bound of the op's semantics on the dequantized experts (the
    device's path: FP8 x FP8 on sm_89+), ragged scale blocks (d 144, I 80), two replays bit-identical."""
    import subprocess

    import numpy as np
    import torch

    from mla_export.model.moe import RoutingRule, router_logits

    from fp8_moe_reference import check_within, dequantize64, expected_and_bound, quantize_blocks
    from helpers import ROUTING_MARGIN, routing_margin
    from test_moe import random_layer

    dtype = getattr(torch, dtype_name)
    rule = RoutingRule(8, 2, n_group=4, topk_group=2, scoring=contract.MOE_SCORING_SIGMOID,
                       group_score=contract.MOE_GROUP_SCORE_TOP2_SUM, use_bias=True, normalize=True, weight_scale=2.5)
    d, inter = 144, 80
    router, bias, gate_up, down = random_layer(rule, d=d, inter=inter, seed=tokens)
    (gq, gs), (dq, ds) = quantize_blocks(gate_up), quantize_blocks(down)
    x = torch.randn(batch * tokens, d, generator=torch.Generator().manual_seed(tokens)).to(dtype)  # [T, d]
    assert routing_margin(router_logits(x.float(), router), rule, bias) > ROUTING_MARGIN  # the reference's experts
    tensors = (x, router, bias, gq, dq, gs, ds)
    for name, tensor in zip(contract.MOE_FP8_INPUTS, tensors):
        t = tensor.contiguous()
        raw = t.view(torch.int16) if t.dtype in (torch.float16, torch.bfloat16) else (
            t.view(torch.uint8) if t.dtype == torch.float8_e4m3fn else t)
        raw.numpy().tofile(tmp_path / f"{name}.bin")
    meta = [batch, tokens, d, inter, *rule.attributes().values()]
    (tmp_path / "meta.txt").write_text(" ".join(str(int(v) if isinstance(v, bool) else v) for v in meta)
                                       + f" {1 if dtype == torch.float16 else 2} 1")
    run = subprocess.run([plugin_build / "tests" / "test_moe_gpu_enqueue",
                          plugin_build / "mlaAttentionPlugin" / "libmla_plugin.so", tmp_path],
                         capture_output=True, text=True, timeout=300)
    if run.returncode == 77:
        pytest.skip(run.stdout)
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"graph: \d+ kernel, 0 memcpy, 0 memset, 0 other nodes", run.stdout), run.stdout

    def read(name):
        raw = np.fromfile(tmp_path / name, dtype=np.int16)
        return torch.from_numpy(raw).view(dtype).reshape(batch * tokens, d)

    got, again = read("routed_output.bin"), read("routed_output.again.bin")
    assert torch.equal(got.view(torch.int16), again.view(torch.int16))  # exact: the same graph launched twice
    native = torch.cuda.get_device_capability() >= (8, 9)
    want, bound = expected_and_bound(x, router, bias, dequantize64(gq, gs), dequantize64(dq, ds), rule, dtype, native)
    check_within(got, want, bound, f"plugin, FP8 experts, {dtype_name}, native={native}")


def test_readme_tables_match_contract():
    from mla_export.graph.onnx_fp8 import fp8_op_schema

    readme = (PLUGIN_DIR / "README.md").read_text()
    schema = fp8_op_schema()
    types = {"T": "T", "float32": "tensor(float)", "float8e4m3fn": "tensor(float8e4m3fn)"}
    inputs = markdown_table(readme, "Inputs")
    assert [(int(r[0]), r[1]) for r in inputs] == list(enumerate(contract.FP8_INPUTS))
    assert [types[r[3]] for r in inputs] == [p.type_str for p in schema.inputs]
    outputs = markdown_table(readme, "Outputs")
    assert [(int(r[0]), r[1]) for r in outputs] == list(enumerate(contract.FP8_OUTPUTS))
    assert [types[r[3]] for r in outputs] == [p.type_str for p in schema.outputs]
    attributes = markdown_table(readme, "Attributes")
    assert {r[0]: r[1] for r in attributes} == contract.FP8_ATTRIBUTES
    assert all(r[2].startswith("kINT32") for r in attributes)
    identity = dict(line.replace("`", "").strip("|").split("|")[:2] for line in readme.splitlines()
                    if line.startswith("| plugin "))
    assert {k.strip(): v.strip() for k, v in identity.items()} == {
        "plugin name": contract.FP8_PLUGIN_NAME, "plugin namespace": contract.PLUGIN_NAMESPACE,
        "plugin version": contract.PLUGIN_VERSION}
    assert re.search(rf"block_size.*{contract.FP8_BLOCK}", readme)
