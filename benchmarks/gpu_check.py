"""One command proves the GPU path: every owed GPU test, sanitizer run and benchmark, each step under its own
time limit, going on past a failing step, into OUT/gpu-check.json and OUT/gpu-check.md.

    make gpu-bundle                      # CPU machine: kernels, plugin, GPU programs -> build/gpu-bundle
    make gpu-check OUT=dir               # GPU machine (no network, no TensorRT): this script, every step

    python benchmarks/gpu_check.py --probe                   # exit 1 with one line where there is no GPU
    python benchmarks/gpu_check.py --bundle DIR --build B    # assemble the bundle from a build, check its size
    python benchmarks/gpu_check.py --out DIR --bundle DIR    # run every step

Each step is a command (its output in OUT/<step>.log) with a parser of what it printed; the registry
`STEPS` is the one list, and later benchmarks add themselves to it. The whole run keeps under
TOTAL_LIMIT_S: a step gets the smaller of its own limit and what is left.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
TOTAL_LIMIT_S = 510  # under 9 minutes with the start and the reports
BUNDLE_LIMIT_BYTES = 48 << 20
# Bundle contents, in the build's own layout (tests/test_plugin.py reads $MLA_PLUGIN_BUILD that way). The kernels'
# images travel compiled into the library and tools; their generated source (22 MB of text since the contract-2
# cache kernels) stays behind.
BUNDLE_FILES = ("kernels/manifest.json", "kernels/mla_kernels_tables.h",
                "plugins/mlaAttentionPlugin/libmla_plugin.so", "plugins/tests/test_mla_gpu_enqueue",
                "plugins/tests/test_moe_gpu_enqueue", "plugins/tests/test_fp8_gpu_enqueue",
                "plugins/tools/mla_kernels_bench", "plugins/tools/fp8_kernels_run", "cpp/mla_nccl_smoke")
# Targets the figures are judged against (H100, bfloat16, DeepSeek dims; issue "one command proves the GPU path").
TARGETS = {"decode B=64 x 4096, % of copy": 70.0, "decode B=1 x 65536, % of copy": 60.0,
           "prefill S=4096, % of bf16 GEMM": 25.0, "speed-up vs eager, B=64 x 4096": 6.0,
           # Paged latent cache (issue 24): 64-row shuffled pages within 5% of the contiguous cache's decode time.
           "AOT paged64 decode B=64 x 4096, speed vs contiguous %": 95.0,
           # DeepseekMoE (issue 15; bench_moe.py): expert-weight bytes read vs copy, flops vs the bf16 GEMM. At V3's
           # sizes 4096 tokens still read all 256 experts: bench_moe.py also reports the roofline fraction.
           **{f"MoE {preset} decode T={t}, % of copy": 70.0 for preset in ("V2-Lite", "V3") for t in (1, 8, 64)},
           **{f"MoE {preset} prefill T=4096, % of bf16 GEMM": 40.0 for preset in ("V2-Lite", "V3")},
           # BlockFp8MatMul (issue 22; bench_fp8.py): FP8 weight bytes read vs copy at decode, flops at prefill.
           **{f"FP8 GEMM {shape} M=1, % of copy": 70.0 for shape in ("576x7168", "7168x18432")},
           "FP8 GEMM 7168x18432 M=4096, % of bf16 GEMM": 40.0}
MOE_PRESETS = {"deepseek-v2-lite": "V2-Lite", "deepseek-v3": "V3"}


@dataclass
class Step:
    """One step: `command(ctx)` is run with a time limit; `parse(output, ctx)` turns what it printed into
    figures (and may raise to mark the step failed)."""

    name: str
    what: str
    limit_s: int
    command: Callable[["Context"], list[str]]
    parse: Callable[[str, "Context"], dict] = lambda output, ctx: {}
    env: Callable[["Context"], dict] = lambda ctx: {}


@dataclass
class Result:
    name: str
    what: str
    status: str  # ok | failed | timeout | skipped
    seconds: float
    note: str = ""
    figures: dict = field(default_factory=dict)


@dataclass
class Context:
    out: Path
    bundle: Path
    python: str = sys.executable
    figures: dict = field(default_factory=dict)  # every step's figures by step name, for later steps


def run_steps(steps: list[Step], ctx: Context, total_limit_s: float = TOTAL_LIMIT_S,
              log: Callable[[str], None] = print) -> list[Result]:
    """Run every step in order, each under min(its limit, what is left of `total_limit_s`); never stops early."""
    ctx.out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + total_limit_s
    results = []
    for step in steps:
        left = deadline - time.monotonic()
        if left < 1:
            results.append(Result(step.name, step.what, "timeout", 0.0, "no time left in the run"))
            continue
        limit = min(step.limit_s, left)
        start = time.monotonic()
        log_path = ctx.out / f"{step.name}.log"
        try:
            command = step.command(ctx)
            env = {**os.environ, "PYTHONPATH": str(ROOT), **step.env(ctx)}
            proc = subprocess.run(command, capture_output=True, text=True, timeout=limit, cwd=ROOT, env=env)
            output = proc.stdout + proc.stderr
            log_path.write_text(f"$ {' '.join(map(str, command))}\n{output}")
            figures = step.parse(output, ctx)
            ctx.figures[step.name] = figures
            if proc.returncode == 77:  # the step says why it skipped on its last line, else: no GPU
                lines = [line for line in output.strip().splitlines() if line.strip()]
                result = Result(step.name, step.what, "skipped", 0.0,
                                lines[-1][:200] if lines else "no GPU at run time (exit 77)", figures)
            elif proc.returncode != 0:
                result = Result(step.name, step.what, "failed", 0.0, _last_line(output, proc.returncode), figures)
            else:
                result = Result(step.name, step.what, "ok", 0.0, figures.pop("note", ""), figures)
        except subprocess.TimeoutExpired as exc:
            output = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
            log_path.write_text(output)
            result = Result(step.name, step.what, "timeout", 0.0, f"stopped at its limit of {limit:.0f} s")
        except Exception as exc:  # a parser or a missing program: recorded, and the run goes on
            result = Result(step.name, step.what, "failed", 0.0, f"{type(exc).__name__}: {exc}")
        result.seconds = round(time.monotonic() - start, 1)
        results.append(result)
        log(f"{step.name}: {result.status} in {result.seconds:.1f} s {result.note}".rstrip())
    return results


def _last_line(output: str, code: int) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    return f"exit {code}: {lines[-1][:200] if lines else 'no output'}"


def write_reports(results: list[Result], out: Path) -> None:
    """OUT/gpu-check.json (everything) and OUT/gpu-check.md (a table ready for benchmarks/RESULTS.md)."""
    (out / "gpu-check.json").write_text(json.dumps([asdict(r) for r in results], indent=1) + "\n")
    lines = ["| step | what | status | time | figures |", "|---|---|---|---|---|"]
    for r in results:
        figures = "; ".join(f"{k}: {_fmt(v)}" for k, v in r.figures.items() if not isinstance(v, (list, dict)))
        note = f" ({r.note})" if r.note else ""
        lines.append(f"| {r.name} | {r.what} | {r.status}{note} | {r.seconds:.0f} s | {figures} |")
    judged = [(name, target, _find(results, name)) for name, target in TARGETS.items()]
    lines += ["", "| target | bar | measured | met |", "|---|---|---|---|"]
    for name, target, value in judged:
        met = "n/a" if value is None else ("yes" if value >= target else "NO")
        lines.append(f"| {name} | {target:g} | {_fmt(value) if value is not None else 'not measured'} | {met} |")
    (out / "gpu-check.md").write_text("\n".join(lines) + "\n")


def _fmt(value) -> str:
    return f"{value:,.3g}" if isinstance(value, float) else str(value)


def _find(results: list[Result], figure: str):
    for r in results:
        if figure in r.figures:
            return r.figures[figure]
    return None


# The steps' own parsers.

def _json_line(output: str) -> dict:
    for line in reversed(output.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError("no JSON line in the output")


def _pytest_counts(output: str, ctx: Context) -> dict:
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|error)", output)}
    note = ""
    if re.search(r"CompilationError|PTXASError|triton.*(unsupported|not supported)", output):
        version = ctx.figures.get("device", {}).get("triton", "?")
        note = f"this machine's Triton ({version}) cannot compile some of our kernels: see the log"
    return {**counts, "note": note}


def _sanitizer(output: str, ctx: Context) -> dict:
    match = re.search(r"ERROR SUMMARY: (\d+) error", output)
    if match is None:
        raise ValueError("no compute-sanitizer summary")
    return {"errors": int(match.group(1))}


def _cpp_bench(output: str, ctx: Context) -> dict:
    """GB/s and % of copy bandwidth (decode), TFLOP/s and % of the bf16 GEMM rate (prefill), per row."""
    base = ctx.figures.get("baselines", {})
    copy, gemm = base.get("copy_gb_s"), base.get("bf16_tflops")
    rows, figures, contiguous_us = [], {}, {}
    for line in output.splitlines():
        if not line.startswith("{"):
            continue
        row = json.loads(line)
        if "median_us" not in row:
            rows.append(row)
            continue
        seconds = row["median_us"] * 1e-6
        if row["phase"] == "decode":
            row["gb_s"] = round(row["cache_bytes"] / seconds / 1e9, 1)
            row["pct_of_copy"] = round(100 * row["gb_s"] / copy, 1) if copy else None
            layout = row.get("layout", "contiguous")
            key = (row["heads"], row["batch"], row["context"])
            if layout == "contiguous":
                contiguous_us[key] = row["median_us"]
                if key in ((128, 64, 4096), (128, 1, 65536)) and copy:
                    figures[f"decode B={row['batch']} x {row['context']}, % of copy"] = row["pct_of_copy"]
            elif key == (128, 64, 4096):  # contract 2's caches, as the plugin ships the kernels
                if copy:
                    figures[f"AOT {layout} decode B=64 x 4096, % of copy"] = row["pct_of_copy"]
                if key in contiguous_us:
                    figures[f"AOT {layout} decode B=64 x 4096, speed vs contiguous %"] = round(
                        100 * contiguous_us[key] / row["median_us"], 1)
        else:
            row["tflops"] = round(row["flops"] / seconds / 1e12, 1)
            row["pct_of_gemm"] = round(100 * row["tflops"] / gemm, 1) if gemm else None
            if row["heads"] == 128 and gemm:
                figures["prefill S=4096, % of bf16 GEMM"] = row["pct_of_gemm"]
        rows.append(row)
    if not rows:
        raise ValueError("the benchmark printed no rows")
    return {**figures, "rows": rows}


def _jit_bench(output: str, ctx: Context) -> dict:
    data = json.loads((ctx.out / "bench_kernels.json").read_text())
    figures = {"rows": data["rows"]}
    for row in data["rows"]:
        if row.get("phase") == "decode" and row["heads"] == 128 and (row["batch"], row["context"]) == (64, 4096):
            if "speedup_vs_eager" in row:
                figures["speed-up vs eager, B=64 x 4096"] = round(row["speedup_vs_eager"], 2)
            cpp = next((r for r in ctx.figures.get("cpp-bench", {}).get("rows", [])
                        if r.get("phase") == "decode" and r.get("heads") == 128 and r.get("batch") == 64
                        and r.get("context") == 4096 and "median_us" in r), None)
            if cpp:
                figures["AOT C++ vs Triton JIT, B=64 x 4096"] = round(row["us"] / cpp["median_us"], 2)
        if row.get("phase") == "decode-layout" and row["heads"] == 128 and (row["batch"], row["context"]) == (64, 4096):
            figures[f"{row['layout']} decode B=64 x 4096, % of copy"] = round(100 * row["of_copy_bw"], 1)
            figures[f"{row['layout']} decode B=64 x 4096, time vs contiguous"] = round(row["time_vs_contiguous"], 3)
    return figures


def _moe_bench(output: str, ctx: Context, name: str = "moe.json", label: str = "MoE") -> dict:
    """bench_moe.py's rows (OUT/<name>), and per preset and token count the % of copy bandwidth (decode) or
    of the bf16 GEMM (prefill) its own same-run peaks give."""
    path = ctx.out / name
    if not path.is_file():
        return {}
    rows = json.loads(path.read_text())["rows"]
    figures: dict = {"rows": rows}
    for row in rows:
        preset = f"{label} {MOE_PRESETS.get(row['preset'], row['preset'])}"
        if row["phase"] == "decode":
            figures[f"{preset} decode T={row['tokens']}, % of copy"] = round(100 * row["of_copy_bw"], 1)
        else:
            figures[f"{preset} prefill T={row['tokens']}, % of bf16 GEMM"] = round(100 * row["of_matmul"], 1)
            figures[f"{preset} prefill T={row['tokens']}, % of roofline"] = round(100 * row["of_roofline"], 1)
    return figures


def _fp8_bench(output: str, ctx: Context) -> dict:
    """bench_fp8.py's rows (OUT/fp8.json), and per shape and row count on the device's own path the % of copy
    bandwidth (decode) or of the bf16 GEMM (prefill) its same-run peaks give."""
    path = ctx.out / "fp8.json"
    if not path.is_file():
        return {}
    rows = json.loads(path.read_text())["rows"]
    own = rows[0]["path"] if rows else None  # the device's path is timed first
    figures: dict = {"rows": rows}
    for row in rows:
        if row["path"] != own:
            continue
        if row["phase"] == "decode":
            figures[f"FP8 GEMM {row['shape']} M={row['rows']}, % of copy"] = round(100 * row["of_copy_bw"], 1)
        else:
            figures[f"FP8 GEMM {row['shape']} M={row['rows']}, % of bf16 GEMM"] = round(100 * row["of_matmul"], 1)
    return figures


def _bundle(ctx: Context, *parts: str) -> str:
    return str(ctx.bundle.joinpath(*parts))


def _optional_script(path: str, arguments: Callable[[Context], list[str]]):
    """A step's command running benchmark `path` if this tree has it (else a skip, exit 77)."""
    def command(ctx: Context) -> list[str]:
        if not (ROOT / path).is_file():
            return [ctx.python, "-c", f"print('{path} is not in this tree'); raise SystemExit(77)"]
        return [ctx.python, path, *arguments(ctx)]
    return command


def _nccl_library() -> str:
    """libnccl.so.2 of the CUDA build of torch (the nvidia-nccl wheel) where this Python has it, else the
    loader's own search."""
    for entry in sys.path:
        candidate = Path(entry) / "nvidia" / "nccl" / "lib" / "libnccl.so.2"
        if candidate.is_file():
            return str(candidate)
    return "libnccl.so.2"


def _bundle_env(ctx: Context) -> dict:
    return {"MLA_KERNELS_DIR": _bundle(ctx, "kernels"), "MLA_PLUGIN_BUILD": _bundle(ctx, "plugins")}


SANITIZER = ["compute-sanitizer", "--error-exitcode", "1", "--tool"]
STEPS = [
    Step("device", "GPU, SM count, driver, CUDA, torch and Triton versions", 30,
         lambda ctx: [ctx.python, __file__, "--facts"], lambda out, ctx: _json_line(out)),
    Step("baselines", "device-to-device copy bandwidth and bf16 GEMM rate (torch), this run", 60,
         lambda ctx: [ctx.python, __file__, "--baselines"], lambda out, ctx: _json_line(out)),
    Step("pytest-gpu", "pytest -m gpu: Triton kernels in bf16 and at real sizes, custom op and models on CUDA", 150,
         lambda ctx: [ctx.python, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests",
                      "--ignore", "tests/test_plugin.py"], _pytest_counts, _bundle_env),
    Step("plugin-enqueue", "the plugin's enqueue on device buffers vs float64, paged and FP8 too", 90,
         lambda ctx: [ctx.python, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                      "tests/test_plugin.py"], _pytest_counts, _bundle_env),
    *[Step(f"sanitizer-{tool}", f"compute-sanitizer {tool} over the AOT kernels' C++ driver (MLA, MoE)", limit,
           lambda ctx, tool=tool: SANITIZER + [tool, _bundle(ctx, "plugins", "tools", "mla_kernels_bench"), "--check"],
           _sanitizer) for tool, limit in (("memcheck", 40), ("racecheck", 60), ("initcheck", 40))],
    Step("nccl-smoke", "C++ runtime's NCCL set-up, world size 1 (id file, ncclCommInitRank), one ncclAllReduce", 30,
         lambda ctx: [_bundle(ctx, "cpp", "mla_nccl_smoke"), "--nccl-library", _nccl_library()],
         lambda out, ctx: _json_line(out) if "{" in out else {}),
    Step("cpp-bench", "AOT kernels as the plugin ships them (C++, no Triton): decode GB/s, prefill TFLOP/s", 75,
         lambda ctx: [_bundle(ctx, "plugins", "tools", "mla_kernels_bench"), "--bench"], _cpp_bench),
    Step("jit-bench", "Triton JIT kernels (bench_kernels.py) and eager PyTorch attention, speed-ups", 90,
         lambda ctx: [ctx.python, "benchmarks/bench_kernels.py", "--json", str(ctx.out / "bench_kernels.json")],
         _jit_bench),
    Step("absorb-gpu", "--absorb prefolded vs runtime, eager model on CUDA (bench_absorb.py --gpu)", 45,
         _optional_script("benchmarks/bench_absorb.py", lambda ctx: [
             "--gpu", "--preset", "deepseek-v3", "--layers", "1", "--batch", "1,8,64", "--context", "1024",
             "--iters", "5", "--json", str(ctx.out / "absorb.json")])),
    Step("moe-bench", "MoE expert kernels: decode GB/s, prefill TFLOP/s (bench_moe.py)", 75,
         _optional_script("benchmarks/bench_moe.py", lambda ctx: ["--iters", "10", "--json", str(ctx.out / "moe.json")]),
         _moe_bench),
    Step("fp8-bench", "BlockFp8MatMul kernels: FP8 weight GB/s vs copy, prefill TFLOP/s (bench_fp8.py)", 60,
         _optional_script("benchmarks/bench_fp8.py", lambda ctx: ["--iters", "10", "--json", str(ctx.out / "fp8.json")]),
         _fp8_bench),
    Step("moe-fp8-bench", "MoE FP8 experts (issue 22): expert weight GB/s read vs copy, prefill (bench_moe.py)", 75,
         _optional_script("benchmarks/bench_moe.py", lambda ctx: [
             "--experts", "fp8", "--no-baselines", "--iters", "10", "--json", str(ctx.out / "moe_fp8.json")]),
         lambda output, ctx: _moe_bench(output, ctx, "moe_fp8.json", "MoE FP8")),
]


# Sub-commands that steps run.

def device_facts() -> dict:
    import torch

    facts = {"torch": torch.__version__, "cuda": torch.version.cuda}
    try:
        import triton

        facts["triton"] = triton.__version__
    except ImportError:
        facts["triton"] = "absent"
    props = torch.cuda.get_device_properties(0)
    facts.update(gpu=props.name, sms=props.multi_processor_count,
                 capability=f"{props.major}.{props.minor}", memory_gib=round(props.total_memory / 2**30, 1))
    smi = shutil.which("nvidia-smi")
    if smi:
        proc = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                              text=True)
        facts["driver"] = proc.stdout.strip().splitlines()[0] if proc.returncode == 0 and proc.stdout else "?"
    return facts


def baselines() -> dict:
    import torch

    from mla_export.run.measure import copy_bandwidth_gb_s, matmul_tflops

    return {"copy_gb_s": round(copy_bandwidth_gb_s(cuda=True, nbytes=1 << 30, iters=20), 1),
            "bf16_tflops": round(matmul_tflops(torch.bfloat16), 1)}


def gpu_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def make_bundle(build: Path, bundle: Path) -> int:
    """Copy BUNDLE_FILES from `build` into `bundle` (replacing it); returns its size in bytes."""
    missing = [f for f in BUNDLE_FILES if not (build / f).is_file()]
    if missing:
        raise SystemExit(f"gpu-bundle: {', '.join(missing)} missing under {build}: run `make plugins` first")
    if bundle.exists():
        shutil.rmtree(bundle)
    for name in BUNDLE_FILES:
        (bundle / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(build / name, bundle / name)
    return sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probe", action="store_true", help="exit 1 with one line where there is no GPU")
    parser.add_argument("--bundle", type=Path, default=ROOT / "build" / "gpu-bundle", help="the GPU bundle")
    parser.add_argument("--build", type=Path, help="assemble --bundle from this build directory and stop")
    parser.add_argument("--out", type=Path, help="run every step, reports into this directory")
    parser.add_argument("--facts", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--baselines", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.build:
        size = make_bundle(args.build, args.bundle)
        print(f"gpu-bundle: {args.bundle} holds {len(BUNDLE_FILES)} files, {size / 2**20:.1f} MiB "
              f"(limit {BUNDLE_LIMIT_BYTES >> 20} MiB)")
        return 0 if size < BUNDLE_LIMIT_BYTES else 1
    if args.facts or args.baselines:
        print(json.dumps(device_facts() if args.facts else baselines()))
        return 0
    if not gpu_available():
        print("gpu-check: no NVIDIA GPU here (torch.cuda.is_available() is false); run it on a GPU machine",
              file=sys.stderr)
        return 1
    if args.probe:
        return 0
    if args.out is None:
        parser.error("pass --out DIR")
    if not args.bundle.is_dir():
        print(f"gpu-check: no bundle at {args.bundle}; run `make gpu-bundle` on a CPU machine and bring it",
              file=sys.stderr)
        return 1
    ctx = Context(out=args.out, bundle=args.bundle.resolve())
    results = run_steps(STEPS, ctx)
    write_reports(results, args.out)
    print(f"gpu-check: {sum(r.status == 'ok' for r in results)} of {len(results)} steps ok; "
          f"{args.out / 'gpu-check.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
