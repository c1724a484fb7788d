"""Time `export` and measure its peak memory, one process per case (so each peak RSS is its own).

    python benchmarks/bench_export.py [CASE ...] [--json out.json]

A CASE is PRESET[:LAYERS[:DTYPE[:ABSORB[:QUANT]]]], LAYERS a number or `all`, QUANT none or fp8 (default:
the issue's set, deepseek-v2-lite whole and at 4 and 12 layers in bfloat16, one DeepSeek-V3 layer in
float32). Prints, per case: wall seconds, GiB written, GB written per second, peak RSS (GiB) of the
exporting process; for each fp8 case whose none twin ran too, the ratios fp8 / none.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_CASES = ["deepseek-v2-lite:all:bfloat16", "deepseek-v2-lite:4:bfloat16", "deepseek-v2-lite:12:bfloat16",
                 "deepseek-v3:1:float32"]


def export_once(case: str) -> dict:
    """Run one export in this process; the figures as a dict."""
    from mla_export.graph.export import export_onnx
    from mla_export.model.hf_config import load_preset
    from mla_export.model.spec import ModelSpec

    parts = case.split(":")
    preset, layers, dtype, absorb, quant = parts + ["", "all", "float32", "prefolded", "none"][len(parts):]
    config = load_preset(preset)
    if layers != "all":
        config = config.with_layers(int(layers))
    spec = ModelSpec(config, dtype=dtype, max_seq_len=min(4096, config.max_position_embeddings), absorb=absorb,
                     quant=quant)
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        out = Path(tmp) / "model.onnx"
        start = time.perf_counter()
        export_onnx(spec, out)
        seconds = time.perf_counter() - start
        written = sum(p.stat().st_size for p in Path(tmp).iterdir())
    return {"case": case, "layers": config.num_hidden_layers, "seconds": round(seconds, 1), "bytes_written": written,
            "gib_written": round(written / 2**30, 2), "gb_per_s": round(written / 1e9 / seconds, 3),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="*", default=DEFAULT_CASES, help="PRESET[:LAYERS[:DTYPE[:ABSORB[:QUANT]]]]")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one case, print its JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(export_once(args.one)))
        return 0
    rows = []
    for case in args.cases:
        proc = subprocess.run([sys.executable, __file__, "--one", case], capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{case}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            return 1
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{row['case']:34} {row['layers']:3} layers  {row['seconds']:8.1f} s  {row['gib_written']:7.2f} GiB  "
              f"{row['gb_per_s']:6.3f} GB/s  peak RSS {row['peak_rss_gib']:5.2f} GiB", flush=True)
    by_case = {row["case"]: row for row in rows}
    for row in rows:
        if row["case"].endswith(":fp8") and row["case"][:-4] + ":none" in by_case:
            base = by_case[row["case"][:-4] + ":none"]
            print(f"{row['case']} / none: bytes {row['bytes_written'] / base['bytes_written']:.3f}x, time "
                  f"{row['seconds'] / base['seconds']:.2f}x, peak RSS {row['peak_rss_gib'] / base['peak_rss_gib']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
