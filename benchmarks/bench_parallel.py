"""CPU cost of running a `--tp N` export's ranks in lockstep on ONNX Runtime (`run/parallel.py`: each rank
its own process, its graph cut at the collectives, the collectives over gloo) against the single-device
export of the same model in one ONNX Runtime session.

    python benchmarks/bench_parallel.py [--preset tiny-moe] [--tp 2] [--steps 32] [--batch 4] [--context 256]

Both run float32 on the CPU with the same feeds: a prefill of --context tokens, then --steps decode steps
(one token each, caches fed back). The ranks' processes share the machine's cores (each gets cores/N ONNX
Runtime threads), so on a small machine this measures the cut's and the transport's overhead, not a speedup.
Prints one table (median ms per decode step, ratio); the figures go to RESULTS.md by hand.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def feeds_for(spec, batch: int, tokens: int, caches: list[np.ndarray], seqlens: np.ndarray, rng) -> dict:
    from mla_export.common import contract

    inputs, _ = spec.graph_io_names()
    first = (rng.integers(0, spec.config.vocab_size, (batch, tokens)) if spec.io == "tokens"
             else rng.standard_normal((batch, tokens, spec.config.hidden_size)).astype(np.float32))
    feeds = {inputs[0]: first, contract.CACHE_SEQLENS: seqlens}
    feeds.update({name: cache for name, cache in zip(inputs[2:], caches)})
    return feeds


def time_steps(runner, spec, batch: int, context: int, steps: int) -> list[float]:
    """Seconds per decode step after a prefill of `context` tokens."""
    rng = np.random.default_rng(0)
    _, outputs = spec.graph_io_names()
    shape = (batch, spec.max_seq_len, spec.config.cache_width)
    caches = [np.zeros(shape, np.float32) for _ in range(spec.config.num_hidden_layers)]
    seqlens = np.zeros(batch, np.int32)
    times = []
    for step in range(steps + 1):
        tokens = context if step == 0 else 1
        feeds = feeds_for(spec, batch, tokens, caches, seqlens, rng)
        start = time.perf_counter()
        got = runner.run(feeds)
        if step:
            times.append(time.perf_counter() - start)
        caches = [got[name] for name in outputs[1:]]
        seqlens = seqlens + tokens
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny-moe")
    parser.add_argument("--tp", type=int, default=2)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--context", type=int, default=256)
    args = parser.parse_args()

    from mla_export.graph.export import export_onnx
    from mla_export.graph.parallel_export import export_parallel, read_parallel_export
    from mla_export.model.hf_config import load_preset
    from mla_export.model.spec import ModelSpec
    from mla_export.run.parallel import ParallelOnnxRunner
    from mla_export.run.runners import OnnxRuntimeRunner

    spec = ModelSpec(load_preset(args.preset), max_seq_len=args.context + args.steps + 1, io="tokens")
    with tempfile.TemporaryDirectory() as tmp:
        single = export_onnx(spec, Path(tmp) / "single.onnx")
        export_parallel(ModelSpec(**{**spec.__dict__, "tp_size": args.tp}), Path(tmp) / "ranks")
        one = time_steps(OnnxRuntimeRunner(single, ["CPUExecutionProvider"]), spec, args.batch, args.context,
                         args.steps)
        with ParallelOnnxRunner(read_parallel_export(Path(tmp) / "ranks")) as ranks:
            many = time_steps(ranks, spec, args.batch, args.context, args.steps)
    a, b = statistics.median(one) * 1e3, statistics.median(many) * 1e3
    print(f"{args.preset}, float32, batch {args.batch}, context {args.context}, {args.steps} decode steps")
    print(f"{'runtime':32} {'median ms/step':>15} {'min':>8} {'max':>8}")
    print(f"{'one session (tp 1)':32} {a:15.2f} {min(one) * 1e3:8.2f} {max(one) * 1e3:8.2f}")
    print(f"{f'{args.tp} rank processes (gloo)':32} {b:15.2f} {min(many) * 1e3:8.2f} {max(many) * 1e3:8.2f}")
    print(f"ratio (ranks / one session): {b / a:.2f}x")


if __name__ == "__main__":
    main()
