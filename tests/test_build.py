"""`build` with TensorRT-RTX (a real builder that runs on the CPU), and every refusal of build/run."""

import json
import re
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from mla_export.common import contract
from mla_export.ui.cli import main
from mla_export.model.hf_config import load_preset
from mla_export.common.errors import UserError
from mla_export.common.contract import graph_io_names
from mla_export.graph.export import export_onnx
from mla_export.model.spec import ModelSpec
from mla_export.trt import backend
from mla_export.trt.build import (UNKNOWN_PLUGIN, check_plugin_layers, count_plugin_layers, parse_range, parse_size,
                                  plugin_layers_by_name, plugin_nodes)
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


@pytest.fixture(scope="module")
def tiny_moe_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("build") / "tiny-moe16.onnx"
    export_onnx(ModelSpec(load_preset("tiny-moe"), dtype="float16", max_seq_len=SMAX), path)
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
    from mla_export.model.spec import spec_from_metadata

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
    """With TensorRT present (a stand-in here), a missing plugin library is the message; without TensorRT,
    TensorRT is (no library would help), before the user is sent to build one."""
    from types import SimpleNamespace

    import mla_export.trt.build as build_module

    result = run("build", "--onnx", tiny_fp16_onnx, "-o", tmp_path / "x.engine", "--plugin-lib", tmp_path / "nope.so")
    assert result.exit_code == 1 and "tensorrt is not installed" in result.output and "make plugins" not in result.output
    monkeypatch.setattr(build_module, "import_backend", lambda name: SimpleNamespace(__version__="10.99"))
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
    layers = plugin_layers_by_name(trt, network)
    assert layers == {} and count_plugin_layers(trt, network) == 0 and network.num_layers > 100
    nodes = {"MlaAttention": 2, "DeepseekMoE": 0}
    with pytest.raises(UserError, match="0 MlaAttention plugin layer.s. for 2 MlaAttention node.s.: TensorRT silently"):
        check_plugin_layers("plugin", layers, nodes, None)
    check_plugin_layers("decomposed", layers, nodes, None)
    check_plugin_layers("plugin", {"MlaAttention": 2}, nodes, None)
    with pytest.raises(UserError, match="plugin layer"):
        check_plugin_layers("decomposed", {"MlaAttention": 1}, nodes, None)


def test_every_moe_node_must_be_a_plugin_layer():
    """A MoE export: one plugin layer per MlaAttention and per DeepseekMoE node, counted per type; a DeepseekMoE
    node inlined as its function body (the dense computation) fails the build. Layers whose plugin name the
    bindings cannot tell count for the missing ones, never for more."""
    nodes = {"MlaAttention": 3, "DeepseekMoE": 2}
    check_plugin_layers("plugin", {"MlaAttention": 3, "DeepseekMoE": 2}, nodes, None)
    check_plugin_layers("plugin", {UNKNOWN_PLUGIN: 5}, nodes, None)
    check_plugin_layers("plugin", {"MlaAttention": 3, UNKNOWN_PLUGIN: 2}, nodes, None)
    for layers in ({"MlaAttention": 3}, {"MlaAttention": 3, "DeepseekMoE": 1}, {UNKNOWN_PLUGIN: 4},
                   {"MlaAttention": 4, "DeepseekMoE": 1}, {"MlaAttention": 3, "DeepseekMoE": 2, UNKNOWN_PLUGIN: 1},
                   {"MlaAttention": 3, "DeepseekMoE": 1, "SomeOtherPlugin": 1}):
        with pytest.raises(UserError, match="DeepseekMoE node.s.: TensorRT silently inlined|MlaAttention node"):
            check_plugin_layers("plugin", layers, nodes, None)
    with pytest.raises(UserError, match="DeepseekMoE"):
        check_plugin_layers("decomposed", {"DeepseekMoE": 2}, nodes, None)


def test_silent_moe_fallback_is_caught(tiny_moe_onnx):
    """Parsed without our plugin, a tiny-moe export's DeepseekMoE nodes become their dense function body (every
    expert for every token): build's count per node type says which fell back."""
    import onnx

    trt = rtx()
    logger = trt.Logger(trt.Logger.ERROR)
    network = trt.Builder(logger).create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    assert trt.OnnxParser(network, logger).parse_from_file(str(tiny_moe_onnx))
    nodes = plugin_nodes(onnx.load(str(tiny_moe_onnx), load_external_data=False))
    assert nodes == {"MlaAttention": 3, "DeepseekMoE": 2, "BlockFp8MatMul": 0}
    layers = plugin_layers_by_name(trt, network)
    assert layers == {}
    with pytest.raises(UserError, match=r"0 MlaAttention plugin layer\(s\) for 3 MlaAttention node\(s\); "
                                        r"0 DeepseekMoE plugin layer\(s\) for 2 DeepseekMoE node\(s\)"):
        check_plugin_layers("plugin", layers, nodes, None)


def test_plugin_refuses_moe_dims_its_kernels_lack(tmp_path):
    """The DeepseekMoE kernels take expert dims in multiples of 16: refused before TensorRT is touched."""
    import dataclasses

    path = tmp_path / "odd.onnx"
    config = dataclasses.replace(load_preset("tiny-moe"), moe_intermediate_size=24).with_layers(2)
    export_onnx(ModelSpec(config, dtype="float16", max_seq_len=SMAX), path)
    result = run("build", "--onnx", path, "-o", tmp_path / "x.engine", "--plugin-lib", tmp_path / "nope.so")
    assert result.exit_code == 1, result.output
    assert "the DeepseekMoE plugin cannot run this export" in result.output
    assert "moe_intermediate_size=24" in result.output and "multiples of 16" in result.output
    assert "--attention decomposed" in result.output
    assert not (tmp_path / "x.engine").exists()


class _Layer:
    """A parsed network's layer as the stand-in TensorRT returns it (ILayer)."""

    type = "plugin-v3"

    def __init__(self, plugin_name: str):
        self.plugin_name = plugin_name


class _PluginV3Layer(_Layer):
    """What `layer.__class__ = trt.IPluginV3Layer` makes of it: its plugin's core capability names it."""

    @property
    def plugin(self):
        return SimpleNamespace(get_capability_interface=lambda kind: SimpleNamespace(plugin_name=self.plugin_name))


@pytest.mark.parametrize("names, error", [
    (["MlaAttention"] * 3 + ["DeepseekMoE"] * 2, None),
    (["MlaAttention"] * 3, "0 DeepseekMoE plugin layer.s. for 2 DeepseekMoE node.s.: TensorRT silently inlined"),
    (["MlaAttention"] * 3 + ["DeepseekMoE", "MlaAttention"], "4 MlaAttention plugin layer.s. for 3"),
])
def test_build_engine_counts_plugin_layers_per_node_type(tiny_moe_onnx, tmp_path, monkeypatch, names, error):
    """build_engine's own path on a tiny-moe export with TensorRT stood in, its plugin layers named by their
    plugins: every MlaAttention and every DeepseekMoE node must be a plugin layer of its own type."""
    from mla_export.trt import build
    from mla_export.trt.build import BuildSpec, build_engine

    from test_cache_binding import stand_in_tensorrt

    trt = stand_in_tensorrt(True, 0, [])
    network = trt.Builder(None).create_network(0)
    network.num_layers = len(names)
    network.get_layer = lambda i: _Layer(names[i])
    trt.IPluginV3Layer = _PluginV3Layer
    trt.PluginCapabilityType = SimpleNamespace(CORE="core")
    monkeypatch.setattr(build, "import_backend", lambda name: trt)
    library = tmp_path / "libmla_plugin.so"
    library.write_bytes(b"stand-in plugin library")
    spec = BuildSpec(onnx=str(tiny_moe_onnx), output=str(tmp_path / "moe.engine"), plugin_lib=str(library),
                     prefill_tokens=(2, 8, 32))
    if error is None:
        assert build_engine(spec).read_bytes() == b"engine"
        assert Sidecar.read(tmp_path / "moe.engine").attention == "plugin"
    else:
        with pytest.raises(UserError, match=error):
            build_engine(spec)
        assert not (tmp_path / "moe.engine").exists()


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


def test_build_log_on_stderr_without_duplicate_node_names(tiny_onnx, tmp_path):
    """A 2-layer TensorRT-RTX build: the graph it parses has the nodes' functions inlined with a name per call
    site, so no 'A node named ... already exists' warning; TensorRT's messages (--verbose) go to stderr and
    stdout holds only the command's result."""
    import subprocess
    import sys

    rtx()
    engine = tmp_path / "tiny.engine"
    proc = subprocess.run([sys.executable, "-c", "from mla_export.ui.cli import main; main()", "build", "--onnx",
                           str(tiny_onnx), "-o", str(engine), "--backend", "tensorrt-rtx", "--attention",
                           "decomposed", "--verbose"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "already exists" not in proc.stdout + proc.stderr
    assert "[TensorRT] I:" in proc.stderr and "[TensorRT]" not in proc.stdout
    assert [line for line in proc.stdout.splitlines() if line.strip()][-1].startswith("wrote ")
