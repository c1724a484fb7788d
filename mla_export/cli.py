"""`mla-export`: export, validate and inspect MLA models. Each command parses options and calls a
function of the package; anything here can be done from Python."""

from __future__ import annotations

import logging
import sys

import click

from . import __version__
from .errors import UserError


def _config(preset: str | None, config_path: str | None, layers: int | None):
    from .config import load_config_file, load_preset

    if (preset is None) == (config_path is None):
        raise UserError("pass exactly one of --preset NAME or --config PATH")
    config = load_preset(preset) if preset else load_config_file(config_path)
    return config.with_layers(layers) if layers is not None else config


def _quiet_exporter() -> None:
    for name in ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript"):
        logging.getLogger(name).setLevel(logging.ERROR)


class Cli(click.Group):
    """Turns UserError into one clear message and exit code 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)


preset_option = click.option("--preset", help="A preset from models/ (tiny, deepseek-v2-lite, deepseek-v2, deepseek-v3).")
config_option = click.option("--config", "config_path", type=click.Path(),
                             help="A DeepseekV2/V3 config.json (or a directory holding one).")


@click.group(cls=Cli)
@click.version_option(__version__, prog_name="mla-export")
def main():
    """Export Multi-head Latent Attention models to ONNX (one MlaAttention node per layer),
    validate them against the eager model, and inspect their sizes."""


@main.command()
@preset_option
@config_option
@click.option("--layers", type=int, help="Use only the first N layers.")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16", "fp8"]), default="bfloat16",
              show_default=True, help="Cache element type for the byte counts.")
@click.option("--context", type=int, default=4096, show_default=True, help="Context length for whole-model figures.")
def info(preset, config_path, layers, dtype, context):
    """Print dims, cache bytes per token (MLA vs MHA/GQA/MQA) and projection costs."""
    from .info import render_info

    render_info(_config(preset, config_path, layers), dtype, context)


@main.command()
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
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random weights.")
@click.option("-o", "--output", required=True, type=click.Path(), help="Output .onnx path.")
def export(preset, config_path, checkpoint, layers, dtype, max_seq_len, io, seed, output):
    """Export the pre-folded model to ONNX with one MlaAttention node per layer."""
    import time

    from .export import ExportSpec, export_onnx

    _quiet_exporter()
    if checkpoint and not (preset or config_path):
        config_path = checkpoint
    config = _config(preset, config_path, layers)
    if max_seq_len is None:
        max_seq_len = min(4096, config.max_position_embeddings)
    start = time.perf_counter()
    path = export_onnx(ExportSpec(config, dtype=dtype, max_seq_len=max_seq_len, seed=seed, checkpoint=checkpoint,
                                  io=io), output)
    click.echo(f"wrote {path} ({config.name}, {config.num_hidden_layers} layers, {dtype}, Smax {max_seq_len}) "
               f"in {time.perf_counter() - start:.1f} s")


@main.command()
@click.option("--onnx", "onnx_path", required=True, type=click.Path(), help="An ONNX file written by mla-export export.")
@click.option("--steps", type=int, default=8, show_default=True, help="Decode steps after the prefill.")
@click.option("--batch", type=int, default=3, show_default=True, help="Sequences (with ragged cache lengths).")
@click.option("--prefill-len", type=int, default=16, show_default=True, help="Tokens in the prefill step.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random inputs.")
@click.option("--report", type=click.Path(), help="Also write the full comparison as JSON here.")
def validate(onnx_path, steps, batch, prefill_len, seed, report):
    """Run the ONNX file on ONNX Runtime and compare outputs and caches with the eager float64 model."""
    from .validate import Scenario, print_report, validate_onnx

    result = validate_onnx(onnx_path, Scenario(batch=batch, prefill_len=prefill_len, steps=steps, seed=seed))
    print_report(result)
    if report:
        result.write_json(report)
    sys.exit(0 if result.passed else 1)


if __name__ == "__main__":
    main()
