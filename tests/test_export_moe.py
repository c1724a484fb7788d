"""Mixture-of-experts export: the DeepseekMoE node against the contract, every expert in the graph whatever
tracing saw, ONNX Runtime against the eager model, a TensorRT-RTX build, and MoE bad input."""

import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from mla_export.common import contract
from mla_export.ui.cli import main
from mla_export.weights.eager import eager_model
from mla_export.graph.export import export_onnx
from mla_export.model.hf_config import load_preset
from mla_export.model.model import MoeMlp
from mla_export.model.moe import RoutingRule, route, router_logits
from mla_export.graph.onnx_moe import moe_op_schema
from mla_export.run.runners import OnnxRuntimeRunner
from mla_export.model.spec import ModelSpec
from mla_export.run.validate import Scenario, validate_onnx

from helpers import ROUTING_MARGIN, routing_margin

SMAX = 64


@pytest.fixture(scope="module")
def tiny_moe(tmp_path_factory):
    path = tmp_path_factory.mktemp("moe") / "moe.onnx"
    spec = ModelSpec(load_preset("tiny-moe"), max_seq_len=SMAX, seed=5)
    export_onnx(spec, path)
    return spec, path


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_moe_nodes_follow_the_contract(tiny_moe):
    spec, path = tiny_moe
    model = onnx.load(str(path))
    config = spec.config
    nodes = [n for n in model.graph.node if n.op_type == contract.MOE_OP_TYPE]
    assert [n.domain for n in nodes] == [contract.OP_DOMAIN] * 2  # layers 1 and 2; layer 0 is dense
    assert sum(n.op_type == contract.OP_TYPE for n in model.graph.node) == 3
    rule = RoutingRule.from_config(config)
    initializers = {i.name: i for i in model.graph.initializer}
    for node in nodes:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert {k: attrs[k] for k in contract.MOE_ATTRIBUTES} == pytest.approx(rule.attributes())
        assert attrs["first_expert"] == 0  # contract version 3: a single-device export holds every expert
        assert attrs["plugin_namespace"] == b"mla" and attrs["plugin_version"] == b"1"
        assert len(node.input) == len(contract.MOE_INPUTS) and len(node.output) == 1
        shapes = [list(initializers[name].dims) for name in node.input[1:]]
        e, d, i = config.n_routed_experts, config.hidden_size, config.moe_intermediate_size
        assert shapes == [[e, d], [e], [e, 2 * i, d], [e, d, i]]  # every expert, stacked
        assert initializers[node.input[1]].data_type == onnx.TensorProto.FLOAT  # the router stays float32
    function = next(f for f in model.functions if f.name == contract.MOE_OP_TYPE)
    assert list(function.input) == list(contract.MOE_INPUTS) and list(function.output) == list(contract.MOE_OUTPUTS)
    assert {p.name for p in moe_op_schema().inputs} == set(contract.MOE_INPUTS)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta[contract.META_MOE_CONTRACT_VERSION] == str(contract.MOE_CONTRACT_VERSION)


def test_every_expert_is_exported_whatever_tracing_saw(tiny_moe):
    """Tracing runs on weightless (meta) tensors, so no expert is specialised away: tokens routed to every
    expert of every MoE layer give ONNX Runtime's outputs equal to the eager model's."""
    spec, path = tiny_moe
    model = eager_model(spec, torch.float64)
    runner = OnnxRuntimeRunner(path)
    gen = torch.Generator().manual_seed(0)
    x = 3 * torch.randn(4, 24, spec.config.hidden_size, generator=gen)  # [B, S, d]
    cache = model.new_cache(4, torch.float32, fill=float("nan"))
    feeds = {contract.HIDDEN_STATES_IN: x.numpy(), contract.CACHE_SEQLENS: cache.seqlens.numpy()}
    feeds.update({contract.past_cache_name(i): c.numpy() for i, c in enumerate(cache.layers)})
    got = runner.run(feeds)[contract.HIDDEN_STATES_OUT]
    moe_inputs = []  # each MoE layer's input [B, S, d], seen on the way
    hooks = [layer.mlp.register_forward_pre_hook(lambda mlp, args: moe_inputs.append((mlp, args[0])))
             for layer in model.layers if isinstance(layer.mlp, MoeMlp)]
    with torch.no_grad():
        want, *_ = model(x.double(), cache.seqlens, *[c.double() for c in cache.layers])
    for hook in hooks:
        hook.remove()
    # ONNX Runtime routes in float32 from its own float32 activations: it picks the eager model's experts only
    # because no choice of these tokens is within rounding of a tie.
    assert len(moe_inputs) == 2
    for mlp, h in moe_inputs:
        logits = router_logits(h.reshape(-1, h.shape[-1]), mlp.gate.weight)  # [B*S, E]
        assert routing_margin(logits, mlp.rule, mlp.gate.e_score_correction_bias) > ROUTING_MARGIN
    np.testing.assert_allclose(got, want.numpy(), atol=2e-4, rtol=2e-3)
    # The routing of these tokens reaches every expert in layer 1 (its input is the post-attention norm).
    layer = model.layers[1]
    with torch.no_grad():
        h = x.double() + layer.self_attn(layer.input_layernorm(x.double()), cache.layers[1].double(), cache.seqlens,
                                         model.rope_cos_sin)[0]
        _, experts = route(router_logits(layer.post_attention_layernorm(h).reshape(-1, h.shape[-1]),
                                         layer.mlp.gate.weight), layer.mlp.rule, layer.mlp.gate.e_score_correction_bias)
    assert set(experts.flatten().tolist()) == set(range(spec.config.n_routed_experts))


def test_moe_export_validates(tiny_moe):
    spec, path = tiny_moe
    report = validate_onnx(path, Scenario(batch=3, prefill_len=9, steps=3))
    assert report.passed and len(report.steps) == 4


def test_rtx_builds_a_decomposed_moe_engine(tiny_moe, tmp_path):
    from mla_export.common.errors import UserError
    from mla_export.trt.backend import import_backend
    from mla_export.trt.sidecar import Sidecar

    try:
        import_backend("tensorrt-rtx")
    except UserError as exc:
        pytest.skip(f"TensorRT-RTX is not installed here: {exc}")
    _, path = tiny_moe
    engine = tmp_path / "moe.engine"
    result = run("build", "--onnx", path, "-o", engine, "--backend", "tensorrt-rtx", "--attention", "decomposed",
                 "--batch-range", "1:2:4", "--prefill-range", "2:8:32")
    assert result.exit_code == 0, result.output
    assert engine.stat().st_size > 100_000
    sidecar = Sidecar.read(engine)
    assert json.loads(sidecar.onnx_metadata[contract.META_CONFIG])["n_routed_experts"] == 8


@pytest.mark.parametrize("changes, message", [
    ({"topk_method": "random"}, "topk_method='random'"),
    ({"scoring_func": "tanh"}, "scoring_func='tanh'"),
    ({"n_group": 3}, "n_group=3"),
    ({"topk_group": 5}, "topk_group=5"),
    ({"num_experts_per_tok": 6}, "num_experts_per_tok=6"),  # 2 of 4 groups of 2 experts hold only 4
    ({"num_experts_per_tok": None}, "num_experts_per_tok is missing"),
])
def test_bad_routing_configs_are_refused(tmp_path, changes, message):
    from mla_export.model.hf_config import PRESET_DIR

    data = json.loads((PRESET_DIR / "tiny-moe.json").read_text())
    data.update(changes)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    result = run("export", "--config", path, "-o", tmp_path / "x.onnx")
    assert result.exit_code == 1 and message in result.output, result.output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_checkpoint_missing_or_misshapen_expert(tmp_path):
    """A checkpoint without one expert's tensor, or with an expert of the wrong shape: one message, no file."""
    from safetensors.torch import save_file

    from mla_export.model.hf_config import PRESET_DIR
    from mla_export.weights.weights import RandomWeights

    config = load_preset("tiny-moe")
    model = eager_model(ModelSpec(config, max_seq_len=SMAX))
    source = RandomWeights(0)
    tensors = {}
    for name, param in model.named_parameters():
        if ".experts." in name:
            continue
        hf = name.replace(".q_compression.", ".")
        tensors["model." + hf] = source.read(hf, tuple(param.shape))
    for layer in (1, 2):
        for j in range(8):
            for proj, shape in (("gate_proj", (32, 64)), ("up_proj", (32, 64)), ("down_proj", (64, 32))):
                tensors[f"model.layers.{layer}.mlp.experts.{j}.{proj}.weight"] = torch.randn(shape)
    (tmp_path / "config.json").write_text((PRESET_DIR / "tiny-moe.json").read_text())
    broken = dict(tensors)
    del broken["model.layers.2.mlp.experts.5.up_proj.weight"]
    save_file(broken, str(tmp_path / "model.safetensors"))
    result = run("export", "--checkpoint", tmp_path, "-o", tmp_path / "x.onnx")
    assert result.exit_code == 1 and "experts.5.up_proj.weight' is missing" in result.output, result.output
    broken = dict(tensors)
    broken["model.layers.1.mlp.experts.3.down_proj.weight"] = torch.randn(64, 31)
    save_file(broken, str(tmp_path / "model.safetensors"))
    result = run("export", "--checkpoint", tmp_path, "-o", tmp_path / "x.onnx")
    assert result.exit_code == 1 and "experts.3.down_proj.weight' has shape (64, 31)" in result.output, result.output
    assert not (tmp_path / "x.onnx").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".mla-export")]


def test_validate_and_export_refuse_what_would_not_fit_in_memory(tiny_moe, tmp_path, monkeypatch):
    """The checks run before any work, with the estimate and what is available."""
    import mla_export.model.footprint as footprint

    _, path = tiny_moe
    monkeypatch.setattr(footprint, "available_memory", lambda: 100 << 20)  # a 100 MiB machine
    result = run("validate", "--onnx", path)
    assert result.exit_code == 1 and "GiB of memory and 100.0 MiB is available" in result.output, result.output
    result = run("export", "--preset", "tiny-moe", "-o", tmp_path / "x.onnx")
    assert result.exit_code == 1 and "GiB of memory" in result.output and not (tmp_path / "x.onnx").exists()
