"""The DeepseekMoE kernels' AOT build (the session's `aot_kernels` fixture, conftest.py) on this CPU-only machine:
every MoE kernel compiled for every arch within shared-memory limits, the generated files data only, the
hand-written launchers' argument order, and the C++ plan (moeKernelsPlan.cpp) equal to moe_plan.make_plan over a
sweep of shapes."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mla_export.common import contract
from mla_export.kernels import aot
from mla_export.kernels.attention import plan
from mla_export.kernels.moe import plan as moe_plan, route as moe_route

from helpers import CUDA_INCLUDE

ROOT = Path(__file__).resolve().parents[1]
KERNELS_INCLUDE = ROOT / "plugins" / "kernels"
CXX = shutil.which("g++") or shutil.which("c++")
needs_cxx = pytest.mark.skipif(CXX is None or not (CUDA_INCLUDE / "cuda.h").exists(),
                               reason="needs a C++ compiler and the CUDA toolkit's cuda.h")


def test_kernel_constants_follow_the_contract():
    assert moe_route.SCORING_SIGMOID.value == contract.MOE_SCORING_SIGMOID
    assert moe_route.GROUP_SCORE_TOP2_SUM.value == contract.MOE_GROUP_SCORE_TOP2_SUM
    assert contract.MOE_SCORING_SOFTMAX == 0 and contract.MOE_GROUP_SCORE_MAX == 0  # the kernels' "else" branches


def test_plan_bounds_any_routing():
    """max_blocks bounds sum_e cdiv(count_e, BLOCK_M) for the worst routings (one slot per expert, all on one)."""
    for slots, experts, block in itertools.product((1, 7, 64, 384, 32768), (1, 8, 64, 256, 384), (16, 64)):
        spread = [slots // experts + (e < slots % experts) for e in range(experts)]
        for counts in (spread, [slots] + [0] * (experts - 1)):
            assert sum(-(-c // block) for c in counts) <= moe_plan.max_blocks(slots, experts, block)


@pytest.mark.slow
def test_every_moe_kernel_is_built_for_every_arch_within_shared_memory(aot_kernels):
    manifest = json.loads((aot_kernels / "manifest.json").read_text())
    table = moe_plan.aot_kernel_table()
    ptx_archs = [min(plan.AOT_ARCHS), max(plan.AOT_ARCHS)]
    seen = {(k["arch"], k["ptx"]) for k in manifest["moe_kernels"]}
    assert seen == {(a, False) for a in plan.AOT_ARCHS} | {(a, True) for a in ptx_archs}
    assert len(manifest["moe_kernels"]) == len(table) * (len(plan.AOT_ARCHS) + len(ptx_archs))
    for k in manifest["moe_kernels"]:
        assert 0 <= k["shared"] <= aot.SHARED_LIMIT[k["arch"]], k
        assert k["image_bytes"] > 0
    source = (aot_kernels / "moe_kernels_images.cpp").read_text()
    for arch in ptx_archs:
        assert f"k_ptx{arch}_{len(table) - 1}[" in source
    launchers = (KERNELS_INCLUDE / "moeKernels.cpp").read_text()
    assert launchers.count("&globalScratch,") == len(moe_plan.KERNEL_KINDS)  # Triton's scratch args, each launcher


@pytest.mark.slow
def test_generated_moe_files_hold_data_only(aot_kernels):
    for name in ("moe_kernels_images.cpp", "moe_kernels_tables.h"):
        text = (aot_kernels / name).read_text()
        assert not re.search(r"\)\s*(const\s*)?(noexcept\s*)?\{", text), f"{name} defines a function"
        assert "cuLaunchKernel" not in text and "return" not in text


def test_launchers_pass_the_kernels_arguments_in_order():
    """Each hand-written launcher builds its argument array in moe_plan.RUNTIME_ARGS order (values are checked
    against the Python plan on a recording driver in tests/test_moe_plugin.py)."""
    source = (KERNELS_INCLUDE / "moeKernels.cpp").read_text()
    functions = {"router_logits": "launchRouterLogits", "topk": "launchTopk", "count": "launchCount",
                 "align": "launchAlign", "gate_up": "launchGateUp", "down": "launchDown", "combine": "launchCombine"}
    for kind, function in functions.items():
        body = source.split(f"CUresult {function}(", 1)[1].split(") noexcept\n{", 1)[1]
        body = body.split("return launchKernel", 1)[0]
        args = re.search(r"void\* args\[\] = \{(.*?)\};", body, re.S).group(1)
        names = [a.strip().lstrip("&") for a in args.split(",")]
        assert names[-2:] == ["globalScratch", "profileScratch"], kind
        assert names[:-2] == [f"a{i}" for i in range(len(moe_plan.RUNTIME_ARGS[kind]))], kind
        # a<i> is declared with the kernel's type: pointers as CUdeviceptr, i32 as int32_t, fp32 as float.
        declared = {}
        for statement in body.split(";"):
            match = re.match(r"\s*(CUdeviceptr|int32_t|float)\s+(.*)", statement, re.S)
            if match:
                for item in match.group(2).split(","):
                    declared[item.split("=")[0].strip()] = match.group(1)
        for i, (_, ty) in enumerate(moe_plan.RUNTIME_ARGS[kind]):
            want = {"i32": "int32_t", "fp32": "float"}.get(ty, "CUdeviceptr")
            assert declared.get(f"a{i}") == want, (kind, i, ty, declared)


_PLAN_MAIN = r"""
#include "moeKernelsPlan.h"
#include <cstdio>
using namespace mla::kernels;
static void printChunk(moe::plan::ChunkPlan const& c)
{
    std::printf(" %lld %d %lld %lld", static_cast<long long>(c.tokens), c.config, static_cast<long long>(c.slots),
        static_cast<long long>(c.maxBlocks));
    for (int k = 0; k < 7; ++k)
        std::printf(" %d %u %u %u", c.kernels[k], c.grids[k][0], c.grids[k][1], c.grids[k][2]);
}
int main()
{
    long long tokens;
    int hidden, inter, experts, topK, nGroup, dtype, fp8, local;
    while (std::scanf("%lld %d %d %d %d %d %d %d %d", &tokens, &hidden, &inter, &experts, &topK, &nGroup, &dtype, &fp8,
               &local)
        == 9)
    {
        moe::Dims d{tokens, hidden, inter, experts, topK, nGroup, 1, 1, 1, 1, 1, 2.5F, static_cast<DataType>(dtype),
            fp8, local, 0};
        char const* why = moe::plan::unsupportedReason(d);
        moe::plan::LaunchPlan p{};
        if (why != nullptr || !moe::plan::makePlan(d, p))
        {
            std::printf("no %s\n", why != nullptr ? why : "makePlan failed");
            continue;
        }
        std::printf("ok %lld %lld %d", static_cast<long long>(p.chunkTokens), static_cast<long long>(p.numChunks),
            p.topkBlockE);
        printChunk(p.full);
        printChunk(p.last);
        std::printf(" %lld %lld %lld %lld %lld %lld %lld %lld %lld\n", static_cast<long long>(p.logitsOffset),
            static_cast<long long>(p.idsOffset), static_cast<long long>(p.weightsOffset),
            static_cast<long long>(p.countsOffset), static_cast<long long>(p.sortedOffset),
            static_cast<long long>(p.blockExpertOffset), static_cast<long long>(p.actOffset),
            static_cast<long long>(p.yOffset), static_cast<long long>(p.workspaceBytes));
    }
    return 0;
}
"""

_DTYPE_NAMES = {v: k for k, v in plan.DTYPE_ENUM.items()}


def _chunk_fields(p: moe_plan.MoePlan, c: moe_plan.ChunkPlan, dtype: str) -> list:
    fields = [c.tokens, moe_plan.GEMM_CONFIGS.index(c.config), c.slots, c.max_blocks]
    for index, grid in zip(moe_plan.kernel_indices(p, c, dtype), c.grids()):
        fields += [index, *grid]
    return fields


def python_line(tokens, hidden, inter, experts, top_k, n_group, dtype, fp8, local=0) -> str:
    dims = moe_plan.MoeDims(tokens, hidden, inter, experts, top_k, n_group, _DTYPE_NAMES[dtype], fp8, local)
    why = moe_plan.unsupported_reason(dims)
    if why is not None:
        return f"no {why}"
    p = moe_plan.make_plan(dims)
    fields = [p.chunk_tokens, p.num_chunks, p.topk_block_e, *_chunk_fields(p, p.full, dims.dtype),
              *_chunk_fields(p, p.last, dims.dtype), p.logits_offset, p.ids_offset, p.weights_offset,
              p.counts_offset, p.sorted_offset, p.block_expert_offset, p.act_offset, p.y_offset, p.workspace_bytes]
    return "ok " + " ".join(map(str, fields))


@pytest.mark.slow
@needs_cxx
def test_cpp_plan_equals_python_plan(aot_kernels, tmp_path):
    exe = tmp_path / "moe_plan_main"
    (tmp_path / "moe_plan_main.cpp").write_text(_PLAN_MAIN)
    proc = subprocess.run([CXX, "-std=c++17", "-O1", str(tmp_path / "moe_plan_main.cpp"),
                           str(KERNELS_INCLUDE / "moeKernelsPlan.cpp"), f"-I{KERNELS_INCLUDE}", f"-I{aot_kernels}",
                           f"-I{CUDA_INCLUDE}", "-o", str(exe)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    sweep = list(itertools.product(
        (0, 1, 7, 64, 257, 4096, 4097, 12289, 65536),  # tokens
        ((64, 32), (2048, 1408), (7168, 2048), (24, 10), (0, 16)),  # (d, I)
        # (E, K, G, E_local): E_local 0 is every expert; the others a rank's slice (contract version 3), 9 > E
        ((8, 2, 4, 0), (64, 6, 1, 0), (160, 6, 8, 0), (256, 8, 8, 0), (384, 8, 1, 0), (513, 8, 1, 0), (16, 17, 1, 0),
         (64, 6, 33, 0), (256, 8, 8, 32), (384, 8, 1, 96), (8, 2, 4, 4), (8, 2, 4, 9)),
        (0, 1, 2),  # dtype: float32, float16, bfloat16
        (0, 1),  # experts in T, FP8 experts
    ))
    lines = [f"{t} {d} {i} {e} {k} {g} {dt} {f} {el}" for t, (d, i), (e, k, g, el), dt, f in sweep]
    run = subprocess.run([str(exe)], input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=300)
    cpp = run.stdout.splitlines()
    assert len(cpp) == len(sweep)
    supported = 0
    fp8_configs = set()
    slices, refused_slices = set(), 0
    for (t, (d, i), (e, k, g, el), dt, f), got in zip(sweep, cpp):
        want = python_line(t, d, i, e, k, g, dt, f, el)
        assert got == want, f"T={t} d={d} I={i} E={e} K={k} G={g} dtype={dt} fp8={f} E_local={el}"
        if el and want.startswith("ok"):
            slices.add(el)
        elif el > e and dt and d % 16 == 0 and d:  # an AOT dtype and dims: the slice is the reason
            assert want == f"no {moe_plan.REASON_LOCAL_EXPERTS}"
            refused_slices += 1
        supported += want.startswith("ok")
        if f and want.startswith("ok") and t:
            fp8_configs.add(int(want.split()[5]))  # the full chunk's GEMM config index
    assert supported >= 540 + 324  # 9 token counts x 3 dims x (5 routings + 3 slices) x 2 dtypes x (T, FP8)
    assert slices == {32, 96, 4} and refused_slices > 0
    assert fp8_configs == {moe_plan.FP8_CONFIG_OFFSET, moe_plan.FP8_CONFIG_OFFSET + 1}  # decode and prefill


_PATH_PROBE = r"""
import json, re, sys, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from mla_export.kernels import aot
from mla_export.kernels.moe import plan as mp
out = {}
for i, k in enumerate(mp.aot_kernel_table()):
    if k.kind == "gate_up" and k.dtype == "bfloat16" and mp.GEMM_CONFIGS[k.variant].fp8:
        for arch in (80, 86, 89, 90, 100, 120):
            sig, cx, attrs = aot.signature(k, "moe", arch)
            kern = triton.compile(ASTSource(aot.kernel_function(k.kind, "moe"), sig, cx, attrs),
                                  target=GPUTarget("cuda", arch, 32),
                                  options={"num_warps": k.num_warps, "num_stages": k.num_stages})
            mma = sorted(set(re.findall(r"(?:wgmma\.mma_async|mma\.sync|tcgen05\.mma)[\w.:]*", kern.asm["ptx"])))
            out[f"{mp.GEMM_CONFIGS[k.variant].name} {arch}"] = [mma, "e4m3" in kern.asm["ptx"]]
print(json.dumps(out))
"""


@pytest.mark.slow
def test_fp8_expert_kernels_take_the_right_path_per_arch():
    """The FP8 gate_up kernel compiled per arch (as aot.py does): no FP8 instruction at all on sm_80/86 (weight-only:
    bf16 mma after integer decoding), FP8 tensor-core products on sm_89+ (mma e4m3 on sm_89/120, wgmma e4m3 on sm_90
    and tcgen05 f8f6f4 on sm_100 for prefill; for decode's 16-row tiles Triton's sm_90/100 lowering converts the
    e4m3 operands to f16 for mma.sync, exact, with the same FP8 weight bytes read)."""
    import os
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", _PATH_PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(proc.stdout.splitlines()[-1])
    for key, (mma, e4m3) in found.items():
        name, arch = key.split()
        assert mma, key
        if int(arch) < moe_plan.NATIVE_FP8_MIN_ARCH:
            assert not e4m3 and all(".bf16.bf16." in m for m in mma), (key, mma)
        else:
            assert e4m3, key
    assert any("e4m3.e4m3" in m for m in found["decode 89"][0] + found["prefill 120"][0])
    assert any("wgmma" in m and "e4m3" in m for m in found["prefill 90"][0])
    assert any("f8f6f4" in m for m in found["prefill 100"][0])
