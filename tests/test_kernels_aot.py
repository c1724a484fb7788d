"""The AOT build (`python -m mla_export.kernels.aot`) on this CPU-only machine.

One build for every arch (the session's `aot_kernels` fixture, conftest.py); then: the
manifest covers every kernel x arch within shared-memory limits, the generated data and the
hand-written host code over it compile, the generated files hold data only, and the C++ plan
chooses exactly what plan.make_plan chooses over a sweep of shapes.
"""

from __future__ import annotations

import collections
import itertools
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from mla_export.kernels import aot
from mla_export.kernels.attention import plan

from helpers import CUDA_INCLUDE

ROOT = Path(__file__).resolve().parents[1]
KERNELS_INCLUDE = ROOT / "plugins" / "kernels"
CXX = shutil.which("g++") or shutil.which("c++")
needs_cxx = pytest.mark.skipif(CXX is None or not (CUDA_INCLUDE / "cuda.h").exists(),
                               reason="needs a C++ compiler and the CUDA toolkit's cuda.h")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(aot_kernels):
    return aot_kernels


def test_every_kernel_is_built_for_every_arch_within_shared_memory(built):
    manifest = json.loads((built / "manifest.json").read_text())
    table = plan.aot_kernel_table()
    ptx_archs = [min(plan.AOT_ARCHS), max(plan.AOT_ARCHS)]
    assert manifest["archs"] == list(plan.AOT_ARCHS) and manifest["ptx_archs"] == ptx_archs
    seen = {(k["arch"], k["ptx"]) for k in manifest["kernels"]}
    assert seen == {(a, False) for a in plan.AOT_ARCHS} | {(a, True) for a in ptx_archs}
    assert len(manifest["kernels"]) == len(table) * (len(plan.AOT_ARCHS) + len(ptx_archs))
    # Each PTX image was assembled for every arch that JIT-compiles it (aot.image_choice).
    assert manifest["ptx_checked_for"] == {"sm_80": [80, 103, 110], "sm_120": [120, 121]}
    for k in manifest["kernels"]:
        assert 0 <= k["shared"] <= aot.SHARED_LIMIT[k["arch"]], k
        assert k["image_bytes"] > 0
    source = (built / "mla_kernels_images.cpp").read_text()
    for arch in ptx_archs:  # PTX images for later GPUs and those between cubins
        assert f"k_ptx{arch}_{len(table) - 1}[" in source
    launchers = (KERNELS_INCLUDE / "mlaKernels.cpp").read_text()
    # Triton's scratch args end every argument list: one per kind, and one more per cache kind (its contract-2 list)
    assert launchers.count("&globalScratch, &profileScratch}") == len(plan.KERNEL_KINDS) + len(plan.CACHE_KINDS)


def test_generated_files_hold_data_only(built):
    """The AOT build generates tables and images; every function is hand-written in plugins/kernels/."""
    import re

    for name in ("mla_kernels_images.cpp", "mla_kernels_tables.h"):
        text = (built / name).read_text()
        assert not re.search(r"\)\s*(const\s*)?(noexcept\s*)?\{", text), f"{name} defines a function"
        assert "cuLaunchKernel" not in text and "return" not in text


def test_launchers_pass_the_kernels_arguments_in_order():
    """The hand-written launchers take each kernel's runtime arguments in plan.RUNTIME_ARGS order (the values
    themselves are checked against the Python plan on a recording driver in tests/test_plugin.py)."""
    import re

    source = (KERNELS_INCLUDE / "mlaKernels.cpp").read_text()
    functions = {"rope_append": "launchRopeAppend", "attention": "launchAttention", "combine": "launchCombine"}
    for kind, function in functions.items():
        params = re.search(rf"CUresult {function}\((.*?)\) noexcept", source, re.S).group(1)
        names = [p.split()[-1].strip("*") for p in params.replace("\n", " ").split(",")][5:]  # after module..stream
        expected = [re.sub(r"(_ptr|_part)$", "", n) for n, _ in plan.RUNTIME_ARGS[kind]]
        camel = [re.sub(r"_(\w)", lambda m: m.group(1).upper(), n) for n in expected]
        aliases = {"qLat": "qLatent", "cosSin": "cosSin", "S": "newTokens", "H": "numHeads", "Smax": "maxSeqLen",
                   "lsePart": "lsePart", "lse": "lsePart"}
        # The cache kinds take the contract-2 cache kernels' arguments last, as one CacheArgs (null: version 1).
        cache = ["cacheArgs"] if kind in plan.CACHE_KINDS else []
        assert names == [aliases.get(n, n) for n in camel] + cache, (kind, names)
    fields = re.search(r"struct CacheArgs\s*\{(.*?)\};", source, re.S).group(1)
    declared = re.findall(r"^\s*\w+ (\w+);", fields, re.M)
    expected = [re.sub(r"_(\w)", lambda m: m.group(1).upper(), re.sub(r"_ptr$", "", n))
                for n, _ in plan.CACHE_RUNTIME_ARGS]
    assert declared == expected
    # ... and every cache kernel's argument list passes them in that order, after the version-1 ones.
    passed = re.findall(r"cacheKernelArgs\[\] = \{(.*?)\};", source, re.S)
    assert len(passed) == 2
    for body in passed:
        names = [a.strip().lstrip("&") for a in body.replace("\n", " ").split(",")]
        assert names[-8:] == [f"c.{n}" for n in declared] + ["globalScratch", "profileScratch"], names


@needs_cxx
def test_generated_sources_compile(built, tmp_path):
    sources = [built / "mla_kernels_images.cpp", KERNELS_INCLUDE / "mlaKernels.cpp", KERNELS_INCLUDE / "mlaKernelsPlan.cpp"]
    for source in sources:
        proc = subprocess.run([CXX, "-std=c++17", "-O1", "-Wall", "-Wextra", "-Werror", "-c", str(source),
                               f"-I{KERNELS_INCLUDE}", f"-I{built}", f"-I{CUDA_INCLUDE}",
                               "-o", str(tmp_path / (source.name + ".o"))],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-4000:]


_PLAN_MAIN = r"""
#include "mlaKernelsPlan.h"
#include <cstdio>
using namespace mla::kernels;
int main()
{
    int b, s, h, dc, dr, smax, dtype, sms, page, kv;
    while (std::scanf("%d %d %d %d %d %d %d %d %d %d", &b, &s, &h, &dc, &dr, &smax, &dtype, &sms, &page, &kv) == 10)
    {
        Dims d{b, s, h, dc, dr, smax, static_cast<DataType>(dtype), 0.1F};
        d.pageSize = page;
        d.kvCacheDtype = kv;
        char const* why = plan::unsupportedReason(d);
        plan::LaunchPlan p{};
        if (why != nullptr || !plan::makePlan(d, sms, p))
        {
            std::printf("no %s\n", why != nullptr ? why : "makePlan failed");
            continue;
        }
        std::printf("ok %d %d %d %d %d %d %d %d %u %u %u %u %u %u %u %u %u %lld %lld %lld %lld\n", p.family, p.blockM,
            p.mBlocks, p.numSplits, p.attnNumWarps, p.ropeKernel, p.attnKernel, p.combineKernel, p.ropeGrid[0],
            p.ropeGrid[1], p.ropeGrid[2], p.attnGrid[0], p.attnGrid[1], p.attnGrid[2], p.combineGrid[0],
            p.combineGrid[1], p.combineGrid[2], static_cast<long long>(p.qRotOffset),
            static_cast<long long>(p.oPartOffset), static_cast<long long>(p.lseOffset),
            static_cast<long long>(p.workspaceBytes));
    }
    return 0;
}
"""

_DTYPE_NAMES = {v: k for k, v in plan.DTYPE_ENUM.items()}


def _python_line(b, s, h, dc, dr, smax, dtype, sms, page=0, kv=0) -> str:
    dims = plan.Dims(b, s, h, dc, dr, smax, _DTYPE_NAMES[dtype], page, kv)
    why = plan.unsupported_reason(dims)
    if why is not None:
        return f"no {why}"
    p = plan.make_plan(dims, sms)
    rope, attn, comb = plan.kernel_indices(p, dims.dtype, page, kv)
    fields = [plan.FAMILIES.index(p.family), p.block_m, p.m_blocks, p.num_splits, p.attn_num_warps, rope, attn, comb,
              *p.rope_grid, *p.attn_grid, *p.combine_grid, p.q_rot_offset, p.o_part_offset, p.lse_offset,
              p.workspace_bytes]
    return "ok " + " ".join(map(str, fields))


def _plan_program(built, tmp_path) -> Path:
    exe = tmp_path / "plan_main"
    (tmp_path / "plan_main.cpp").write_text(_PLAN_MAIN)
    proc = subprocess.run([CXX, "-std=c++17", "-O1", str(tmp_path / "plan_main.cpp"),
                           str(KERNELS_INCLUDE / "mlaKernelsPlan.cpp"),
                           f"-I{KERNELS_INCLUDE}", f"-I{built}", f"-I{CUDA_INCLUDE}", "-o", str(exe)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return exe


@needs_cxx
def test_cpp_plan_equals_python_plan_for_cache_layouts(built, tmp_path):
    """Contract version 2: the paged and FP8 caches pick the same cache kernels, splits and workspace in C++ as in
    Python, and both refuse the same bad layouts (a page size not a power of two, an unknown kv cache dtype)."""
    exe = _plan_program(built, tmp_path)
    sweep = list(itertools.product(
        (1, 3, 64), (1, 7, 300), (4, 16, 128), ((32, 8), (512, 64), (64, 64)),
        (64, 1024, 65536),  # Smax (paged: max_pages * page_size)
        (1, 2), (132, 78),
        ((64, 0), (16, 0), (1, 0), (64, 1), (16, 1), (0, 1), (3, 0), (-64, 0), (64, 2), (0, 2)),  # (page, kv)
    ))
    lines = [f"{b} {s} {h} {dc} {dr} {smax} {dt} {sms} {page} {kv}"
             for b, s, h, (dc, dr), smax, dt, sms, (page, kv) in sweep]
    run = subprocess.run([str(exe)], input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=300)
    cpp = run.stdout.splitlines()
    assert len(cpp) == len(sweep)
    kernels = collections.Counter()
    for (b, s, h, (dc, dr), smax, dt, sms, (page, kv)), got in zip(sweep, cpp):
        want = _python_line(b, s, h, dc, dr, smax, dt, sms, page, kv)
        assert got == want, f"B={b} S={s} H={h} Dc={dc} Dr={dr} Smax={smax} dtype={dt} SMs={sms} page={page} kv={kv}"
        if want.startswith("ok"):
            kernels[(page > 0 or kv > 0, kv)] += 1
        else:
            assert (page, kv) in ((3, 0), (-64, 0), (64, 2), (0, 2)) or (dc, dr) == (64, 64), got
    assert set(kernels) == {(True, 0), (True, 1)} and min(kernels.values()) > 100, kernels


@needs_cxx
def test_cpp_plan_equals_python_plan(built, tmp_path):
    exe = _plan_program(built, tmp_path)
    sweep = list(itertools.product(
        (0, 1, 3, 8, 64, 128, 70000),  # B
        (0, 1, 2, 7, 8, 33, 4096),  # S
        (1, 4, 16, 128),  # H
        ((32, 8), (512, 64), (512, 32), (64, 64)),  # (Dc, Dr)
        (0, 1, 64, 65, 300, 4097, 65537),  # Smax
        (0, 1, 2),  # dtype: float32, float16, bfloat16
        (0, 1, 108, 132, 170),  # SMs
    ))
    lines = [f"{b} {s} {h} {dc} {dr} {smax} {dt} {sms} 0 0" for b, s, h, (dc, dr), smax, dt, sms in sweep]
    run = subprocess.run([str(exe)], input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=300)
    cpp = run.stdout.splitlines()
    assert len(cpp) == len(sweep)
    supported = 0
    for (b, s, h, (dc, dr), smax, dt, sms), got in zip(sweep, cpp):
        want = _python_line(b, s, h, dc, dr, smax, dt, sms)
        assert got == want, f"B={b} S={s} H={h} Dc={dc} Dr={dr} Smax={smax} dtype={dt} SMs={sms}"
        supported += want.startswith("ok")
    assert supported > 1000
