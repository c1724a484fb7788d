"""`mla-export`: export, validate and inspect MLA models. Each command parses options and calls a
function of the package; anything here can be done from Python."""

from __future__ import annotations

import signal
import sys
import traceback

import click

from .common.version import __version__
from .common.errors import FieldError, UserError
from .spec import MAX_SEED

# The option that sets each spec/config field a core function may name in a FieldError.
FIELD_OPTIONS = {"num_layers": "--layers", "max_seq_len": "--max-seq-len", "dtype": "--dtype", "io": "--io",
                 "output": "-o", "batch": "--batch", "prefill_len": "--prefill-len", "steps": "--steps",
                 "absorb": "--absorb", "seed": "--seed"}
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}
REPORT_TO = "the mla-export issue tracker"  # where an internal error asks to be reported
MAX_MESSAGE = 2000  # characters of one error message (a value echoed from a file can be huge)

# Exit codes: 0 success, 1 an error in the input (or a failed validation), 2 a bad command line (click),
# 70 an internal error (a bug: please report it), 130 Ctrl-C, 143 SIGTERM.
EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_TERMINATED = 70, 130, 143
EXIT_CODES = ("Exit codes: 0 success; 1 bad input (a file, an option's value, the environment) or a failed "
              "validation; 2 a bad command line; 70 an internal error (a bug: please report it); 130 interrupted "
              "(Ctrl-C); 143 terminated (SIGTERM).")


def _config(preset: str | None, config_path: str | None, layers: int | None):
    from .hf_config import load_config_file, load_preset

    if (preset is None) == (config_path is None):
        raise UserError("pass exactly one of --preset NAME or --config PATH")
    config = load_preset(preset) if preset else load_config_file(config_path)
    return config.with_layers(layers) if layers is not None else config


def user_message(exc: UserError) -> str:
    """The message for `exc`, naming the command-line option where the error is about a field one sets."""
    if isinstance(exc, FieldError) and exc.field in FIELD_OPTIONS:
        return f"{FIELD_OPTIONS[exc.field]} {exc.value}: {exc.expected}"
    return str(exc)


def _clip(message: str) -> str:
    """`message` on one line, at most MAX_MESSAGE characters (its start and its end kept)."""
    message = " ".join(message.split())
    if len(message) <= MAX_MESSAGE:
        return message
    return f"{message[:MAX_MESSAGE * 2 // 3]} [...] {message[-MAX_MESSAGE // 3:]}"


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that it unwinds (and cleans up) like Ctrl-C."""


def _raise_terminated(signum, frame):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one is enough: let the clean-up finish
    raise Terminated()


def _os_message(exc: OSError) -> str:
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}"


class Cli(click.Group):
    """Every failure of every command as one message on stderr, never a traceback for user input:
    UserError (exit 1), an OSError or MemoryError from the environment (exit 1), Ctrl-C (130) and SIGTERM
    (143), both after the command's own clean-up; anything else is a bug: one line saying where to report
    it (exit 70), the traceback behind `mla-export --debug`."""

    def invoke(self, ctx):
        debug = bool(ctx.params.get("debug"))
        previous = None
        try:
            previous = signal.signal(signal.SIGTERM, _raise_terminated)
        except ValueError:  # not the main thread (an embedding application): leave its handler alone
            pass
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # click prints usage errors itself (exit 2)
        except UserError as exc:
            self._fail(f"error: {_clip(user_message(exc))}", 1, debug)
        except Terminated:
            self._fail("error: terminated (SIGTERM); partial output was removed", EXIT_TERMINATED, debug)
        except KeyboardInterrupt:
            self._fail("error: interrupted; partial output was removed", EXIT_INTERRUPTED, debug)
        except MemoryError:
            self._fail("error: out of memory; use a smaller model (--layers N), batch or context, or a machine "
                       "with more memory", 1, debug)
        except RecursionError:
            self._fail("error: input nested too deeply to read", 1, debug)
        except OSError as exc:
            self._fail(f"error: {_clip(_os_message(exc))}", 1, debug)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            self._fail(f"error: internal error ({type(exc).__name__}{': ' + _clip(first) if first else ''}); this is "
                       f"a bug in mla-export {__version__}: please report it to {REPORT_TO} with the command and "
                       "the traceback that `mla-export --debug ...` prints", EXIT_INTERNAL, debug)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    @staticmethod
    def _fail(message: str, code: int, debug: bool):
        if debug:
            traceback.print_exc(file=sys.stderr)
        click.echo(message, err=True)
        sys.exit(code)


preset_option = click.option("--preset", help="A preset from models/ (tiny, tiny-moe, deepseek-v2-lite, "
                             "deepseek-v2, deepseek-v3, kimi-k2).")
config_option = click.option("--config", "config_path", type=click.Path(),
                             help="A DeepseekV2/V3 config.json (or a directory holding one).")
quiet_option = click.option("-q", "--quiet", is_flag=True, help="No progress on stderr.")


def json_option(what: str):
    """`--json [PATH]`, one meaning in every command: `what` as JSON, written to PATH; with no PATH (or -),
    printed on stdout in place of the tables (everything else then goes to stderr)."""
    return click.option("--json", "json_out", is_flag=False, flag_value="-", default=None, metavar="[PATH]",
                        help=f"{what} as JSON: written to PATH, or with no PATH (or -) printed on stdout in "
                             "place of the tables.")


def absorb_option(help_text: str):
    from .spec import ABSORB_MODES

    return click.option("--absorb", type=click.Choice(ABSORB_MODES), default=ABSORB_MODES[0], show_default=True,
                        help=help_text)


def _say(message: str, json_on_stdout: bool = False) -> None:
    """A line for the user: on stdout, or on stderr when stdout carries JSON."""
    click.echo(message, err=json_on_stdout)


def _wrote(paths) -> str:
    """'wrote a (1.2 MB), b (3.4 KB)': what a command wrote where, with sizes."""
    from pathlib import Path

    from .common.progress import human_size

    return "wrote " + ", ".join(f"{p} ({human_size(Path(p).stat().st_size)})" for p in paths)


def _print_json(data) -> None:
    import json

    click.echo(json.dumps(data, indent=2))


@click.group(cls=Cli, context_settings=CONTEXT_SETTINGS, epilog=EXIT_CODES)
@click.version_option(__version__, "-V", "--version", prog_name="mla-export")
@click.option("--debug", is_flag=True, help="On an error, also print the Python traceback.")
def main(debug):
    """Export Multi-head Latent Attention (DeepSeek-V2/V3, Kimi K2) models to ONNX with one MlaAttention node
    per layer, validate them against the eager model, build TensorRT engines, profile them, and show a
    config's sizes.

    Progress goes to stderr (-q silences it), results to stdout; `info`, `validate` and `profile` take
    --json for machine-readable output. `mla-export COMMAND -h` shows a command's options."""


@main.command(epilog=EXIT_CODES, short_help="Dims, cache bytes per token, projection costs of a config.")
@preset_option
@config_option
@click.option("--onnx", "onnx_path", type=click.Path(),
              help="An ONNX file written by mla-export export: its config, and the --absorb form it holds.")
@click.option("--layers", type=int, help="Use only the first N layers.")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16", "fp8"]), default="bfloat16",
              show_default=True, help="Cache element type for the byte counts.")
@click.option("--context", type=click.IntRange(min=1), default=4096, show_default=True,
              help="Context length (tokens) for whole-model figures.")
@json_option("Everything shown")
def info(preset, config_path, onnx_path, layers, dtype, context, json_out):
    """Print dims, cache bytes per token (MLA vs MHA/GQA/MQA), projection costs and the smaller --absorb form."""
    from . import info as info_module

    if json_out not in (None, "-"):
        from .common.fileio import check_output_file

        check_output_file("--json", json_out, _input_files(onnx=onnx_path))
    if onnx_path is None:
        config, absorb = _config(preset, config_path, layers), None
    else:
        if preset or config_path or layers is not None:
            raise UserError("--onnx takes its config from the file: pass it without --preset, --config or --layers")
        from .onnx_reader import read_export_spec

        spec = read_export_spec(onnx_path)
        config, absorb = spec.config, spec.absorb
    if json_out == "-":
        _print_json(info_module.info_dict(config, dtype, context, absorb))
        return
    info_module.render_info(config, dtype, context, absorb=absorb)
    if json_out is not None:
        import json

        from .common.fileio import atomic_write_text

        atomic_write_text(json_out, json.dumps(info_module.info_dict(config, dtype, context, absorb), indent=2) + "\n")
        _say(_wrote([json_out]))


@main.command(epilog=EXIT_CODES, short_help="Export a model to ONNX (MlaAttention/DeepseekMoE nodes).")
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
@click.option("-o", "--output", required=True, type=click.Path(), help="Output .onnx path.")
@quiet_option
def export(preset, config_path, checkpoint, layers, dtype, max_seq_len, io, seed, absorb, output, quiet):
    """Export the model (pre-folded or run-time absorbed) to ONNX: one MlaAttention node per layer, one
    DeepseekMoE node per mixture-of-experts layer."""
    import time

    from .common.console import prose
    from .export import check_output_path, export_onnx, written_files
    from .common.fileio import check_output_file
    from .info import absorb_advice
    from .common.progress import ProgressReporter
    from .spec import ModelSpec

    check_output_path(output)
    check_output_file("-o", output, {"--config": config_path})
    if checkpoint and not (preset or config_path):
        config_path = checkpoint
    config = _config(preset, config_path, layers)
    rows = max_seq_len if max_seq_len is not None else min(4096, config.max_position_embeddings)
    try:
        spec = ModelSpec(config, dtype=dtype, max_seq_len=rows, seed=seed, checkpoint=checkpoint, io=io,
                         absorb=absorb)
    except FieldError as exc:
        if exc.field != "max_seq_len" or max_seq_len is not None:
            raise
        raise UserError(f"config field max_position_embeddings={config.max_position_embeddings}: the default cache "
                        f"of {rows} rows is too small ({exc.expected})") from None
    start = time.perf_counter()
    with ProgressReporter("export", quiet=quiet, unit="bytes") as progress:
        path = export_onnx(spec, output, progress)
    click.echo(prose(absorb_advice(config, dtype)))
    layers_text = f"{config.num_hidden_layers} layer{'s' if config.num_hidden_layers != 1 else ''}"
    click.echo(f"exported {config.name}, {layers_text}, {dtype}, Smax {rows}, --absorb {absorb}")
    click.echo(f"{_wrote(written_files(path))} in {time.perf_counter() - start:.1f} s")


@main.command(epilog=EXIT_CODES, short_help="Compare ONNX Runtime or an engine with the eager model.")
@click.option("--onnx", "onnx_path", type=click.Path(), help="An ONNX file written by mla-export export.")
@click.option("--engine", type=click.Path(), help="A TensorRT engine built by mla-export build (needs a GPU).")
@click.option("--plugin-lib", type=click.Path(), help="libmla_plugin.so for a plugin engine (default: as build).")
@click.option("--steps", type=int, default=8, show_default=True, help="Decode steps after the prefill.")
@click.option("--batch", type=int, default=3, show_default=True,
              help="Number of sequences (with ragged cache lengths).")
@click.option("--prefill-len", type=int, default=16, show_default=True, help="Tokens in the prefill step.")
@click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True,
              help="Seed of the random inputs.")
@json_option("The full comparison (every tensor of every step)")
@click.option("--report", type=click.Path(), help="The same as --json PATH (kept for scripts that use it).")
@quiet_option
def validate(onnx_path, engine, plugin_lib, steps, batch, prefill_len, seed, json_out, report, quiet):
    """Compare ONNX Runtime (--onnx) or a TensorRT engine (--engine; with --onnx also engine vs ONNX Runtime)
    with the eager float64 model over a prefill and decode steps, caches included. Exit code 1 on failure."""
    from .common.fileio import check_output_file
    from .common.progress import ProgressReporter
    from .validate import Scenario, print_report, validate_engine, validate_onnx

    if onnx_path is None and engine is None:
        raise UserError("pass --onnx MODEL.onnx, --engine MODEL.engine, or both")
    if report and json_out:
        raise UserError("--report is --json PATH under its old name: pass one of them")
    option, path = ("--report", report) if report else ("--json", json_out)
    if path not in (None, "-"):
        check_output_file(option, path, _input_files(onnx=onnx_path, engine=engine))
    scenario = Scenario(batch=batch, prefill_len=prefill_len, steps=steps, seed=seed)
    with ProgressReporter("validate", quiet=quiet, unit="steps") as progress:
        if engine is not None:
            result = validate_engine(engine, scenario, onnx=onnx_path, plugin_lib=plugin_lib, progress=progress)
        else:
            result = validate_onnx(onnx_path, scenario, progress=progress)
    if path == "-":
        _print_json(result.to_dict())
    else:
        print_report(result)
    if path not in (None, "-"):
        result.write_json(path)
        _say(_wrote([path]))
    sys.exit(0 if result.passed else 1)


@main.command(epilog=EXIT_CODES, short_help="Build a TensorRT engine and its JSON sidecar.")
@click.option("--onnx", "onnx_path", required=True, type=click.Path(), help="An ONNX file written by mla-export export.")
@click.option("-o", "--output", required=True, type=click.Path(), help="Engine file to write (plus OUTPUT.json).")
@click.option("--attention", type=click.Choice(["plugin", "decomposed"]), default="plugin", show_default=True,
              help="plugin: MlaAttention runs our TensorRT plugin; decomposed: the node's reference ONNX function.")
@click.option("--backend", type=click.Choice(["tensorrt", "tensorrt-rtx"]), default="tensorrt", show_default=True,
              help="TensorRT flavour (TensorRT-RTX builds plugin-free engines, also without a GPU).")
@click.option("--plugin-lib", type=click.Path(), help="libmla_plugin.so (default: next to the package, build/, "
              "or $MLA_EXPORT_PLUGIN_LIB).")
@click.option("--batch-range", default="1:8:32", show_default=True, metavar="MIN:OPT:MAX",
              help="Batch sizes of both profiles (decode and prefill).")
@click.option("--prefill-range", default=None, metavar="MIN:OPT:MAX", help="New tokens per sequence of the "
              "prefill profile [default: 2:256:min(2048, Smax)].")
@click.option("--workspace", help="Workspace memory limit, e.g. 4G.")
@click.option("--timing-cache", type=click.Path(), help="Timing cache file to read and update.")
@click.option("-v", "--verbose", is_flag=True, help="TensorRT's info messages too (stderr; warnings always).")
@quiet_option
def build(onnx_path, output, attention, backend, plugin_lib, batch_range, prefill_range, workspace, timing_cache,
          verbose, quiet):
    """Build a TensorRT engine (decode and prefill profiles) and its JSON sidecar."""
    import time

    from .common.progress import ProgressReporter
    from .trt.build import BuildSpec, build_engine, parse_range, parse_size
    from .trt.sidecar import Sidecar, sidecar_path

    spec = BuildSpec(onnx=onnx_path, output=output, attention=attention, backend=backend, plugin_lib=plugin_lib,
                     batch=parse_range(batch_range, "--batch-range"),
                     prefill_tokens=parse_range(prefill_range, "--prefill-range") if prefill_range else None,
                     workspace=parse_size(workspace) if workspace else None, timing_cache=timing_cache,
                     verbose=verbose)
    start = time.perf_counter()
    with ProgressReporter("build", quiet=quiet) as progress:
        progress("reading and parsing the model", 0, 1)  # until TensorRT's first build phase
        path = build_engine(spec, progress=progress)
    binding = Sidecar.read(path).cache_binding  # aliased: bind past and present caches to one buffer
    click.echo(f"built with {backend}: attention {attention}, cache binding {binding}")
    click.echo(f"{_wrote([path, sidecar_path(path)])} in {time.perf_counter() - start:.1f} s")


def _input_files(onnx: str | None = None, engine: str | None = None) -> dict[str, str]:
    """The files a command reads, by the option (or what) that names them: an output must be none of them."""
    from pathlib import Path

    files = {}
    if onnx:
        files["--onnx"] = onnx
        try:
            from .export import referenced_data_file

            data = referenced_data_file(Path(onnx))
        except Exception:  # unreadable: the command itself says why
            data = None
        if data:
            files["the weights file of --onnx"] = str(Path(onnx).parent / data)
    if engine:
        from .trt.sidecar import sidecar_path

        files["--engine"] = engine
        files["the sidecar of --engine"] = str(sidecar_path(engine))
    return files


def _int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise UserError(f"{option} {text}: expected a comma-separated list of positive integers")
    return sorted(set(values))


def _profile_model(target_class, preset, config_path, layers, dtype, max_seq_len, absorb, contexts):
    """The --eager or --kernels target of `profile`: the config at `dtype` (float32 on the CPU, bfloat16 on a
    GPU by default) with a cache that holds the longest context."""
    import torch

    from .profile_report import default_contexts
    from .spec import ModelSpec

    config = _config(preset, config_path, layers)
    dtype = dtype or ("bfloat16" if torch.cuda.is_available() else "float32")
    longest = max(contexts or default_contexts(None))
    try:
        spec = ModelSpec(config, dtype=dtype, max_seq_len=max_seq_len or longest + 1, absorb=absorb)
    except FieldError as exc:
        if exc.field != "max_seq_len" or max_seq_len is not None:
            raise
        raise UserError(f"--contexts {longest}: the cache would need {longest + 1} rows; {exc.expected}") from None
    return target_class(spec)


@main.command(epilog=EXIT_CODES, short_help="Latency of prefill and decode over batch x context.")
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
def profile(engine, onnx_path, eager, kernels, preset, config_path, layers, dtype, max_seq_len, absorb, batches,
            contexts, phases, warmup, iters, json_out, csv_path, plot, quiet):
    """Latency percentiles of prefill and decode over batch x context, tokens/s, cache GB/s vs copy bandwidth."""
    from .common.fileio import check_output_file
    from .profile_report import PLOT_FORMATS, default_contexts

    if sum([engine is not None, onnx_path is not None, eager, kernels]) != 1:
        raise UserError("pass exactly one of --engine, --onnx, --eager, --kernels")
    batch_list = _int_list(batches, "--batches")
    context_list = _int_list(contexts, "--contexts") if contexts is not None else None
    if warmup < 0 or iters < 1:
        raise UserError("--warmup must be >= 0 and --iters >= 1")
    if plot and not plot.lower().endswith(PLOT_FORMATS):
        raise UserError(f"--plot {plot}: the format follows the extension; expected a file name ending in "
                        f"{', '.join(PLOT_FORMATS[:-1])} or {PLOT_FORMATS[-1]}")
    outputs = {"--json": None if json_out == "-" else json_out, "--csv": csv_path, "--plot": plot}
    for option, path in outputs.items():
        if path:
            others = {o: p for o, p in outputs.items() if o != option}
            check_output_file(option, path, {**_input_files(onnx=onnx_path, engine=engine), **others})

    # The files given are read before torch is imported: a wrong one is refused at once.
    onnx_spec = None
    if onnx_path is not None:
        from .onnx_reader import read_export_spec

        onnx_spec = read_export_spec(onnx_path)
    if engine is not None:
        from .trt.sidecar import Sidecar

        Sidecar.read(engine)

    from .profile import EagerTarget, EngineTarget, KernelsTarget, OnnxRuntimeTarget, run_profile
    from .profile_report import plot_profile, print_profile
    from .common.progress import ProgressReporter

    with ProgressReporter("profile", quiet=quiet, unit="steps") as progress:
        progress("loading the model", 0, 1)
        if engine is not None:
            target = EngineTarget(engine)
        elif onnx_path is not None:
            target = OnnxRuntimeTarget(onnx_path, onnx_spec)
        else:
            target = _profile_model(EagerTarget if eager else KernelsTarget, preset, config_path, layers, dtype,
                                    max_seq_len, absorb, context_list)
        report = run_profile(target, batch_list, context_list or default_contexts(target.spec.max_seq_len), warmup,
                             iters, tuple(phases) or ("prefill", "decode"), progress=progress)
    if json_out == "-":
        _print_json(report.to_dict())
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
        _say(_wrote(written), json_on_stdout=json_out == "-")


if __name__ == "__main__":
    main()
