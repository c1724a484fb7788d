"""DeepseekMoE contract version 3 in ONNX: the node's function body on a rank's slice of the experts (ONNX Runtime
against moe_reference in float64, experts in float32 and in FP8), the ranks adding up to the whole node, and the
reader: a file whose stacks hold E/2 experts from first_expert reads, one from before version 3 (no first_expert)
reads as first_expert 0, one whose slice leaves the experts is refused."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from mla_export.common import contract
from mla_export.common.errors import UserError
from mla_export.graph.export import export_onnx
from mla_export.graph.onnx_fp8 import FP8_OPSET
from mla_export.graph.onnx_moe import moe_function_proto
from mla_export.graph.onnx_reader import read_exported_model
from mla_export.model.hf_config import load_preset
from mla_export.model.moe import moe_reference
from mla_export.model.spec import ModelSpec

from fp8_moe_reference import dequantize64, quantize_blocks
from test_moe import RULES, random_layer

D, INTER = 24, 10


def _initializer(name: str, t: torch.Tensor):
    if t.dtype == torch.float8_e4m3fn:
        return helper.make_tensor(name, TensorProto.FLOAT8E4M3FN, list(t.shape), t.view(torch.uint8).numpy().tobytes(),
                                  raw=True)
    return onnx.numpy_helper.from_array(t.float().numpy(), name)


def run_node(x, rule, weights: dict, first_expert: int) -> np.ndarray:
    """One DeepseekMoE node (its function body, no plugin) on ONNX Runtime: hidden [B, S, d] float32 in, the node's
    weights as initializers."""
    import onnxruntime as ort

    fp8 = "gate_up_scale" in weights
    names = contract.MOE_FP8_INPUTS if fp8 else contract.MOE_INPUTS
    node = helper.make_node(contract.MOE_OP_TYPE, list(names), list(contract.MOE_OUTPUTS), domain=contract.OP_DOMAIN,
                            **rule.attributes(), first_expert=first_expert, **contract.PLUGIN_LOOKUP_ATTRIBUTES)
    graph = helper.make_graph(
        [node], "moe", [helper.make_tensor_value_info(names[0], TensorProto.FLOAT, ["B", "S", D])],
        [helper.make_tensor_value_info(contract.MOE_OUTPUTS[0], TensorProto.FLOAT, ["B", "S", D])],
        [_initializer(n, weights[n]) for n in names[1:]])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid(contract.OP_DOMAIN, 1)],
                              functions=[moe_function_proto(fp8)])
    model.ir_version = 10
    if fp8:  # Shape and Cast take float8 from opset 19 (as export sets it)
        for opset in [*model.opset_import, *model.functions[0].opset_import]:
            if opset.domain == "":
                opset.version = FP8_OPSET
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {names[0]: x.numpy()})[0]


@pytest.mark.parametrize("fp8", [False, True], ids=["float32", "fp8"])
@pytest.mark.parametrize("ranks", [2, 4])
def test_function_body_computes_the_slice(ranks, fp8):
    rule = RULES["v3-noaux-tc"]
    router, bias, gate_up, down = random_layer(rule, seed=3)
    x = torch.randn(2, 7, D, generator=torch.Generator().manual_seed(1))  # [B, S, d]
    if fp8:
        (gq, gs), (dq, ds) = quantize_blocks(gate_up), quantize_blocks(down)
        stacks = {"gate_up_proj": gq, "down_proj": dq, "gate_up_scale": gs, "down_scale": ds}
        gate_up, down = dequantize64(gq, gs), dequantize64(dq, ds)  # what the reference multiplies by
    else:
        stacks = {"gate_up_proj": gate_up.float(), "down_proj": down.float()}
    gate_up, down = gate_up.float().double(), down.float().double()
    whole = run_node(x, rule, {"router_weight": router, "score_bias": bias, **stacks}, 0)
    total = np.zeros_like(whole, dtype=np.float64)
    local = rule.num_experts // ranks
    for first in range(0, rule.num_experts, local):
        part = slice(first, first + local)
        got = run_node(x, rule, {"router_weight": router, "score_bias": bias,
                                 **{k: v[part].contiguous() for k, v in stacks.items()}}, first)
        want = moe_reference(x.double(), router, bias, gate_up[part], down[part], rule, first_expert=first)
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-5 * rule.weight_scale)
        total += got
    np.testing.assert_allclose(total, whole, rtol=1e-5, atol=1e-5 * rule.weight_scale)


@pytest.fixture(scope="module")
def tiny_moe(tmp_path_factory):
    path = tmp_path_factory.mktemp("moe") / "moe.onnx"
    return export_onnx(ModelSpec(load_preset("tiny-moe"), max_seq_len=32, seed=5), path)


def _rewritten(source, target, edit):
    """`source` with its weights inside, its MoE nodes changed by `edit(node, initializers)`, saved as `target`."""
    model = onnx.load(str(source))
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == contract.MOE_OP_TYPE:
            edit(node, inits)
    for p in model.metadata_props:
        if p.key == contract.META_DATA_FILE:
            p.value = ""
    onnx.save(model, str(target))
    return target


def _set_first(node, value):
    for a in node.attribute:
        if a.name == "first_expert":
            a.i = value


@pytest.fixture(scope="module")
def tiny_moe_ranks(tmp_path_factory):
    """`export --tp 2` of tiny-moe: rank{0,1}.onnx, each with 4 of the 8 experts."""
    from mla_export.graph.parallel_export import export_parallel

    out = tmp_path_factory.mktemp("tp2")
    export_parallel(ModelSpec(load_preset("tiny-moe"), max_seq_len=32, seed=5, tp_size=2), out)
    return out


def test_reader_accepts_the_ranks_slices_and_refuses_a_wrong_one(tiny_moe_ranks, tmp_path):
    experts = load_preset("tiny-moe").n_routed_experts
    for rank in (0, 1):
        model = read_exported_model(tiny_moe_ranks / contract.rank_file_name(rank))
        for node in model.moe_nodes():
            assert {a.name: a.i for a in node.attribute}["first_expert"] == rank * experts // 2
    rank1 = tiny_moe_ranks / contract.rank_file_name(1)
    with pytest.raises(UserError, match=f"experts {experts // 2 + 1}..{experts}, not in the {experts} routed"):
        read_exported_model(_rewritten(rank1, tmp_path / "past.onnx", lambda n, i: _set_first(n, experts // 2 + 1)))
    with pytest.raises(UserError, match=f"first_expert=0, its --tp rank's slice starts at {experts // 2}"):
        read_exported_model(_rewritten(rank1, tmp_path / "rank0s.onnx", lambda n, i: _set_first(n, 0)))


def test_reader_reads_a_version_2_file_without_first_expert(tiny_moe, tmp_path):
    def drop(node, inits):
        kept = [a for a in node.attribute if a.name != "first_expert"]
        del node.attribute[:]
        node.attribute.extend(kept)

    v2 = _rewritten(tiny_moe, tmp_path / "v2.onnx", drop)
    with pytest.raises(UserError, match="lacks its INT attribute first_expert"):
        read_exported_model(v2)  # its metadata says version 3
    model = onnx.load(str(v2))
    for p in model.metadata_props:
        if p.key == contract.META_MOE_CONTRACT_VERSION:
            p.value = "2"
    onnx.save(model, str(v2))
    assert len(read_exported_model(v2).moe_nodes()) == 2


class _RankMoe(torch.nn.Module):
    """A rank's routed experts as the `--tp` model calls them: the op with `first_expert=k` after the routing
    attributes (RoutingRule.attributes() holds only those)."""

    def __init__(self, rule, router, bias, gate_up, down, first_expert: int):
        super().__init__()
        self.rule, self.first_expert = rule, first_expert
        for name, t in (("router", router), ("bias", bias), ("gate_up", gate_up), ("down", down)):
            self.register_buffer(name, t.float().contiguous())

    def forward(self, x):
        return torch.ops.mla.deepseek_moe(x, self.router, self.bias, self.gate_up, self.down,
                                          **self.rule.attributes(), first_expert=self.first_expert)


def test_export_carries_first_expert_and_onnx_runtime_runs_the_slice(tmp_path):
    """torch.onnx.export with the op's translation: the node carries the call's first_expert, and ONNX Runtime
    running the file (the function body) equals the eager op, itself moe_reference with the slice."""
    import warnings

    import onnxruntime as ort

    from mla_export.graph.onnx_moe import moe_translation

    rule = RULES["kimi-one-group"]
    router, bias, gate_up, down = random_layer(rule, seed=6)
    first, held = 8, 4
    module = _RankMoe(rule, router, bias, gate_up[first:first + held], down[first:first + held], first)
    x = torch.randn(2, 5, D, generator=torch.Generator().manual_seed(2))
    eager = module(x)
    torch.testing.assert_close(eager.double(), moe_reference(
        x.double(), router, bias, gate_up[first:first + held].float().double(),
        down[first:first + held].float().double(), rule, first_expert=first), rtol=1e-5, atol=1e-6)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, (x,), dynamo=True, input_names=["hidden_states"],
                                    output_names=["routed_output"], custom_translation_table=moe_translation(),
                                    opset_version=18, optimize=False, verbose=False, report=False)
    model = program.model_proto
    model.functions.append(moe_function_proto())
    model.ir_version = 10
    (node,) = [n for n in model.graph.node if n.op_type == contract.MOE_OP_TYPE]
    assert {a.name: a.i for a in node.attribute if a.type == onnx.AttributeProto.INT}["first_expert"] == first
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"hidden_states": x.numpy()})[0]
    np.testing.assert_allclose(got, eager.numpy(), rtol=1e-5, atol=1e-5 * rule.weight_scale)
