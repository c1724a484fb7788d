"""Time `export` of one DeepSeek-V3 layer (pre-folded, float32) and a tiny model; print seconds and peak RSS.

    python benchmarks/bench_export.py [--preset deepseek-v3] [--layers 1] [--max-seq-len 4096]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from mla_export.hf_config import load_preset
from mla_export.export import export_onnx
from mla_export.spec import ModelSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="deepseek-v3")
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--max-seq-len", type=int, default=4096)
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    config = load_preset(args.preset).with_layers(args.layers)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "model.onnx"
        start = time.perf_counter()
        export_onnx(ModelSpec(config, dtype=args.dtype, max_seq_len=args.max_seq_len), out)
        seconds = time.perf_counter() - start
        size = sum(p.stat().st_size for p in Path(tmp).iterdir())
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"export {args.preset} x{args.layers} layer(s) {args.dtype} Smax={args.max_seq_len}: "
          f"{seconds:.1f} s, {size / 2**30:.2f} GiB on disk, peak RSS {peak_gib:.1f} GiB")


if __name__ == "__main__":
    main()
