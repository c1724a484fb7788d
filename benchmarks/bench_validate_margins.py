"""The margins behind validate's whole-tensor bounds: the worst relative RMS error and 1 - cosine of correct
exports, and of the planted bugs, per dtype, against the bounds (`run/compare.py`, WHOLE_TENSOR_BOUNDS).

    .venv/bin/python benchmarks/bench_validate_margins.py [--quick]

Correct: tiny and tiny-moe, both --absorb forms, float32 and float16 on ONNX Runtime (CPU), bfloat16 in
torch; planted: a weight x1.01 in one layer, the RoPE table one position late, cache rows written one
position late, a bfloat16 head swapped for another as small (logits 100x smaller than normal). Prints one
row per case: the worst rel RMS and 1 - cos over every tensor, as a multiple of the bound (x bound), and
PASS/FAIL. Correct rows must read PASS well inside 1x, planted ones FAIL.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def _export(directory: Path, preset: str, dtype: str, absorb: str, io: str = "hidden", checkpoint=None) -> Path:
    from mla_export.graph.export import export_onnx
    from mla_export.model.hf_config import load_config_file, load_preset
    from mla_export.model.spec import ModelSpec

    config = load_config_file(checkpoint) if checkpoint else load_preset(preset)
    out = directory / f"{preset}-{dtype}-{absorb}-{io}.onnx"
    export_onnx(ModelSpec(config, dtype=dtype, max_seq_len=64, io=io, absorb=absorb,
                          checkpoint=str(checkpoint) if checkpoint else None), out)
    return out


def _worst(report) -> tuple[float, float, float, bool]:
    comparisons = [c for s in report.steps for c in s.comparisons]
    worst_rms = max(c.rel_rms / c.max_rel_rms for c in comparisons)
    worst_cos = max((1 - c.cosine) / (1 - c.min_cosine) for c in comparisons)
    worst_tol = max(c.tolerance_used for c in comparisons)
    return worst_rms, worst_cos, worst_tol, report.passed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny only, one absorb form")
    args = parser.parse_args()

    import planted
    from mla_export.graph.onnx_reader import read_export_spec
    from mla_export.run.runners import OnnxRuntimeRunner
    from mla_export.run.validate import Scenario, validate_runner

    scenario = Scenario(batch=3, prefill_len=16, steps=4)
    rows = []
    directory = Path(tempfile.mkdtemp(prefix="mla-margins-"))
    try:
        presets = ["tiny"] if args.quick else ["tiny", "tiny-moe"]
        absorbs = ["prefolded"] if args.quick else ["prefolded", "runtime"]
        for preset in presets:
            for absorb in absorbs:
                for dtype in ("float32", "float16"):
                    path = _export(directory, preset, dtype, absorb)
                    spec = read_export_spec(path)
                    rows.append((f"{preset} {absorb} {dtype}", "correct",
                                 *_worst(validate_runner(OnnxRuntimeRunner(path), spec, scenario))))
                    for bug, plant in (("weight x1.01", lambda p: planted.scale_weight(
                                           p, "layers.1.mlp.down_proj.weight.T", 1.01)),
                                       ("rope shifted", planted.shift_rope_table),
                                       ("cache row late", lambda p: planted.misplace_cache_rows(p, 1))):
                        if preset == "tiny-moe" and bug == "weight x1.01":
                            continue  # layer 1 of tiny-moe is an MoE layer: its experts are one stacked tensor
                        copy = directory / "planted.onnx"
                        shutil.copy(path, copy)
                        plant(copy)
                        rows.append((f"{preset} {absorb} {dtype}", bug,
                                     *_worst(validate_runner(OnnxRuntimeRunner(copy), spec, scenario))))
        checkpoint = directory / "small-logits"
        planted.small_logits_checkpoint(checkpoint)
        from mla_export.model.hf_config import load_config_file
        from mla_export.model.spec import ModelSpec

        spec = ModelSpec(load_config_file(checkpoint), dtype="bfloat16", max_seq_len=64, io="tokens",
                         checkpoint=str(checkpoint))
        rows.append(("tiny bfloat16 (torch)", "correct", *_worst(validate_runner(planted.TorchRunner(spec), spec,
                                                                                 scenario))))
        rows.append(("tiny bfloat16 (torch)", "small wrong head",
                     *_worst(validate_runner(planted.TorchRunner(spec, wrong_head=True), spec, scenario))))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(f"{'model':28} {'case':17} {'rms/bound':>10} {'cos/bound':>10} {'err/tol':>9}  verdict")
    for model, case, rms, cos, tol, passed in rows:
        print(f"{model:28} {case:17} {rms:10.3g} {cos:10.3g} {tol:9.3g}  {'PASS' if passed else 'FAIL'}")


if __name__ == "__main__":
    main()
