"""Shared by the plugin tests (test_plugin.py: MlaAttention, test_moe_plugin.py: DeepseekMoE) and the session's
plugin build (conftest.py): the C++ launch tests' expectations written from the Python plans, TensorRT-RTX's
parser run in a subprocess, README tables."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import CUDA_INCLUDE

ROOT = Path(__file__).resolve().parents[1]
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
print("moe creator found:", registry.get_creator("DeepseekMoE", "1", "mla") is not None, flush=True)
print("fp8 creator found:", registry.get_creator("BlockFp8MatMul", "1", "mla") is not None, flush=True)
network = builder.create_network(0)
parser = trt.OnnxParser(network, logger)
ok = parser.parse_from_file(sys.argv[2])
print("parsed:", ok, flush=True)
for i in range(parser.num_errors):
    print("parser error:", parser.get_error(i), flush=True)
plugins = sum(1 for i in range(network.num_layers) if network.get_layer(i).type == trt.LayerType.PLUGIN_V3)
print("plugin layers:", plugins, flush=True)
"""
def rtx_missing() -> str | None:
    """Why TensorRT-RTX cannot be imported here, or None (the same look-up `mla-export build` uses)."""
    from mla_export.common.errors import UserError
    from mla_export.trt.backend import import_backend

    try:
        import_backend("tensorrt-rtx")
    except UserError as exc:
        return str(exc)
    return None


def parse_with_rtx(library: Path, model: Path) -> str:
    if rtx_missing():
        pytest.skip(rtx_missing())
    env = dict(os.environ, MLA_PLUGIN_VERBOSE="1")  # RTX's logger finder gives no logger: our messages go to stderr
    result = subprocess.run([sys.executable, "-c", PARSE_SCRIPT, str(library), str(model)], capture_output=True,
                            text=True, timeout=600, env=env)
    # RTX 1.7 aborts right after creating a plugin (rc -6); a clean exit is fine too.
    return result.stdout + result.stderr


def fp8_initializer(name: str, shape: list[int], seed: int):
    """A FLOAT8E4M3FN initializer of `shape` (raw e4m3 bytes of N(0, 1) values, saturated at +-448)."""
    import torch
    from onnx import TensorProto, helper

    values = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).clamp(-448, 448)
    raw = values.to(torch.float8_e4m3fn).view(torch.uint8).numpy().tobytes()
    return helper.make_tensor(name, TensorProto.FLOAT8E4M3FN, shape, raw, raw=True)


def fp8_scale_initializer(name: str, shape: list[int], seed: int):
    """A float32 block-scale initializer of `shape`, positive (amax/448-like magnitudes)."""
    import torch
    from onnx import numpy_helper

    scale = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 1e-2 + 1e-4
    return numpy_helper.from_array(scale.numpy(), name)


def markdown_table(text: str, heading: str) -> list[list[str]]:
    """Rows (cells stripped of backticks) of the first table after `## heading` (or `### heading`), up to the
    next heading of either level."""
    section = text.split(f"## {heading}\n", 1)[1]
    rows = []
    for line in section.splitlines():
        if line.startswith(("## ", "### ")):
            break
        if line.startswith("|") and not set(line) <= set("|- "):
            rows.append([cell.strip().replace("`", "") for cell in line.strip().strip("|").split("|")])
    return rows[1:]  # without the header row


# Descriptor sets whose launches the C++ launch test compares with the Python API's plan:
# (B, S, H, Dc, Dr, Smax, dtype, SMs of the device).
PLAN_CASES = [(b, s, h, dc, dr, smax, dtype, sms)
              for dtype in ("float16", "bfloat16") for b in (1, 3, 8, 64) for s in (1, 2, 7)
              for h, dc, dr, smax in ((4, 32, 8, 64), (16, 512, 64, 2048), (128, 512, 64, 4096))
              for sms in (132, 78)]
PLAN_DTYPE_CODES = {"float32": 0, "float16": 1, "bfloat16": 2}


PLAN_ARCH = 90  # the fake driver's device (plugins/common/testing/fakeCuda.cpp)
PLAN_SOFTMAX_SCALE = "0.1"  # the plugin's softmax_scale in the launch test (kPlanSoftmaxScale)
# Kernel pointer arguments -> the op's tensors (the cache is written in place in present_cache).
PLAN_TENSOR_ARGS = {"q_lat_ptr": "q_latent", "q_pe_ptr": "q_pe", "kv_latent_ptr": "kv_latent", "k_pe_ptr": "k_pe",
                    "cache_ptr": "present", "seqlens_ptr": "cache_seqlens", "cos_sin_ptr": "rope_cos_sin",
                    "out_ptr": "attn_latent"}


def _planned_args(kind: str, p, case) -> list[str]:
    """Expected argument values of kernel `kind` under plan `p`, as testLaunch.cpp tokens."""
    from mla_export.kernels.attention.plan import runtime_args

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


def _sm90_image(compiled: list[dict], spec, kind: str, index: int) -> dict:
    """The AOT manifest's one sm_90 cubin of kernel-table entry `spec` (its name, warps, shared memory)."""
    found = [k for k in compiled if k["arch"] == PLAN_ARCH and not k["ptx"]
             and (k["family_index"], k["dtype"], k["kind"], k["block_m"], k.get("cache_v2", 0),
                  k.get("kv_cache_dtype", 0))
             == (spec.family_index, spec.dtype, spec.kind, spec.block_m, spec.cache_v2, spec.kv_cache_dtype)]
    assert len(found) == 1, f"{kind} kernel {index}: {len(found)} sm_{PLAN_ARCH} images in the manifest"
    return found[0]


def _planned_launches(case, compiled: list[dict]) -> list[tuple[str, tuple, tuple, str, list[str]]]:
    """(kernel name, grid, block, shared memory, argument values) of each launch the Python API plans for `case`.

    Grids and kernel choice come from `mla_export.kernels.attention.plan` (the table the generated launchers share):
    RoPE + cache append, attention, then the split combine when there is more than one split. Name, block
    (num_warps * 32) and shared memory come from the AOT manifest for sm_90;
    argument values from the kernels' signatures (`plan.runtime_args`) and the plan's workspace offsets.
    """
    from mla_export.kernels.attention import plan as kplan

    b, s, h, dc, dr, smax, dtype, sms = case
    p = kplan.make_plan(kplan.Dims(b, s, h, dc, dr, smax, dtype), sms)
    table = kplan.aot_kernel_table()
    launches = []
    for kind, grid, index in zip(kplan.KERNEL_KINDS, (p.rope_grid, p.attn_grid, p.combine_grid),
                                 kplan.kernel_indices(p, dtype)):
        if kind == "combine" and p.num_splits == 1:
            continue
        image = _sm90_image(compiled, table[index], kind, index)
        launches.append((image["name"], tuple(grid), (32 * image["num_warps"], 1, 1), str(image["shared"]),
                         _planned_args(kind, p, case)))
    return launches


def write_mla_launch_plan(path: Path, kernels_dir: Path) -> int:
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

# Contract-2 MlaAttention calls (a paged and/or FP8 cache) whose launches testCacheLaunch.cpp compares with the
# Python plan: (B, S, H, Dc, Dr, page_size, kv_cache_dtype, pages P, rows per page, max_pages, rope rows, dtype, SMs).
# Contiguous FP8 (page_size 0): P = B, rows = Smax, block_table [B, 1] (not read).
CACHE_PLAN_CASES = [(3, 1, 4, 32, 8, 64, 0, 8, 64, 2, 128, "float16", 132),  # tiny, decode, 64-row pages
                    (2, 7, 4, 32, 8, 16, 0, 20, 16, 8, 128, "bfloat16", 78),  # 16-row pages, a prefill chunk
                    (2, 1, 128, 512, 64, 64, 0, 130, 64, 64, 4096, "bfloat16", 132),  # V3's heads, split decode
                    (8, 1, 16, 512, 64, 64, 1, 300, 64, 32, 2048, "bfloat16", 132),  # FP8 pages, split decode
                    (1, 64, 16, 512, 64, 64, 1, 10, 64, 8, 512, "float16", 78),  # FP8 pages, prefill
                    (3, 2, 4, 32, 8, 0, 1, 3, 64, 1, 64, "float16", 132),  # contiguous FP8
                    (2, 5, 16, 512, 64, 16, 1, 40, 16, 20, 320, "bfloat16", 132)]  # FP8, 16-row pages


def _cache_planned_args(kind: str, p, case) -> list[str]:
    """Expected argument values of contract-2 kernel `kind` under plan `p` (testCacheLaunch.cpp tokens): version
    1's (present planes written in place), then the block table, scale and rope planes and the pool's sizes."""
    from mla_export.kernels.attention.plan import CACHE_KINDS, runtime_args

    b, s, h, dc, dr, page, kv, pages, rows, max_pages, rope_rows, dtype, sms = case
    split = p.num_splits > 1
    values = {"q_rot_ptr": f"p:ws+{p.q_rot_offset}", "o_part_ptr": f"p:ws+{p.o_part_offset}" if split else "p:*",
              "lse_part_ptr": f"p:ws+{p.lse_offset}" if split else "p:*", "S": f"i:{s}", "H": f"i:{h}",
              "Smax": f"i:{rope_rows if page else rows}", "num_splits": f"i:{p.num_splits}",
              "softmax_scale": f"f:{PLAN_SOFTMAX_SCALE}",
              "block_table_ptr": "p:block_table" if page else "p:cache_seqlens",
              "scale_ptr": "p:present_scale" if kv else "p:null", "rope_ptr": "p:present_rope" if kv else "p:null",
              "num_pages": f"i:{pages}", "max_pages": f"i:{max_pages if page else 0}", "page_size": f"i:{page}"}
    values.update({name: f"p:{tensor}" for name, tensor in PLAN_TENSOR_ARGS.items()})
    args = runtime_args(kind, dtype, int(kind in CACHE_KINDS), kv if kind in CACHE_KINDS else 0)
    unknown = [name for name, _ in args if name not in values]
    assert not unknown, f"{kind}: kernel arguments {unknown} have no expected value here"
    return [values[name] for name, _ in args] + ["p:null", "p:null"]  # Triton's global/profile scratch: none


def write_mla_cache_launch_plan(path: Path, kernels_dir: Path) -> int:
    """Write the planned launches of CACHE_PLAN_CASES for plugins/tests/testCacheLaunch.cpp (the format of
    write_mla_launch_plan, a longer case line); returns the number of cases."""
    from mla_export.kernels.attention import plan as kplan

    compiled = _manifest_kernels(kernels_dir)
    table = kplan.aot_kernel_table()
    lines = []
    for case in CACHE_PLAN_CASES:
        b, s, h, dc, dr, page, kv, pages, rows, max_pages, rope_rows, dtype, sms = case
        smax = max_pages * page if page else rows  # the plan's Smax
        p = kplan.make_plan(kplan.Dims(b, s, h, dc, dr, smax, dtype, page, kv), sms)
        lines.append(f"case {b} {s} {h} {dc} {dr} {page} {kv} {pages} {rows} {max_pages} {rope_rows} "
                     f"{PLAN_DTYPE_CODES[dtype]} {sms}")
        for kind, grid, index in zip(kplan.KERNEL_KINDS, (p.rope_grid, p.attn_grid, p.combine_grid),
                                     kplan.kernel_indices(p, dtype, page, kv)):
            if kind == "combine" and p.num_splits == 1:
                continue
            image = _sm90_image(compiled, table[index], kind, index)
            lines.append(" ".join(["launch", image["name"], *map(str, grid), str(32 * image["num_warps"]), "1", "1",
                                   str(image["shared"]), *_cache_planned_args(kind, p, case)]))
    path.write_text("\n".join(lines) + "\n")
    return len(CACHE_PLAN_CASES)


# DeepseekMoE calls whose launches testMoeLaunch.cpp compares with moe_plan's: (B, S, d, I, attributes, dtype).
# Attributes in contract order: num_experts top_k n_group topk_group scoring_func group_score use_bias normalize
# weight_scale.
MOE_RULES = {"tiny-moe": (8, 2, 4, 2, 1, 1, 1, 1, 2.5), "v2-lite": (64, 6, 1, 1, 0, 0, 0, 0, 1.0),
             "v2": (160, 6, 8, 3, 0, 0, 0, 0, 16.0), "v3": (256, 8, 8, 4, 1, 1, 1, 1, 2.5),
             "kimi": (384, 8, 1, 1, 1, 1, 1, 1, 2.827)}
MOE_PLAN_CASES = [(b, s, d, i, MOE_RULES[rule], dtype)
                  for dtype in ("float16", "bfloat16")
                  for b, s in ((1, 1), (8, 1), (64, 1), (1, 100), (2, 2049), (1, 4097))
                  for rule, d, i in (("tiny-moe", 64, 32), ("v2-lite", 2048, 1408), ("v2", 5120, 1536),
                                     ("v3", 7168, 2048), ("kimi", 7168, 2048))]
# FP8 experts (contract version 2), planned for the kernel API itself (moe::launch with fp8Experts = 1, which the
# plugin calls): testMoeLaunch.cpp drives it on the fake driver. Decode and prefill, one and two chunks.
MOE_FP8_PLAN_CASES = [(1, 1, 7168, 2048, MOE_RULES["v3"], "bfloat16"), (64, 1, 7168, 2048, MOE_RULES["v3"], "bfloat16"),
                      (1, 4097, 7168, 2048, MOE_RULES["v3"], "bfloat16"),
                      (8, 1, 2048, 1408, MOE_RULES["v2-lite"], "float16"),
                      (1, 100, 64, 32, MOE_RULES["tiny-moe"], "float16"),
                      (2, 9, 7168, 2048, MOE_RULES["kimi"], "bfloat16")]
# A rank's slice of the experts (contract version 3): (case, fp8, first_expert, E_local), DeepSeek-V3's layout
# (rank r of N holds E/N experts from r * E/N): decode and prefill, one to three chunks, FP8 experts too.
MOE_SLICE_PLAN_CASES = [((1, 1, 7168, 2048, MOE_RULES["v3"], "bfloat16"), 0, 96, 32),  # --tp 8, rank 3
                        ((2, 2049, 7168, 2048, MOE_RULES["v3"], "float16"), 0, 128, 128),  # --tp 2, rank 1
                        ((64, 1, 7168, 2048, MOE_RULES["kimi"], "bfloat16"), 0, 192, 96),  # --tp 4, rank 2
                        ((1, 100, 64, 32, MOE_RULES["tiny-moe"], "float16"), 0, 4, 4),
                        ((1, 100, 64, 32, MOE_RULES["tiny-moe"], "float16"), 0, 0, 4),  # rank 0
                        ((1, 4097, 7168, 2048, MOE_RULES["v3"], "bfloat16"), 1, 64, 64)]  # FP8, --tp 4, rank 1
# Kernel pointer arguments -> the op's tensors (or the workspace region, by moe_plan's offsets), per kind.
MOE_TENSOR_ARGS = {"router_ptr": "router_weight", "bias_ptr": "score_bias"}
MOE_WORKSPACE_ARGS = {"logits_ptr": "logits_offset", "ids_ptr": "ids_offset", "weights_ptr": "weights_offset",
                      "counts_ptr": "counts_offset", "sorted_ptr": "sorted_offset",
                      "block_expert_ptr": "block_expert_offset", "act_ptr": "act_offset", "y_ptr": "y_offset"}


def _moe_planned_args(kind: str, plan, chunk, start: int, case, fp8: bool = False, first: int = 0,
                      held: int = 0) -> list[str]:
    """Expected argument values of MoE kernel `kind` in the chunk starting at token `start` (FP8 experts: their
    block scales; else the launchers pass null; a slice: `held` experts from `first`, 0: every expert)."""
    from mla_export.kernels.moe.plan import ELEMENT_BYTES, runtime_args

    b, s, d, i, attrs, dtype = case
    experts, top_k, n_group, topk_group, scoring, group_score, use_bias, normalize, scale = attrs
    row = start * d * ELEMENT_BYTES[dtype]
    values = {"hidden_ptr": f"p:hidden_states+{row}", "out_ptr": f"p:routed_output+{row}",
              "w_ptr": "p:gate_up_proj" if kind == "gate_up" else "p:down_proj",
              "T": f"i:{chunk.tokens}", "E": f"i:{experts}", "E_local": f"i:{held or experts}",
              "first_expert": f"i:{first}", "D": f"i:{d}", "I": f"i:{i}", "top_k": f"i:{top_k}",
              "n_group": f"i:{n_group}", "topk_group": f"i:{topk_group}", "scoring": f"i:{scoring}",
              "group_score": f"i:{group_score}", "use_bias": f"i:{use_bias}", "normalize": f"i:{normalize}",
              "weight_scale": f"f:{scale}", "num_slots": f"i:{chunk.slots}",
              "block_m": f"i:{chunk.config.block_m}", "max_blocks": f"i:{chunk.max_blocks}",
              "scale_ptr": ("p:gate_up_scale" if kind == "gate_up" else "p:down_scale") if fp8 else "p:null"}
    values.update({name: f"p:{tensor}" for name, tensor in MOE_TENSOR_ARGS.items()})
    values.update({name: f"p:ws+{getattr(plan, field)}" for name, field in MOE_WORKSPACE_ARGS.items()})
    args = runtime_args(kind, dtype, fp8)
    unknown = [name for name, _ in args if name not in values]
    assert not unknown, f"{kind}: kernel arguments {unknown} have no expected value here"
    return [values[name] for name, _ in args] + ["p:null", "p:null"]  # Triton's global/profile scratch: none


def write_moe_launch_plan(path: Path, kernels_dir: Path) -> int:
    """Write the launches moe_plan plans for MOE_PLAN_CASES in the format plugins/tests/testMoeLaunch.cpp reads
    (name, block and shared memory from the AOT manifest for sm_90), then those of MOE_FP8_PLAN_CASES (a last
    field 1 on their case lines); returns the number of MOE_PLAN_CASES."""
    import json

    from mla_export.kernels.moe import plan as moe_plan

    compiled = json.loads((kernels_dir / "manifest.json").read_text())["moe_kernels"]
    table = moe_plan.aot_kernel_table()
    lines = []
    calls = ([(c, 0, 0, 0) for c in MOE_PLAN_CASES] + [(c, 1, 0, 0) for c in MOE_FP8_PLAN_CASES]
             + MOE_SLICE_PLAN_CASES)
    for case, fp8, first, held in calls:
        b, s, d, i, attrs, dtype = case
        slice_fields = [first, held] if held else []
        lines.append(" ".join(map(str, ["case", b, s, d, i, *attrs, PLAN_DTYPE_CODES[dtype], fp8, *slice_fields])))
        plan = moe_plan.make_plan(moe_plan.MoeDims(b * s, d, i, attrs[0], attrs[1], attrs[2], dtype, fp8,
                                                   local_experts=held))
        for index in range(plan.num_chunks):
            start, chunk = plan.chunk(index)
            for kind, grid, k in zip(moe_plan.KERNEL_KINDS, chunk.grids(), moe_plan.kernel_indices(plan, chunk, dtype)):
                spec = table[k]
                found = [c for c in compiled if c["arch"] == PLAN_ARCH and not c["ptx"]
                         and (c["kind"], c["dtype"], c["variant"]) == (spec.kind, spec.dtype, spec.variant)]
                assert len(found) == 1, f"{kind} kernel {k}: {len(found)} sm_{PLAN_ARCH} images in the manifest"
                lines.append(" ".join(["launch", found[0]["name"], *map(str, grid), str(32 * found[0]["num_warps"]),
                                       "1", "1", str(found[0]["shared"]),
                                       *_moe_planned_args(kind, plan, chunk, start, case, bool(fp8), first,
                                                          held)]))
    path.write_text("\n".join(lines) + "\n")
    return len(MOE_PLAN_CASES)


def build_plugins(build: Path, kernels_dir: Path) -> Path:
    """Configure and build plugins/ into `build` with the generated kernels, after writing the launch tests'
    expectations (launch_plan.txt, cache_launch_plan.txt, moe_launch_plan.txt, fp8_launch_plan.txt: BlockFp8MatMul's,
    read by the kernels' test_fp8_launch and the plugin's test_fp8_plugin_launch) there."""
    from test_fp8_kernels_aot import write_launch_plan as write_fp8_launch_plan

    write_mla_launch_plan(build / "launch_plan.txt", kernels_dir)
    write_mla_cache_launch_plan(build / "cache_launch_plan.txt", kernels_dir)
    write_moe_launch_plan(build / "moe_launch_plan.txt", kernels_dir)
    write_fp8_launch_plan(build / "fp8_launch_plan.txt", kernels_dir)
    options = [f"-DMLA_KERNELS_DIR={kernels_dir}", f"-DMLA_LAUNCH_EXPECTATIONS={build / 'launch_plan.txt'}",
               f"-DMLA_CACHE_LAUNCH_EXPECTATIONS={build / 'cache_launch_plan.txt'}",
               f"-DMLA_MOE_LAUNCH_EXPECTATIONS={build / 'moe_launch_plan.txt'}",
               f"-DMLA_FP8_LAUNCH_EXPECTATIONS={build / 'fp8_launch_plan.txt'}"]
    configure = subprocess.run(["cmake", "-S", ROOT / "plugins", "-B", build, "-DCMAKE_BUILD_TYPE=Release",
                                f"-DPython3_EXECUTABLE={sys.executable}", *options], capture_output=True, text=True)
    assert configure.returncode == 0, configure.stdout + configure.stderr
    compiled = subprocess.run(["cmake", "--build", build, "-j2"], capture_output=True, text=True)
    assert compiled.returncode == 0, compiled.stdout[-5000:] + compiled.stderr[-5000:]
    return build
