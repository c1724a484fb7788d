"""The MlaAttention TensorRT plugin (plugins/): its CPU tests, the shipped library, its README, and the
ONNX parser contract checked with TensorRT-RTX's real parser.

The C++ tests (plugins/tests, run by ctest) cover the creator, shapes/types/workspace, and the launch path
on a recording fake CUDA driver. Here: build them (the session's `plugin_build`, conftest.py), run them, and
check with TensorRT-RTX (which builds on a CPU-only machine) that its ONNX parser creates our plugin from an
exported model with our attribute values. RTX aborts the process right after creating a plugin, so the parser
runs in a subprocess and its log is read (plugin_helpers.parse_with_rtx). DeepseekMoE: test_moe_plugin.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mla_export.common import contract

from plugin_helpers import CACHE_PLAN_CASES, LIBRARY, PLAN_CASES, ROOT, markdown_table, parse_with_rtx, rtx_missing

PLUGIN_DIR = ROOT / "plugins" / "mlaAttentionPlugin"
CREATED = "Successfully created plugin: MlaAttention"
PARSED_VALUES = re.compile(r"MlaAttention: num_heads=(\d+) kv_lora_rank=(\d+) qk_rope_head_dim=(\d+) "
                           r"softmax_scale=(\S+) page_size=\d+ kv_cache_dtype=\d+ \(build phase")

def test_cpp_tests_pass(plugin_build):
    result = subprocess.run(["ctest", "--test-dir", plugin_build, "-V"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr
    summaries = dict(re.findall(r"(test_(?:mla|moe|fp8)_\w+): (\d+) passed, 0 failed", result.stdout))
    assert set(summaries) == {"test_mla_creator", "test_mla_shapes", "test_mla_launch", "test_mla_images",
                              "test_mla_cache_shapes", "test_mla_cache_launch",
                              "test_mla_entry", "test_moe_creator", "test_moe_shapes", "test_moe_launch",
                              "test_fp8_launch", "test_fp8_creator", "test_fp8_shapes", "test_fp8_plugin_launch"}, \
        result.stdout[-4000:]
    assert int(summaries["test_mla_shapes"]) > 1000  # the format matrix alone is 1458 checks
    assert int(summaries["test_mla_launch"]) > 1000


def test_launches_match_python_plan(plugin_build):
    """enqueue launches exactly what the Python API plans for the same tensors (kernel, grid, block, shared
    memory, argument values), in both cache modes."""
    result = subprocess.run([plugin_build / "tests" / "test_mla_launch", plugin_build / "launch_plan.txt"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-8000:]
    assert f"compared {len(PLAN_CASES)} planned calls" in result.stdout


def test_cache_launches_match_python_plan(plugin_build):
    """Contract version 2: enqueue of a paged pool in T, of paged and contiguous FP8 caches launches exactly what
    the Python API plans (the cache kernels of the kv cache dtype, the block table, scale and rope planes, the
    pool's sizes), every present plane in place or copied first."""
    result = subprocess.run([plugin_build / "tests" / "test_mla_cache_launch", plugin_build / "cache_launch_plan.txt"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-8000:]
    assert f"compared {len(CACHE_PLAN_CASES)} planned cache calls" in result.stdout
    assert ", 0 failed" in result.stdout


def test_image_choice_matches_python_mirror(plugin_build, aot_kernels):
    """The generated C++ picks, per GPU arch, the image that aot.image_choice (Python) names."""
    import json

    from mla_export.kernels.aot import image_choice

    manifest = json.loads((aot_kernels / "manifest.json").read_text())
    result = subprocess.run([plugin_build / "tests" / "test_mla_images"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:]
    choices = [line.split()[1:] for line in result.stdout.splitlines() if line.startswith("choice ")]
    assert len(choices) >= 10
    for device, arch, kind in choices:
        want = image_choice(int(device), tuple(manifest["archs"]), tuple(manifest["ptx_archs"]))
        got = None if arch == "none" else (int(arch), kind == "ptx")
        assert got == want, f"sm_{device}: C++ picks {got}, Python {want}"


def test_library_exports_only_the_entry_points(plugin_library):
    if shutil.which("nm") is None or shutil.which("readelf") is None:
        pytest.skip("binutils (nm, readelf) missing")
    symbols = subprocess.run(["nm", "-D", "--defined-only", plugin_library], capture_output=True, text=True).stdout
    assert {line.split()[-1] for line in symbols.splitlines() if line.strip()} == {"getCreators", "setLoggerFinder"}
    needed = subprocess.run(["readelf", "-d", plugin_library], capture_output=True, text=True).stdout
    assert "libcuda" not in needed and "libnvinfer" not in needed  # both found at run time


def test_readme_tables_match_contract():
    from mla_export.graph.onnx_node import op_schema

    readme = (PLUGIN_DIR / "README.md").read_text()
    schema = op_schema()
    types = {"T": "T", "int32": "tensor(int32)", "float32": "tensor(float)"}
    inputs = markdown_table(readme, "Inputs")
    assert [(int(r[0]), r[1]) for r in inputs] == list(enumerate(contract.OP_INPUTS))
    assert [types[r[3]] for r in inputs] == [p.type_str for p in schema.inputs]
    outputs = markdown_table(readme, "Outputs")
    assert [(int(r[0]), r[1]) for r in outputs] == list(enumerate(contract.OP_OUTPUTS))
    assert [types[r[3]] for r in outputs] == [p.type_str for p in schema.outputs]
    attributes = markdown_table(readme, "Attributes")
    assert {r[0]: r[1] for r in attributes} == contract.OP_ATTRIBUTES
    for row in attributes:
        assert row[2].startswith("kINT32" if row[1] == "INT" else "kFLOAT32")
    identity = dict(line.replace("`", "").strip("|").split("|")[:2] for line in readme.splitlines()
                    if line.startswith("| plugin "))
    assert {k.strip(): v.strip() for k, v in identity.items()} == {
        "plugin name": contract.PLUGIN_NAME, "plugin namespace": contract.PLUGIN_NAMESPACE,
        "plugin version": contract.PLUGIN_VERSION}


def test_readme_cache_tables_match_contract():
    """The README's contract-2 tables: the appended inputs and outputs and their types as the node's schema has
    them, and the cache attributes."""
    from mla_export.graph.onnx_cache import cache_op_schema

    readme = (PLUGIN_DIR / "README.md").read_text()
    schema = cache_op_schema(fp8=True)
    types = {"T": "T", "int32": "tensor(int32)", "float32": "tensor(float)", "T or fp8": None}
    inputs = markdown_table(readme, "Cache inputs")
    assert [(int(r[0]), r[1]) for r in inputs] == [(i, contract.OP_FP8_CACHE_INPUTS[i]) for i in (4, 7, 8, 9)]
    for row in inputs:
        want = types[row[3]]
        assert want is None or want == schema.inputs[int(row[0])].type_str, row
    outputs = markdown_table(readme, "Cache outputs")
    assert [(int(r[0]), r[1]) for r in outputs] == [(i, contract.OP_FP8_CACHE_OUTPUTS[i]) for i in (1, 2, 3)]
    attributes = markdown_table(readme, "Cache attributes")
    assert {r[0]: r[1] for r in attributes} == contract.OP_CACHE_ATTRIBUTES


def test_exported_caches_meet_the_aliasing_conditions(tmp_path):
    """What TensorRT asks of an aliased plugin input (NvInferRuntime.h, getAliasedInput): an input aliased by one
    plugin output only, and not by two plugins (their copies could diverge). In an exported model each
    past_latent_cache.i feeds exactly one node, input 4 of its layer's MlaAttention, whose output 1 (the declared
    alias) is present_latent_cache.i itself, a graph output: the pair the application binds to one buffer."""
    import onnx

    from mla_export.model.hf_config import load_preset
    from mla_export.common.contract import graph_io_names
    from mla_export.graph.export import export_onnx
    from mla_export.model.spec import ModelSpec

    model = onnx.load(str(export_onnx(ModelSpec(load_preset("tiny"), dtype="float16", max_seq_len=64),
                                      tmp_path / "tiny.onnx")))
    layers = load_preset("tiny").num_hidden_layers
    assert [o.name for o in model.graph.output] == graph_io_names(layers, "hidden")[1]
    for layer in range(layers):
        past, present = contract.past_cache_name(layer), contract.present_cache_name(layer)
        consumers = [(n, list(n.input).index(past)) for n in model.graph.node if past in n.input]
        assert len(consumers) == 1, f"{past} feeds {len(consumers)} nodes"
        node, index = consumers[0]
        assert (node.op_type, node.domain) == (contract.OP_TYPE, contract.OP_DOMAIN)
        assert contract.OP_INPUTS[index] == "past_cache"  # input 4, which output 1 aliases
        assert contract.OP_OUTPUTS[list(node.output).index(present)] == "present_cache"
        assert sum(present in n.input for n in model.graph.node) == 0  # nothing else reads the aliased output


def _handmade_onnx(path: Path, heads: int, rank: int, rope: int, scale: float, smax: int = 64) -> Path:
    """A one-node model in the exported node's form (domain mla, lookup attributes), float16."""
    import onnx
    from onnx import TensorProto, helper

    t = TensorProto.FLOAT16
    shapes = {"q_latent": (t, ["B", "S", heads, rank]), "q_pe": (t, ["B", "S", heads, rope]),
              "kv_latent": (t, ["B", "S", rank]), "k_pe": (t, ["B", "S", rope]),
              "past_cache": (t, ["B", smax, rank + rope]), "cache_seqlens": (TensorProto.INT32, ["B"]),
              "rope_cos_sin": (TensorProto.FLOAT, [smax, rope]),
              "attn_latent": (t, ["B", "S", heads, rank]), "present_cache": (t, ["B", smax, rank + rope])}
    inputs = [helper.make_tensor_value_info(n, *shapes[n]) for n in contract.OP_INPUTS]
    outputs = [helper.make_tensor_value_info(n, *shapes[n]) for n in contract.OP_OUTPUTS]
    node = helper.make_node(contract.OP_TYPE, list(contract.OP_INPUTS), list(contract.OP_OUTPUTS),
                            domain=contract.OP_DOMAIN, num_heads=heads, kv_lora_rank=rank, qk_rope_head_dim=rope,
                            softmax_scale=scale, **contract.PLUGIN_LOOKUP_ATTRIBUTES)
    model = helper.make_model(helper.make_graph([node], "mla_attention", inputs, outputs),
                              opset_imports=[helper.make_opsetid("", 18),
                                             helper.make_opsetid(contract.OP_DOMAIN, contract.OP_DOMAIN_VERSION)])
    model.ir_version = 10
    onnx.save(model, str(path))
    return path


def _attributes_of_nodes(model_path: Path) -> list[tuple]:
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    found = []
    for node in model.graph.node:
        if node.op_type == contract.OP_TYPE and node.domain == contract.OP_DOMAIN:
            a = {x.name: onnx.helper.get_attribute_value(x) for x in node.attribute}
            found.append((a["num_heads"], a["kv_lora_rank"], a["qk_rope_head_dim"], a["softmax_scale"]))
    return found


def _check_created_with(log: str, expected: tuple):
    assert "library loaded: True" in log and "creator found: True" in log, log[-3000:]
    assert CREATED in log, log[-3000:]
    parsed = PARSED_VALUES.findall(log)
    assert parsed, log[-3000:]
    heads, rank, rope, scale = parsed[0]
    assert (int(heads), int(rank), int(rope)) == tuple(expected[:3])
    assert float(scale) == pytest.approx(expected[3], rel=1e-7)
    # The fields arrive as the parser sends them: INT -> kINT32, FLOAT -> kFLOAT32.
    assert "field num_heads arrived as kINT32, length 1" in log
    assert "field softmax_scale arrived as kFLOAT32, length 1" in log


@pytest.mark.slow
def test_parser_creates_plugin_from_exported_model(plugin_library, tmp_path):
    """`mla-export export --preset tiny`: RTX's parser creates MlaAttention with the node's attribute values."""
    if rtx_missing():
        pytest.skip(rtx_missing())
    from mla_export.model.hf_config import load_preset
    from mla_export.graph.export import export_onnx
    from mla_export.model.spec import ModelSpec

    model = export_onnx(ModelSpec(load_preset("tiny"), max_seq_len=128), tmp_path / "tiny.onnx")
    nodes = _attributes_of_nodes(model)
    assert nodes, "the export has no MlaAttention node"
    _check_created_with(parse_with_rtx(plugin_library, model), nodes[0])


@pytest.mark.slow
@pytest.mark.parametrize("preset,layout", [("tiny", dict(cache="paged", page_size=16)),
                                           ("tiny-moe", dict(cache="paged", kv_cache_dtype="fp8")),
                                           ("tiny", dict(kv_cache_dtype="fp8"))])
def test_parser_creates_plugin_from_contract_2_export(plugin_library, tmp_path, preset, layout):
    """A paged (and FP8) cache export: RTX's parser creates MlaAttention with the node's page_size and
    kv_cache_dtype (contract version 2), the FP8 planes' graph inputs included."""
    import onnx

    from mla_export.graph.export import export_onnx
    from mla_export.model.hf_config import load_preset
    from mla_export.model.spec import ModelSpec

    model = export_onnx(ModelSpec(load_preset(preset), max_seq_len=128, **layout), tmp_path / "v2.onnx")
    node = next(n for n in onnx.load(str(model), load_external_data=False).graph.node
                if n.op_type == contract.OP_TYPE and n.domain == contract.OP_DOMAIN)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    log = parse_with_rtx(plugin_library, model)
    _check_created_with(log, _attributes_of_nodes(model)[0])
    assert f"page_size={attrs['page_size']} kv_cache_dtype={attrs['kv_cache_dtype']} (build phase" in log, log[-3000:]
    assert attrs["page_size"] == layout.get("page_size", contract.DEFAULT_PAGE_SIZE if "cache" in layout else 0)
    assert attrs["kv_cache_dtype"] == (contract.KV_CACHE_DTYPE_FP8 if "kv_cache_dtype" in layout
                                       else contract.KV_CACHE_DTYPE_MODEL)
    assert "field page_size arrived as kINT32, length 1" in log


def test_parser_passes_attribute_values(plugin_library, tmp_path):
    """Distinct values in a one-node model reach the creator unchanged."""
    expected = (2, 16, 4, 0.4375)
    model = _handmade_onnx(tmp_path / "one.onnx", *expected)
    _check_created_with(parse_with_rtx(plugin_library, model), expected)


def test_parser_reports_invalid_attribute(plugin_library, tmp_path):
    model = _handmade_onnx(tmp_path / "bad.onnx", heads=2, rank=16, rope=7, scale=0.5)
    log = parse_with_rtx(plugin_library, model)
    assert CREATED not in log
    assert "attribute qk_rope_head_dim = 7: expected a positive even integer" in log, log[-3000:]
    assert "parsed: False" in log


def _write_raw(tensor, path: Path):
    import torch

    t = tensor.contiguous().cpu()
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.view(torch.int16)
    t.numpy().tofile(path)


def _read_raw(path: Path, dtype, shape):
    import numpy as np
    import torch

    raw = np.fromfile(path, dtype=np.int16 if dtype in (torch.float16, torch.bfloat16, torch.int16) else np.float32)
    return torch.from_numpy(raw).view(dtype).reshape(shape)


def _run_gpu_enqueue(plugin_build: Path, directory: Path, mode: str, copies: int) -> None:
    """test_mla_gpu_enqueue on `directory`'s inputs in `mode`: its captured step holds at least two kernels and
    exactly `copies` memcpy nodes (skips where the program finds no GPU)."""
    program = plugin_build / "tests" / "test_mla_gpu_enqueue"
    run = subprocess.run([program, plugin_build / "mlaAttentionPlugin" / LIBRARY, directory, mode],
                         capture_output=True, text=True, timeout=300)
    if run.returncode == 77:
        pytest.skip(run.stdout)
    assert run.returncode == 0, run.stdout + run.stderr
    nodes = re.search(r"graph: (\d+) kernel, (\d+) memcpy, (\d+) memset", run.stdout)
    assert nodes and int(nodes[1]) >= 2 and int(nodes[2]) == copies, run.stdout


@pytest.mark.gpu
@pytest.mark.parametrize("dtype_name", ["bfloat16", "float16"])
@pytest.mark.parametrize("new_tokens", [1, 5])
def test_enqueue_matches_reference_on_gpu(plugin_build, tmp_path, dtype_name, new_tokens):
    """enqueue through a plugin object (created by the shipped library's creator) on device buffers equals the
    float64 reference, with present bound to past's buffer as TensorRT binds the declared alias ("aliased") and to
    a separate one ("copy"). The step is captured into a CUDA graph: aliased, it holds no copy (copy: exactly
    one, past -> present); either way every cache row outside the new ones is bit-identical to the input."""
    import torch

    from mla_export.run.compare import compare, tolerance_for
    from mla_export.model.ops import mla_attention_reference

    dtype = getattr(torch, dtype_name)
    b, s, h, dc, dr, smax, scale = 3, new_tokens, 16, 512, 64, 256, 0.0721687824
    g = torch.Generator().manual_seed(0)
    seqlens = torch.tensor([0, 17, smax - s], dtype=torch.int32)  # empty, partial, full after the call
    inputs = {
        "q_latent": torch.randn(b, s, h, dc, generator=g).to(dtype),
        "q_pe": torch.randn(b, s, h, dr, generator=g).to(dtype),
        "kv_latent": torch.randn(b, s, dc, generator=g).to(dtype),
        "k_pe": torch.randn(b, s, dr, generator=g).to(dtype),
        "past_cache": torch.randn(b, smax, dc + dr, generator=g).to(dtype),
        "cache_seqlens": seqlens,
    }
    for i in range(b):  # unused rows hold NaN: reading one fails loudly
        inputs["past_cache"][i, int(seqlens[i]):] = float("nan")
    positions = torch.arange(smax, dtype=torch.float64)[:, None]
    theta = 10000.0 ** (-torch.arange(0, dr, 2, dtype=torch.float64) / dr)
    inputs["rope_cos_sin"] = torch.cat([torch.cos(positions * theta), torch.sin(positions * theta)], -1).float()
    for name, tensor in inputs.items():
        _write_raw(tensor, tmp_path / f"{name}.bin")
    (tmp_path / "meta.txt").write_text(f"{b} {s} {h} {dc} {dr} {smax} {1 if dtype == torch.float16 else 2} {scale}")
    expected_attn, expected_cache = mla_attention_reference(
        *(inputs[n].double() if inputs[n].is_floating_point() else inputs[n] for n in contract.OP_INPUTS),
        softmax_scale=scale)
    atol, rtol = tolerance_for(dtype_name)
    untouched = torch.ones(b, smax, dtype=torch.bool)  # rows the step must leave as they were
    for i in range(b):
        untouched[i, int(seqlens[i]):int(seqlens[i]) + s] = False
    past_bits = _read_raw(tmp_path / "past_cache.bin", torch.int16, (b, smax, dc + dr))
    for mode, copies in (("aliased", 0), ("copy", 1)):
        _run_gpu_enqueue(plugin_build, tmp_path, mode, copies)
        attn = _read_raw(tmp_path / f"attn_latent.{mode}.bin", dtype, (b, s, h, dc))
        cache = _read_raw(tmp_path / f"present_cache.{mode}.bin", dtype, (b, smax, dc + dr))
        for result in (compare(f"attn_latent ({mode})", attn, expected_attn, atol, rtol),
                       compare(f"present_cache ({mode})", cache, expected_cache, atol, rtol,
                               expected_nonfinite=untouched[..., None])):  # unused rows: NaN on both sides
            assert result.passed, result.to_dict()
        cache_bits = _read_raw(tmp_path / f"present_cache.{mode}.bin", torch.int16, (b, smax, dc + dr))
        # Exact (as bits): rows outside the new ones, which the plugin must not touch.
        assert torch.equal(cache_bits[untouched], past_bits[untouched]), f"{mode}: rows outside the new ones changed"


def _write_plane(tensor, path: Path):
    """A plane as raw bytes: float8 codes as uint8, 16-bit floats as int16, the rest as they are."""
    import torch

    t = tensor.contiguous().cpu()
    if t.dtype == torch.float8_e4m3fn:
        t = t.view(torch.uint8)
    _write_raw(t, path)


@pytest.mark.gpu
@pytest.mark.parametrize("page,fp8", [(64, False), (16, False), (64, True), (16, True), (0, True)])
def test_cache_enqueue_matches_reference_on_gpu(plugin_build, tmp_path, page, fp8):
    """Contract version 2 on the GPU through the shipped library: a paged pool in bfloat16 (64- and 16-row pages,
    shuffled block table, pages of sequences interleaved, unused slots holding a page id no kernel may read), the
    FP8 cache paged and contiguous. attn_latent equals the float64 reference over the same rows (FP8: the new
    c_kv rows quantized as stored); aliased, the captured step holds no copy (copy mode: one per present plane);
    every pool row outside the new ones is bit-identical to the input, and the new FP8 rows' codes and scales are
    the contract's rule applied to kv_latent, bit for bit (a rounding rule on exact inputs: every implementation
    stores the same bytes)."""
    import numpy as np
    import torch

    from mla_export.model.ops import mla_attention_reference
    from mla_export.run.compare import compare, tolerance_for
    from paged_reference import Pool, dequantize_rows, gather, int_view, new_row_places, quantize_rows, shuffled_table

    dtype, b, s, h, dc, dr, scale = torch.bfloat16, 3, 2, 16, 512, 64, 0.0721687824
    lens = [0, 17, 90]  # empty, partial, several pages
    g = torch.Generator().manual_seed(0)
    if page:
        max_pages = -(-(max(lens) + s) // page) + 1
        table, num_pages = shuffled_table(lens, s, page, max_pages, spare=3, generator=g)
        rows = page
    else:  # contiguous FP8: page b is sequence b, the identity table is not read
        max_pages, num_pages, rows = 1, b, 128
        table = torch.arange(b, dtype=torch.int32)[:, None]
    pool = Pool(num_pages, rows, dc, dr, dtype, fp8)
    history = torch.randn(b, max(lens), dc + dr, generator=g)
    for bi, n in enumerate(lens):
        for j in range(-(-n // rows)):
            pool.write(int(table[bi, j]), history[bi, j * rows:min(n, (j + 1) * rows)])
    smax = max_pages * rows
    positions = torch.arange(smax, dtype=torch.float64)[:, None]
    theta = 10000.0 ** (-torch.arange(0, dr, 2, dtype=torch.float64) / dr)
    inputs = {"q_latent": torch.randn(b, s, h, dc, generator=g).to(dtype),
              "q_pe": torch.randn(b, s, h, dr, generator=g).to(dtype),
              "kv_latent": torch.randn(b, s, dc, generator=g).to(dtype),
              "k_pe": torch.randn(b, s, dr, generator=g).to(dtype),
              "past_cache": pool.planes[0], "cache_seqlens": torch.tensor(lens, dtype=torch.int32),
              "rope_cos_sin": torch.cat([torch.cos(positions * theta), torch.sin(positions * theta)], -1).float(),
              "block_table": table}
    if fp8:
        inputs.update(past_scale=pool.planes[1], past_rope=pool.planes[2])
    for name, tensor in inputs.items():
        _write_plane(tensor, tmp_path / f"{name}.bin")
    (tmp_path / "meta.txt").write_text(f"{b} {s} {h} {dc} {dr} {smax} 2 {scale} {page} {int(fp8)} {num_pages} {rows} "
                                       f"{max_pages} {smax}")
    # The reference: the pool read back contiguous (float64), the new c_kv rows as the cache stores them.
    kv = inputs["kv_latent"].double()
    if fp8:
        codes, scales = quantize_rows(inputs["kv_latent"])
        kv = dequantize_rows(codes, scales)
    expected_attn, expected_view = mla_attention_reference(
        inputs["q_latent"].double(), inputs["q_pe"].double(), kv, inputs["k_pe"].double(),
        gather(pool, table, lens, s), inputs["cache_seqlens"], inputs["rope_cos_sin"].double(), softmax_scale=scale)
    places = new_row_places(table, lens, s, rows)
    new = torch.zeros(num_pages, rows, dtype=torch.bool)
    for _, _, page_id, row in places:
        new[page_id, row] = True
    atol, rtol = tolerance_for("bfloat16")
    planes = contract.OP_FP8_CACHE_OUTPUTS[1:4] if fp8 else contract.OP_OUTPUTS[1:2]
    pasts = pool.planes
    for mode, copies in (("aliased", 0), ("copy", len(planes))):
        _run_gpu_enqueue(plugin_build, tmp_path, mode, copies)
        attn = _read_raw(tmp_path / f"attn_latent.{mode}.bin", dtype, (b, s, h, dc))
        result = compare(f"attn_latent ({mode})", attn, expected_attn, atol, rtol)
        assert result.passed, result.to_dict()
        got = []
        for name, past in zip(planes, pasts):
            raw = np.fromfile(tmp_path / f"{name}.{mode}.bin", dtype={1: np.uint8, 2: np.int16, 4: np.int32}[
                past.element_size()])
            got.append(torch.from_numpy(raw).reshape(past.shape))
            # Exact (as bits): every row outside the new ones, which the plugin must not touch.
            assert torch.equal(got[-1][~new], int_view(past)[~new]), f"{mode}: {name} changed outside the new rows"
        for bi, i, page_id, row in places:
            if fp8:
                assert torch.equal(got[0][page_id, row], int_view(codes)[bi, i]), (mode, bi, i)
                assert torch.equal(got[1][page_id, row], int_view(scales)[bi, i]), (mode, bi, i)
                stored_rope = got[2][page_id, row].view(dtype).double()
            else:
                stored_rope = got[0][page_id, row].view(dtype).double()[dc:]
                stored = got[0][page_id, row].view(dtype).double()[:dc]
                assert torch.allclose(stored, kv[bi, i], atol=0, rtol=0), (mode, bi, i)  # kv_latent as given
            want = expected_view[bi, lens[bi] + i, dc:]
            assert torch.allclose(stored_rope, want, atol=atol, rtol=rtol), (mode, bi, i)
