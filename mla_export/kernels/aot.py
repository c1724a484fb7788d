"""Ahead-of-time build of the kernels for the TensorRT plugin, on a machine without a GPU.

    python -m mla_export.kernels.aot --out-dir build/kernels [--archs 80,90] [--jobs 2]

Compiles every specialization of `plan.aot_kernel_table()` (MlaAttention), of
`moe_plan.aot_kernel_table()` (DeepseekMoE) and of `fp8_plan.aot_kernel_table()` (BlockFp8MatMul: native FP8 on
sm_89 and later, weight-only below, `fp8_plan.native_fp8`) with
`triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))` for each arch of
`plan.AOT_ARCHS`, plus PTX of the newest and the oldest arch (`.target sm_XXXa` lowered to `sm_XXX` and
checked with ptxas, so the driver can JIT it: the newest for later GPUs, the oldest for the GPUs between
cubins, such as sm_103 or sm_110), checks shared memory against each arch's limit,
and writes data for the hand-written host code in plugins/kernels/ (via `codegen.py`):

    DIR/mla_kernels_images.cpp cubins/PTX as byte arrays, entry names, shared memory per kernel and arch
    DIR/mla_kernels_tables.h   plan.py's tables and constants (read by plugins/kernels/mlaKernelsPlan.cpp)
    DIR/moe_kernels_images.cpp the same for the DeepseekMoE kernels
    DIR/moe_kernels_tables.h   moe_plan.py's tables and constants (read by plugins/kernels/moeKernelsPlan.cpp)
    DIR/fp8_kernels_images.cpp the same for the BlockFp8MatMul kernels
    DIR/fp8_kernels_tables.h   fp8_plan.py's tables and constants (read by plugins/kernels/fp8KernelsPlan.cpp)
    DIR/manifest.json          per kernel and arch: name, shared bytes, image bytes, compile seconds
                               ("kernels": MlaAttention, "moe_kernels": DeepseekMoE,
                               "fp8_kernels": BlockFp8MatMul)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from ..common.fileio import atomic_write_text
from .moe import plan as moe_plan
from .attention import plan
from .fp8 import plan as fp8_plan

# Largest dynamic shared memory per block (opt-in), bytes, per compute capability: every GPU arch we know.
SHARED_LIMIT = {80: 166912, 86: 101376, 87: 166912, 89: 101376, 90: 232448, 100: 232448, 103: 232448,
                110: 232448, 120: 101376, 121: 101376}
KNOWN_ARCHS = tuple(sorted(SHARED_LIMIT))


def image_choice(arch: int, cubin_archs: tuple[int, ...], ptx_archs: tuple[int, ...]) -> tuple[int, bool] | None:
    """(image arch, is PTX) that the generated `imageFor` picks on a device of `arch`, or None (its mirror):
    the exact cubin; else the newest sm_8x cubin not above an sm_8x device; else the newest PTX not above it."""
    if arch in cubin_archs:
        return arch, False
    same_family = [a for a in cubin_archs if arch // 10 == 8 and a // 10 == 8 and a <= arch]
    if same_family:
        return max(same_family), False
    below = [a for a in ptx_archs if a <= arch]
    return (max(below), True) if below else None


def ptx_jit_targets(cubin_archs: tuple[int, ...], ptx_archs: tuple[int, ...]) -> dict[int, tuple[int, ...]]:
    """For each PTX image: its own arch and every known arch that JIT-compiles it (checked with ptxas)."""
    return {p: tuple(sorted({p} | {a for a in KNOWN_ARCHS if image_choice(a, cubin_archs, ptx_archs) == (p, True)}))
            for p in ptx_archs}


KERNEL_SETS = ("mla", "moe", "fp8")  # MlaAttention (plan.py), DeepseekMoE (moe_plan.py), BlockFp8MatMul (fp8_plan)


def kernel_table(kernel_set: str) -> tuple:
    """The AOT kernel table of a kernel set."""
    return {"mla": plan.aot_kernel_table, "moe": moe_plan.aot_kernel_table,
            "fp8": fp8_plan.aot_kernel_table}[kernel_set]()


@dataclass
class Compiled:
    """One kernel specialization compiled for one arch (or PTX)."""

    kernel_set: str  # KERNEL_SETS
    index: int  # position in kernel_table(kernel_set)
    arch: int
    is_ptx: bool
    name: str  # entry point in the image
    shared: int  # dynamic shared memory bytes at launch
    num_warps: int
    image: bytes  # cubin, or NUL-terminated PTX
    seconds: float


def kernel_function(kind: str, kernel_set: str = "mla"):
    """The @triton.jit function of a kernel kind (imported here: needs triton)."""
    if kernel_set == "fp8":
        from .fp8 import gemm as fp8_gemm

        return {"act_quant": fp8_gemm.block_fp8_act_quant_kernel, "gemm": fp8_gemm.block_fp8_matmul_kernel,
                "reduce": fp8_gemm.block_fp8_reduce_kernel}[kind]
    if kernel_set == "moe":
        from .moe import align as moe_align, experts as moe_experts, route as moe_route

        return {"router_logits": moe_route.moe_router_logits_kernel, "topk": moe_route.moe_topk_kernel,
                "count": moe_align.moe_count_kernel, "align": moe_align.moe_align_kernel,
                "gate_up": moe_experts.moe_gate_up_kernel, "down": moe_experts.moe_down_kernel,
                "combine": moe_experts.moe_combine_kernel}[kind]
    from .attention import split_kv as attention, combine, rope_append

    return {"rope_append": rope_append.mla_rope_append_kernel, "attention": attention.mla_attention_kernel,
            "combine": combine.mla_combine_kernel}[kind]


def signature(spec, kernel_set: str = "mla", arch: int | None = None) -> tuple[dict, dict, dict]:
    """The plan's kernel_signature(spec) (for `arch`: the fp8 set's path and the MoE FP8 experts' depend on it),
    checked against the @triton.jit function's own argument names."""
    if kernel_set == "fp8":
        sig, constexprs, attrs = fp8_plan.kernel_signature(spec, arch)
    elif kernel_set == "moe":
        sig, constexprs, attrs = moe_plan.kernel_signature(spec, arch)
    else:
        sig, constexprs, attrs = plan.kernel_signature(spec)
    fn = kernel_function(spec.kind, kernel_set)
    if list(sig) != list(fn.arg_names):
        raise RuntimeError(f"{spec.kind}: AOT signature {list(sig)} does not match the kernel's {list(fn.arg_names)}")
    return sig, constexprs, attrs


def _lower_ptx_target(ptx: str, arch: int) -> str:
    """`.target sm_XXXa` -> `.target sm_XXX`: arch-specific PTX cannot be JIT-compiled for later GPUs."""
    return re.sub(rf"\.target sm_{arch}a\b", f".target sm_{arch}", ptx)


def _check_ptx(ptx: str, arch: int, targets: tuple[int, ...]) -> None:
    """Assemble the lowered PTX of sm_<arch> with Triton's ptxas for every arch in `targets` (those whose
    driver will JIT-compile it): proof it uses no arch-specific feature and assembles there."""
    from triton.backends.nvidia.compiler import get_ptxas

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        for target in targets:
            proc = subprocess.run([get_ptxas(target).path, f"--gpu-name=sm_{target}", str(src), "-o",
                                   str(Path(tmp) / "k.cubin")], capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"PTX of sm_{arch} does not assemble for sm_{target}: {proc.stderr[-2000:]}")


def compile_one(kernel_set: str, index: int, arch: int, ptx_targets: tuple[int, ...]) -> list[Compiled]:
    """Compile kernel `index` of the set's table for `arch`; also its portable PTX, checked for `ptx_targets`,
    when that is not empty."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    triton.knobs.compilation.disable_line_info = True  # smaller images
    spec = kernel_table(kernel_set)[index]
    sig, constexprs, attrs = signature(spec, kernel_set, arch)
    start = time.perf_counter()
    src = ASTSource(kernel_function(spec.kind, kernel_set), sig, constexprs, attrs)
    kernel = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                            options={"num_warps": spec.num_warps, "num_stages": spec.num_stages,
                                     "enable_fp_fusion": plan.FP_FUSION})
    seconds = time.perf_counter() - start
    md = kernel.metadata
    if getattr(md, "global_scratch_size", 0) or getattr(md, "profile_scratch_size", 0):
        raise RuntimeError(f"{kernel_set} kernel {index} ({spec.kind}) on sm_{arch} needs global/profile scratch "
                           f"({md.global_scratch_size}/{md.profile_scratch_size} bytes): the launcher passes none")
    limit = SHARED_LIMIT[arch]
    if md.shared > limit:
        raise RuntimeError(f"{kernel_set} kernel {index} ({spec}) needs {md.shared} bytes of shared memory on "
                           f"sm_{arch}, over its limit {limit}: lower block sizes in its plan")
    out = [Compiled(kernel_set, index, arch, False, md.name, md.shared, md.num_warps, kernel.asm["cubin"], seconds)]
    if ptx_targets:
        ptx = _lower_ptx_target(kernel.asm["ptx"], arch)
        _check_ptx(ptx, arch, ptx_targets)
        out.append(Compiled(kernel_set, index, arch, True, md.name, md.shared, md.num_warps, ptx.encode() + b"\0",
                            0.0))
    return out


def build(out_dir: Path, archs: tuple[int, ...] = plan.AOT_ARCHS, jobs: int | None = None,
          log=print) -> dict:
    """Compile everything, write the generated sources and the manifest; returns the manifest."""
    from . import codegen

    for arch in archs:
        if arch not in SHARED_LIMIT:
            raise ValueError(f"arch {arch}: no shared-memory limit known (known: {sorted(SHARED_LIMIT)})")
    ptx_archs = tuple(sorted({min(archs), max(archs)}))
    jit_targets = ptx_jit_targets(archs, ptx_archs)
    work = [(kset, i, arch, jit_targets.get(arch, ())) for kset in KERNEL_SETS for arch in archs
            for i in range(len(kernel_table(kset)))]
    start = time.perf_counter()
    jobs = jobs or os.cpu_count() or 1
    results: list[Compiled] = []
    if jobs == 1:
        for w in work:
            results += compile_one(*w)
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            for res in pool.map(compile_one, *zip(*work)):
                results += res
    total = time.perf_counter() - start
    out_dir.mkdir(parents=True, exist_ok=True)
    by_set = {kset: [r for r in results if r.kernel_set == kset] for kset in KERNEL_SETS}
    atomic_write_text(out_dir / "mla_kernels_images.cpp", codegen.images_source(by_set["mla"], archs, ptx_archs))
    atomic_write_text(out_dir / "mla_kernels_tables.h", codegen.tables_header())
    atomic_write_text(out_dir / "moe_kernels_images.cpp",
                      codegen.images_source(by_set["moe"], archs, ptx_archs, kernel_set="moe"))
    atomic_write_text(out_dir / "moe_kernels_tables.h", codegen.moe_tables_header())
    atomic_write_text(out_dir / "fp8_kernels_images.cpp",
                      codegen.images_source(by_set["fp8"], archs, ptx_archs, kernel_set="fp8"))
    atomic_write_text(out_dir / "fp8_kernels_tables.h", codegen.fp8_tables_header())
    manifest = {
        "archs": list(archs), "ptx_archs": list(ptx_archs),
        "ptx_checked_for": {f"sm_{p}": list(t) for p, t in jit_targets.items()}, "wall_seconds": round(total, 2), "jobs": jobs,
    }
    for kset, prefix in (("mla", ""), ("moe", "moe_"), ("fp8", "fp8_")):
        table = kernel_table(kset)
        per_arch = {}
        for r in by_set[kset]:
            key = f"ptx{r.arch}" if r.is_ptx else f"sm_{r.arch}"
            d = per_arch.setdefault(key, {"compile_seconds": 0.0, "image_bytes": 0, "max_shared": 0})
            d["compile_seconds"] += r.seconds
            d["image_bytes"] += len(r.image)
            d["max_shared"] = max(d["max_shared"], r.shared)
        manifest[prefix + "per_arch"] = per_arch
        manifest[prefix + "kernels"] = [
            dict(asdict(table[r.index]), arch=r.arch, ptx=r.is_ptx, name=r.name, shared=r.shared,
                 num_warps=r.num_warps, image_bytes=len(r.image), seconds=round(r.seconds, 2)) for r in by_set[kset]]
        for key, d in per_arch.items():
            log(f"{kset} {key}: {len(table)} kernels, {d['image_bytes'] / 1024:.0f} KiB, max shared "
                f"{d['max_shared']} B, {d['compile_seconds']:.1f} s compile")
    atomic_write_text(out_dir / "manifest.json", json.dumps(manifest, indent=1))
    log(f"wrote {out_dir}/{{mla,moe,fp8}}_kernels_images.cpp and {{mla,moe,fp8}}_kernels_tables.h in {total:.1f} s "
        f"({jobs} jobs)")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mla_export.kernels.aot", description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", type=Path, required=True, help="directory for the generated sources")
    parser.add_argument("--archs", default=",".join(map(str, plan.AOT_ARCHS)),
                        help="comma-separated compute capabilities [default: %(default)s]")
    parser.add_argument("--jobs", type=int, default=None, help="compile processes [default: CPU count]")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("error: unset TRITON_INTERPRET: the AOT build compiles, it does not interpret", file=sys.stderr)
        return 2
    try:
        archs = tuple(int(a) for a in args.archs.split(",") if a.strip())
    except ValueError:
        print(f"error: --archs must be comma-separated integers, got {args.archs!r}", file=sys.stderr)
        return 2
    build(args.out_dir, archs, args.jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
