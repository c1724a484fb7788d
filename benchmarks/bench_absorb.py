"""Pre-folded vs run-time absorbed (`export --absorb`): ONNX file sizes, and one decode step of both
forms timed in one run, interleaved (A B A B ...), so that drift of a shared machine hits both alike.

    python benchmarks/bench_absorb.py --sizes --preset deepseek-v2-lite --layers 1
    python benchmarks/bench_absorb.py --ort --preset deepseek-v3 --layers 1 --batch 1,8,64 --context 1024
    python benchmarks/bench_absorb.py --gpu --preset deepseek-v3 --layers 1 --batch 1,8,64 --context 1024,4096

--sizes exports both forms (each in a fresh process: its time and peak RSS are its own) and reports the
bytes on disk (.onnx plus the data file it names). --ort does the same, then times a decode step of both files on
ONNX Runtime's CPU provider, every sequence holding `context` cache rows (Smax = largest context + 1).
--ort also splits one step at the smallest batch into ONNX Runtime's per-node kernel times, summed by
the weights each node reads: attention projections (`self_attn.*`), MLP (`mlp.*`), and the rest (the
attention core, norms, reshapes). --gpu times the eager model of both forms on CUDA (bfloat16 by
default; the attention core is the Triton kernels), no export. Exported files are deleted at the end
unless --keep DIR is given (files already there with the same metadata are reused, not re-exported).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

FORMS = ("prefolded", "runtime")


def _spec(preset: str, layers: int, dtype: str, max_seq_len: int, absorb: str):
    from mla_export.model.hf_config import load_preset
    from mla_export.model.spec import ModelSpec

    return ModelSpec(load_preset(preset).with_layers(layers), dtype=dtype, max_seq_len=max_seq_len, absorb=absorb)


def _bytes_on_disk(path: Path) -> int:
    from mla_export.graph.export import written_files

    return sum(f.stat().st_size for f in written_files(path))


def _export_one(preset: str, layers: int, dtype: str, max_seq_len: int, absorb: str, out: str) -> dict:
    """Export one form (runs in a fresh process); seconds, bytes on disk and this process's peak RSS."""
    import logging

    from mla_export.graph.export import export_onnx

    for name in ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript"):
        logging.getLogger(name).setLevel(logging.ERROR)
    start = time.perf_counter()
    path = export_onnx(_spec(preset, layers, dtype, max_seq_len, absorb), out)
    seconds = time.perf_counter() - start
    return {"form": absorb, "path": str(path), "export_s": seconds, "bytes": _bytes_on_disk(path),
            "export_peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def export_both(args, directory: Path) -> list[dict]:
    """Both forms, one after the other, each in its own process (a V3 layer peaks near 10 GiB)."""
    from mla_export.common.errors import UserError
    from mla_export.graph.onnx_reader import read_export_spec

    results = []
    for absorb in FORMS:
        out = directory / f"{args.preset}-{args.layers}l-{absorb}.onnx"
        spec = _spec(args.preset, args.layers, args.dtype, args.max_seq_len, absorb)
        try:
            reuse = out.is_file() and read_export_spec(out) == spec
        except UserError:
            reuse = False
        if reuse:
            result = {"form": absorb, "path": str(out), "bytes": _bytes_on_disk(out), "reused": True}
            print(f"export {absorb:9s}: {result['bytes'] / 2**30:.3f} GiB on disk ({result['bytes']:,} B), "
                  f"reused from {out}", flush=True)
        else:
            with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
                result = pool.submit(_export_one, args.preset, args.layers, args.dtype, args.max_seq_len, absorb,
                                     str(out)).result()
            print(f"export {absorb:9s}: {result['bytes'] / 2**30:.3f} GiB on disk ({result['bytes']:,} B), "
                  f"{result['export_s']:.1f} s, peak RSS {result['export_peak_rss_gib']:.1f} GiB", flush=True)
        results.append(result)
    small, large = sorted(r["bytes"] for r in results)
    print(f"file size ratio: {large / small:.2f}x")
    return results


def interleaved(calls: dict, warmup: int, iters: int, cuda: bool) -> dict[str, list[float]]:
    """Milliseconds of each call in `calls`, run in turn (A B A B ...) after `warmup` rounds."""
    from mla_export.run.measure import time_calls

    for _ in range(warmup):
        for call in calls.values():
            call()
    samples = {name: [] for name in calls}
    for _ in range(iters):
        for name, call in calls.items():
            samples[name] += time_calls(call, 0, 1, cuda)
    return samples


def time_decode(targets: dict, args, cuda: bool) -> list[dict]:
    """A decode step of every target at each (batch, context), interleaved; medians, p90 and ratios."""
    from mla_export.run.measure import percentile

    rows = []
    for context in args.context:
        for batch in args.batch:
            calls = {name: target.prepare(batch, context, 1) for name, target in targets.items()}
            samples = interleaved(calls, args.warmup, args.iters, cuda)
            row = {"batch": batch, "context": context, "iters": args.iters}
            for name, values in samples.items():
                row[f"{name}_median_ms"] = statistics.median(values)
                row[f"{name}_p90_ms"] = percentile(values, 90)
            row["ratio"] = row["prefolded_median_ms"] / row["runtime_median_ms"]
            pairs = [a / b for a, b in zip(samples["prefolded"], samples["runtime"])]
            row["pair_ratio_min_median_max"] = [min(pairs), statistics.median(pairs), max(pairs)]
            print(f"decode B={batch:3d} context={context}: prefolded {row['prefolded_median_ms']:9.2f} ms "
                  f"(p90 {row['prefolded_p90_ms']:.2f}), runtime {row['runtime_median_ms']:9.2f} ms "
                  f"(p90 {row['runtime_p90_ms']:.2f}); prefolded/runtime {row['ratio']:.2f}x "
                  f"(pairs {min(pairs):.2f}..{max(pairs):.2f})", flush=True)
            rows.append(row)
    return rows


def op_breakdown(path: str, batch: int, context: int, iters: int) -> dict[str, float]:
    """Milliseconds per decode step on ONNX Runtime (CPU), from its profiler's per-node kernel times, summed
    by the weights each node reads: "attention projections", "mlp", "rest"; plus "total"."""
    import numpy as np
    import onnxruntime as ort

    from mla_export.graph.onnx_reader import read_exported_model

    exported = read_exported_model(path)
    weights = {i.name for i in exported.header.graph.initializer}
    group_of = {}
    for node in exported.header.graph.node:
        read = [name for name in node.input if name in weights]
        group_of[node.name] = ("mlp" if any(".mlp." in n for n in read) else
                               "attention projections" if any(".self_attn." in n for n in read) else "rest")
    spec = exported.spec
    names, _ = spec.graph_io_names()
    gen = np.random.default_rng(0)
    feeds = {names[0]: gen.standard_normal((batch, 1, spec.config.hidden_size), dtype=np.float32),
             names[1]: np.full(batch, context, dtype=np.int32)}
    for name in names[2:]:
        feeds[name] = gen.standard_normal((batch, spec.max_seq_len, spec.config.cache_width), dtype=np.float32)
    options = ort.SessionOptions()
    options.enable_profiling, options.log_severity_level = True, 3
    options.profile_file_prefix = str(Path(tempfile.gettempdir()) / "bench-absorb-ort")
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    for _ in range(iters + 1):  # the first run is a warm-up, left out below
        session.run(None, feeds)
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    runs = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e["name"] == "model_run")
    times = {"attention projections": 0.0, "mlp": 0.0, "rest": 0.0}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= runs[1]:
            node = event["name"][: -len("_kernel_time")].split("/")[0]  # fused nodes keep the first node's name
            times[group_of.get(node, "rest")] += event["dur"] / 1e3 / iters
    times["total"] = sum(times.values())
    return times


def run_ort(args, directory: Path) -> dict:
    from mla_export.run.measure import copy_bandwidth_gb_s
    from mla_export.run.profile import OnnxRuntimeTarget

    exports = export_both(args, directory)
    targets = {r["form"]: OnnxRuntimeTarget(r["path"]) for r in exports}
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"both sessions loaded: peak RSS {rss_loaded:.1f} GiB", flush=True)
    copy = copy_bandwidth_gb_s(False)
    rows = time_decode(targets, args, cuda=False)
    del targets
    batch, context = min(args.batch), args.context[0]
    breakdown = {}
    for result in exports:
        breakdown[result["form"]] = op_breakdown(result["path"], batch, context, args.iters)
        print(f"kernel time, {result['form']:9s} B={batch} context={context}: " +
              ", ".join(f"{k} {v:.1f} ms" for k, v in breakdown[result["form"]].items()), flush=True)
    print("prefolded/runtime: " + ", ".join(f"{k} {breakdown['prefolded'][k] / breakdown['runtime'][k]:.2f}x"
                                            for k in breakdown["runtime"]))
    return {"runtime": "onnxruntime CPUExecutionProvider", "copy_gb_s": copy, "exports": exports, "decode": rows,
            "kernel_ms_by_part": {"batch": batch, "context": context, **breakdown},
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def run_gpu(args) -> dict:
    """Both forms of the eager model on CUDA (main refuses --gpu without one; elsewhere this runs on the CPU)."""
    import torch

    from mla_export.model.hf_config import load_preset
    from mla_export.run.measure import copy_bandwidth_gb_s
    from mla_export.run.profile import EagerTarget
    from mla_export.model.spec import ModelSpec

    cuda = torch.cuda.is_available()
    config = load_preset(args.preset).with_layers(args.layers)
    targets = {}
    for absorb in FORMS:
        targets[absorb] = EagerTarget(ModelSpec(config, dtype=args.dtype, max_seq_len=args.max_seq_len, absorb=absorb))
    weights = {name: sum(p.numel() * p.element_size() for p in t.model.parameters()) for name, t in targets.items()}
    copy = copy_bandwidth_gb_s(cuda)
    print(f"weights: {', '.join(f'{k} {v / 2**30:.3f} GiB' for k, v in weights.items())}; "
          f"copy bandwidth {copy:.0f} GB/s", flush=True)
    rows = time_decode(targets, args, cuda=cuda)
    for row in rows:  # weight bytes read per step against the copy bandwidth (caches are the same in both)
        for name in FORMS:
            row[f"{name}_weight_gb_s"] = weights[name] / (row[f"{name}_median_ms"] * 1e-3) / 1e9
    device = torch.cuda.get_device_name() if cuda else "cpu"
    return {"runtime": f"eager PyTorch {torch.__version__} on {device}", "copy_gb_s": copy, "weight_bytes": weights,
            "decode": rows}


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--sizes", action="store_true", help="Export both forms; bytes on disk, time, peak RSS.")
    mode.add_argument("--ort", action="store_true", help="--sizes, then decode latency on ONNX Runtime (CPU).")
    mode.add_argument("--gpu", action="store_true", help="Decode latency of the eager model on CUDA (no export).")
    parser.add_argument("--preset", default="deepseek-v3")
    parser.add_argument("--layers", type=int, default=1, help="First N layers (the dense ones while MoE is refused).")
    parser.add_argument("--dtype", help="float32 for --sizes/--ort (default), bfloat16 for --gpu (default).")
    parser.add_argument("--batch", type=_ints, default=[1, 8, 64], help="Comma-separated batch sizes [1,8,64].")
    parser.add_argument("--context", type=_ints, default=[1024], help="Comma-separated cached tokens [1024].")
    parser.add_argument("--max-seq-len", type=int, help="Cache rows [default: largest context + 1].")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed rounds [2].")
    parser.add_argument("--iters", type=int, default=10, help="Timed rounds, one call of each form per round [10].")
    parser.add_argument("--keep", type=Path, help="Keep the exported files in this directory.")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    args = parser.parse_args()
    args.dtype = args.dtype or ("bfloat16" if args.gpu else "float32")
    args.max_seq_len = args.max_seq_len or max(args.context) + 1
    if args.gpu:
        import torch

        if not torch.cuda.is_available():
            sys.exit("--gpu needs a CUDA GPU (none is visible to torch here)")

    print(f"{args.preset} x{args.layers} layer(s), {args.dtype}, Smax {args.max_seq_len}", flush=True)
    result = {"preset": args.preset, "layers": args.layers, "dtype": args.dtype, "max_seq_len": args.max_seq_len,
              "date": time.strftime("%Y-%m-%d")}
    if args.gpu:
        result.update(run_gpu(args))
    else:
        with tempfile.TemporaryDirectory(prefix="bench-absorb-") as tmp:
            directory = args.keep or Path(tmp)
            directory.mkdir(parents=True, exist_ok=True)
            result.update(run_ort(args, directory) if args.ort else {"exports": export_both(args, directory)})
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
