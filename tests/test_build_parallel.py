"""`build` of a `--tp` export's rank graphs (trt/build.py, trt/build_parallel.py): TensorRT-RTX (a real builder,
on the CPU) builds every rank of `export --tp 2` (tiny with --io tokens: AllReduce after the embedding and in
every layer, the AllGather of the logits) into DIST_COLLECTIVE layers, the sidecars name the world size, rank and
export id, and the build's own refusals (a rank file on its own, a rank file that is not the rank the manifest
says, Python runs of rank engines).
"""

from __future__ import annotations

import json
import shutil

import onnx
import pytest
from click.testing import CliRunner

from mla_export.common import contract
from mla_export.common.errors import UserError
from mla_export.graph.export import export_onnx
from mla_export.graph.parallel_export import export_parallel, file_sha256, read_parallel_export
from mla_export.model.hf_config import load_preset
from mla_export.model.spec import ModelSpec
from mla_export.trt import backend
from mla_export.trt.build import BuildSpec, build_engine
from mla_export.trt.collectives import RankIdentity, collective_nodes
from mla_export.trt.sidecar import Sidecar
from mla_export.ui.cli import main

SMAX = 64


def _rtx():
    try:
        return backend.import_backend("tensorrt-rtx")
    except UserError as exc:
        pytest.skip(f"TensorRT-RTX is not installed here: {exc}")


@pytest.fixture(scope="module")
def tiny_single(tmp_path_factory):
    path = tmp_path_factory.mktemp("tp") / "tiny.onnx"
    export_onnx(ModelSpec(load_preset("tiny"), max_seq_len=SMAX), path)
    return path


@pytest.fixture(scope="module")
def tp2(tmp_path_factory):
    """`export --preset tiny --io tokens --tp 2`: the directory, read back."""
    directory = tmp_path_factory.mktemp("tp") / "tiny-tp2"
    export_parallel(ModelSpec(load_preset("tiny"), max_seq_len=SMAX, io="tokens", tp_size=2), directory)
    return read_parallel_export(directory)


def _copy_export(export, target):
    shutil.copytree(export.directory, target)
    return target


def _spec(onnx_path, output, **kw):
    return BuildSpec(onnx=str(onnx_path), output=str(output), attention="decomposed", backend="tensorrt-rtx",
                     batch=(1, 2, 2), prefill_tokens=(2, 4, 8), **kw)


def test_rtx_builds_every_rank_of_a_tp_export(tp2, tmp_path):
    """`build --onnx DIR -o OUTDIR` with TensorRT-RTX: one engine per rank; each parse made one DIST_COLLECTIVE
    layer per collective node, for 2 ranks (the build checks both), and each sidecar says which rank of which
    export it is."""
    _rtx()
    nodes = [collective_nodes(r.header.graph) for r in tp2.ranks]
    assert [len(n) for n in nodes] == [1 + 2 * 2 + 1] * 2  # embedding, 2 per layer, the logits' gather
    result = CliRunner().invoke(main, ["build", "--onnx", str(tp2.directory), "-o", str(tmp_path / "engines"),
                                       "--backend", "tensorrt-rtx", "--attention", "decomposed", "--batch-range",
                                       "1:2:2", "--prefill-range", "2:4:8", "-q"])
    assert result.exit_code == 0, result.output
    assert "cache binding copy, 2 ranks (one engine each)" in result.output
    for rank in range(2):
        engine = tmp_path / "engines" / f"rank{rank}.engine"
        sidecar = Sidecar.read(engine)
        assert (sidecar.tp_size, sidecar.tp_rank, sidecar.tp_export_id) == (2, rank, tp2.export_id)
        assert sidecar.onnx_metadata[contract.META_TP_RANK] == str(rank)
        assert engine.stat().st_size == sidecar.engine_size > 0
        logits = next(t for t in sidecar.io if t["name"] == contract.LOGITS)
        assert logits["shape"][-1] == load_preset("tiny").vocab_size  # gathered: the whole vocab on every rank
    assert sorted(p.name for p in (tmp_path / "engines").iterdir()) == [
        "rank0.engine", "rank0.engine.json", "rank1.engine", "rank1.engine.json"]


def test_a_rank_file_on_its_own_is_refused(tp2, tmp_path):
    result = CliRunner().invoke(main, ["build", "--onnx", str(tp2.rank_files[1]), "-o", str(tmp_path / "r.engine"),
                                       "--backend", "tensorrt-rtx", "--attention", "decomposed"])
    assert result.exit_code == 1
    assert "is rank 1 of a --tp 2 export: pass its directory (--onnx DIR)" in result.output
    assert not (tmp_path / "r.engine").exists()


def test_a_rank_file_built_as_another_rank_is_refused(tp2, tmp_path):
    with pytest.raises(UserError, match="says rank 0 of 2 .*not rank 1 of export"):
        build_engine(_spec(tp2.rank_files[0], tmp_path / "r.engine"), rank=RankIdentity(2, 1, tp2.export_id))


def test_a_broken_export_directory_builds_nothing(tp2, tmp_path):
    """The reader's refusals reach `build` as one message each, before any engine is written."""
    broken = _copy_export(tp2, tmp_path / "missing")
    (broken / "rank1.onnx").unlink()
    swapped = _copy_export(tp2, tmp_path / "swapped")
    shutil.copy(swapped / "rank0.onnx", swapped / "rank1.onnx")
    for directory, message in ((broken, "rank 1's file rank1.onnx is missing"), (swapped, "is not the file this "
                                                                                            "export wrote")):
        result = CliRunner().invoke(main, ["build", "--onnx", str(directory), "-o", str(tmp_path / "out"),
                                           "--backend", "tensorrt-rtx", "--attention", "decomposed"])
        assert result.exit_code == 1 and message in result.output, result.output
        assert not (tmp_path / "out").exists()


def test_a_rank_file_of_another_export_builds_nothing(tp2, tmp_path):
    """A rank file whose metadata names another export, re-hashed into the manifest (so the sha256 check passes):
    refused (by the reader, one message) before any engine is written."""
    directory = _copy_export(tp2, tmp_path / "relabelled")
    model = onnx.load(directory / "rank1.onnx", load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == contract.META_TP_EXPORT_ID:
            prop.value = "feedfacefeedface"
    onnx.save(model, directory / "rank1.onnx")
    manifest = json.loads((directory / contract.PARALLEL_MANIFEST).read_text())
    manifest["ranks"][1]["sha256"] = file_sha256(directory / "rank1.onnx")
    (directory / contract.PARALLEL_MANIFEST).write_text(json.dumps(manifest))
    result = CliRunner().invoke(main, ["build", "--onnx", str(directory), "-o", str(tmp_path / "out"),
                                       "--backend", "tensorrt-rtx", "--attention", "decomposed"])
    assert result.exit_code == 1
    assert "rank1.onnx is rank 1 of 2 of another export" in result.output
    assert not (tmp_path / "out").exists()


def test_outdir_must_not_be_a_file(tp2, tmp_path):
    (tmp_path / "out").write_text("x")
    result = CliRunner().invoke(main, ["build", "--onnx", str(tp2.directory), "-o", str(tmp_path / "out"),
                                       "--backend", "tensorrt-rtx", "--attention", "decomposed"])
    assert result.exit_code == 1 and "is a file; for a --tp export, -o names a directory" in result.output


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
    for bad in ({"tp_size": 2, "tp_rank": 2, "tp_export_id": "ab"}, {"tp_size": 2, "tp_rank": 0},
                {"tp_size": 1, "tp_rank": 0, "tp_export_id": "ab"}):
        with pytest.raises(ValueError, match="is not a rank of a --tp export"):
            check_shape({**data, **bad})
    older = {k: v for k, v in data.items() if not k.startswith("tp_")}  # sidecars from before --tp: one device
    assert check_shape(older)["tp_size"] == 1
    # A Python run refuses a rank engine before it needs a GPU.
    from mla_export.run.trt_runner import TensorRTRunner

    (tmp_path / "one.engine.json").write_text(json.dumps({**data, "tp_size": 2, "tp_rank": 1,
                                                          "tp_export_id": "ab"}))
    with pytest.raises(UserError, match="rank 1 of a --tp 2 export; Python runs one device"):
        TensorRTRunner(engine)
    for command in ("validate", "profile"):
        result = CliRunner().invoke(main, [command, "--engine", str(engine)])
        assert result.exit_code == 1 and "rank 1 of a --tp 2 export; Python runs one device" in result.output
