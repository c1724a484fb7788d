"""The BlockFp8MatMul kernels' AOT build (the session's `aot_kernels` fixture, conftest.py) on this CPU-only machine:
every kernel compiled for every arch within shared-memory limits, each arch's path in its machine code (FP8 e4m3
instructions on sm_89+, none below), the generated files data only, the hand-written launchers' argument order,
the C++ plan (fp8KernelsPlan.cpp) equal to fp8_plan.make_plan over a sweep of shapes, and the C++ launch test
(plugins/tests/testFp8Launch.cpp) on the fake driver against the launches fp8_plan plans."""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mla_export.kernels import aot
from mla_export.kernels.attention import plan
from mla_export.kernels.fp8 import plan as fp8_plan

from helpers import CUDA_INCLUDE

ROOT = Path(__file__).resolve().parents[1]
KERNELS_INCLUDE = ROOT / "plugins" / "kernels"
TESTING = ROOT / "plugins" / "common" / "testing"
CXX = shutil.which("g++") or shutil.which("c++")
needs_cxx = pytest.mark.skipif(CXX is None or not (CUDA_INCLUDE / "cuda.h").exists(),
                               reason="needs a C++ compiler and the CUDA toolkit's cuda.h")
PTX_ARCHS = [min(plan.AOT_ARCHS), max(plan.AOT_ARCHS)]
DTYPE_NAMES = {v: k for k, v in plan.DTYPE_ENUM.items()}


def _image(source: str, name: str) -> bytes:
    """The bytes of generated array `name` (e.g. k_sm90_1) of an images source."""
    body = re.search(rf"unsigned char const {name}\[\d+\] = \{{\n(.*?)\n\}};", source, re.S).group(1)
    return bytes(int(v) for v in body.replace("\n", "").split(",") if v.strip())


def test_each_arch_compiles_its_path():
    """NATIVE is a compile-time constant of the arch: sm_89 and later native FP8, below weight-only."""
    for spec in fp8_plan.aot_kernel_table():
        for arch in aot.KNOWN_ARCHS:
            if spec.kind == "gemm":
                sig, constexprs, _ = fp8_plan.kernel_signature(spec, arch)
                assert constexprs["NATIVE"] is (arch >= 89) and constexprs["UPCAST_DOT"] is False
                assert constexprs["BLOCK_K"] == 128 and 128 % constexprs["BLOCK_N"] == 0
                prefill_native = arch >= 89 and fp8_plan.GEMM_CONFIGS[spec.variant].name == "prefill"
                assert constexprs["X_FP8"] is prefill_native  # reads act_quant's codes: x_ptr holds bytes
                assert sig["x_ptr"] == ("*u8" if prefill_native else "*" + {"float16": "fp16",
                                                                           "bfloat16": "bf16"}[spec.dtype])


@pytest.mark.slow
def test_every_fp8_kernel_is_built_for_every_arch_within_shared_memory(aot_kernels):
    manifest = json.loads((aot_kernels / "manifest.json").read_text())
    table = fp8_plan.aot_kernel_table()
    seen = {(k["arch"], k["ptx"]) for k in manifest["fp8_kernels"]}
    assert seen == {(a, False) for a in plan.AOT_ARCHS} | {(a, True) for a in PTX_ARCHS}
    assert len(manifest["fp8_kernels"]) == len(table) * (len(plan.AOT_ARCHS) + len(PTX_ARCHS))
    for k in manifest["fp8_kernels"]:
        assert 0 <= k["shared"] <= aot.SHARED_LIMIT[k["arch"]], k
        assert k["image_bytes"] > 0
    assert (KERNELS_INCLUDE / "fp8Kernels.cpp").read_text().count("&globalScratch,") == len(fp8_plan.KERNEL_KINDS)


@pytest.mark.slow
def test_machine_code_of_each_arch_is_its_path(aot_kernels, tmp_path):
    """SASS (Triton's cuobjdump) of every GEMM cubin: e4m3 instructions (decode's activation quantization, an FP8
    MMA in prefill) on sm_89+, none on sm_80/86; the PTX for later GPUs (sm_120's) is native, the one for the GPUs
    between cubins (sm_80's: sm_103, sm_110) weight-only."""
    import triton

    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not cuobjdump.exists():
        pytest.skip(f"{cuobjdump} is missing")
    source = (aot_kernels / "fp8_kernels_images.cpp").read_text()
    gemms = [i for i, spec in enumerate(fp8_plan.aot_kernel_table()) if spec.kind == "gemm"]
    prefill = fp8_plan.GEMM_CONFIGS.index(fp8_plan.config_named("prefill"))
    for arch in plan.AOT_ARCHS:
        for i in gemms:
            cubin = tmp_path / f"sass_{arch}_{i}.cubin"
            cubin.write_bytes(_image(source, f"k_sm{arch}_{i}"))
            sass = subprocess.run([str(cuobjdump), "-sass", str(cubin)], capture_output=True, text=True).stdout
            assert "MMA" in sass, (arch, i)
            fp8_mma = re.search(r"\b(QMMA|QGMMA|UTCQMMA)\b", sass)  # FP8 tensor cores
            assert bool("E4M3" in sass or fp8_mma) == (arch >= 89), (arch, i)  # e4m3 conversions or FP8 MMA
            if arch >= 89 and fp8_plan.aot_kernel_table()[i].variant == prefill:
                assert fp8_mma, (arch, i)
    for i in gemms:
        assert "e4m3" in _image(source, f"k_ptx{max(PTX_ARCHS)}_{i}").decode()
        assert "e4m3" not in _image(source, f"k_ptx{min(PTX_ARCHS)}_{i}").decode()


@pytest.mark.slow
def test_generated_fp8_files_hold_data_only(aot_kernels):
    for name in ("fp8_kernels_images.cpp", "fp8_kernels_tables.h"):
        text = (aot_kernels / name).read_text()
        assert not re.search(r"\)\s*(const\s*)?(noexcept\s*)?\{", text), f"{name} defines a function"
        assert "cuLaunchKernel" not in text and "return" not in text


def test_launchers_pass_the_kernels_arguments_in_order():
    """Each hand-written launcher builds its argument array in fp8_plan.RUNTIME_ARGS order, with the types."""
    source = (KERNELS_INCLUDE / "fp8Kernels.cpp").read_text()
    for kind, function in {"act_quant": "launchActQuant", "gemm": "launchGemm", "reduce": "launchReduce"}.items():
        body = source.split(f"CUresult {function}(", 1)[1].split(") noexcept\n{", 1)[1]
        body = body.split("return launchKernel", 1)[0]
        args = re.search(r"void\* args\[\] = \{(.*?)\};", body, re.S).group(1)
        names = [a.strip().lstrip("&") for a in args.split(",")]
        assert names[-2:] == ["globalScratch", "profileScratch"], kind
        assert names[:-2] == [f"a{i}" for i in range(len(fp8_plan.RUNTIME_ARGS[kind]))], kind
        declared = {}
        for statement in body.split(";"):
            match = re.match(r"\s*(CUdeviceptr|int32_t|float)\s+(.*)", statement, re.S)
            if match:
                for item in match.group(2).split(","):
                    declared[item.split("=")[0].strip()] = match.group(1)
        for i, (_, ty) in enumerate(fp8_plan.RUNTIME_ARGS[kind]):
            want = {"i32": "int32_t", "fp32": "float"}.get(ty, "CUdeviceptr")
            assert declared.get(f"a{i}") == want, (kind, i, ty, declared)


_PLAN_MAIN = r"""
#include "fp8KernelsPlan.h"
#include <cstdio>
using namespace mla::kernels;
int main()
{
    long long groups, rows;
    int n, k, block, dtype;
    while (std::scanf("%lld %lld %d %d %d %d", &groups, &rows, &n, &k, &block, &dtype) == 6)
    {
        fp8::Dims d{groups, rows, n, k, block, static_cast<DataType>(dtype)};
        char const* why = fp8::plan::unsupportedReason(d);
        fp8::plan::LaunchPlan p{};
        if (why != nullptr || !fp8::plan::makePlan(d, p))
        {
            std::printf("no %s\n", why != nullptr ? why : "makePlan failed");
            continue;
        }
        std::printf("ok %d %lld %lld %lld %d %d", p.config, static_cast<long long>(p.mTiles),
            static_cast<long long>(p.nTiles), static_cast<long long>(p.kBlocks), p.splits, p.kBlocksPerSplit);
        for (int kind = 0; kind < 3; ++kind)
            std::printf(" %d %u %u %u", p.kernels[kind], p.grids[kind][0], p.grids[kind][1], p.grids[kind][2]);
        std::printf(" %lld %lld %lld %lld %lld\n", static_cast<long long>(p.xqOffset), static_cast<long long>(p.sxOffset),
            static_cast<long long>(p.partialOffset), static_cast<long long>(p.callBytes),
            static_cast<long long>(p.workspaceBytes));
    }
    return 0;
}
"""


def python_line(groups, rows, n, k, block, dtype) -> str:
    dims = fp8_plan.Fp8Dims(groups, rows, n, k, DTYPE_NAMES[dtype])
    why = fp8_plan.unsupported_reason(dims, block)
    if why is not None:
        return f"no {why}"
    p = fp8_plan.make_plan(dims)
    fields = [fp8_plan.GEMM_CONFIGS.index(p.config), p.m_tiles, p.n_tiles, p.k_blocks, p.splits,
              p.k_blocks_per_split]
    for index, grid in zip(fp8_plan.kernel_indices(p, dims.dtype), (p.quant_grid, p.gemm_grid, p.reduce_grid)):
        fields += [index, *grid]
    fields += [p.xq_offset, p.sx_offset, p.partial_offset, p.call_bytes, p.workspace_bytes]
    return "ok " + " ".join(map(str, fields))


@pytest.mark.slow
@needs_cxx
def test_cpp_plan_equals_python_plan(aot_kernels, tmp_path):
    exe = tmp_path / "fp8_plan_main"
    (tmp_path / "fp8_plan_main.cpp").write_text(_PLAN_MAIN)
    proc = subprocess.run([CXX, "-std=c++17", "-O1", str(tmp_path / "fp8_plan_main.cpp"),
                           str(KERNELS_INCLUDE / "fp8KernelsPlan.cpp"), f"-I{KERNELS_INCLUDE}", f"-I{aot_kernels}",
                           f"-I{CUDA_INCLUDE}", "-o", str(exe)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    sweep = list(itertools.product(
        (1, 3, 128, 70000),  # groups
        (0, 1, 5, 16, 17, 64, 65, 200, 1000, 4096, 70000, 2 ** 31),  # rows
        ((576, 7168), (1536, 7168), (7168, 18432), (24576, 1536), (40, 64), (512, 128), (8, 16), (20, 64),
         (64, 24)),  # (N, K)
        (128, 64),  # block size
        (0, 1, 2),  # dtype: float32, float16, bfloat16
    ))
    lines = [f"{g} {m} {n} {k} {b} {dt}" for g, m, (n, k), b, dt in sweep]
    run = subprocess.run([str(exe)], input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=300)
    cpp = run.stdout.splitlines()
    assert len(cpp) == len(sweep)
    supported = split = quant = 0
    for (g, m, (n, k), b, dt), got in zip(sweep, cpp):
        want = python_line(g, m, n, k, b, dt)
        assert got == want, f"G={g} M={m} N={n} K={k} block={b} dtype={dt}"
        supported += want.startswith("ok")
        split += want.startswith("ok") and want.split()[5] != "1"
        quant += want.startswith("ok") and want.split()[8] != "0"  # act_quant's grid
    assert supported >= 300 and split >= 40 and quant >= 100  # every kind of plan is compared


# Cases of the launch comparison: decode, prefill, split and not, ragged N/K, per-head weights.
LAUNCH_CASES = [(1, 1, 576, 7168, "bfloat16"), (1, 7, 40, 1104, "float16"), (1, 4096, 7168, 2048, "float16"),
                (1, 100, 7168, 2048, "bfloat16"), (128, 4, 512, 128, "bfloat16"), (3, 33, 136, 272, "float16")]


def write_launch_plan(path: Path, kernels_dir: Path) -> int:
    """The launches fp8_plan plans for LAUNCH_CASES in testFp8Launch.cpp's format on sm_90 (the native path; names,
    blocks and shared memory from the AOT manifest for sm_90); returns the number of launches."""
    compiled = json.loads((kernels_dir / "manifest.json").read_text())["fp8_kernels"]
    table = fp8_plan.aot_kernel_table()
    lines, launches = [], 0
    for groups, rows, n, k, dtype in LAUNCH_CASES:
        lines.append(f"case {groups} {rows} {n} {k} {plan.DTYPE_ENUM[dtype]}")
        p = fp8_plan.make_plan(fp8_plan.Fp8Dims(groups, rows, n, k, dtype))
        quant, gemm, reduce = fp8_plan.kernel_indices(p, dtype)
        kinds = p.launches(native=True)
        part = f"p:ws+{p.partial_offset}" if p.splits > 1 else "p:null"
        x, sx = (f"p:ws+{p.xq_offset}", f"p:ws+{p.sx_offset}") if "act_quant" in kinds else ("p:input", "p:null")
        planned = [(quant, p.quant_grid, ["p:input", x, sx, f"i:{groups * rows}", f"i:{k}"])] if "act_quant" in kinds \
            else []
        planned.append((gemm, p.gemm_grid, [x, "p:weight", "p:scale_inv", sx, "p:output", part, f"i:{rows}", f"i:{n}",
                                            f"i:{k}", f"i:{p.k_blocks_per_split}"]))
        if "reduce" in kinds:
            planned.append((reduce, p.reduce_grid, [part, "p:output", f"i:{groups * rows * n}", f"i:{p.splits}"]))
        for index, grid, args in planned:
            spec = table[index]
            found = [c for c in compiled if c["arch"] == 90 and not c["ptx"]
                     and (c["kind"], c["dtype"], c["variant"]) == (spec.kind, spec.dtype, spec.variant)]
            assert len(found) == 1
            lines.append(" ".join(["launch", found[0]["name"], *map(str, grid), str(32 * found[0]["num_warps"]), "1",
                                   "1", str(found[0]["shared"]), *args, "p:null", "p:null"]))
            launches += 1
    path.write_text("\n".join(lines) + "\n")
    return launches


@pytest.mark.slow
@needs_cxx
def test_cpp_launches_equal_the_python_plan(aot_kernels, tmp_path):
    """testFp8Launch.cpp built against this session's kernels: its own hand-worked cases, then every launch of
    LAUNCH_CASES (kernel, grid, block, shared memory, each argument) against fp8_plan's."""
    assert write_launch_plan(tmp_path / "fp8_launch_plan.txt", aot_kernels) >= 8
    exe = tmp_path / "test_fp8_launch"
    sources = [ROOT / "plugins" / "tests" / "testFp8Launch.cpp", TESTING / "fakeCuda.cpp", TESTING / "launchPlan.cpp",
               KERNELS_INCLUDE / "mlaKernels.cpp", KERNELS_INCLUDE / "mlaKernelsPlan.cpp",
               KERNELS_INCLUDE / "fp8Kernels.cpp", KERNELS_INCLUDE / "fp8KernelsPlan.cpp",
               aot_kernels / "mla_kernels_images.cpp", aot_kernels / "fp8_kernels_images.cpp"]
    proc = subprocess.run([CXX, "-std=c++17", "-O0", *map(str, sources), f"-I{KERNELS_INCLUDE}", f"-I{TESTING}",
                           f"-I{aot_kernels}", f"-I{CUDA_INCLUDE}", "-o", str(exe)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = subprocess.run([str(exe), str(tmp_path / "fp8_launch_plan.txt")], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout[-4000:]
    assert f"compared {len(LAUNCH_CASES)} planned calls" in run.stdout and " 0 failed" in run.stdout


# ---- GPU: the AOT images themselves (plugins/tools/fp8_kernels_run, the plugin's kernels library) vs float64 ----

GPU_CASES = [  # (G, M, N, K, dtype, weight spread): split-K decode, ragged prefill, groups, ragged K with a split
    (1, 1, 576, 7168, "bfloat16", True), (1, 300, 136, 272, "float16", True), (3, 5, 72, 160, "bfloat16", True),
    (1, 3, 40, 1104, "float16", True), (128, 4, 512, 128, "bfloat16", False), (1, 4096, 1536, 7168, "bfloat16", False),
]


def _run_aot(exe: Path, tmp_path: Path, x, q, s, extra=()) -> tuple:
    """Write IN, run `exe` (optionally under `extra`, e.g. compute-sanitizer), read OUT: (output, JSON line)."""
    import numpy as np
    import torch

    groups, rows, k = (x.shape if x.dim() == 3 else (1, *x.shape))
    n = q.shape[-2]
    header = np.array([groups, rows, n, k, plan.DTYPE_ENUM[str(x.dtype).removeprefix("torch.")]], dtype="<i8")
    raw = [header.tobytes(), x.contiguous().view(torch.uint8).numpy().tobytes(),
           q.contiguous().view(torch.uint8).numpy().tobytes(), s.contiguous().numpy().astype("<f4").tobytes()]
    (tmp_path / "in.bin").write_bytes(b"".join(raw))
    proc = subprocess.run([*extra, str(exe), str(tmp_path / "in.bin"), str(tmp_path / "out.bin")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = torch.frombuffer(bytearray((tmp_path / "out.bin").read_bytes()), dtype=torch.uint8)
    out = data.view(x.dtype).reshape(groups, rows, n) if x.dim() == 3 else data.view(x.dtype).reshape(rows, n)
    return out, json.loads(proc.stdout.strip().splitlines()[0]), proc.stdout + proc.stderr


def _gpu_case(case):
    import torch

    import fp8_reference as ref

    groups, rows, n, k, dtype, spread = case
    g = torch.Generator().manual_seed(rows + n + k)
    w = torch.randn(groups, n, k, generator=g)
    if spread:
        w = w * ref.expand_scales(10.0 ** (6 * torch.rand(groups, -(-n // 128), -(-k // 128), generator=g) - 3),
                                  n, k).float()
    q, s = ref.quantize(w)
    x = torch.randn(groups, rows, k, generator=g).to(getattr(torch, dtype))
    return (x, q, s) if groups > 1 else (x[0], q[0], s[0])


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES, ids=str)
def test_aot_kernels_match_float64_on_gpu(plugin_build, tmp_path, case):
    """The shipped images on this GPU (its arch's path: native FP8 on sm_89+) within the path's bound."""
    import torch

    import fp8_reference as ref
    from mla_export.run.compare import compare

    x, q, s = _gpu_case(case)
    got, facts, _ = _run_aot(plugin_build / "tools" / "fp8_kernels_run", tmp_path, x, q, s)
    native = facts["arch"] >= fp8_plan.NATIVE_MIN_ARCH and facts["image_arch"] >= fp8_plan.NATIVE_MIN_ARCH
    dims = fp8_plan.Fp8Dims(q.shape[0] if q.dim() == 3 else 1, x.shape[-2] if x.dim() == 3 else x.shape[0],
                            q.shape[-2], q.shape[-1], str(x.dtype).removeprefix("torch."))
    splits = fp8_plan.make_plan(dims).splits
    xs, qs, ss = (t.cuda() for t in (x, q, s))  # the float64 reference on the GPU
    rounding = {torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}[x.dtype]
    tiny = {torch.float16: 2.0 ** -24, torch.bfloat16: 2.0 ** -133}[x.dtype]
    atol = ref.kernel_bound(xs, qs, ss, splits, native, rounding, tiny).cpu().numpy()
    result = compare("fp8 AOT", got, ref.reference(xs, qs, ss).cpu(), atol, rounding)
    assert result.passed, (facts, result)


@pytest.mark.gpu
def test_aot_kernels_under_memcheck(plugin_build, tmp_path):
    """compute-sanitizer memcheck over a split-K decode with ragged K and a ragged prefill: no invalid access."""
    sanitizer = shutil.which("compute-sanitizer")
    if sanitizer is None:
        pytest.skip("compute-sanitizer is missing")
    for case in (GPU_CASES[3], GPU_CASES[1]):
        x, q, s = _gpu_case(case)
        _, _, log = _run_aot(plugin_build / "tools" / "fp8_kernels_run", tmp_path, x, q, s,
                             extra=(sanitizer, "--error-exitcode", "1", "--tool", "memcheck"))
        assert "ERROR SUMMARY: 0 errors" in log, log[-2000:]


@pytest.mark.slow
@pytest.mark.skipif(Path("/dev/nvidia0").exists(), reason="checks the runner on a machine without a GPU")
def test_aot_runner_reads_its_input_and_needs_a_gpu(plugin_build, tmp_path):
    """Without a GPU the runner reads and checks IN, then exits 77 (gpu_check's skip code); bad dims exit 1 with
    the plan's reason, before any device work."""
    import torch

    exe = plugin_build / "tools" / "fp8_kernels_run"
    x, q, s = _gpu_case(GPU_CASES[3])
    header = [1, 3, 40, 1104, plan.DTYPE_ENUM["float16"]]
    body = x.view(torch.uint8).numpy().tobytes() + q.view(torch.uint8).numpy().tobytes() + s.numpy().tobytes()
    for values, code, text in ((header, 77, "no CUDA driver or device"), ([1, 3, 40, 1100, 1], 1, "K must be"),
                               ([1, 3, 40, 1104, 0], 1, "float16 and bfloat16 only")):
        (tmp_path / "in.bin").write_bytes(b"".join(v.to_bytes(8, "little", signed=True) for v in values) + body)
        proc = subprocess.run([str(exe), str(tmp_path / "in.bin"), str(tmp_path / "out.bin")], capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == code and text in proc.stderr, (values, proc.returncode, proc.stderr)
    (tmp_path / "in.bin").write_bytes(b"".join(v.to_bytes(8, "little", signed=True) for v in header) + body[:100])
    proc = subprocess.run([str(exe), str(tmp_path / "in.bin"), str(tmp_path / "out.bin")], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1 and "shorter than its header" in proc.stderr
