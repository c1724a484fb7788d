"""`build` of MlaAttention contract-2 exports (a paged and/or FP8 latent cache) through build_engine's own code
path with TensorRT stood in (no TensorRT here): the optimization profiles TensorRT is given for the block table
and the pools, the aliased plugin I/O declared for every cache plane, the cache layout the sidecar records, and
the one message for each bad pool shape. What only TensorRT can show (that its parser takes the FP8 network
inputs into the plugin, that the aliases take effect) is not claimed here."""

from __future__ import annotations

import json
from types import SimpleNamespace

import onnx
import pytest
import torch
from click.testing import CliRunner

from mla_export.common import contract
from mla_export.common.errors import UserError
from mla_export.graph.export import export_onnx
from mla_export.model.hf_config import load_preset
from mla_export.model.spec import ModelSpec, spec_from_metadata
from mla_export.model.spec import SPARE_PAGES
from mla_export.trt import build
from mla_export.trt.aliasing import PLUGIN_ALIASES
from mla_export.trt.build import BuildSpec, build_engine
from mla_export.trt.sidecar import RuntimeEnvironment, Sidecar, check_compatible, check_shape
from mla_export.ui.cli import main

from test_cache_binding import stand_in_tensorrt

SMAX, PAGE = 64, 16
BATCH, PREFILL = (1, 2, 4), (2, 8, 32)
_TRT_TYPES = {onnx.TensorProto.FLOAT: "FLOAT", onnx.TensorProto.FLOAT16: "HALF", onnx.TensorProto.INT32: "INT32",
              onnx.TensorProto.INT64: "INT64", onnx.TensorProto.FLOAT8E4M3FN: "FP8"}


def _export(tmp_path_factory, preset, **spec):
    path = tmp_path_factory.mktemp("cache-build") / f"{preset}.onnx"
    export_onnx(ModelSpec(load_preset(preset), dtype="float16", max_seq_len=SMAX, **spec), path)
    return path


@pytest.fixture(scope="module")
def paged(tmp_path_factory):
    """`export --preset tiny --cache paged --page-size 16` (float16)."""
    return _export(tmp_path_factory, "tiny", cache="paged", page_size=PAGE)


@pytest.fixture(scope="module")
def paged_fp8_moe(tmp_path_factory):
    """`export --preset tiny-moe --cache paged --page-size 16 --kv-cache-dtype fp8` (float16)."""
    return _export(tmp_path_factory, "tiny-moe", cache="paged", page_size=PAGE, kv_cache_dtype="fp8")


@pytest.fixture(scope="module")
def contiguous_fp8(tmp_path_factory):
    return _export(tmp_path_factory, "tiny", kv_cache_dtype="fp8")


class _Tensor(SimpleNamespace):
    pass


class _PluginLayer:
    type = "plugin-v3"

    def __init__(self, plugin_name):
        self.plugin_name = plugin_name

    @property
    def plugin(self):  # what `layer.__class__ = trt.IPluginV3Layer` gives: its core capability names it
        return SimpleNamespace(get_capability_interface=lambda kind: SimpleNamespace(plugin_name=self.plugin_name))


def _graph_tensors(path):
    """The graph's inputs and outputs as TensorRT's parser would give them: dtype, dims (-1 where symbolic)."""
    header = onnx.load(str(path), load_external_data=False)

    def tensor(value):
        kind = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in kind.shape.dim]
        return _Tensor(name=value.name, dtype=f"DataType.{_TRT_TYPES[kind.elem_type]}", shape=dims)

    nodes = [n.op_type for n in header.graph.node if n.domain == contract.OP_DOMAIN]
    return [tensor(v) for v in header.graph.input], [tensor(v) for v in header.graph.output], nodes


def stand_in(path, edit=None):
    """A TensorRT module that parses `path` into its graph I/O and one plugin layer per plugin node, and records
    the optimization profiles' set_shape calls and the builder configs. `edit(inputs, outputs)` may change the
    parsed tensors first (a parser that reads them otherwise)."""
    configs = []
    trt = stand_in_tensorrt(True, 0, configs)
    inputs, outputs, nodes = _graph_tensors(path)
    if edit is not None:
        edit({t.name: t for t in inputs}, {t.name: t for t in outputs})
    network = trt.Builder(None).create_network(0)
    network.num_inputs, network.get_input = len(inputs), lambda i: inputs[i]
    network.num_outputs, network.get_output = len(outputs), lambda i: outputs[i]
    network.num_layers, network.get_layer = len(nodes), lambda i: _PluginLayer(nodes[i])
    trt.IPluginV3Layer = _PluginLayer
    trt.PluginCapabilityType = SimpleNamespace(CORE="core")
    shapes = []  # per profile created: {tensor: (min, opt, max)}

    def create_optimization_profile(self):
        shapes.append({})
        return SimpleNamespace(set_shape=lambda name, lo, opt, hi: shapes[-1].__setitem__(name, (lo, opt, hi)))

    trt.Builder.create_optimization_profile = create_optimization_profile
    trt.configs, trt.profile_shapes = configs, shapes
    return trt


def _build(path, tmp_path, monkeypatch, edit=None, **spec):
    trt = stand_in(path, edit)
    monkeypatch.setattr(build, "import_backend", lambda name: trt)
    library = tmp_path / "libmla_plugin.so"
    library.write_bytes(b"stand-in plugin library")
    engine = build_engine(BuildSpec(onnx=str(path), output=str(tmp_path / "m.engine"), plugin_lib=str(library),
                                    batch=BATCH, prefill_tokens=PREFILL, **spec))
    return trt, engine


def test_paged_build_gives_the_pools_and_block_table_their_profiles(paged, tmp_path, monkeypatch):
    c = load_preset("tiny")
    pages = (3, 10, 40)
    trt, engine = _build(paged, tmp_path, monkeypatch, pages=pages)
    assert len(trt.profile_shapes) == 2  # decode, prefill
    slots = -(-SMAX // PAGE)
    for given, tokens in zip(trt.profile_shapes, ((1, 1, 1), PREFILL)):
        assert given[contract.BLOCK_TABLE] == tuple((b, slots) for b in BATCH)
        assert given[contract.HIDDEN_STATES_IN] == tuple((b, t, c.hidden_size) for b, t in zip(BATCH, tokens))
        for i in range(c.num_hidden_layers):
            assert given[contract.past_pages_name(i)] == tuple((p, PAGE, c.kv_lora_rank + c.qk_rope_head_dim)
                                                               for p in pages)
        assert set(given) == set(ModelSpec(c, max_seq_len=SMAX, cache="paged", page_size=PAGE).graph_io_names()[0])
    sidecar = Sidecar.read(engine)
    assert [{k: tuple(map(tuple, v)) for k, v in p["shapes"].items()} for p in sidecar.profiles] == trt.profile_shapes
    # every cache plane aliased: the preview feature on, the sidecar says to bind present to past
    assert trt.configs[0].preview == {"aliased-plugin-io": True} and sidecar.cache_binding == "aliased"
    assert (sidecar.cache, sidecar.page_size, sidecar.kv_cache_dtype) == ("paged", PAGE, "model")
    assert sidecar.contract_version == contract.CACHE_CONTRACT_VERSION
    spec = spec_from_metadata(sidecar.onnx_metadata, "sidecar")
    assert (spec.cache, spec.page_size, spec.kv_cache_dtype) == (sidecar.cache, sidecar.page_size,
                                                                 sidecar.kv_cache_dtype)


def test_default_pages_hold_the_pools_validate_makes(paged, tmp_path, monkeypatch):
    """Without --pages-range the pool's MAX is the pool `run/paged.py` makes for the largest batch (every
    sequence at Smax, plus its spare pages), its OPT that of the OPT batch."""
    trt, _ = _build(paged, tmp_path, monkeypatch)
    slots = -(-SMAX // PAGE)
    low, opt, high = trt.profile_shapes[0][contract.past_pages_name(0)]
    assert (low[0], opt[0], high[0]) == (1, BATCH[1] * slots + SPARE_PAGES, BATCH[2] * slots + SPARE_PAGES)


def test_fp8_paged_moe_build_aliases_all_three_planes(paged_fp8_moe, tmp_path, monkeypatch):
    c = load_preset("tiny-moe")
    trt, engine = _build(paged_fp8_moe, tmp_path, monkeypatch, pages=(1, 8, 16))
    tiles = -(-c.kv_lora_rank // 128)
    for given in trt.profile_shapes:
        for i in range(c.num_hidden_layers):
            assert given[contract.past_pages_name(i)] == tuple((p, PAGE, c.kv_lora_rank) for p in (1, 8, 16))
            assert given[contract.past_scales_name(i)] == tuple((p, PAGE, tiles) for p in (1, 8, 16))
            assert given[contract.past_rope_name(i)] == tuple((p, PAGE, c.qk_rope_head_dim) for p in (1, 8, 16))
    sidecar = Sidecar.read(engine)
    assert sidecar.cache_binding == "aliased" and trt.configs[0].preview == {"aliased-plugin-io": True}
    assert (sidecar.cache, sidecar.page_size, sidecar.kv_cache_dtype) == ("paged", PAGE, "fp8")
    io = {t["name"]: t for t in sidecar.io}
    for i in range(c.num_hidden_layers):  # the codes are FP8 network I/O, as the ONNX file declares them
        assert io[contract.past_pages_name(i)]["dtype"] == io[contract.present_pages_name(i)]["dtype"] == "FP8"
        assert io[contract.past_scales_name(i)]["dtype"] == "FLOAT"
    # the plugin's getAliasedInput map the lead's C++ implements: present_cache/scale/rope -> inputs 4, 8, 9
    assert PLUGIN_ALIASES == {1: 4, 2: 8, 3: 9}
    assert [contract.OP_FP8_CACHE_OUTPUTS[o] for o in PLUGIN_ALIASES] == ["present_cache", "present_scale",
                                                                          "present_rope"]
    assert [contract.OP_FP8_CACHE_INPUTS[i] for i in PLUGIN_ALIASES.values()] == ["past_cache", "past_scale",
                                                                                  "past_rope"]


def test_contiguous_fp8_planes_follow_the_batch_and_refuse_a_pages_range(contiguous_fp8, tmp_path, monkeypatch):
    c = load_preset("tiny")
    trt, engine = _build(contiguous_fp8, tmp_path, monkeypatch)
    given = trt.profile_shapes[1]
    assert contract.BLOCK_TABLE not in given
    assert given[contract.past_cache_name(0)] == tuple((b, SMAX, c.kv_lora_rank) for b in BATCH)
    assert given[contract.past_rope_name(1)] == tuple((b, SMAX, c.qk_rope_head_dim) for b in BATCH)
    sidecar = Sidecar.read(engine)
    assert (sidecar.cache, sidecar.page_size, sidecar.kv_cache_dtype) == ("contiguous", 0, "fp8")
    with pytest.raises(UserError, match="--pages-range sizes the page pools of a --cache paged export"):
        _build(contiguous_fp8, tmp_path, monkeypatch, pages=(1, 2, 3))


def _set(name, **fields):
    def edit(inputs, outputs):
        for key, value in fields.items():
            setattr({**inputs, **outputs}[name], key, value)
    return edit


@pytest.mark.parametrize("edit, message", [
    (_set(contract.past_pages_name(1), shape=[-1, 2 * PAGE, 40]),
     r"TensorRT parsed cache input past_latent_pages.1 as \[-1, 32, 40\], its metadata gives \['1..8', 16, 40\]"),
    (_set(contract.BLOCK_TABLE, shape=[-1, 2]), r"cache input block_table as \[-1, 2\]"),
    (_set(contract.present_pages_name(0), dtype="DataType.FLOAT"),
     r"parsed present_latent_pages.0 as DataType.FLOAT \[-1, 16, 40\] but past_latent_pages.0 as DataType.HALF"),
])
def test_a_bad_pool_shape_gives_one_message(paged, tmp_path, monkeypatch, edit, message):
    with pytest.raises(UserError, match=message):
        _build(paged, tmp_path, monkeypatch, edit=edit, pages=(1, 4, 8))
    assert not (tmp_path / "m.engine").exists()


def test_an_export_with_an_edited_pool_is_refused_before_tensorrt(paged, tmp_path):
    model = onnx.load(str(paged), load_external_data=False)
    pool = next(v for v in model.graph.input if v.name == contract.past_pages_name(0))
    pool.type.tensor_type.shape.dim[1].dim_value = 2 * PAGE
    edited = tmp_path / "edited.onnx"
    onnx.save(model, str(edited))
    result = CliRunner().invoke(main, ["build", "--onnx", str(edited), "-o", str(tmp_path / "x.engine")])
    assert result.exit_code == 1
    assert "past_latent_pages.0" in result.output and "its metadata says" in result.output, result.output
    assert not (tmp_path / "x.engine").exists()


def test_a_pool_past_tensorrts_volume_limit_names_the_max_that_fits(paged, tmp_path, monkeypatch):
    c = load_preset("tiny")
    per_page = PAGE * (c.kv_lora_rank + c.qk_rope_head_dim)
    with pytest.raises(UserError, match=r"--pages-range 1:2:\d+: pool past_latent_pages.0 .* exceeds TensorRT's "
                                        r"2\^40 values; MAX (\d+) fits") as caught:
        _build(paged, tmp_path, monkeypatch, pages=(1, 2, 1 << 34))
    fits = int(caught.value.args[0].rsplit("MAX ", 1)[1].split()[0])
    assert fits * per_page <= 1 << 40 < (fits + 1) * per_page


def test_cli_build_says_the_cache_layout(paged_fp8_moe, tmp_path, monkeypatch):
    trt = stand_in(paged_fp8_moe)
    monkeypatch.setattr(build, "import_backend", lambda name: trt)
    library = tmp_path / "libmla_plugin.so"
    library.write_bytes(b"stand-in plugin library")
    result = CliRunner().invoke(main, ["build", "--onnx", str(paged_fp8_moe), "-o", str(tmp_path / "m.engine"),
                                       "--plugin-lib", str(library), "--batch-range", "1:2:4", "--prefill-range",
                                       "2:8:32", "--pages-range", "1:8:16", "-q"])
    assert result.exit_code == 0, result.output
    assert "cache binding aliased, paged cache of 16-row pages (fp8)" in result.output
    assert trt.profile_shapes[0][contract.past_rope_name(0)][2][0] == 16


def test_readers_of_a_contract_2_engine(paged, tmp_path, monkeypatch):
    """The sidecar of a paged engine reads back, is compatible with this mla-export, and the Python engine runner
    takes it (no contract refusal: here it stops only for want of a GPU); a sidecar whose cache fields disagree
    with its export's metadata is not a sidecar."""
    from mla_export.run.trt_runner import TensorRTRunner

    _, engine = _build(paged, tmp_path, monkeypatch, pages=(1, 4, 8))
    sidecar = Sidecar.read(engine)
    check_compatible(sidecar, RuntimeEnvironment("tensorrt", "10.99.0", None, None, sidecar.plugin_sha256))
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="running a TensorRT engine needs an NVIDIA GPU"):
            TensorRTRunner(engine)
        result = CliRunner().invoke(main, ["validate", "--engine", str(engine)])
        assert result.exit_code == 1 and "needs an NVIDIA GPU" in result.output, result.output
        assert "contract" not in result.output
    data = json.loads((tmp_path / "m.engine.json").read_text())
    for bad, why in (({"page_size": 32}, "are not the export's"), ({"page_size": 0}, "a paged cache has a power"),
                     ({"cache": "contiguous"}, "a paged cache has|are not the export's"),
                     ({"kv_cache_dtype": "fp4"}, "knows model, fp8")):
        with pytest.raises(ValueError, match=why):
            check_shape({**data, **bad})
    older = {k: v for k, v in data.items() if k not in ("cache", "page_size", "kv_cache_dtype")}
    older["onnx_metadata"] = {k: v for k, v in older["onnx_metadata"].items()
                              if k not in (contract.META_CACHE, contract.META_PAGE_SIZE, contract.META_KV_CACHE_DTYPE)}
    assert (check_shape(older)["cache"], check_shape(older)["page_size"]) == ("contiguous", 0)  # before contract 2


def test_rtx_builds_a_paged_export_decomposed(paged, tmp_path):
    """A real builder (TensorRT-RTX, on the CPU) takes the pools' dynamic num_pages and the block table's fixed
    max_pages from the profiles build gives it; the engine's I/O is the export's, and no plugin means no alias."""
    from test_build import rtx

    rtx()
    engine = tmp_path / "paged.engine"
    result = CliRunner().invoke(main, ["build", "--onnx", str(paged), "-o", str(engine), "--backend", "tensorrt-rtx",
                                       "--attention", "decomposed", "--batch-range", "1:2:4", "--prefill-range",
                                       "2:8:32", "--pages-range", "1:8:19", "-q"])
    assert result.exit_code == 0, result.output
    assert "cache binding copy, paged cache of 16-row pages" in result.output
    c, sidecar = load_preset("tiny"), Sidecar.read(engine)
    io = {t["name"]: t for t in sidecar.io}
    table = io[contract.BLOCK_TABLE]
    assert table["shape"] == [-1, -(-SMAX // PAGE)] and table["dtype"] == "INT32"
    for i in range(c.num_hidden_layers):
        for name in (contract.past_pages_name(i), contract.present_pages_name(i)):
            assert io[name]["shape"] == [-1, PAGE, c.kv_lora_rank + c.qk_rope_head_dim]
            assert io[name]["dtype"] == "HALF"
    assert (sidecar.cache, sidecar.page_size, sidecar.cache_binding) == ("paged", PAGE, "copy")
    assert sidecar.profiles[1]["shapes"][contract.past_pages_name(0)][2][0] == 19


@pytest.mark.parametrize("options, first", [(["--attention", "decomposed"], "--attention decomposed"),
                                            (["--backend", "tensorrt-rtx"], "--backend tensorrt-rtx")])
def test_an_fp8_cache_builds_only_into_the_plugin(paged_fp8_moe, contiguous_fp8, tmp_path, options, first):
    """TensorRT refuses an FP8 network input that feeds anything but a plugin or a dequantize-like layer (seen with
    TensorRT-RTX 1.7: `Tensor past_latent_pages.0 has datatype FP8 but is not consumed by IPluginLayer, ...`), and
    the reference function casts the codes: refused before any TensorRT work, with the way out."""
    for path in (paged_fp8_moe, contiguous_fp8):
        result = CliRunner().invoke(main, ["build", "--onnx", str(path), "-o", str(tmp_path / "x.engine"), *options])
        assert result.exit_code == 1, result.output
        assert f"{first}: {path} has an FP8 cache" in result.output, result.output
        assert "build with --attention plugin --backend tensorrt, or re-export with --kv-cache-dtype model" in \
            " ".join(result.output.split())
        assert not (tmp_path / "x.engine").exists()


@pytest.mark.parametrize("cache, kv", [("contiguous", "model"), ("paged", "model"), ("paged", "fp8"),
                                       ("contiguous", "fp8")])
def test_every_present_plane_aliases_its_past_plane(cache, kv):
    from mla_export.trt.aliasing import alias_pairs

    inputs, outputs = contract.graph_io_names(3, "tokens", cache, kv)
    pairs = alias_pairs(3, "tokens", cache, kv)
    assert list(pairs) == outputs[1:]  # every cache output, nothing else
    assert all(past == present.replace("present_", "past_") and past in inputs for present, past in pairs.items())
    assert len(pairs) == 3 * (3 if kv == "fp8" else 1)
