"""`mla-export profile`: latency of prefill and decode over batch x context."""

from __future__ import annotations

import click

from ..common.errors import FieldError, UserError
from .options import (EXIT_CODES, absorb_option, cache_layout, cache_layout_options, config_option, input_files,
                      int_list, json_option, layout_words, load_config, preset_option, print_json, quiet_option,
                      say, wrote)


def _profile_model(target_class, preset, config_path, layers, dtype, max_seq_len, absorb, contexts, layout):
    """The --eager or --kernels target of `profile`: the config at `dtype` (float32 on the CPU, bfloat16 on a
    GPU by default) with a cache that holds the longest context, laid out as `layout` (`cache_layout`)."""
    import torch

    from ..run.profile_report import default_contexts
    from ..model.spec import ModelSpec

    config = load_config(preset, config_path, layers)
    dtype = dtype or ("bfloat16" if torch.cuda.is_available() else "float32")
    longest = max(contexts or default_contexts(None))
    try:
        spec = ModelSpec(config, dtype=dtype, max_seq_len=max_seq_len or longest + 1, absorb=absorb, **layout)
    except FieldError as exc:
        if exc.field != "max_seq_len" or max_seq_len is not None:
            raise
        raise UserError(f"--contexts {longest}: the cache would need {longest + 1} rows; {exc.expected}") from None
    return target_class(spec)


@click.command(epilog=EXIT_CODES, short_help="Latency of prefill and decode over batch x context.")
@click.option("--engine", type=click.Path(), help="Time a TensorRT engine (GPU).")
@click.option("--onnx", "onnx_path", type=click.Path(), help="Time an ONNX file on ONNX Runtime (CPU).")
@click.option("--eager", is_flag=True, help="Time the eager PyTorch model of --preset/--config in its --absorb form.")
@click.option("--kernels", is_flag=True, help="Time the Triton attention kernels alone at --preset/--config dims (GPU).")
@preset_option
@config_option
@click.option("--layers", type=int, help="With --eager/--kernels: only the first N layers.")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), help="With --eager/--kernels "
              "[default: float32 on the CPU, bfloat16 on a GPU].")
@click.option("--max-seq-len", type=int, help="With --eager/--kernels: cache rows [default: largest context + 1].")
@absorb_option("With --eager: the export form to time (an ONNX file or engine has its own).")
@cache_layout_options
@click.option("--batches", default="1,4", show_default=True, metavar="N,N,...", help="Batch sizes to time.")
@click.option("--contexts", default=None, metavar="N,N,...", help="Context lengths (tokens) to time [default: "
              "16,32,...,1024, those the cache holds].")
@click.option("--phase", "phases", type=click.Choice(["prefill", "decode"]), multiple=True,
              help="Phases to time [default: both].")
@click.option("--warmup", type=int, default=2, show_default=True, help="Untimed calls before timing.")
@click.option("--iters", type=int, default=10, show_default=True, help="Timed calls per point.")
@json_option("The results")
@click.option("--csv", "csv_path", type=click.Path(), help="Write the results as CSV.")
@click.option("--plot", type=click.Path(), help="Draw latency vs context (p50, p90-p99 band, one line per batch); "
              "the format follows the extension: .png, .svg or .pdf.")
@quiet_option
def profile(engine, onnx_path, eager, kernels, preset, config_path, layers, dtype, max_seq_len, absorb, cache,
            page_size, kv_cache_dtype, batches, contexts, phases, warmup, iters, json_out, csv_path, plot, quiet):
    """Latency percentiles of prefill and decode over batch x context, tokens/s, cache GB/s vs copy bandwidth;
    with --eager/--kernels over the latent cache of --cache/--page-size/--kv-cache-dtype (a file: its own)."""
    from ..common.fileio import check_output_file
    from ..run.profile_report import PLOT_FORMATS, default_contexts

    if sum([engine is not None, onnx_path is not None, eager, kernels]) != 1:
        raise UserError("pass exactly one of --engine, --onnx, --eager, --kernels")
    layout = cache_layout(cache, page_size, kv_cache_dtype)
    if (engine is not None or onnx_path is not None) and layout_words(**layout):
        raise UserError(f"{layout_words(**layout)}: the cache of an {'engine' if engine else 'ONNX file'} is its "
                        "export's; drop these options (they lay out the cache of --eager and --kernels)")
    batch_list = int_list(batches, "--batches")
    context_list = int_list(contexts, "--contexts") if contexts is not None else None
    if warmup < 0 or iters < 1:
        raise UserError("--warmup must be >= 0 and --iters >= 1")
    if plot and not plot.lower().endswith(PLOT_FORMATS):
        raise UserError(f"--plot {plot}: the format follows the extension; expected a file name ending in "
                        f"{', '.join(PLOT_FORMATS[:-1])} or {PLOT_FORMATS[-1]}")
    outputs = {"--json": None if json_out == "-" else json_out, "--csv": csv_path, "--plot": plot}
    for option, path in outputs.items():
        if path:
            others = {o: p for o, p in outputs.items() if o != option}
            check_output_file(option, path, {**input_files(onnx=onnx_path, engine=engine), **others})

    # The files given are read before torch is imported: a wrong one is refused at once.
    onnx_spec = None
    if onnx_path is not None:
        from ..graph.onnx_reader import read_export_spec

        onnx_spec = read_export_spec(onnx_path)
    if engine is not None:
        from ..trt.sidecar import Sidecar

        Sidecar.read_single_device(engine)  # before any work: a rank engine is the C++ example's

    from ..run.profile import EagerTarget, EngineTarget, KernelsTarget, OnnxRuntimeTarget, run_profile
    from ..run.profile_report import plot_profile, print_profile
    from ..common.progress import ProgressReporter

    with ProgressReporter("profile", quiet=quiet, unit="steps") as progress:
        progress("loading the model", 0, 1)
        if engine is not None:
            target = EngineTarget(engine)
        elif onnx_path is not None:
            target = OnnxRuntimeTarget(onnx_path, onnx_spec)
        else:
            target = _profile_model(EagerTarget if eager else KernelsTarget, preset, config_path, layers, dtype,
                                    max_seq_len, absorb, context_list, layout)
        report = run_profile(target, batch_list, context_list or default_contexts(target.spec.max_seq_len), warmup,
                             iters, tuple(phases) or ("prefill", "decode"), progress=progress)
    if json_out == "-":
        print_json(report.to_dict())
    else:
        print_profile(report)
    written = []
    if json_out not in (None, "-"):
        report.write_json(json_out)
        written.append(json_out)
    if csv_path:
        report.write_csv(csv_path)
        written.append(csv_path)
    if plot:
        plot_profile(report, plot)
        written.append(plot)
    if written:
        say(wrote(written), json_on_stdout=json_out == "-")
