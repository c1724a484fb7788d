"""`build` of a `--tp` export's rank graphs (trt/build.py, trt/build_parallel.py): TensorRT-RTX (a real builder,
on the CPU) builds a rank graph whose collectives are rewritten to DistCollective layers, the sidecar names the
world size, rank and export id, and the build's own refusals (a rank file on its own, a rank file whose
metadata is not the rank the manifest says, Python runs of rank engines).

The rank graphs here are hand-made from a `tiny` export: an `mla::AllReduce` after each projection that feeds
a residual Add (the row-parallel points of DeepSeek's layout) and the `--tp` metadata; their numbers are those
of the single-device graph, which is all a build needs.
"""

from __future__ import annotations

import hashlib
import json

import onnx
import onnx.helper as oh
import pytest
from click.testing import CliRunner

from mla_export.common import contract
from mla_export.common.errors import UserError
from mla_export.graph.export import export_onnx
from mla_export.model.hf_config import load_preset
from mla_export.model.spec import ModelSpec
from mla_export.trt import backend
from mla_export.trt.build import BuildSpec, build_engine
from mla_export.trt.collectives import RankIdentity
from mla_export.trt.sidecar import Sidecar
from mla_export.ui.cli import main

SMAX = 64
EXPORT_ID = "0123456789abcdef"


def _rtx():
    try:
        return backend.import_backend("tensorrt-rtx")
    except UserError as exc:
        pytest.skip(f"TensorRT-RTX is not installed here: {exc}")


def _with_collectives(model: onnx.ModelProto, world: int, rank: int, export_id: str = EXPORT_ID) -> int:
    """Insert an AllReduce between each MatMul and the residual Add it feeds; set the --tp metadata. Returns
    the number of collectives inserted."""
    producers = {out: n for n in model.graph.node for out in n.output}
    nodes, count = [], 0
    for node in model.graph.node:
        if node.op_type == "Add":
            for i, name in enumerate(node.input):
                if name in producers and producers[name].op_type == "MatMul":
                    reduced = f"{name}.all_reduced"
                    nodes.append(oh.make_node(contract.ALL_REDUCE_OP_TYPE, [name], [reduced], name=f"all_reduce_{count}",
                                              domain=contract.OP_DOMAIN, world_size=world))
                    node.input[i] = reduced
                    count += 1
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    meta = {contract.META_TP_SIZE: str(world), contract.META_TP_RANK: str(rank), contract.META_TP_EXPORT_ID: export_id}
    for key, value in meta.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    return count


@pytest.fixture(scope="module")
def tiny_single(tmp_path_factory):
    path = tmp_path_factory.mktemp("tp") / "tiny.onnx"
    export_onnx(ModelSpec(load_preset("tiny"), max_seq_len=SMAX), path)
    return path


def write_rank_export(directory, single, world: int = 2, ranks_metadata=None):
    """A --tp export directory: rank{r}.onnx with collectives and metadata (`ranks_metadata[r]`: the rank its
    metadata claims, default r) and parallel.json as contract.py describes it."""
    directory.mkdir(parents=True, exist_ok=True)
    entries, count = [], 0
    for rank in range(world):
        model = onnx.load(single)
        claimed = rank if ranks_metadata is None else ranks_metadata[rank]
        count = _with_collectives(model, world, claimed)
        path = directory / contract.rank_file_name(rank)
        onnx.save(model, path)
        entries.append({"rank": rank, "file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    manifest = {"format": contract.PARALLEL_FORMAT, "version": 1, "world_size": world,
                "layout": contract.PARALLEL_LAYOUT, "export_id": EXPORT_ID,
                "contract_versions": {"mla_attention": contract.CONTRACT_VERSION,
                                      "collectives": contract.COLLECTIVE_CONTRACT_VERSION},
                "ranks": entries}
    (directory / contract.PARALLEL_MANIFEST).write_text(json.dumps(manifest, indent=2))
    return directory, count


def _spec(onnx_path, output, **kw):
    return BuildSpec(onnx=str(onnx_path), output=str(output), attention="decomposed", backend="tensorrt-rtx",
                     batch=(1, 2, 2), prefill_tokens=(2, 4, 8), **kw)


def test_rtx_builds_a_rank_engine_with_dist_collective_layers(tiny_single, tmp_path, capfd):
    """TensorRT-RTX builds rank 1 of a 2-rank export: the parser made one DIST_COLLECTIVE layer per AllReduce
    (the build checks the count), and the sidecar says rank 1 of 2 and the export id."""
    _rtx()
    directory, count = write_rank_export(tmp_path / "d", tiny_single)
    assert count == 4  # per layer: attention's output projection and the MLP's down projection
    engine = build_engine(_spec(directory / "rank1.onnx", tmp_path / "rank1.engine"),
                          rank=RankIdentity(2, 1, EXPORT_ID))
    sidecar = Sidecar.read(engine)
    assert (sidecar.tp_size, sidecar.tp_rank, sidecar.tp_export_id) == (2, 1, EXPORT_ID)
    assert sidecar.onnx_metadata[contract.META_TP_RANK] == "1"
    assert engine.stat().st_size == sidecar.engine_size > 0


def test_a_rank_file_on_its_own_is_refused(tiny_single, tmp_path):
    directory, _ = write_rank_export(tmp_path / "d", tiny_single)
    with pytest.raises(UserError, match="is rank 0 of a --tp 2 export: pass its directory"):
        build_engine(_spec(directory / "rank0.onnx", tmp_path / "r.engine"))
    assert not (tmp_path / "r.engine").exists()


def test_a_rank_file_built_as_another_rank_is_refused(tiny_single, tmp_path):
    directory, _ = write_rank_export(tmp_path / "d", tiny_single)
    with pytest.raises(UserError, match="says rank 0 of 2 .*not rank 1 of export"):
        build_engine(_spec(directory / "rank0.onnx", tmp_path / "r.engine"), rank=RankIdentity(2, 1, EXPORT_ID))


def test_collective_nodes_in_a_single_device_export_are_refused(tiny_single, tmp_path):
    _rtx()
    model = onnx.load(tiny_single)
    _with_collectives(model, 2, 0)
    model.metadata_props.pop()  # drop the --tp keys again: a single-device graph holding collectives
    model.metadata_props.pop()
    model.metadata_props.pop()
    onnx.save(model, tmp_path / "odd.onnx")
    with pytest.raises(UserError, match="collective nodes in a single-device export"):
        build_engine(_spec(tmp_path / "odd.onnx", tmp_path / "odd.engine"))


@pytest.mark.parametrize("command", ["validate", "profile", "generate"])
def test_python_engine_runs_refuse_a_directory_of_rank_engines(tmp_path, command):
    (tmp_path / "rank0.engine").write_bytes(b"x")
    extra = ["--prompt", "hi"] if command == "generate" else []
    result = CliRunner().invoke(main, [command, "--engine", str(tmp_path), *extra])
    assert result.exit_code == 1, result.output
    assert "the engines of a --tp export run one process per rank with NCCL" in result.output


def test_sidecar_refuses_a_rank_outside_its_world(tiny_single, tmp_path):
    from mla_export.trt.sidecar import check_shape

    _rtx()
    engine = build_engine(_spec(tiny_single, tmp_path / "one.engine"))
    data = json.loads((tmp_path / "one.engine.json").read_text())
    assert (data["tp_size"], data["tp_rank"], data["tp_export_id"]) == (1, 0, None)
    for bad in ({"tp_size": 2, "tp_rank": 2, "tp_export_id": EXPORT_ID}, {"tp_size": 2, "tp_rank": 0},
                {"tp_size": 1, "tp_rank": 0, "tp_export_id": EXPORT_ID}):
        with pytest.raises(ValueError, match="is not a rank of a --tp export"):
            check_shape({**data, **bad})
    older = {k: v for k, v in data.items() if not k.startswith("tp_")}  # sidecars from before --tp: one device
    assert check_shape(older)["tp_size"] == 1
    # A Python run refuses a rank engine before it needs a GPU.
    from mla_export.run.trt_runner import TensorRTRunner

    (tmp_path / "one.engine.json").write_text(json.dumps({**data, "tp_size": 2, "tp_rank": 1,
                                                          "tp_export_id": EXPORT_ID}))
    with pytest.raises(UserError, match="rank 1 of a --tp 2 export; Python runs one device"):
        TensorRTRunner(engine)
    for command in ("validate", "profile"):
        result = CliRunner().invoke(main, [command, "--engine", str(engine)])
        assert result.exit_code == 1 and "rank 1 of a --tp 2 export; Python runs one device" in result.output
