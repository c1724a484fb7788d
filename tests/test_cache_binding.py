"""The latent cache as aliased plugin I/O on the Python side: `build` enables TensorRT's preview feature
ALIASED_PLUGIN_IO_10_03 and records the mode in the sidecar (`cache_binding`); the engine runner binds the
caches per mode and says which. No full TensorRT exists here: the builder side is checked with TensorRT-RTX's
real API where it imports, and `build_engine`'s own code path with a stand-in TensorRT module."""

from __future__ import annotations

import hashlib
import json
from types import SimpleNamespace

import pytest
import torch

from mla_export.common import contract
from mla_export.model.hf_config import load_preset
from mla_export.common.errors import UserError
from mla_export.common.contract import graph_io_names
from mla_export.graph.export import export_onnx
from mla_export.model.spec import ModelSpec
from mla_export.trt import backend, build
from mla_export.trt.aliasing import CACHE_BINDINGS, alias_pairs, cache_binding, enable_aliased_plugin_io
from mla_export.trt.build import BuildSpec, build_engine
from mla_export.run.trt_runner import TensorRTRunner, present_cache_tensor
from mla_export.trt.sidecar import Sidecar

SMAX = 64


class StandInConfig:
    """The part of IBuilderConfig that build_engine uses, recording what is set on it."""

    def __init__(self):
        self.preview = {}
        self.profiles = []
        self.progress_monitor = None

    def set_preview_feature(self, feature, enabled):
        self.preview[feature] = enabled

    def get_preview_feature(self, feature):
        return self.preview.get(feature, False)

    def add_optimization_profile(self, profile):
        self.profiles.append(profile)
        return len(self.profiles) - 1


def stand_in_tensorrt(with_aliasing: bool, layers: int, configs: list):
    """A TensorRT module as far as build_engine goes: parses to `layers` plugin layers, builds b"engine".
    Without `with_aliasing` it lacks PreviewFeature.ALIASED_PLUGIN_IO_10_03, like TensorRT before 10.3."""
    inputs, outputs = graph_io_names(layers, "hidden")
    features = {"RUNTIME_ACTIVATION_RESIZE_10_10": "resize"}
    if with_aliasing:
        features["ALIASED_PLUGIN_IO_10_03"] = "aliased-plugin-io"
    tensor = lambda name: SimpleNamespace(name=name, dtype="DataType.HALF", shape=(-1, SMAX))  # noqa: E731
    network = SimpleNamespace(num_layers=layers, get_layer=lambda i: SimpleNamespace(type="plugin-v3"),
                              num_inputs=len(inputs), get_input=lambda i: tensor(inputs[i]),
                              num_outputs=len(outputs), get_output=lambda i: tensor(outputs[i]))
    registry = SimpleNamespace(load_library=lambda path: "handle", get_creator=lambda *identity: "creator")

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            return network

        def create_builder_config(self):
            configs.append(StandInConfig())
            return configs[-1]

        def create_optimization_profile(self):
            return SimpleNamespace(set_shape=lambda *args: None)

        def build_serialized_network(self, network, config):
            return b"engine"

    class Parser:
        def __init__(self, network, logger):
            self.num_errors = 0

        def parse_from_file(self, path):
            return True

        def parse(self, model_bytes, path):
            return True

    class Monitor:
        def __init__(self):
            pass

    class ILogger:
        Severity = SimpleNamespace(INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3, VERBOSE=4)

        def __init__(self):
            pass

    return SimpleNamespace(
        __version__="10.99.0", ILogger=ILogger, get_plugin_registry=lambda: registry,
        Builder=Builder, OnnxParser=Parser, IProgressMonitor=Monitor, PreviewFeature=SimpleNamespace(**features),
        NetworkDefinitionCreationFlag=SimpleNamespace(STRONGLY_TYPED=0), OnnxParserFlag=SimpleNamespace(),
        LayerType=SimpleNamespace(PLUGIN_V3="plugin-v3"))


@pytest.fixture(scope="module")
def tiny_fp16_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("binding") / "tiny16.onnx"
    export_onnx(ModelSpec(load_preset("tiny"), dtype="float16", max_seq_len=SMAX), path)
    return path


def test_enable_sets_the_preview_feature_on_a_stand_in_config():
    config = StandInConfig()
    trt = SimpleNamespace(PreviewFeature=SimpleNamespace(ALIASED_PLUGIN_IO_10_03="aliased-plugin-io"))
    assert enable_aliased_plugin_io(trt, config) is True
    assert config.preview == {"aliased-plugin-io": True}
    older = StandInConfig()  # TensorRT before 10.3: no such feature, nothing set, the plugin copies
    assert enable_aliased_plugin_io(SimpleNamespace(PreviewFeature=SimpleNamespace(PROFILE_SHARING_0806=0)), older) \
        is False
    assert older.preview == {}
    assert enable_aliased_plugin_io(SimpleNamespace(), StandInConfig()) is False


def test_enable_sets_the_preview_feature_with_the_tensorrt_api():
    """On a real IBuilderConfig of every TensorRT flavour that imports (TensorRT-RTX does here, full TensorRT not)."""
    checked = []
    for flavour in backend.BACKENDS:
        try:
            trt = backend.import_backend(flavour)
        except UserError:
            continue
        config = trt.Builder(trt.Logger(trt.Logger.ERROR)).create_builder_config()
        assert not config.get_preview_feature(trt.PreviewFeature.ALIASED_PLUGIN_IO_10_03)
        assert enable_aliased_plugin_io(trt, config) is True
        assert config.get_preview_feature(trt.PreviewFeature.ALIASED_PLUGIN_IO_10_03)
        checked.append(flavour)
    if not checked:
        pytest.skip("no TensorRT flavour is installed here")


def test_cache_binding_follows_the_attention_and_the_feature():
    assert cache_binding("plugin", True) == "aliased"
    assert cache_binding("plugin", False) == "copy"
    assert cache_binding("decomposed", True) == "copy"  # no plugin: present is an output of its own
    assert set(CACHE_BINDINGS) == {"aliased", "copy"}


@pytest.mark.parametrize("with_aliasing, expected", [(True, "aliased"), (False, "copy")])
def test_build_enables_aliasing_and_records_the_mode(tiny_fp16_onnx, tmp_path, monkeypatch, with_aliasing, expected):
    """build_engine's own path, with TensorRT stood in: the preview feature is set on the builder config it
    creates (where the TensorRT in use has it), and the sidecar says how to bind the caches."""
    configs = []
    layers = load_preset("tiny").num_hidden_layers
    trt = stand_in_tensorrt(with_aliasing, layers, configs)
    monkeypatch.setattr(build, "import_backend", lambda name: trt)
    library = tmp_path / "libmla_plugin.so"
    library.write_bytes(b"stand-in plugin library")
    engine = build_engine(BuildSpec(onnx=str(tiny_fp16_onnx), output=str(tmp_path / "tiny.engine"),
                                    plugin_lib=str(library), prefill_tokens=(2, 8, 32)))
    assert engine.read_bytes() == b"engine" and len(configs) == 1
    assert configs[0].preview == ({"aliased-plugin-io": True} if with_aliasing else {})
    sidecar = Sidecar.read(engine)
    assert sidecar.cache_binding == expected and sidecar.attention == "plugin"
    assert json.loads((tmp_path / "tiny.engine.json").read_text())["cache_binding"] == expected


def test_sidecar_cache_binding_defaults_and_checks(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"engine")
    profiles = [{"name": name, "shapes": {}} for name in ("decode", "prefill")]
    base = Sidecar(tensorrt_flavour="tensorrt", tensorrt_version="10.13.0", attention="plugin", gpu_name=None,
                   compute_capability=None, plugin_sha256=None, plugin_path=None, profiles=profiles,
                   engine_size=6, engine_sha256=hashlib.sha256(b"engine").hexdigest())
    assert base.cache_binding == "copy"
    data = json.loads(json.dumps(base.__dict__))
    del data["cache_binding"]  # a sidecar written before the field: its engine declares no alias
    (tmp_path / "m.engine.json").write_text(json.dumps(data))
    assert Sidecar.read(engine).cache_binding == "copy"
    data["cache_binding"] = "paged"
    (tmp_path / "m.engine.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="cache_binding 'paged'"):
        Sidecar.read(engine)


class StandInContext:
    """The IExecutionContext calls the runner's bind makes, recording addresses by tensor name."""

    def __init__(self):
        self.addresses = {}
        self.shapes = {}

    def set_optimization_profile_async(self, index, stream):
        self.profile = index

    def set_input_shape(self, name, shape):
        self.shapes[name] = shape

    def set_tensor_address(self, name, address):
        self.addresses[name] = address


def stand_in_runner(binding: str, layers: int) -> TensorRTRunner:
    """A runner past __init__ (which needs a GPU): the engine's I/O names, a recording context, torch on the CPU."""
    inputs, outputs = graph_io_names(layers, "hidden")
    runner = TensorRTRunner.__new__(TensorRTRunner)
    runner.torch, runner.context, runner.cache_binding = torch, StandInContext(), binding
    runner.device, runner.aliases = "cpu", alias_pairs(layers, "hidden")
    runner.stream = SimpleNamespace(cuda_stream=0)
    runner.profile_index = {"decode": 0, "prefill": 1}
    runner.io_names = [n for n in inputs + outputs if "latent_cache" in n]  # no output needing a CUDA allocation
    return runner


@pytest.mark.parametrize("binding", ["aliased", "copy"])
def test_runner_binds_the_caches_per_mode(binding):
    layers = 3
    runner = stand_in_runner(binding, layers)
    caches = {contract.past_cache_name(i): torch.zeros(2, SMAX, 40, dtype=torch.float16) for i in range(layers)}
    bound = runner.bind(caches, new_tokens=1)
    addresses = runner.context.addresses
    for i in range(layers):
        past, present = contract.past_cache_name(i), contract.present_cache_name(i)
        assert addresses[past] == caches[past].data_ptr()
        if binding == "aliased":  # one buffer: TensorRT's binding of an aliased plugin output
            assert addresses[present] == addresses[past] and bound[present] is caches[past]
        else:  # a buffer of its own, of the past cache's shape and type
            assert addresses[present] != addresses[past]
            assert bound[present].shape == caches[past].shape and bound[present].dtype == caches[past].dtype
    assert len({addresses[contract.past_cache_name(i)] for i in range(layers)}) == layers


def test_present_cache_tensor():
    past = torch.arange(12.0).reshape(3, 4)
    assert present_cache_tensor("aliased", past) is past
    other = present_cache_tensor("copy", past)
    assert other.data_ptr() != past.data_ptr() and other.shape == past.shape and other.dtype == past.dtype
