"""A `--tp` rank graph's collectives on the TensorRT side (mla_export/trt/collectives.py): the rewrite of
`mla::AllReduce` / `mla::AllGather` to TensorRT's DistCollective node (the gather's transposes checked by
running the rewritten graph with ONNX's reference evaluator and a stand-in collective), TensorRT-RTX's real ONNX
parser creating the DIST_COLLECTIVE layers from it, and the TensorRT version gate."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx
import onnx.helper as oh
import pytest
from onnx import TensorProto

from mla_export.common import contract
from mla_export.common.errors import UserError
from mla_export.trt import collectives

WORLD = 2
B, S, D, V = 2, 3, 8, 5  # batch, tokens, hidden, vocab per rank


def rank_graph(world: int = WORLD, gather_axis: int = -1, declare_logits: bool = True) -> onnx.ModelProto:
    """hidden [B, S, D] -> AllReduce -> MatMul by a [D, V] weight -> AllGather(axis) -> logits [B, S, world*V],
    the form of a rank graph's collectives (contract.py)."""
    weight = oh.make_tensor("w", TensorProto.FLOAT, [D, V], np.linspace(-1, 1, D * V, dtype=np.float32))
    nodes = [oh.make_node(contract.ALL_REDUCE_OP_TYPE, ["hidden"], ["reduced"], name="reduce0",
                          domain=contract.OP_DOMAIN, world_size=world),
             oh.make_node("MatMul", ["reduced", "w"], ["partial_logits"], name="head"),
             oh.make_node(contract.ALL_GATHER_OP_TYPE, ["partial_logits"], ["logits"], name="gather0",
                          domain=contract.OP_DOMAIN, world_size=world, axis=gather_axis)]
    logits_shape = [B, S, world * V] if declare_logits else None
    graph = oh.make_graph(nodes, "rank", [oh.make_tensor_value_info("hidden", TensorProto.FLOAT, [B, S, D])],
                          [oh.make_tensor_value_info("logits", TensorProto.FLOAT, logits_shape)], [weight])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18), oh.make_opsetid(contract.OP_DOMAIN, 1)],
                         ir_version=10)


def _dist_nodes(model):
    return [n for n in model.graph.node if n.op_type == collectives.DIST_OP_TYPE]


def test_rewrite_gives_the_parser_form():
    rewritten, count = collectives.rewrite_collectives(rank_graph(), WORLD, "rank0.onnx")
    assert count == 2
    assert not collectives.collective_nodes(rewritten.graph)
    reduce_node, gather_node = _dist_nodes(rewritten)
    for node, operation, reduce_op in ((reduce_node, "all_reduce", "sum"), (gather_node, "all_gather", "none")):
        attrs = {a.name: oh.get_attribute_value(a) for a in node.attribute}
        assert node.domain == ""
        assert attrs == {"collective_operation": operation.encode(), "reduce_op": reduce_op.encode(), "root": -1,
                         "group_size": 0, "nb_rank": WORLD, "groups": []}
    assert (list(reduce_node.input), list(reduce_node.output)) == (["hidden"], ["reduced"])
    # The gather along the last axis is framed by transposes; the graph's output name is kept.
    ops = [n.op_type for n in rewritten.graph.node]
    assert ops == ["DistCollective", "MatMul", "Transpose", "DistCollective", "Transpose"]
    assert rewritten.graph.node[-1].output[0] == "logits"


class _FakeRanks:
    """A stand-in DistCollective for ONNX's reference evaluator: rank 0 holds x, the other ranks x + 100 r."""

    @staticmethod
    def op():
        from onnx.reference.op_run import OpRun

        class DistCollective(OpRun):
            op_domain = ""

            def _run(self, x, collective_operation=None, reduce_op=None, root=None, group_size=None, nb_rank=None,
                     groups=None):
                parts = [x + 100.0 * r for r in range(nb_rank)]
                if collective_operation in (b"all_reduce", "all_reduce"):
                    return (np.sum(parts, axis=0).astype(x.dtype),)
                return (np.concatenate(parts, axis=0).astype(x.dtype),)  # TensorRT: along the first dimension

        return DistCollective


@pytest.mark.parametrize("axis", [-1, 1, 0, -3])
def test_rewritten_gather_concatenates_along_the_nodes_axis(axis):
    """The rewritten graph, run with a stand-in collective that gathers on dim 0 as TensorRT does, equals the
    sum / concatenation the contract defines along the node's own axis (computed here in numpy)."""
    from onnx.reference import ReferenceEvaluator

    model = rank_graph(gather_axis=axis, declare_logits=False)
    rewritten, _ = collectives.rewrite_collectives(model, WORLD, "rank0.onnx")
    hidden = np.random.default_rng(0).standard_normal((B, S, D)).astype(np.float32)
    (got,) = ReferenceEvaluator(rewritten, new_ops=[_FakeRanks.op()]).run(None, {"hidden": hidden})
    weight = onnx.numpy_helper.to_array(model.graph.initializer[0])
    reduced = sum(hidden + 100.0 * r for r in range(WORLD))
    partial = reduced @ weight
    expected = np.concatenate([partial + 100.0 * r for r in range(WORLD)], axis=axis)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-3)


def test_rewrite_refuses_a_node_for_another_world_size():
    with pytest.raises(UserError, match="reduce0 has world_size 2.*export says 4 ranks"):
        collectives.rewrite_collectives(rank_graph(), 4, "rank0.onnx")


def test_rewrite_refuses_an_axis_past_the_inputs_dims():
    with pytest.raises(UserError, match="gather0 has axis 3 for a 3-D input"):
        collectives.rewrite_collectives(rank_graph(gather_axis=3), WORLD, "rank0.onnx")


def _rtx():
    try:
        from mla_export.trt.backend import import_backend

        return import_backend("tensorrt-rtx")
    except UserError as exc:
        pytest.skip(f"TensorRT-RTX is not installed here: {exc}")


def _parse(trt, model):
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse(model.SerializeToString())
    assert ok, [str(parser.get_error(i).desc()) for i in range(parser.num_errors)]
    return builder, network, parser


@pytest.mark.parametrize("world", [2, 4])
def test_rtx_parser_creates_the_dist_collective_layers(world):
    """TensorRT-RTX 1.7's real ONNX parser reads the rewritten graph: two DIST_COLLECTIVE layers with `world`
    ranks, and the gathered logits `world` times the rank's vocab."""
    trt = _rtx()
    rewritten, count = collectives.rewrite_collectives(rank_graph(world), world, "rank0.onnx")
    _builder, network, _parser = _parse(trt, rewritten)
    layers = collectives.dist_collective_layers(trt, network)
    assert len(layers) == count == 2
    assert [layer.num_ranks for layer in layers] == [world, world]
    assert collectives.check_collective_layers(trt, network, count, world, "rank0.onnx") == 2
    assert tuple(network.get_output(0).shape) == (B, S, world * V)


def test_layers_the_parser_left_at_one_rank_are_set_to_the_world_size():
    trt = _rtx()
    rewritten, count = collectives.rewrite_collectives(rank_graph(), WORLD, "rank0.onnx")
    for node in _dist_nodes(rewritten):
        node.attribute.remove(next(a for a in node.attribute if a.name == "nb_rank"))
    _builder, network, _parser = _parse(trt, rewritten)
    assert [layer.num_ranks for layer in collectives.dist_collective_layers(trt, network)] == [1, 1]
    collectives.check_collective_layers(trt, network, count, WORLD, "rank0.onnx")
    assert [layer.num_ranks for layer in collectives.dist_collective_layers(trt, network)] == [WORLD, WORLD]


def test_a_layer_count_short_of_the_nodes_is_refused():
    trt = _rtx()
    rewritten, count = collectives.rewrite_collectives(rank_graph(), WORLD, "rank0.onnx")
    _builder, network, _parser = _parse(trt, rewritten)
    with pytest.raises(UserError, match="created 2 DistCollective layer\\(s\\) for 3 collective node"):
        collectives.check_collective_layers(trt, network, count + 1, WORLD, "rank0.onnx")


class _Config:
    def __init__(self):
        self.features = {}

    def set_preview_feature(self, feature, on):
        self.features[feature] = on


def _fake_trt(version: str, with_feature: bool = True):
    features = SimpleNamespace(**({collectives.PREVIEW_FEATURE: "multidevice"} if with_feature else {}))
    return SimpleNamespace(__version__=version, PreviewFeature=features)


def test_tensorrt_before_10_16_is_refused_for_several_ranks():
    with pytest.raises(UserError, match="--tp 2 export needs TensorRT 10.16 or later.*this is TensorRT 10.15.1"):
        collectives.require_multidevice(_fake_trt("10.15.1"), "tensorrt", 2)
    collectives.require_multidevice(_fake_trt("10.8.0"), "tensorrt", 1)  # one rank: no collectives


@pytest.mark.parametrize("version, expected", [("10.16.0.1", {"multidevice": True}), ("10.20.1", {"multidevice": True}),
                                               ("11.1.0", {})])
def test_the_preview_feature_is_on_from_10_16_until_11(version, expected):
    config = _Config()
    collectives.enable_multidevice(_fake_trt(version), config, "tensorrt", 2)
    assert config.features == expected
    one_rank = _Config()
    collectives.enable_multidevice(_fake_trt(version), one_rank, "tensorrt", 1)
    assert one_rank.features == {}


def test_rtx_has_no_preview_switch():
    config = _Config()
    collectives.enable_multidevice(_fake_trt("1.7.1", with_feature=False), config, "tensorrt-rtx", 2)
    assert config.features == {}
