"""The exported graph against the contract's names, and ONNX Runtime against the eager model."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from mla_export.common import contract
from mla_export.model.hf_config import load_preset
from mla_export.common.contract import graph_io_names
from mla_export.weights.eager import eager_model
from mla_export.graph.export import export_onnx
from mla_export.model.folding import fold_model
from mla_export.graph.onnx_node import function_proto
from mla_export.common.errors import FieldError, UserError
from mla_export.graph.onnx_reader import read_export_spec
from mla_export.model.spec import ModelSpec, spec_from_metadata
from mla_export.run.validate import Scenario, validate_onnx

from helpers import history_cache

SMAX = 96


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "tiny.onnx"
    export_onnx(ModelSpec(load_preset("tiny"), max_seq_len=SMAX, seed=7), path)
    return path


@pytest.fixture(scope="module")
def tiny_runtime_onnx(tmp_path_factory):
    """The run-time absorbed form of `tiny_onnx`: same config, seed and weights."""
    path = tmp_path_factory.mktemp("export") / "tiny-runtime.onnx"
    export_onnx(ModelSpec(load_preset("tiny"), max_seq_len=SMAX, seed=7, absorb="runtime"), path)
    return path


def test_graph_matches_the_contract(tiny_onnx):
    model = onnx.load(str(tiny_onnx))
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version <= 10
    assert {(o.domain, o.version) for o in model.opset_import} >= {("", 18), (contract.OP_DOMAIN, 1)}
    nodes = [n for n in model.graph.node if n.op_type == contract.OP_TYPE]
    assert len(nodes) == 2
    for layer, node in enumerate(nodes):
        assert node.domain == contract.OP_DOMAIN
        assert len(node.input) == len(contract.OP_INPUTS) and len(node.output) == len(contract.OP_OUTPUTS)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["plugin_namespace"] == contract.PLUGIN_NAMESPACE.encode()
        assert attrs["plugin_version"] == contract.PLUGIN_VERSION.encode()
        assert set(attrs) == set(contract.OP_ATTRIBUTES) | set(contract.PLUGIN_LOOKUP_ATTRIBUTES)
        assert (attrs["num_heads"], attrs["kv_lora_rank"], attrs["qk_rope_head_dim"]) == (4, 32, 8)
        assert attrs["softmax_scale"] == pytest.approx(load_preset("tiny").softmax_scale, rel=1e-6)
        # the cache input/output of the node are the graph's per-layer cache bindings
        assert node.input[4] == contract.past_cache_name(layer)
        assert node.output[1] == contract.present_cache_name(layer)
        assert node.input[5] == contract.CACHE_SEQLENS
    types = {a.name: a.type for a in nodes[0].attribute}
    assert types["num_heads"] == onnx.AttributeProto.INT and types["softmax_scale"] == onnx.AttributeProto.FLOAT
    function = [f for f in model.functions if f.name == contract.OP_TYPE]
    assert len(function) == 1 and function[0].domain == contract.OP_DOMAIN
    assert list(function[0].input) == list(contract.OP_INPUTS)
    assert list(function[0].output) == list(contract.OP_OUTPUTS)

    inputs, outputs = graph_io_names(2, "hidden")
    assert [i.name for i in model.graph.input] == inputs
    assert [o.name for o in model.graph.output] == outputs
    by_name = {v.name: v for v in list(model.graph.input) + list(model.graph.output)}
    hidden = by_name[contract.HIDDEN_STATES_IN].type.tensor_type
    assert hidden.shape.dim[0].dim_param and hidden.shape.dim[1].dim_param  # batch, new tokens dynamic
    cache = by_name[contract.past_cache_name(0)].type.tensor_type
    assert cache.shape.dim[0].dim_param and [d.dim_value for d in cache.shape.dim[1:]] == [SMAX, 40]
    assert by_name[contract.CACHE_SEQLENS].type.tensor_type.elem_type == onnx.TensorProto.INT32

    meta = {p.key: p.value for p in model.metadata_props}
    assert meta[contract.META_CONTRACT_VERSION] == str(contract.CONTRACT_VERSION)
    assert json.loads(meta[contract.META_CONFIG])["kv_lora_rank"] == 32
    spec = read_export_spec(tiny_onnx)
    assert (spec.dtype, spec.max_seq_len, spec.seed, spec.io) == ("float32", SMAX, 7, "hidden")


def test_onnx_runtime_equals_the_folded_eager_model(tiny_onnx):
    config = load_preset("tiny")
    folded = fold_model(eager_model(ModelSpec(config, max_seq_len=SMAX, seed=7)), torch.float32)
    histories = [3, 0, 40]
    caches = history_cache(config, histories, SMAX, dtype=torch.float32)
    seqlens = torch.tensor(histories, dtype=torch.int32)
    x = torch.randn(3, 4, config.hidden_size)
    with torch.no_grad():
        expected = folded(x, seqlens, *caches)
    session = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])
    inputs, _ = graph_io_names(2, "hidden")
    got = session.run(None, dict(zip(inputs, [x.numpy(), seqlens.numpy()] + [c.numpy() for c in caches])))
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e.numpy(), atol=2e-5, rtol=1e-4, equal_nan=True)


def test_function_body_alone_matches_the_reference_with_poisoned_rows():
    """The model-local function, run by ONNX Runtime as a one-node model, against the float64 reference."""
    from onnx import TensorProto, helper

    from mla_export.model.ops import mla_attention_reference

    b, s, h, dc, dr, smax = 3, 3, 4, 16, 8, 40
    scale = 0.3
    spec = [("q_latent", [b, s, h, dc]), ("q_pe", [b, s, h, dr]), ("kv_latent", [b, s, dc]), ("k_pe", [b, s, dr]),
            ("past_cache", [b, smax, dc + dr])]
    ins = [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n, shape in spec]
    ins += [helper.make_tensor_value_info("cache_seqlens", TensorProto.INT32, [b]),
            helper.make_tensor_value_info("rope_cos_sin", TensorProto.FLOAT, [smax, dr])]
    outs = [helper.make_tensor_value_info("attn_latent", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("present_cache", TensorProto.FLOAT, None)]
    node = helper.make_node(contract.OP_TYPE, list(contract.OP_INPUTS), list(contract.OP_OUTPUTS),
                            domain=contract.OP_DOMAIN, num_heads=h, kv_lora_rank=dc, qk_rope_head_dim=dr,
                            softmax_scale=scale, **contract.PLUGIN_LOOKUP_ATTRIBUTES)
    graph = helper.make_graph([node], "one_op", ins, outs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("mla", 1)],
                              functions=[function_proto()], ir_version=10)
    gen = torch.Generator().manual_seed(0)
    tensors = [torch.randn(*shape, generator=gen) for _, shape in spec]
    seqlens = torch.tensor([0, 17, 37], dtype=torch.int32)
    for i, rows in enumerate(seqlens.tolist()):
        tensors[4][i, rows:] = float("nan")
    cos_sin = torch.randn(smax, dr, generator=gen)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = dict(zip(contract.OP_INPUTS, [t.numpy() for t in tensors] + [seqlens.numpy(), cos_sin.numpy()]))
    attn, present = session.run(None, feeds)
    ref_attn, ref_present = mla_attention_reference(*[t.double() for t in tensors], seqlens, cos_sin.double(), scale)
    np.testing.assert_allclose(attn, ref_attn.numpy(), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(present, ref_present.numpy(), atol=1e-6, rtol=1e-6, equal_nan=True)


def test_validate_passes_on_onnx_runtime_and_fails_on_a_wrong_weight(tiny_onnx, tmp_path):
    report = validate_onnx(tiny_onnx, Scenario(batch=3, prefill_len=6, steps=5))
    assert report.passed and len(report.steps) == 6
    assert all(len(s.comparisons) == 3 for s in report.steps)  # output + 2 caches
    assert report.steps[0].comparisons[0].cosine > 0.99999

    model = onnx.load(str(tiny_onnx))
    weight = next(i for i in model.graph.initializer if "out_proj" in i.name)
    values = onnx.numpy_helper.to_array(weight).copy()
    values[0, 0] += 0.05
    weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    report = validate_onnx(broken, Scenario(batch=2, prefill_len=3, steps=1))
    assert not report.passed
    assert not report.steps[0].comparisons[0].passed  # the output is off
    assert report.steps[0].comparisons[1].passed  # the caches do not depend on out_proj


def test_float16_export_validates(tmp_path):
    path = tmp_path / "tiny16.onnx"
    export_onnx(ModelSpec(load_preset("tiny").with_layers(1), dtype="float16", max_seq_len=48), path)
    model = onnx.load(str(path))
    node = next(n for n in model.graph.node if n.op_type == contract.OP_TYPE)
    cache = next(i for i in model.graph.input if i.name == contract.past_cache_name(0))
    assert cache.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert node.input[6]  # rope_cos_sin stays float32
    rope = next(i for i in model.graph.initializer if i.name == node.input[6])
    assert rope.data_type == onnx.TensorProto.FLOAT
    assert validate_onnx(path, Scenario(batch=2, prefill_len=4, steps=3)).passed


def test_bfloat16_export_has_bf16_bindings_and_onnx_runtime_cpu_refusal_is_clear(tmp_path):
    from mla_export.common.errors import UserError

    path = tmp_path / "tinybf16.onnx"
    export_onnx(ModelSpec(load_preset("tiny").with_layers(1), dtype="bfloat16", max_seq_len=32), path)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    cache = next(i for i in model.graph.input if i.name == contract.past_cache_name(0))
    assert cache.type.tensor_type.elem_type == onnx.TensorProto.BFLOAT16
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no bfloat16 kernels"):
            validate_onnx(path, Scenario(batch=1, prefill_len=2, steps=1))


def test_external_data_past_the_threshold(tmp_path, monkeypatch):
    """Past 2 GB the weights go to `<name>.onnx.<token>.data` beside the graph, a name unique to the export
    (forced here with a 0 threshold); a second export replaces the pair and removes the old data file."""
    import re

    import mla_export.graph.export as export_module

    monkeypatch.setattr(export_module, "EXTERNAL_DATA_THRESHOLD", 0)
    path = tmp_path / "ext.onnx"
    export_onnx(ModelSpec(load_preset("tiny").with_layers(1), max_seq_len=32), path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 2 and names[0] == "ext.onnx" and re.fullmatch(r"ext\.onnx\.[0-9a-f]{8}\.data", names[1])
    header = onnx.load(str(path), load_external_data=False)
    locations = {e.value for i in header.graph.initializer for e in i.external_data if e.key == "location"}
    assert locations == {names[1]}
    assert {p.key: p.value for p in header.metadata_props}[contract.META_DATA_FILE] == names[1]
    assert validate_onnx(path, Scenario(batch=2, prefill_len=3, steps=2)).passed
    export_onnx(ModelSpec(load_preset("tiny").with_layers(1), max_seq_len=32, seed=3), path)
    again = sorted(p.name for p in tmp_path.iterdir())
    assert len(again) == 2 and again[1] != names[1]  # the old data file is gone with the old graph
    assert validate_onnx(path, Scenario(batch=2, prefill_len=3, steps=2)).passed


def _initializer_shapes(model) -> dict[str, tuple[int, ...]]:
    return {i.name: tuple(i.dims) for i in model.graph.initializer}


def test_runtime_graph_holds_per_head_weights_and_no_folded_matrix(tiny_onnx, tiny_runtime_onnx):
    """--absorb runtime: W_UK [H, Dn, Dc] and W_UV [H, Dc, Dv] initializers, each one MatMul's operand; no
    [H*Dc, q_in] or [d, H*Dc] product (in either orientation); the same I/O and MlaAttention nodes."""
    c = load_preset("tiny")
    heads, dn, dc, dv, q_in, d = (c.num_attention_heads, c.qk_nope_head_dim, c.kv_lora_rank, c.v_head_dim,
                                  c.q_lora_rank, c.hidden_size)
    folded_shapes = {(heads * dc, q_in), (q_in, heads * dc), (d, heads * dc), (heads * dc, d)}
    prefolded, runtime = onnx.load(str(tiny_onnx)), onnx.load(str(tiny_runtime_onnx))
    assert folded_shapes & set(_initializer_shapes(prefolded).values())  # the check below can fail
    shapes = _initializer_shapes(runtime)
    assert not folded_shapes & set(shapes.values())
    for layer in range(c.num_hidden_layers):
        w_uk, w_uv = f"layers.{layer}.self_attn.w_uk", f"layers.{layer}.self_attn.w_uv"
        assert (shapes[w_uk], shapes[w_uv]) == ((heads, dn, dc), (heads, dc, dv))
        for name in (w_uk, w_uv):
            users = [n for n in runtime.graph.node if name in n.input]
            assert [n.op_type for n in users] == ["MatMul"] and users[0].input[1] == name

    def io(model):
        return [(v.name, onnx.helper.printable_type(v.type)) for v in list(model.graph.input) + list(model.graph.output)]

    def attention_nodes(model):
        return [(list(n.input[4:]), list(n.output[1:]), sorted(onnx.helper.printable_attribute(a) for a in n.attribute))
                for n in model.graph.node if n.op_type == contract.OP_TYPE]

    assert io(runtime) == io(prefolded)
    assert attention_nodes(runtime) == attention_nodes(prefolded)


def test_both_forms_give_the_same_outputs_on_the_same_weights(tiny_onnx, tiny_runtime_onnx):
    """Same seed, so the same weights: ONNX Runtime on both graphs agrees to float32 rounding, caches included."""
    config = load_preset("tiny")
    histories = [3, 0, 40]
    caches = history_cache(config, histories, SMAX, seed=2, dtype=torch.float32)
    seqlens = torch.tensor(histories, dtype=torch.int32)
    x = torch.randn(3, 5, config.hidden_size, generator=torch.Generator().manual_seed(3))
    inputs, outputs = graph_io_names(2, "hidden")
    feeds = dict(zip(inputs, [x.numpy(), seqlens.numpy()] + [c.numpy() for c in caches]))
    got = {}
    for path in (tiny_onnx, tiny_runtime_onnx):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got[path] = dict(zip(outputs, session.run(outputs, feeds)))
    out = got[tiny_onnx][outputs[0]]
    assert np.abs(out).max() > 0.1  # a real signal, not rounding noise
    for name in outputs:
        np.testing.assert_allclose(got[tiny_runtime_onnx][name], got[tiny_onnx][name], atol=1e-5, rtol=1e-5,
                                   equal_nan=True, err_msg=name)


def test_runtime_form_validates_against_the_eager_float64_model(tiny_runtime_onnx):
    report = validate_onnx(tiny_runtime_onnx, Scenario(batch=3, prefill_len=6, steps=5))
    assert report.passed and len(report.steps) == 6
    assert report.steps[-1].comparisons[0].cosine > 0.99999


def test_absorb_mode_round_trips_through_the_metadata(tiny_onnx, tiny_runtime_onnx):
    runtime = read_export_spec(tiny_runtime_onnx)
    assert runtime == ModelSpec(load_preset("tiny"), max_seq_len=SMAX, seed=7, absorb="runtime")
    assert read_export_spec(tiny_onnx).absorb == "prefolded"
    meta = runtime.metadata()
    assert meta[contract.META_ABSORB] == "runtime"
    del meta[contract.META_ABSORB]  # written before --absorb existed: pre-folded
    assert spec_from_metadata(meta, "old.onnx").absorb == "prefolded"
    with pytest.raises(UserError, match="metadata is damaged"):
        spec_from_metadata({**meta, contract.META_ABSORB: "sideways"}, "bad.onnx")
    with pytest.raises(FieldError, match="absorb='sideways': expected one of prefolded, runtime"):
        ModelSpec(load_preset("tiny"), absorb="sideways")
