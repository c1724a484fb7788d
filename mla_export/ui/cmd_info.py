"""`mla-export info`: a config's dims, cache bytes per token and projection costs, or an export's."""

from __future__ import annotations

import click

from ..common import contract
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
              show_default=True, help="The model's dtype for the byte counts; fp8 counts every cached value as one "
                                      "byte, no scales (the scaled format: --kv-cache-dtype fp8).")
@click.option("--kv-cache-dtype", type=click.Choice(contract.KV_CACHE_DTYPES),
              help="As export's: model (the default: rows in --dtype) or fp8 (c_kv as e4m3 codes with a float32 "
                   "scale per 128, k_pe in --dtype: FlashMLA's format).")
@click.option("--cache", type=click.Choice(contract.CACHE_LAYOUTS),
              help="As export's: contiguous (the default: Smax rows per sequence) or paged (pages of --page-size).")
@click.option("--page-size", type=int, metavar="N", help=f"Rows per page of the paged figures, a power of two "
              f"[default: {contract.DEFAULT_PAGE_SIZE}].")
@click.option("--memory", metavar="SIZE", help="Cache memory, e.g. 80GiB, 80G or 500MiB: the sequences of a few contexts that "
              "fit, per layout and cache dtype, against MHA/GQA/MQA (weights not counted).")
@click.option("--context", type=click.IntRange(min=1), default=4096, show_default=True,
              help="Context length (tokens) for whole-model figures.")
@click.option("--tp", type=int, help="Also the per-rank figures of export --tp N (N a power of two): weights, "
              "cache per token, the collectives and their bytes per token.")
@click.option("--io", type=click.Choice(["hidden", "tokens"]),
              help="With --tp: the export's ends; tokens (the default) counts the vocab-split embedding and LM "
                   "head and their collectives, hidden leaves them out.")
@json_option("Everything shown")
def info(preset, config_path, onnx_path, layers, dtype, kv_cache_dtype, cache, page_size, memory, context, tp, io,
         json_out):
    """Print dims, cache bytes per token (MLA vs MHA/GQA/MQA), projection costs and the smaller --absorb form;
    with --memory, the sequences that fit per cache layout and dtype; with --tp N, the bytes per rank and the
    collectives of export --tp N."""
    from . import info as info_module

    if json_out not in (None, "-"):
        from ..common.fileio import check_output_file

        check_output_file("--json", json_out, input_files(onnx=onnx_path))
    if io is not None and tp is None:
        raise UserError(f"--io {io} chooses the ends of --tp's per-rank figures: pass it with --tp N")
    memory_bytes = parse_memory(memory) if memory is not None else None
    if page_size is not None:
        from ..model.footprint import check_page_size

        check_page_size(page_size)
        if cache != "paged" and memory is None:
            raise UserError(f"--page-size {page_size} sizes the pages of --cache paged (and of --memory's paged "
                            "rows): pass it with --cache paged or --memory")
    if dtype == "fp8" and kv_cache_dtype == "fp8":
        raise UserError("--dtype fp8 counts every cached value as one byte; --kv-cache-dtype fp8 keeps k_pe in "
                        "the model's dtype: pass --dtype bfloat16 (or float16) with it")
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
        cache, kv_cache_dtype, page_size = file_cache(onnx_path, spec, cache, kv_cache_dtype, page_size)
        io = io or spec.io  # --tp's figures for the ends this file has
        if spec.quant == "fp8":
            errors = measured_requantization(spec)
    io = io or "tokens"
    layout = dict(kv_cache_dtype=kv_cache_dtype or "model", cache=cache or "contiguous",
                  page_size=page_size or contract.DEFAULT_PAGE_SIZE, memory=memory_bytes)
    if json_out == "-":
        print_json(info_module.info_dict(config, dtype, context, absorb, tp, io, **layout)
                   | {"requantization_error": errors})
        return
    data = info_module.info_dict(config, dtype, context, absorb, tp, io, **layout)  # refuses a bad --tp first
    info_module.render_info(config, dtype, context, absorb=absorb, requant_errors=errors, tp=tp, io=io, **layout)
    if json_out is not None:
        import json

        from ..common.fileio import atomic_write_text

        atomic_write_text(json_out, json.dumps(data, indent=2) + "\n")
        say(wrote([json_out]))


def parse_memory(text: str) -> int:
    """--memory's bytes: 80GiB, 80G, 500MiB (binary units), above zero."""
    from ..trt.build import parse_size

    size = parse_size(text, "--memory")
    if size < 1:
        raise UserError(f"--memory {text}: expected a size above zero, such as 80GiB or 500MiB")
    return size


def file_cache(onnx_path: str, spec, cache: str | None, kv_cache_dtype: str | None, page_size: int | None):
    """The cache layout, cache dtype and page size of an export (files from before contract version 2:
    contiguous, model); an option that names another is refused."""
    held = {"--cache": getattr(spec, "cache", "contiguous"),
            "--kv-cache-dtype": getattr(spec, "kv_cache_dtype", "model")}
    for option, given in (("--cache", cache), ("--kv-cache-dtype", kv_cache_dtype)):
        if given not in (None, held[option]):
            raise UserError(f"--onnx {onnx_path} holds a {option} {held[option]} export: drop {option} {given}, "
                            "or pass it with a --preset or --config")
    file_page = getattr(spec, "page_size", None) if held["--cache"] == "paged" else None
    return held["--cache"], held["--kv-cache-dtype"], page_size or file_page


MEASURED_LAYERS = 4  # layers whose re-quantization error `info --onnx` measures (a V3 fold is ~4 GiB of float64)


def measured_requantization(spec) -> list[dict[str, float]]:
    """Per layer (the first MEASURED_LAYERS) of an FP8 export: its re-quantized weights' relative RMS error
    against their float64 values, from the spec's own weights."""
    from ..graph.export_form import requantization_error
    from ..weights.eager import weight_source

    source = weight_source(spec)
    return [requantization_error(spec, source, i) for i in range(min(MEASURED_LAYERS, spec.config.num_hidden_layers))]
