"""`mla-export export`: a model to ONNX, one MlaAttention node per layer (DeepseekMoE per MoE layer)."""

from __future__ import annotations

import click

from ..common.errors import FieldError, UserError
from ..model.spec import MAX_SEED
from .options import (EXIT_CODES, absorb_option, cache_layout, cache_layout_options, config_option, layout_words,
                      load_config, preset_option, quiet_option, wrote)


@click.command(epilog=EXIT_CODES, short_help="Export a model to ONNX (MlaAttention/DeepseekMoE nodes).")
@preset_option
@config_option
@click.option("--checkpoint", type=click.Path(), help="HF DeepSeek checkpoint directory (default: random weights).")
@click.option("--layers", type=int, help="Export only the first N layers.")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32", show_default=True,
              help="Weights, activations and cache type of the exported graph.")
@click.option("--max-seq-len", type=int,
              help="Cache rows per sequence (Smax).  [default: 4096, or max_position_embeddings if smaller]")
@click.option("--io", type=click.Choice(["hidden", "tokens"]), default="hidden", show_default=True,
              help="Graph I/O: hidden states, or input_ids -> logits with embeddings and LM head.")
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True,
              help="Seed of the random weights.")
@absorb_option("prefolded: W_UK^T W_UQ and W_O W_UV multiplied at export; runtime: W_UK [H,Dn,Dc] and W_UV "
               "[H,Dc,Dv] kept and applied per head (~3x fewer weights at DeepSeek's dims; see `info`).")
@click.option("--quant", type=click.Choice(["none", "fp8"]), default="none", show_default=True,
              help="fp8: the large projections and routed experts as FP8 (e4m3) with float32 128x128 block "
                   "scales, DeepSeek's format (an FP8 checkpoint's bytes kept); none: every weight in --dtype.")
@cache_layout_options
@click.option("--tp", type=int, default=1, show_default=True,
              help="Split the model over N devices (a power of two; DeepSeek-V3's tensor and expert parallel "
                   "layout): -o DIR receives rank0.onnx .. rank{N-1}.onnx and parallel.json.")
@click.option("-o", "--output", required=True, type=click.Path(),
              help="Output .onnx path (a directory with --tp N > 1).")
@quiet_option
def export(preset, config_path, checkpoint, layers, dtype, max_seq_len, io, seed, absorb, quant, cache, page_size,
           kv_cache_dtype, tp, output, quiet):
    """Export the model (pre-folded or run-time absorbed) to ONNX: one MlaAttention node per layer, one
    DeepseekMoE node per mixture-of-experts layer."""
    import time

    from ..common.console import prose
    from ..graph.export import check_output_path, export_onnx, written_files
    from ..common.fileio import check_input_dir, check_output_file
    from .info import absorb_advice
    from ..common.progress import ProgressReporter
    from ..model.spec import ModelSpec

    from ..graph.parallel_export import check_output_directory, export_parallel

    if tp > 1:
        check_output_directory(output)
    else:
        check_output_path(output)
        check_output_file("-o", output, {"--config": config_path})
    if checkpoint:
        # a directory at a UTF-8 path (the export's metadata records it), checked before it is read as --config
        check_input_dir("--checkpoint", checkpoint, "; pass a HF DeepSeek-V2/V3 checkpoint directory")
    if checkpoint and not (preset or config_path):
        config_path = checkpoint
    layout = cache_layout(cache, page_size, kv_cache_dtype)
    config = load_config(preset, config_path, layers)
    rows = max_seq_len if max_seq_len is not None else min(4096, config.max_position_embeddings)
    try:
        spec = ModelSpec(config, dtype=dtype, max_seq_len=rows, seed=seed, checkpoint=checkpoint, io=io,
                         absorb=absorb, quant=quant, tp_size=tp, **layout)
    except FieldError as exc:
        if exc.field != "max_seq_len" or max_seq_len is not None:
            raise
        raise UserError(f"config field max_position_embeddings={config.max_position_embeddings}: the default cache "
                        f"of {rows} rows is too small ({exc.expected})") from None
    start = time.perf_counter()
    with ProgressReporter("export", quiet=quiet, unit="bytes") as progress:
        note = lambda line: click.echo(line, err=True)  # noqa: E731
        if tp > 1:
            manifest = export_parallel(spec, output, progress, note=note)
            files = [manifest] + [f for r in range(tp) for f in written_files(manifest.parent / f"rank{r}.onnx")]
        else:
            files = written_files(export_onnx(spec, output, progress, note=note))
    click.echo(prose(absorb_advice(config, dtype)))
    layers_text = f"{config.num_hidden_layers} layer{'s' if config.num_hidden_layers != 1 else ''}"
    quantized = ", --quant fp8" if quant == "fp8" else ""
    click.echo(f"exported {config.name}, {layers_text}, {dtype}, Smax {rows}, --absorb {absorb}{quantized}")
    words = " ".join(w for w in (f"--tp {tp}" if tp > 1 else "", layout_words(**layout)) if w)
    if words:
        click.echo(f"  with {words}")
    click.echo(f"{wrote(files)} in {time.perf_counter() - start:.1f} s")
