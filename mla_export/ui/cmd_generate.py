"""`mla-export generate`: text in, text out, on ONNX Runtime, an engine or the eager model."""

from __future__ import annotations

import sys

import click

from ..common.errors import UserError
from ..model.spec import MAX_SEED
from .options import (EXIT_CODES, absorb_option, config_option, input_files, json_option, load_config, preset_option,
                      print_json, quiet_option, say, wrote)


def _prompts(prompt: tuple[str, ...], prompts_file: str | None) -> list[str]:
    """--prompt texts, then --prompts-file's lines (one prompt a line, blank lines skipped)."""
    from ..common.fileio import check_input_file

    texts = list(prompt)
    if prompts_file is not None:
        path = check_input_file("--prompts-file", prompts_file, "; pass a text file with one prompt a line")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise UserError(f"--prompts-file {prompts_file}: not UTF-8 text; save it as UTF-8") from None
        texts += [line for line in lines if line.strip()]
    if not texts:
        raise UserError("no prompt: pass --prompt TEXT (repeatable) or --prompts-file F")
    return texts


def _eager_spec(preset, config_path, checkpoint, layers, dtype, max_seq_len, absorb, quant, rows_needed):
    """The --eager model's spec: the config of --preset/--config/--checkpoint, a cache of --max-seq-len rows
    (default: what the prompts and --max-new-tokens need)."""
    from ..common.errors import FieldError
    from ..common.fileio import check_input_dir
    from ..model.spec import ModelSpec

    if checkpoint:
        check_input_dir("--checkpoint", checkpoint, "; pass a HF DeepSeek-V2/V3 checkpoint directory")
    if checkpoint and not (preset or config_path):
        config_path = checkpoint
    config = load_config(preset, config_path, layers)
    rows = max_seq_len if max_seq_len is not None else max(2, min(rows_needed, config.max_position_embeddings))
    try:
        return ModelSpec(config, dtype=dtype, max_seq_len=rows, checkpoint=checkpoint, io="tokens", absorb=absorb,
                         quant=quant)
    except FieldError as exc:
        raise UserError(f"--max-seq-len {rows}: {exc.expected}") from None


def _tokenizer_path(tokenizer: str | None, checkpoint: str | None, spec_checkpoint: str | None) -> tuple[str, str]:
    """(path, the option it came from): --tokenizer, else --checkpoint, else the checkpoint the model was
    exported from."""
    for path, option in ((tokenizer, "--tokenizer"), (checkpoint, "--checkpoint"),
                         (spec_checkpoint, "checkpoint")):
        if path:
            return path, option
    raise UserError("no tokenizer: the model was not exported from a checkpoint; pass --tokenizer PATH (a "
                    "tokenizer.json or the directory of the model's tokenizer)")


@click.command(epilog=EXIT_CODES, short_help="Generate text from prompts (ONNX Runtime, an engine, eager).")
@click.option("--onnx", "onnx_path", type=click.Path(), help="An --io tokens ONNX file written by mla-export export.")
@click.option("--engine", type=click.Path(), help="A TensorRT engine built from an --io tokens export (needs a GPU).")
@click.option("--plugin-lib", type=click.Path(), help="libmla_plugin.so for a plugin engine (default: as build).")
@click.option("--eager", is_flag=True, help="The eager PyTorch model of --preset/--config/--checkpoint.")
@preset_option
@config_option
@click.option("--checkpoint", type=click.Path(), help="HF DeepSeek checkpoint directory: the --eager model's weights "
              "and the tokenizer (default: the checkpoint the ONNX file or engine was exported from).")
@click.option("--tokenizer", type=click.Path(), help="A tokenizer.json, or a directory holding one (with its "
              "tokenizer_config.json) [default: from the checkpoint].")
@click.option("--layers", type=int, help="With --eager: only the first N layers.")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32", show_default=True,
              help="With --eager: weights, activations and cache.")
@click.option("--max-seq-len", type=int, help="With --eager: cache rows [default: what the prompts need].")
@absorb_option("With --eager: the export form to run.")
@click.option("--quant", type=click.Choice(["none", "fp8"]), default="none", show_default=True,
              help="With --eager: FP8 weights as `export --quant fp8` stores them.")
@click.option("--prompt", multiple=True, help="Prompt text; repeat it for several prompts (one ragged batch).")
@click.option("--prompts-file", type=click.Path(), help="A text file, one prompt a line (after any --prompt).")
@click.option("--chat", is_flag=True, help="Wrap each prompt in the tokenizer's chat template (needs jinja2).")
@click.option("--max-new-tokens", type=int, default=64, show_default=True, help="Tokens to generate per prompt.")
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0: greedy (argmax); else sampled.")
@click.option("--top-k", type=int, default=0, show_default=True, help="Sample from the K likeliest (0: all).")
@click.option("--top-p", type=float, default=1.0, show_default=True,
              help="Sample from the likeliest tokens whose probabilities reach P, in (0, 1].")
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True, help="Seed of the sampling.")
@click.option("--stop", multiple=True, help="End a sequence where its text contains TEXT (repeatable).")
@json_option("Prompts, their token ids, generated ids and text, and timings")
@quiet_option
def generate(onnx_path, engine, plugin_lib, eager, preset, config_path, checkpoint, tokenizer, layers, dtype,
             max_seq_len, absorb, quant, prompt, prompts_file, chat, max_new_tokens, temperature, top_k, top_p, seed,
             stop, json_out, quiet):
    """Generate text: prefill the prompts (one ragged batch) then decode with the latent caches kept between
    steps; greedy by default, or sampled (--temperature, --top-k, --top-p) from --seed. One prompt streams
    its text to stdout as tokens come; several print each completion when it finishes. Prefill time, time to
    first token and decode tokens/s go to stderr at the end."""
    from ..common.fileio import check_output_file
    from ..run.sampling import Sampling
    from ..run.tokenizer import load_tokenizer

    if sum([onnx_path is not None, engine is not None, eager]) != 1:
        raise UserError("pass exactly one of --onnx MODEL.onnx, --engine MODEL.engine, --eager")
    if not eager and (preset or config_path or layers is not None or max_seq_len is not None):
        raise UserError("--preset, --config, --layers and --max-seq-len choose the --eager model; an ONNX file or "
                        "engine has its own: drop them")
    if not (eager or absorb == "prefolded" and quant == "none" and dtype == "float32"):
        raise UserError("--absorb, --quant and --dtype choose the --eager model's form; an ONNX file or engine has "
                        "its own: drop them")
    sampling = Sampling(temperature, top_k, top_p, seed)
    texts = _prompts(prompt, prompts_file)
    if json_out not in (None, "-"):
        check_output_file("--json", json_out, input_files(onnx=onnx_path, engine=engine))
    spec = parallel = None
    if onnx_path is not None:
        from ..graph.onnx_reader import read_export_spec
        from ..graph.parallel_export import is_parallel_export, read_parallel_export
        from ..run.generate_steps import require_tokens
        from ..run.validate import refuse_rank_file

        if is_parallel_export(onnx_path):  # a --tp export: its ranks, read and checked once here
            parallel = read_parallel_export(onnx_path)
            spec = parallel.spec.single_device()
        else:
            spec = read_export_spec(onnx_path)
            refuse_rank_file(spec, onnx_path)
        require_tokens(spec, f"--onnx {onnx_path}")
    elif engine is not None:
        from ..model.spec import spec_from_metadata
        from ..run.generate_steps import require_tokens
        from ..trt.sidecar import Sidecar

        spec = spec_from_metadata(Sidecar.read_single_device(engine).onnx_metadata, f"--engine {engine}")
        require_tokens(spec, f"--engine {engine}")
    text_tokenizer = load_tokenizer(*_tokenizer_path(tokenizer, checkpoint, spec.checkpoint if spec else None))
    encode = text_tokenizer.encode_chat if chat else text_tokenizer.encode
    prompt_ids = [encode(t) for t in texts]
    if eager:
        spec = _eager_spec(preset, config_path, checkpoint, layers, dtype, max_seq_len, absorb, quant,
                           max(len(p) for p in prompt_ids) + max_new_tokens)
    from ..run.generate import check_room

    check_room(prompt_ids, max_new_tokens, spec.max_seq_len, spec.config.vocab_size)
    _run(onnx_path, engine, plugin_lib, spec, text_tokenizer, texts, prompt_ids, sampling, max_new_tokens,
         list(stop), json_out, quiet, parallel)


def _run(onnx_path, engine, plugin_lib, spec, tokenizer, texts, prompt_ids, sampling, max_new_tokens, stops,
         json_out, quiet, parallel=None):
    """Loads the model, generates, prints text (or JSON) and the timings."""
    from ..common.progress import ProgressReporter
    from ..run.generate import generate
    from ..run.generate_steps import EagerSteps, OnnxRuntimeSteps, RunnerSteps, engine_steps
    from ..run.generate_text import TextStream
    from ..run.sampling import Sampler

    with ProgressReporter("generate", quiet=quiet, unit="steps") as progress:
        progress("loading the model", 0, 1)
        if parallel is not None or (onnx_path is not None and spec.cache_contract):  # ranks, or page pools
            model = RunnerSteps.open(onnx_path, spec, parallel)
        elif onnx_path is not None:
            model = OnnxRuntimeSteps(onnx_path, spec)
        elif engine is not None:
            model = engine_steps(engine, plugin_lib)
        else:
            model = EagerSteps(spec)
    write = None if json_out == "-" else (lambda s: (sys.stdout.write(s), sys.stdout.flush()))
    stream = TextStream(tokenizer, len(texts), stops, tokenizer.eos_ids, max_new_tokens, write)
    try:
        sequences, timings = generate(model, prompt_ids, max_new_tokens, Sampler(sampling), tokenizer.eos_ids, stream)
    finally:
        if hasattr(model, "close"):
            model.close()
    result = {"model": model.name, "sampling": sampling.__dict__, "max_new_tokens": max_new_tokens,
              "sequences": [{"prompt": text, "prompt_ids": seq.prompt_ids, "ids": seq.ids, "text": stream.text(b),
                             "finish": seq.finish} for b, (text, seq) in enumerate(zip(texts, sequences))],
              "timings": timings.to_dict()}
    if json_out == "-":
        print_json(result)
    elif json_out is not None:
        from ..common.fileio import atomic_write_text
        import json

        atomic_write_text(json_out, json.dumps(result, indent=2) + "\n")
    if not quiet:
        tokens = sum(len(p) for p in prompt_ids)
        click.echo(f"{model.name}: prefill {len(texts)} x up to {max(len(p) for p in prompt_ids)} tokens "
                   f"({tokens} in all) {timings.prefill_s * 1e3:.1f} ms, first token "
                   f"{timings.first_token_s * 1e3:.1f} ms; decode {timings.decode_tokens} tokens in "
                   f"{timings.decode_steps} steps, {timings.decode_tokens_per_s:.1f} tokens/s", err=True)
    if json_out not in (None, "-"):
        say(wrote([json_out]), json_on_stdout=True)
