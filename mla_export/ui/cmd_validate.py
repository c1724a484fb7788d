"""`mla-export validate`: ONNX Runtime or an engine against the eager model."""

from __future__ import annotations

import sys

import click

from ..common.errors import UserError
from ..model.spec import MAX_SEED
from .options import EXIT_CODES, input_files, json_option, print_json, quiet_option, say, wrote


@click.command(epilog=EXIT_CODES, short_help="Compare ONNX Runtime or an engine with the eager model.")
@click.option("--onnx", "onnx_path", type=click.Path(), help="An ONNX file written by mla-export export.")
@click.option("--engine", type=click.Path(), help="A TensorRT engine built by mla-export build (needs a GPU).")
@click.option("--plugin-lib", type=click.Path(), help="libmla_plugin.so for a plugin engine (default: as build).")
@click.option("--steps", type=int, default=8, show_default=True, help="Decode steps after the prefill.")
@click.option("--batch", type=int, default=3, show_default=True,
              help="Number of sequences (with ragged cache lengths).")
@click.option("--prefill-len", type=int, default=16, show_default=True, help="Tokens in the prefill step.")
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True,
              help="Seed of the random inputs.")
@click.option("--per-layer/--whole", "per_layer", default=None,
              help="One layer at a time against the float64 reference streamed layer by layer, in memory "
                   "bounded by the largest layer; --whole: the whole model at once [default: whole where it "
                   "fits in memory, else per layer].")
@json_option("The full comparison (every tensor of every step)")
@click.option("--report", type=click.Path(), help="The same as --json PATH (kept for scripts that use it).")
@quiet_option
def validate(onnx_path, engine, plugin_lib, steps, batch, prefill_len, seed, per_layer, json_out, report, quiet):
    """Compare ONNX Runtime (--onnx) or a TensorRT engine (--engine; with --onnx also engine vs ONNX Runtime)
    with the eager float64 model over a prefill and decode steps, caches included. Exit code 1 on failure.

    Per layer (--per-layer, or where the whole model does not fit in memory), each layer of the export runs
    alone on ONNX Runtime, fed the reference's own input to it, and the layers also run chained end to end;
    an engine is compared end to end with the reference streamed one layer at a time."""
    from ..common.fileio import check_output_file
    from ..common.progress import ProgressReporter
    from ..run.validate import Scenario, validate_engine, validate_onnx
    from ..run.validate_report import print_report

    if onnx_path is None and engine is None:
        raise UserError("pass --onnx MODEL.onnx, --engine MODEL.engine, or both")
    if per_layer and engine is not None and onnx_path is not None:
        raise UserError("--per-layer with --engine compares the engine with the streamed reference alone: "
                        "drop --onnx, or validate the ONNX file by itself (--onnx F --per-layer)")
    if report and json_out:
        raise UserError("--report is --json PATH under its old name: pass one of them")
    option, path = ("--report", report) if report else ("--json", json_out)
    if path not in (None, "-"):
        check_output_file(option, path, input_files(onnx=onnx_path, engine=engine))
    scenario = Scenario(batch=batch, prefill_len=prefill_len, steps=steps, seed=seed)
    with ProgressReporter("validate", quiet=quiet, unit="steps") as progress:
        if engine is not None:
            result = validate_engine(engine, scenario, onnx=onnx_path, plugin_lib=plugin_lib, progress=progress,
                                     per_layer=bool(per_layer))
        else:
            result = validate_onnx(onnx_path, scenario, progress=progress, per_layer=per_layer)
    if path == "-":
        print_json(result.to_dict())
    else:
        print_report(result)
    if path not in (None, "-"):
        result.write_json(path)
        say(wrote([path]))
    sys.exit(0 if result.passed else 1)
