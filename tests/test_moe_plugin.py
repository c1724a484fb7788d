"""The DeepseekMoE TensorRT plugin (plugins/deepseekMoePlugin, in libmla_plugin.so beside MlaAttention): enqueue's
recorded launches against the Python plan, its README against the contract, and TensorRT-RTX's real ONNX parser
creating it from an exported `tiny-moe` graph with the node's attribute values.

The C++ tests themselves (creator, shapes, launch sweep) run under ctest in test_plugin.py::test_cpp_tests_pass;
the build is the session's `plugin_build` (conftest.py). RTX aborts right after creating a plugin, so each parse
runs in a subprocess (plugin_helpers.parse_with_rtx) and reads the first plugin it creates.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from mla_export.common import contract

from plugin_helpers import MOE_FP8_PLAN_CASES, MOE_PLAN_CASES, MOE_SLICE_PLAN_CASES, ROOT, markdown_table, parse_with_rtx, rtx_missing

PLUGIN_DIR = ROOT / "plugins" / "deepseekMoePlugin"
CREATED = "Successfully created plugin: DeepseekMoE"
PARSED_VALUES = re.compile(r"DeepseekMoE: num_experts=(\d+) top_k=(\d+) n_group=(\d+) topk_group=(\d+) "
                           r"scoring_func=(\d+) group_score=(\d+) use_bias=(\d+) normalize=(\d+) "
                           r"weight_scale=(\S+) first_expert=(\d+) \(build phase")


def test_launches_match_python_plan(plugin_build):
    """enqueue launches exactly what moe_plan plans for the same tensors (kernel, grid, block, shared memory, every
    argument value, chunk by chunk) for the routing rules of V2-Lite, V2, V3, Kimi K2 and tiny-moe, decode and
    prefill token counts, one to three chunks, float16 and bfloat16; and ranks' slices of the experts (first_expert,
    E_local: contract version 3), whose count, align and combine launches take them."""
    result = subprocess.run([plugin_build / "tests" / "test_moe_launch", plugin_build / "moe_launch_plan.txt"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-8000:]
    assert f"compared {len(MOE_PLAN_CASES)} planned calls" in result.stdout
    assert f"compared {len(MOE_FP8_PLAN_CASES)} planned FP8-expert calls through the plugin" in result.stdout
    with_first = sum(first > 0 for _, _, first, _ in MOE_SLICE_PLAN_CASES)
    assert f"compared {len(MOE_SLICE_PLAN_CASES)} planned expert-slice calls, {with_first} with first_expert > 0" \
        in result.stdout
    launches = sum(line.startswith("launch ") for line in (plugin_build / "moe_launch_plan.txt").read_text().splitlines())
    assert launches > 7 * len(MOE_PLAN_CASES)  # several cases span more than one chunk


def test_readme_tables_match_contract():
    from mla_export.graph.onnx_moe import moe_op_schema

    readme = (PLUGIN_DIR / "README.md").read_text()
    schema = moe_op_schema()
    types = {"T": "T", "float32": "tensor(float)", "float8e4m3fn": "tensor(float8e4m3fn)"}
    inputs = markdown_table(readme, "Inputs")
    assert [(int(r[0]), r[1]) for r in inputs] == list(enumerate(contract.MOE_FP8_INPUTS))
    # Each row's type cell names the input's type in a 5-input node and in a 7-input one (FP8 experts).
    cells = [{types[t] for t in r[3].split(" or ")} for r in inputs]
    assert all(p.type_str in cell for p, cell in zip(schema.inputs, cells))
    assert all(p.type_str in cell for p, cell in zip(moe_op_schema(fp8=True).inputs, cells))
    assert [len(cell) for cell in cells] == [1, 1, 1, 2, 2, 1, 1]
    outputs = markdown_table(readme, "Outputs")
    assert [(int(r[0]), r[1]) for r in outputs] == list(enumerate(contract.MOE_OUTPUTS))
    assert [types[r[3]] for r in outputs] == [p.type_str for p in schema.outputs]
    attributes = markdown_table(readme, "Attributes")
    assert {r[0]: r[1] for r in attributes} == contract.MOE_ATTRIBUTES | contract.MOE_SLICE_ATTRIBUTES
    for row in attributes:
        assert row[2].startswith("kINT32" if row[1] == "INT" else "kFLOAT32")
    identity = dict(line.replace("`", "").strip("|").split("|")[:2] for line in readme.splitlines()
                    if line.startswith("| plugin "))
    assert {k.strip(): v.strip() for k, v in identity.items()} == {
        "plugin name": contract.MOE_PLUGIN_NAME, "plugin namespace": contract.PLUGIN_NAMESPACE,
        "plugin version": contract.PLUGIN_VERSION}


def _moe_attributes(node) -> tuple:
    import onnx

    values = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    return tuple(values[name] for name in contract.MOE_ATTRIBUTES | contract.MOE_SLICE_ATTRIBUTES)


def _check_created_with(log: str, expected: tuple):
    assert "library loaded: True" in log and "moe creator found: True" in log, log[-3000:]
    assert CREATED in log, log[-3000:]
    parsed = PARSED_VALUES.findall(log)
    assert parsed, log[-3000:]
    *ints, scale, first = parsed[0]
    assert tuple(map(int, ints)) == tuple(expected[:8])
    assert float(scale) == pytest.approx(expected[8], rel=1e-7)
    assert int(first) == (expected[9] if len(expected) > 9 else 0)  # absent (a version-2 node): 0
    # The fields arrive as the parser sends them: INT -> kINT32, FLOAT -> kFLOAT32.
    assert "DeepseekMoE: field num_experts arrived as kINT32, length 1" in log
    assert "DeepseekMoE: field weight_scale arrived as kFLOAT32, length 1" in log


@pytest.mark.slow
def test_parser_creates_plugin_from_exported_tiny_moe(plugin_library, tmp_path):
    """`mla-export export --preset tiny-moe`: RTX's parser creates DeepseekMoE with the node's attribute values.
    RTX stops at the first plugin it creates, so the attention nodes are pointed at a namespace no library
    registers: the parser inlines their function bodies (its silent fallback) and goes on to layer 1's MoE."""
    if rtx_missing():
        pytest.skip(rtx_missing())
    import onnx

    from mla_export.graph.export import export_onnx
    from mla_export.model.hf_config import load_preset
    from mla_export.model.spec import ModelSpec

    path = export_onnx(ModelSpec(load_preset("tiny-moe"), dtype="float16", max_seq_len=64), tmp_path / "tiny-moe.onnx")
    model = onnx.load(str(path))
    moe_nodes = [n for n in model.graph.node if (n.op_type, n.domain) == (contract.MOE_OP_TYPE, contract.OP_DOMAIN)]
    assert len(moe_nodes) == 2
    for node in model.graph.node:
        if node.op_type == contract.OP_TYPE:
            for attribute in node.attribute:
                if attribute.name == "plugin_namespace":
                    attribute.s = b"not_registered"
    onnx.save(model, str(tmp_path / "moe-first.onnx"))
    log = parse_with_rtx(plugin_library, tmp_path / "moe-first.onnx")
    _check_created_with(log, _moe_attributes(moe_nodes[0]))
    assert "Successfully created plugin: MlaAttention" not in log


def _one_node_model(path: Path, attrs: tuple, d: int = 64, inter: int = 32) -> Path:
    """A one-node model in the exported node's form (domain mla, look-up attributes), float16 experts."""
    import onnx
    from onnx import TensorProto, helper

    experts = attrs[0]
    held = experts // 2 if len(attrs) > 9 else experts  # with first_expert (version 3): half the experts, a rank's
    t, f = TensorProto.FLOAT16, TensorProto.FLOAT
    shapes = {"hidden_states": (t, ["B", "S", d]), "router_weight": (f, [experts, d]), "score_bias": (f, [experts]),
              "gate_up_proj": (t, [held, 2 * inter, d]), "down_proj": (t, [held, d, inter]),
              "routed_output": (t, ["B", "S", d])}
    inputs = [helper.make_tensor_value_info(n, *shapes[n]) for n in contract.MOE_INPUTS]
    outputs = [helper.make_tensor_value_info(n, *shapes[n]) for n in contract.MOE_OUTPUTS]
    node = helper.make_node(contract.MOE_OP_TYPE, list(contract.MOE_INPUTS), list(contract.MOE_OUTPUTS),
                            domain=contract.OP_DOMAIN,
                            **dict(zip(contract.MOE_ATTRIBUTES | contract.MOE_SLICE_ATTRIBUTES, attrs)),
                            **contract.PLUGIN_LOOKUP_ATTRIBUTES)
    model = helper.make_model(helper.make_graph([node], "deepseek_moe", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 18),
                                             helper.make_opsetid(contract.OP_DOMAIN, contract.OP_DOMAIN_VERSION)])
    model.ir_version = 10
    onnx.save(model, str(path))
    return path


def test_parser_passes_attribute_values(plugin_library, tmp_path):
    """DeepSeek-V2's rule (160 experts, 8 groups, 3 kept, softmax, max, scale 16) reaches the creator unchanged, in
    a node of contract version 2 (no first_expert: the creator takes 0) and as rank 1 of 2 (first_expert 80)."""
    expected = (160, 6, 8, 3, 0, 0, 0, 0, 16.0)
    _check_created_with(parse_with_rtx(plugin_library, _one_node_model(tmp_path / "v2.onnx", expected)), expected)
    rank = expected + (80,)
    _check_created_with(parse_with_rtx(plugin_library, _one_node_model(tmp_path / "rank1.onnx", rank)), rank)


def test_parser_reports_invalid_attribute(plugin_library, tmp_path):
    log = parse_with_rtx(plugin_library, _one_node_model(tmp_path / "bad.onnx", (8, 9, 1, 1, 1, 1, 1, 1, 1.0)))
    assert CREATED not in log
    assert "attribute top_k = 9: expected an integer in [1, num_experts]" in log, log[-3000:]
    assert "parsed: False" in log


@pytest.mark.gpu
@pytest.mark.parametrize("dtype_name", ["bfloat16", "float16"])
@pytest.mark.parametrize("batch, tokens", [(3, 5), (2, 300)])
def test_enqueue_on_gpu(plugin_build, tmp_path, dtype_name, batch, tokens):
    """enqueue through the shipped library's creator on device buffers, captured in a CUDA graph (so no host sync):
    seven kernel nodes and nothing else, the float64 loop's result with NaN in every expert no token routes to,
    and two replays bit-identical."""
    import torch

    from mla_export.run.compare import compare, tolerance_for
    from mla_export.model.moe import RoutingRule, route, router_logits

    from test_moe import loop_moe

    dtype = getattr(torch, dtype_name)
    rule = RoutingRule(8, 2, n_group=4, topk_group=2, scoring=contract.MOE_SCORING_SIGMOID,
                       group_score=contract.MOE_GROUP_SCORE_TOP2_SUM, use_bias=True, normalize=True, weight_scale=2.5)
    d, inter = 64, 32
    g = torch.Generator().manual_seed(tokens)
    hidden = torch.randn(batch, tokens, d, generator=g).to(dtype)
    router = torch.randn(rule.num_experts, d, generator=g) / d ** 0.5
    bias = 0.1 * torch.randn(rule.num_experts, generator=g)
    gate_up = (torch.randn(rule.num_experts, 2 * inter, d, generator=g) / d ** 0.5).to(dtype)
    down = (torch.randn(rule.num_experts, d, inter, generator=g) / inter ** 0.5).to(dtype)
    _, experts = route(router_logits(hidden.reshape(-1, d).float(), router), rule, bias)
    unused = torch.ones(rule.num_experts, dtype=torch.bool)
    unused[experts.unique()] = False
    gate_up[unused] = float("nan")
    down[unused] = float("nan")
    for name, tensor in zip(contract.MOE_INPUTS, (hidden, router, bias, gate_up, down)):
        t = tensor.contiguous()
        (t.view(torch.int16) if t.dtype in (torch.float16, torch.bfloat16) else t).numpy().tofile(tmp_path / f"{name}.bin")
    meta = [batch, tokens, d, inter, *rule.attributes().values()]
    (tmp_path / "meta.txt").write_text(" ".join(str(int(v) if isinstance(v, bool) else v) for v in meta)
                                       + f" {1 if dtype == torch.float16 else 2}")
    run = subprocess.run([plugin_build / "tests" / "test_moe_gpu_enqueue",
                          plugin_build / "mlaAttentionPlugin" / "libmla_plugin.so", tmp_path],
                         capture_output=True, text=True, timeout=300)
    if run.returncode == 77:
        pytest.skip(run.stdout)
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"graph: 7 kernel, 0 memcpy, 0 memset, 0 other nodes", run.stdout), run.stdout

    def read(name):
        import numpy as np

        raw = np.fromfile(tmp_path / name, dtype=np.int16)
        return torch.from_numpy(raw).view(dtype).reshape(batch * tokens, d)

    got, again = read("routed_output.bin"), read("routed_output.again.bin")
    assert torch.equal(got.view(torch.int16), again.view(torch.int16))  # exact: the same graph launched twice
    want = loop_moe(hidden.reshape(-1, d).double(), router, bias, gate_up.double().nan_to_num(),
                    down.double().nan_to_num(), rule)
    atol, rtol = tolerance_for(dtype_name)
    result = compare("routed_output", got, want, atol * rule.weight_scale, rtol)
    assert result.passed, result.to_dict()
