"""`build` with TensorRT-RTX (a real builder that runs on the CPU), and every refusal of build/run."""

import json
import re

import pytest
from click.testing import CliRunner

from mla_export import contract
from mla_export.cli import main
from mla_export.hf_config import load_preset
from mla_export.errors import UserError
from mla_export.contract import graph_io_names
from mla_export.export import export_onnx
from mla_export.spec import ModelSpec
from mla_export.trt import backend
from mla_export.trt.build import check_attention_layers, count_plugin_layers, parse_range, parse_size
from mla_export.trt.sidecar import RuntimeEnvironment, Sidecar, check_compatible

SMAX = 64


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("build") / "tiny.onnx"
    export_onnx(ModelSpec(load_preset("tiny"), max_seq_len=SMAX), path)
    return path


@pytest.fixture(scope="module")
def tiny_fp16_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("build") / "tiny16.onnx"
    export_onnx(ModelSpec(load_preset("tiny"), dtype="float16", max_seq_len=SMAX), path)
    return path


def rtx():
    try:
        return backend.import_backend("tensorrt-rtx")
    except UserError as exc:
        pytest.skip(f"TensorRT-RTX is not installed here: {exc}")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_rtx_builds_a_decomposed_engine_with_its_sidecar(tiny_onnx, tmp_path):
    trt = rtx()
    engine = tmp_path / "tiny.engine"
    result = run("build", "--onnx", tiny_onnx, "-o", engine, "--backend", "tensorrt-rtx", "--attention", "decomposed",
                 "--batch-range", "1:2:4", "--prefill-range", "2:8:32")
    assert result.exit_code == 0, result.output
    assert "cache binding copy" in result.output
    assert "build: Building engine" in result.stderr  # TensorRT's build phases, as progress on stderr
    *_, summary, last = result.stdout.splitlines()
    assert summary == "built with tensorrt-rtx: attention decomposed, cache binding copy"
    name = re.escape(str(engine))
    assert re.fullmatch(rf"wrote {name} \(\d+\.\d\d MB\), {name}\.json \(\d+\.\d\d KB\) in \d+\.\d s", last), last
    assert engine.stat().st_size > 100_000
    sidecar = Sidecar.read(engine)
    assert (sidecar.tensorrt_flavour, sidecar.tensorrt_version) == ("tensorrt-rtx", trt.__version__)
    assert sidecar.attention == "decomposed" and sidecar.plugin_sha256 is None
    assert sidecar.cache_binding == "copy"  # no plugin, no alias: present is an output of its own
    assert sidecar.contract_version == contract.CONTRACT_VERSION
    decode, prefill = sidecar.profiles
    assert decode["name"] == "decode" and decode["shapes"]["hidden_states"] == [[1, 1, 64], [2, 1, 64], [4, 1, 64]]
    assert prefill["shapes"]["hidden_states"] == [[1, 2, 64], [2, 8, 64], [4, 32, 64]]
    assert prefill["shapes"][contract.past_cache_name(1)][2] == [4, SMAX, 40]
    inputs, outputs = graph_io_names(2, "hidden")
    assert [t["name"] for t in sidecar.io if t["mode"] == "input"] == inputs
    assert [t["name"] for t in sidecar.io if t["mode"] == "output"] == outputs
    assert sidecar.onnx_metadata[contract.META_MAX_SEQ_LEN] == str(SMAX)
    assert json.loads(sidecar.onnx_metadata[contract.META_CONFIG])["num_attention_heads"] == 4


def test_rtx_builds_the_runtime_absorbed_form_and_its_sidecar_carries_the_mode(tmp_path):
    """Same graph I/O in both --absorb forms: the same build, and the sidecar's copy of the metadata says which."""
    from mla_export.spec import spec_from_metadata

    rtx()
    onnx_path, engine = tmp_path / "runtime.onnx", tmp_path / "runtime.engine"
    export_onnx(ModelSpec(load_preset("tiny").with_layers(1), max_seq_len=SMAX, absorb="runtime"), onnx_path)
    result = run("build", "--onnx", onnx_path, "-o", engine, "--backend", "tensorrt-rtx", "--attention", "decomposed",
                 "--batch-range", "1:2:4", "--prefill-range", "2:8:32", "-q")
    assert result.exit_code == 0, result.output
    assert "build:" not in result.stderr  # --quiet: no progress
    sidecar = Sidecar.read(engine)
    assert sidecar.onnx_metadata[contract.META_ABSORB] == "runtime"
    assert spec_from_metadata(sidecar.onnx_metadata, str(engine)).absorb == "runtime"
    inputs, outputs = graph_io_names(1, "hidden")
    assert [t["name"] for t in sidecar.io] == inputs + outputs


def test_rtx_refuses_the_plugin_and_timing_cache(tiny_onnx, tmp_path):
    result = run("build", "--onnx", tiny_onnx, "-o", tmp_path / "x.engine", "--backend", "tensorrt-rtx")
    assert result.exit_code == 1 and "TensorRT-RTX cannot build engines with custom plugins" in result.output
    result = run("build", "--onnx", tiny_onnx, "-o", tmp_path / "x.engine", "--backend", "tensorrt-rtx",
                 "--attention", "decomposed", "--timing-cache", tmp_path / "t.cache")
    assert result.exit_code == 1 and "no timing cache" in result.output
    assert list(tmp_path.iterdir()) == []


def test_plugin_refuses_what_its_kernels_lack(tiny_onnx, tmp_path):
    """The plugin's kernels are float16/bfloat16 only: a float32 export is refused before TensorRT is touched."""
    result = run("build", "--onnx", tiny_onnx, "-o", tmp_path / "x.engine", "--plugin-lib", tmp_path / "nope.so")
    assert result.exit_code == 1, result.output
    assert "float32" in result.output and "compiled for float16 and bfloat16 only" in result.output
    assert "--attention decomposed" in result.output
    assert list(tmp_path.iterdir()) == []


def test_missing_plugin_library(tiny_fp16_onnx, tmp_path, monkeypatch):
    result = run("build", "--onnx", tiny_fp16_onnx, "-o", tmp_path / "x.engine", "--plugin-lib", tmp_path / "nope.so")
    assert result.exit_code == 1 and "libmla_plugin.so not found" in result.output and "make plugins" in result.output
    monkeypatch.setenv(backend.PLUGIN_ENV, str(tmp_path / "also-missing.so"))
    with pytest.raises(UserError, match="also-missing.so"):
        backend.find_plugin_library()
    assert not (tmp_path / "x.engine").exists()


def test_missing_tensorrt(tiny_onnx, tmp_path, monkeypatch):
    monkeypatch.setitem(backend.BACKENDS, "tensorrt", ("tensorrt_that_is_not_installed",))
    result = run("build", "--onnx", tiny_onnx, "-o", tmp_path / "x.engine", "--attention", "decomposed")
    assert result.exit_code == 1
    assert "tensorrt is not installed" in result.output and "--backend tensorrt-rtx" in result.output
    assert list(tmp_path.iterdir()) == []


def test_silent_function_fallback_is_caught(tiny_onnx):
    """Parsed without our plugin, RTX's parser inlines the node's function: zero plugin layers."""
    trt = rtx()
    logger = trt.Logger(trt.Logger.ERROR)
    network = trt.Builder(logger).create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    assert trt.OnnxParser(network, logger).parse_from_file(str(tiny_onnx))
    plugin_layers = count_plugin_layers(trt, network)
    assert plugin_layers == 0 and network.num_layers > 100
    with pytest.raises(UserError, match="silently inlined"):
        check_attention_layers("plugin", plugin_layers, 2, None)
    check_attention_layers("decomposed", plugin_layers, 2, None)
    check_attention_layers("plugin", 2, 2, None)
    with pytest.raises(UserError, match="plugin layer"):
        check_attention_layers("decomposed", 1, 2, None)


def sidecar(**changes):
    base = dict(tensorrt_flavour="tensorrt", tensorrt_version="10.13.0", attention="plugin", gpu_name="NVIDIA H100",
                compute_capability="9.0", plugin_sha256="ab" * 32, plugin_path="/x/libmla_plugin.so")
    base.update(changes)
    return Sidecar(**base)


def test_sidecar_checks_refuse_mismatches():
    env = RuntimeEnvironment("tensorrt", "10.13.0", "NVIDIA H100", "9.0", "ab" * 32)
    check_compatible(sidecar(), env)
    with pytest.raises(UserError, match="built with tensorrt 10.9.0, this is tensorrt 10.13.0"):
        check_compatible(sidecar(tensorrt_version="10.9.0"), env)
    with pytest.raises(UserError, match="compute capability 8.0"):
        check_compatible(sidecar(gpu_name="NVIDIA A100", compute_capability="8.0"), env)
    with pytest.raises(UserError, match="plugin library sha256"):
        check_compatible(sidecar(plugin_sha256="cd" * 32), env)
    with pytest.raises(UserError, match="contract 99"):
        check_compatible(sidecar(contract_version=99), env)
    check_compatible(sidecar(attention="decomposed", plugin_sha256=None),
                     RuntimeEnvironment("tensorrt", "10.13.0", "NVIDIA H100", "9.0", None))
    # An RTX engine built without a GPU carries no compute capability: any GPU may run it.
    check_compatible(sidecar(tensorrt_flavour="tensorrt-rtx", tensorrt_version="1.7", attention="decomposed",
                             gpu_name=None, compute_capability=None),
                     RuntimeEnvironment("tensorrt-rtx", "1.7", "NVIDIA RTX 5090", "12.0", None))


def test_sidecar_files(tmp_path, monkeypatch):
    engine = tmp_path / "m.engine"
    with pytest.raises(UserError, match="no such file"):
        Sidecar.read(engine)
    engine.write_bytes(b"engine")
    with pytest.raises(UserError, match="sidecar m.engine.json is missing"):
        Sidecar.read(engine)
    (tmp_path / "m.engine.json").write_text('{"format": "something-else"}')
    with pytest.raises(UserError, match="not an mla-export engine sidecar"):
        Sidecar.read(engine)
    import hashlib

    profiles = [{"name": name, "shapes": {"hidden_states": [[1, 1, 64]] * 3}} for name in ("decode", "prefill")]
    written = sidecar(onnx_metadata=ModelSpec(load_preset("tiny"), max_seq_len=SMAX).metadata(), profiles=profiles,
                      engine_size=6, engine_sha256=hashlib.sha256(b"engine").hexdigest())
    written.write(engine)
    assert Sidecar.read(engine) == written
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without a GPU, even on one
    result = run("validate", "--engine", engine)
    assert result.exit_code == 1 and "running a TensorRT engine needs an NVIDIA GPU" in result.output


def test_ranges_and_sizes():
    assert parse_range("1:8:32", "--batch-range") == (1, 8, 32) and parse_range("4:4:4", "x") == (4, 4, 4)
    for bad in ("0:1:2", "8:4:16", "1:2", "a:b:c", "8"):  # one number is no range: refused, not read as 8:8:8
        with pytest.raises(UserError, match="MIN:OPT:MAX"):
            parse_range(bad, "--batch-range")
    assert parse_size("4G") == 4 << 30 and parse_size("512M") == 512 << 20 and parse_size("1024") == 1024
    with pytest.raises(UserError, match="size"):
        parse_size("lots")
    result = run("build", "--onnx", "nope.onnx", "-o", "x.engine")
    assert result.exit_code == 1 and "no such file" in result.output
