"""`mla-export info`: a config's dims, cache bytes per token and projection costs, or an export's."""

from __future__ import annotations

import click

from ..common.errors import UserError
from .options import (EXIT_CODES, config_option, input_files, json_option, load_config, preset_option, print_json,
                      say, wrote)


@click.command(epilog=EXIT_CODES, short_help="Dims, cache bytes per token, projection costs of a config.")
@preset_option
@config_option
@click.option("--onnx", "onnx_path", type=click.Path(),
              help="An ONNX file (or --tp export directory) written by mla-export export: its config, and the "
                   "--absorb form it holds.")
@click.option("--layers", type=int, help="Use only the first N layers.")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16", "fp8"]), default="bfloat16",
              show_default=True, help="Cache element type for the byte counts.")
@click.option("--context", type=click.IntRange(min=1), default=4096, show_default=True,
              help="Context length (tokens) for whole-model figures.")
@click.option("--tp", type=int, help="Also the per-rank figures of export --tp N (N a power of two): weights, "
              "cache per token, the collectives and their bytes per token.")
@click.option("--io", type=click.Choice(["hidden", "tokens"]),
              help="With --tp: the export's ends; tokens (the default) counts the vocab-split embedding and LM "
                   "head and their collectives, hidden leaves them out.")
@json_option("Everything shown")
def info(preset, config_path, onnx_path, layers, dtype, context, tp, io, json_out):
    """Print dims, cache bytes per token (MLA vs MHA/GQA/MQA), projection costs and the smaller --absorb form;
    with --tp N, the bytes per rank and the collectives of export --tp N."""
    from . import info as info_module

    if json_out not in (None, "-"):
        from ..common.fileio import check_output_file

        check_output_file("--json", json_out, input_files(onnx=onnx_path))
    if io is not None and tp is None:
        raise UserError(f"--io {io} chooses the ends of --tp's per-rank figures: pass it with --tp N")
    errors = None
    if onnx_path is None:
        config, absorb = load_config(preset, config_path, layers), None
    else:
        if preset or config_path or layers is not None:
            raise UserError("--onnx takes its config from the file: pass it without --preset, --config or --layers")
        from ..graph.onnx_reader import read_export_spec
        from ..graph.parallel_export import is_parallel_export, read_parallel_export

        if is_parallel_export(onnx_path):  # a --tp export: the whole model's figures and its own --tp's
            spec = read_parallel_export(onnx_path).spec
            if tp not in (None, spec.tp_size):
                raise UserError(f"--onnx {onnx_path} is a --tp {spec.tp_size} export: drop --tp {tp}, or pass it "
                                "with a --preset or --config")
            tp, spec = spec.tp_size, spec.single_device()
        else:
            spec = read_export_spec(onnx_path)
        config, absorb = spec.config, spec.absorb
        io = io or spec.io  # --tp's figures for the ends this file has
        if spec.quant == "fp8":
            errors = measured_requantization(spec)
    io = io or "tokens"
    if json_out == "-":
        print_json(info_module.info_dict(config, dtype, context, absorb, tp, io) | {"requantization_error": errors})
        return
    data = info_module.info_dict(config, dtype, context, absorb, tp, io)  # refuses a bad --tp before printing
    info_module.render_info(config, dtype, context, absorb=absorb, requant_errors=errors, tp=tp, io=io)
    if json_out is not None:
        import json

        from ..common.fileio import atomic_write_text

        atomic_write_text(json_out, json.dumps(data, indent=2) + "\n")
        say(wrote([json_out]))


MEASURED_LAYERS = 4  # layers whose re-quantization error `info --onnx` measures (a V3 fold is ~4 GiB of float64)


def measured_requantization(spec) -> list[dict[str, float]]:
    """Per layer (the first MEASURED_LAYERS) of an FP8 export: its re-quantized weights' relative RMS error
    against their float64 values, from the spec's own weights."""
    from ..graph.export_form import requantization_error
    from ..weights.eager import weight_source

    source = weight_source(spec)
    return [requantization_error(spec, source, i) for i in range(min(MEASURED_LAYERS, spec.config.num_hidden_layers))]
