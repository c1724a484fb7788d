"""The TensorRT engine runner on MlaAttention contract-2 engines (a paged and/or FP8 cache), with TensorRT
stood in (no TensorRT runtime or GPU here): every present plane (pool, FP8 codes, scales, rope) bound to its
past plane's tensor (aliased) or to one of its own (copy), the engine's FP8 type as torch.float8_e4m3fn, and
the CacheServer's feeds reaching bind() by the graph's names. `StandInRunner.execute` runs ONNX Runtime on the
export in place of TensorRT, so `validate_engine` runs end to end on the CPU: that checks the Python plumbing
around the engine, not TensorRT, the plugin, or that TensorRT honours the aliases."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mla_export.common import contract
from mla_export.common.errors import UserError
from mla_export.model.spec import spec_from_metadata
from mla_export.run import trt_runner
from mla_export.run.paged import CacheServer
from mla_export.run.runners import OnnxRuntimeRunner, from_numpy, to_numpy
from mla_export.run.scenario import Scenario
from mla_export.run.trt_runner import TensorRTRunner, cache_aliases, torch_dtype_table
from mla_export.run.validate import validate_engine
from mla_export.trt import backend
from mla_export.trt.sidecar import Sidecar

from test_build_cache import _build, _graph_tensors, paged, paged_fp8_moe  # noqa: F401 (fixtures)

TRT_TYPES = ("FLOAT", "HALF", "INT32", "INT64", "BF16", "FP8")
STAND_IN_TRT = SimpleNamespace(DataType=SimpleNamespace(**{t: f"DataType.{t}" for t in TRT_TYPES}),
                               TensorIOMode=SimpleNamespace(INPUT="input", OUTPUT="output"))


class StandInContext:
    """The IExecutionContext calls of bind, recorded by tensor name. get_tensor_shape of the one non-cache
    output (hidden states out, --io hidden) is the hidden states input's shape, as TensorRT would infer."""

    def __init__(self, first_input: str):
        self.addresses, self.shapes, self.first_input = {}, {}, first_input

    def set_optimization_profile_async(self, index, stream):
        self.profile = index

    def set_input_shape(self, name, shape):
        self.shapes[name] = shape

    def set_tensor_address(self, name, address):
        self.addresses[name] = address

    def get_tensor_shape(self, name):
        return self.shapes[self.first_input]


class StandInRunner(TensorRTRunner):
    """TensorRTRunner past __init__ (which needs a GPU) on the CPU; its execute runs ONNX Runtime on the export
    in TensorRT's place, reading the bound inputs and writing into the bound outputs (an aliased present plane
    is its past plane's tensor, so the step's pool lands where the plugin would write it)."""

    def __init__(self, engine, onnx, binding: str):
        self.sidecar = Sidecar.read(engine)
        self.aliases = cache_aliases(self.sidecar, engine)
        inputs, outputs, _ = _graph_tensors(onnx)
        self.declared = {t.name: t.dtype for t in inputs + outputs}
        self.modes = {**{t.name: "input" for t in inputs}, **{t.name: "output" for t in outputs}}
        self.io_names = list(self.modes)
        self.engine = SimpleNamespace(get_tensor_dtype=self.declared.__getitem__,
                                      get_tensor_mode=self.modes.__getitem__)
        self.trt, self.torch, self.device = STAND_IN_TRT, torch, "cpu"
        self.context = StandInContext(inputs[0].name)
        self.stream = SimpleNamespace(cuda_stream=0, synchronize=lambda: None)
        self.profile_index = {p["name"]: i for i, p in enumerate(self.sidecar.profiles)}
        self.cache_binding, self.name = binding, f"stand-in engine ({binding} cache)"
        self.ort = OnnxRuntimeRunner(onnx)
        self.bound = None

    def bind(self, inputs, new_tokens):
        self.bound = super().bind(inputs, new_tokens)
        return self.bound

    def execute(self):
        for name, tensor in self.bound.items():  # what TensorRT would read and write: the addresses set
            assert self.context.addresses[name] == tensor.data_ptr(), name
        feeds = {n: to_numpy(t) for n, t in self.bound.items() if self.modes[n] == "input"}
        for name, array in self.ort.run(feeds).items():
            self.bound[name].copy_(from_numpy(array))


def _feeds(spec, batch=2, new_tokens=3, filled=(5, 0)):
    """A step's contiguous feeds (random caches) turned into the export's own by a CacheServer."""
    rng = np.random.default_rng(0)
    c = spec.config
    step_in, _ = spec.step_io_names()
    feeds = {step_in[0]: rng.standard_normal((batch, new_tokens, c.hidden_size)).astype(np.float16),
             contract.CACHE_SEQLENS: np.array(filled, np.int32)}
    feeds.update({n: rng.standard_normal((batch, spec.max_seq_len, c.cache_width)).astype(np.float16)
                  for n in step_in[2:]})
    return CacheServer(None, spec).graph_feeds(feeds)


@pytest.fixture(params=["paged", "paged_fp8_moe"])
def built(request, tmp_path, monkeypatch):
    """(engine, onnx) of a tiny paged export and a tiny-moe paged FP8 one, built with TensorRT stood in."""
    onnx = request.getfixturevalue(request.param)
    _, engine = _build(onnx, tmp_path, monkeypatch, pages=(1, 8, 16))
    return engine, onnx


@pytest.mark.parametrize("binding", ["aliased", "copy"])
def test_every_present_plane_is_bound_beside_its_past(built, binding):
    engine, onnx = built
    runner = StandInRunner(engine, onnx, binding)
    spec = spec_from_metadata(runner.sidecar.onnx_metadata, "test")
    graph_in, graph_out = spec.graph_io_names()
    feeds = _feeds(spec)
    assert list(feeds) == graph_in  # the CacheServer's feeds are the graph's own inputs, all of them
    inputs = {n: from_numpy(a) for n, a in feeds.items()}
    bound = runner.bind(inputs, new_tokens=3)
    addresses = runner.context.addresses
    assert set(runner.context.shapes) == set(graph_in) and set(bound) == set(graph_in + graph_out)
    assert set(runner.aliases) == set(graph_out[1:])  # every plane: pools, codes, scales, rope
    planes = 3 if spec.kv_cache_dtype == "fp8" else 1
    assert len(runner.aliases) == planes * spec.config.num_hidden_layers
    table = torch_dtype_table(STAND_IN_TRT, torch)
    for present, past in runner.aliases.items():
        assert past.startswith("past_") and present == "present_" + past[len("past_"):]
        assert addresses[past] == inputs[past].data_ptr()
        if binding == "aliased":
            assert bound[present] is inputs[past] and addresses[present] == addresses[past]
        else:
            assert addresses[present] != addresses[past] and bound[present].shape == inputs[past].shape
        assert bound[present].dtype == table[runner.declared[present]] == table[runner.declared[past]]
    codes = [n for n in graph_in if runner.declared[n] == "DataType.FP8"]
    assert bool(codes) == (spec.kv_cache_dtype == "fp8")
    assert all(inputs[n].dtype == torch.float8_e4m3fn for n in codes)  # CacheServer's float8 arrays, as torch's
    assert bound[graph_out[0]].shape == inputs[graph_in[0]].shape
    assert bound[graph_out[0]].dtype == table[runner.declared[graph_out[0]]]


@pytest.mark.parametrize("binding", ["aliased", "copy"])
def test_a_stand_in_step_matches_onnx_runtime(built, binding):
    """run() through bind and the stand-in execute gives ONNX Runtime's answer, FP8 codes included."""
    engine, onnx = built
    runner = StandInRunner(engine, onnx, binding)
    spec = spec_from_metadata(runner.sidecar.onnx_metadata, "test")
    feeds = _feeds(spec)
    expected = OnnxRuntimeRunner(onnx).run(feeds)
    got = runner.run({n: a.copy() for n, a in feeds.items()})
    assert set(got) == set(expected)
    for name, want in expected.items():
        assert got[name].dtype == want.dtype, name
        np.testing.assert_allclose(got[name].astype(np.float32), want.astype(np.float32), rtol=1e-3, atol=1e-3,
                                   equal_nan=True, err_msg=name)


@pytest.mark.parametrize("binding", ["aliased", "copy"])
def test_validate_engine_drives_a_contract_2_engine(built, binding, monkeypatch):
    """validate --engine on a paged (and paged FP8) engine: the stand-in in TensorRTRunner's place, fed by
    CacheServer like an --onnx file, against the eager model and (with --onnx) ONNX Runtime."""
    engine, onnx = built
    made = []

    def stand_in(path, plugin_lib=None, sidecar=None):
        made.append(StandInRunner(path, onnx, binding))
        return made[-1]

    monkeypatch.setattr(trt_runner, "TensorRTRunner", stand_in)
    report = validate_engine(engine, Scenario(batch=2, prefill_len=8, steps=3), onnx=onnx)
    assert report.passed, report.to_dict()
    assert report.runtime.startswith(f"stand-in engine ({binding} cache), paged cache")
    assert made[0].bound is not None


def test_validate_engine_per_layer_drives_a_contract_2_engine(built, monkeypatch):
    """validate --engine --per-layer: the stand-in engine, fed by CacheServer, against the streamed reference."""
    engine, onnx = built
    monkeypatch.setattr(trt_runner, "TensorRTRunner", lambda path, plugin_lib=None, sidecar=None:
                        StandInRunner(path, onnx, "aliased"))
    scenario = Scenario(batch=2, prefill_len=8, steps=2)
    if spec_from_metadata(Sidecar.read(engine).onnx_metadata, "test").kv_cache_dtype == "fp8":
        with pytest.raises(UserError, match="an engine with an FP8 cache is validated whole only; drop --per-layer"):
            validate_engine(engine, scenario, per_layer=True)  # the streamed comparison has no FP8 verdict
        return
    report = validate_engine(engine, scenario, per_layer=True)
    assert report.passed, report.to_dict()


def test_tensorrt_fp8_is_torch_float8():
    """With a real TensorRT module where one imports (TensorRT-RTX here): DataType.FP8 -> float8_e4m3fn."""
    checked = []
    for flavour in backend.BACKENDS:
        try:
            trt = backend.import_backend(flavour)
        except Exception:
            continue
        table = torch_dtype_table(trt, torch)
        assert table[trt.DataType.FP8] is torch.float8_e4m3fn and table[trt.DataType.HALF] is torch.float16
        checked.append(flavour)
    if not checked:
        pytest.skip("no TensorRT flavour is installed here")
