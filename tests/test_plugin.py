"""The MlaAttention TensorRT plugin (plugins/): its CPU tests, the shipped library, its README, and the
ONNX parser contract checked with TensorRT-RTX's real parser.

The C++ tests (plugins/tests, run by ctest) cover the creator, shapes/types/workspace, and the launch path
on a recording fake CUDA driver. Here: build them, run them, and check with TensorRT-RTX (which builds on a
CPU-only machine) that its ONNX parser creates our plugin from an exported model with our attribute values.
RTX aborts the process right after creating a plugin, so the parser runs in a subprocess and its log is read.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mla_export import contract

from helpers import CUDA_INCLUDE

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_DIR = ROOT / "plugins" / "mlaAttentionPlugin"
LIBRARY = "libmla_plugin.so"
CUDA_HEADER = CUDA_INCLUDE / "cuda.h"

# Runs in a subprocess: load the library into TensorRT-RTX's registry, parse the model, print what happens.
PARSE_SCRIPT = r"""
import sys
from mla_export.trt.backend import import_backend
trt = import_backend("tensorrt-rtx")

class Logger(trt.ILogger):
    def __init__(self):
        trt.ILogger.__init__(self)
    def log(self, severity, msg):
        print(f"[TRT {severity}] {msg}", flush=True)

logger = Logger()
builder = trt.Builder(logger)
registry = trt.get_plugin_registry()
handle = registry.load_library(sys.argv[1])
print("library loaded:", handle is not None, flush=True)
print("creator found:", registry.get_creator("MlaAttention", "1", "mla") is not None, flush=True)
network = builder.create_network(0)
parser = trt.OnnxParser(network, logger)
ok = parser.parse_from_file(sys.argv[2])
print("parsed:", ok, flush=True)
for i in range(parser.num_errors):
    print("parser error:", parser.get_error(i), flush=True)
plugins = sum(1 for i in range(network.num_layers) if network.get_layer(i).type == trt.LayerType.PLUGIN_V3)
print("plugin layers:", plugins, flush=True)
"""
CREATED = "Successfully created plugin: MlaAttention"
PARSED_VALUES = re.compile(r"MlaAttention: num_heads=(\d+) kv_lora_rank=(\d+) qk_rope_head_dim=(\d+) "
                           r"softmax_scale=(\S+) \(build phase")


def _rtx_missing() -> str | None:
    """Why TensorRT-RTX cannot be imported here, or None (the same look-up `mla-export build` uses)."""
    from mla_export.errors import UserError
    from mla_export.trt.backend import import_backend

    try:
        import_backend("tensorrt-rtx")
    except UserError as exc:
        return str(exc)
    return None


# Descriptor sets whose launches the C++ launch test compares with the Python API's plan:
# (B, S, H, Dc, Dr, Smax, dtype, SMs of the device).
PLAN_CASES = [(b, s, h, dc, dr, smax, dtype, sms)
              for dtype in ("float16", "bfloat16") for b in (1, 3, 8, 64) for s in (1, 2, 7)
              for h, dc, dr, smax in ((4, 32, 8, 64), (16, 512, 64, 2048), (128, 512, 64, 4096))
              for sms in (132, 78)]
PLAN_DTYPE_CODES = {"float32": 0, "float16": 1, "bfloat16": 2}


PLAN_ARCH = 90  # the fake driver's device (plugins/tests/fakeCuda.cpp)
PLAN_SOFTMAX_SCALE = "0.1"  # the plugin's softmax_scale in the launch test (kPlanSoftmaxScale)
# Kernel pointer arguments -> the op's tensors (the cache is written in place in present_cache).
PLAN_TENSOR_ARGS = {"q_lat_ptr": "q_latent", "q_pe_ptr": "q_pe", "kv_latent_ptr": "kv_latent", "k_pe_ptr": "k_pe",
                    "cache_ptr": "present", "seqlens_ptr": "cache_seqlens", "cos_sin_ptr": "rope_cos_sin",
                    "out_ptr": "attn_latent"}


def _planned_args(kind: str, p, case) -> list[str]:
    """Expected argument values of kernel `kind` under plan `p`, as testLaunch.cpp tokens."""
    from mla_export.kernels.plan import runtime_args

    args = runtime_args(kind)
    b, s, h, dc, dr, smax, dtype, sms = case
    split = p.num_splits > 1
    values = {"q_rot_ptr": f"p:ws+{p.q_rot_offset}", "o_part_ptr": f"p:ws+{p.o_part_offset}" if split else "p:*",
              "lse_part_ptr": f"p:ws+{p.lse_offset}" if split else "p:*", "S": f"i:{s}", "H": f"i:{h}",
              "Smax": f"i:{smax}", "num_splits": f"i:{p.num_splits}", "softmax_scale": f"f:{PLAN_SOFTMAX_SCALE}"}
    values.update({name: f"p:{tensor}" for name, tensor in PLAN_TENSOR_ARGS.items()})
    unknown = [name for name, _ in args if name not in values]
    assert not unknown, f"{kind}: kernel arguments {unknown} have no expected value here; update PLAN_TENSOR_ARGS"
    return [values[name] for name, _ in args] + ["p:null", "p:null"]  # Triton's global/profile scratch: none


def _manifest_kernels(kernels_dir: Path) -> list[dict]:
    """The AOT build's compiled kernels (its manifest.json)."""
    import json

    return json.loads((kernels_dir / "manifest.json").read_text())["kernels"]


def _planned_launches(case, compiled: list[dict]) -> list[tuple[str, tuple, tuple, str, list[str]]]:
    """(kernel name, grid, block, shared memory, argument values) of each launch the Python API plans for `case`.

    Grids and kernel choice come from `mla_export.kernels.plan` (the table the generated launchers share):
    RoPE + cache append, attention, then the split combine when there is more than one split. Name, block
    (num_warps * 32) and shared memory come from the AOT manifest for sm_90;
    argument values from the kernels' signatures (`plan.runtime_args`) and the plan's workspace offsets.
    """
    from mla_export.kernels import plan as kplan

    b, s, h, dc, dr, smax, dtype, sms = case
    p = kplan.make_plan(kplan.Dims(b, s, h, dc, dr, smax, dtype), sms)
    table = kplan.aot_kernel_table()
    launches = []
    for kind, grid, index in zip(kplan.KERNEL_KINDS, (p.rope_grid, p.attn_grid, p.combine_grid),
                                 kplan.kernel_indices(p, dtype)):
        if kind == "combine" and p.num_splits == 1:
            continue
        spec = table[index]
        found = [k for k in compiled if k["arch"] == PLAN_ARCH and not k["ptx"]
                 and (k["family_index"], k["dtype"], k["kind"], k["block_m"])
                 == (spec.family_index, spec.dtype, spec.kind, spec.block_m)]
        assert len(found) == 1, f"{kind} kernel {index}: {len(found)} sm_{PLAN_ARCH} images in the manifest"
        launches.append((found[0]["name"], tuple(grid), (32 * found[0]["num_warps"], 1, 1), str(found[0]["shared"]),
                         _planned_args(kind, p, case)))
    return launches


def _write_launch_plan(path: Path, kernels_dir: Path) -> int:
    """Write the planned launches of PLAN_CASES in the format plugins/tests/testLaunch.cpp reads; returns the
    number of cases written."""
    lines = []
    compiled = _manifest_kernels(kernels_dir)
    for case in PLAN_CASES:
        b, s, h, dc, dr, smax, dtype, sms = case
        lines.append(f"case {b} {s} {h} {dc} {dr} {smax} {PLAN_DTYPE_CODES[dtype]} {sms}")
        for name, grid, block, shared, args in _planned_launches(case, compiled):
            lines.append(" ".join(["launch", name, *map(str, grid), *map(str, block), shared, *args]))
    path.write_text("\n".join(lines) + "\n")
    return len(PLAN_CASES)


@pytest.fixture(scope="module")
def plugin_build(tmp_path_factory, aot_kernels) -> Path:
    """A fresh CMake build of plugins/ with the generated kernels, and the launch test's expectations: the
    launches the Python API plans for PLAN_CASES. $MLA_PLUGIN_BUILD names a build made elsewhere instead (the
    GPU bundle of `make gpu-bundle`: the shipped library and the GPU programs, in the build's layout)."""
    given = os.environ.get("MLA_PLUGIN_BUILD")
    if given:
        built = Path(given)
        assert (built / "mlaAttentionPlugin" / LIBRARY).is_file(), f"MLA_PLUGIN_BUILD={given} has no {LIBRARY}"
        return built
    if shutil.which("cmake") is None:
        pytest.skip("cmake is missing")
    if not CUDA_HEADER.exists():
        pytest.skip(f"the CUDA toolkit's cuda.h is missing ({CUDA_HEADER})")
    build = tmp_path_factory.mktemp("plugins")
    plan = build / "launch_plan.txt"
    _write_launch_plan(plan, aot_kernels)
    kernels = [f"-DMLA_KERNELS_DIR={aot_kernels}", f"-DMLA_LAUNCH_EXPECTATIONS={plan}"]
    configure = subprocess.run(["cmake", "-S", ROOT / "plugins", "-B", build, "-DCMAKE_BUILD_TYPE=Release",
                                f"-DPython3_EXECUTABLE={sys.executable}", *kernels],
                               capture_output=True, text=True)
    assert configure.returncode == 0, configure.stdout + configure.stderr
    compiled = subprocess.run(["cmake", "--build", build, "-j2"], capture_output=True, text=True)
    assert compiled.returncode == 0, compiled.stdout[-5000:] + compiled.stderr[-5000:]
    return build


@pytest.fixture(scope="module")
def plugin_library(plugin_build) -> Path:
    library = plugin_build / "mlaAttentionPlugin" / LIBRARY
    assert library.is_file()
    return library


def test_cpp_tests_pass(plugin_build):
    result = subprocess.run(["ctest", "--test-dir", plugin_build, "-V"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr
    summaries = dict(re.findall(r"(test_mla_\w+): (\d+) passed, 0 failed", result.stdout))
    assert set(summaries) == {"test_mla_creator", "test_mla_shapes", "test_mla_launch", "test_mla_images",
                              "test_mla_entry"}, \
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


def _markdown_table(text: str, heading: str) -> list[list[str]]:
    """Rows (cells stripped of backticks) of the first table after `## heading`."""
    section = text.split(f"## {heading}\n", 1)[1]
    rows = []
    for line in section.splitlines():
        if line.startswith("## "):
            break
        if line.startswith("|") and not set(line) <= set("|- "):
            rows.append([cell.strip().replace("`", "") for cell in line.strip().strip("|").split("|")])
    return rows[1:]  # without the header row


def test_readme_tables_match_contract():
    from mla_export.onnx_node import op_schema

    readme = (PLUGIN_DIR / "README.md").read_text()
    schema = op_schema()
    types = {"T": "T", "int32": "tensor(int32)", "float32": "tensor(float)"}
    inputs = _markdown_table(readme, "Inputs")
    assert [(int(r[0]), r[1]) for r in inputs] == list(enumerate(contract.OP_INPUTS))
    assert [types[r[3]] for r in inputs] == [p.type_str for p in schema.inputs]
    outputs = _markdown_table(readme, "Outputs")
    assert [(int(r[0]), r[1]) for r in outputs] == list(enumerate(contract.OP_OUTPUTS))
    assert [types[r[3]] for r in outputs] == [p.type_str for p in schema.outputs]
    attributes = _markdown_table(readme, "Attributes")
    assert {r[0]: r[1] for r in attributes} == contract.OP_ATTRIBUTES
    for row in attributes:
        assert row[2].startswith("kINT32" if row[1] == "INT" else "kFLOAT32")
    identity = dict(line.replace("`", "").strip("|").split("|")[:2] for line in readme.splitlines()
                    if line.startswith("| plugin "))
    assert {k.strip(): v.strip() for k, v in identity.items()} == {
        "plugin name": contract.PLUGIN_NAME, "plugin namespace": contract.PLUGIN_NAMESPACE,
        "plugin version": contract.PLUGIN_VERSION}


def test_exported_caches_meet_the_aliasing_conditions(tmp_path):
    """What TensorRT asks of an aliased plugin input (NvInferRuntime.h, getAliasedInput): an input aliased by one
    plugin output only, and not by two plugins (their copies could diverge). In an exported model each
    past_latent_cache.i feeds exactly one node, input 4 of its layer's MlaAttention, whose output 1 (the declared
    alias) is present_latent_cache.i itself, a graph output: the pair the application binds to one buffer."""
    import onnx

    from mla_export.hf_config import load_preset
    from mla_export.contract import graph_io_names
    from mla_export.export import export_onnx
    from mla_export.spec import ModelSpec

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


def _parse(library: Path, model: Path) -> str:
    if _rtx_missing():
        pytest.skip(_rtx_missing())
    env = dict(os.environ, MLA_PLUGIN_VERBOSE="1")  # RTX's logger finder gives no logger: our messages go to stderr
    result = subprocess.run([sys.executable, "-c", PARSE_SCRIPT, str(library), str(model)], capture_output=True,
                            text=True, timeout=600, env=env)
    # RTX 1.7 aborts right after creating a plugin (rc -6); a clean exit is fine too.
    return result.stdout + result.stderr


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
    if _rtx_missing():
        pytest.skip(_rtx_missing())
    from mla_export.hf_config import load_preset
    from mla_export.export import export_onnx
    from mla_export.spec import ModelSpec

    model = export_onnx(ModelSpec(load_preset("tiny"), max_seq_len=128), tmp_path / "tiny.onnx")
    nodes = _attributes_of_nodes(model)
    assert nodes, "the export has no MlaAttention node"
    _check_created_with(_parse(plugin_library, model), nodes[0])


def test_parser_passes_attribute_values(plugin_library, tmp_path):
    """Distinct values in a one-node model reach the creator unchanged."""
    expected = (2, 16, 4, 0.4375)
    model = _handmade_onnx(tmp_path / "one.onnx", *expected)
    _check_created_with(_parse(plugin_library, model), expected)


def test_parser_reports_invalid_attribute(plugin_library, tmp_path):
    model = _handmade_onnx(tmp_path / "bad.onnx", heads=2, rank=16, rope=7, scale=0.5)
    log = _parse(plugin_library, model)
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


@pytest.mark.gpu
@pytest.mark.parametrize("dtype_name", ["bfloat16", "float16"])
@pytest.mark.parametrize("new_tokens", [1, 5])
def test_enqueue_matches_reference_on_gpu(plugin_build, tmp_path, dtype_name, new_tokens):
    """enqueue through a plugin object (created by the shipped library's creator) on device buffers equals the
    float64 reference, with present bound to past's buffer as TensorRT binds the declared alias ("aliased") and to
    a separate one ("copy"). The step is captured into a CUDA graph: aliased, it holds no copy (copy: exactly
    one, past -> present); either way every cache row outside the new ones is bit-identical to the input."""
    import torch

    from mla_export.compare import compare, tolerance_for
    from mla_export.ops import mla_attention_reference

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
        run = subprocess.run([plugin_build / "tests" / "test_mla_gpu_enqueue",
                              plugin_build / "mlaAttentionPlugin" / LIBRARY, tmp_path, mode],
                             capture_output=True, text=True, timeout=300)
        if run.returncode == 77:
            pytest.skip(run.stdout)
        assert run.returncode == 0, run.stdout + run.stderr
        nodes = re.search(r"graph: (\d+) kernel, (\d+) memcpy, (\d+) memset", run.stdout)
        assert nodes and int(nodes[1]) >= 2 and int(nodes[2]) == copies, run.stdout
        attn = _read_raw(tmp_path / f"attn_latent.{mode}.bin", dtype, (b, s, h, dc))
        cache = _read_raw(tmp_path / f"present_cache.{mode}.bin", dtype, (b, smax, dc + dr))
        for result in (compare(f"attn_latent ({mode})", attn, expected_attn, atol, rtol),
                       compare(f"present_cache ({mode})", cache, expected_cache, atol, rtol,
                               expected_nonfinite=untouched[..., None])):  # unused rows: NaN on both sides
            assert result.passed, result.to_dict()
        cache_bits = _read_raw(tmp_path / f"present_cache.{mode}.bin", torch.int16, (b, smax, dc + dr))
        assert torch.equal(cache_bits[untouched], past_bits[untouched]), f"{mode}: rows outside the new ones changed"
