"""`mla-export`: the command group, and how every failure of every command reaches the user. The commands
live in `cmd_*` modules; each parses options and calls a function of the package, so anything they do can
be done from Python."""

from __future__ import annotations

import signal
import sys
import traceback

import click

from ..common.version import __version__
from ..common.errors import FieldError, UserError
from .cmd_build import build
from .cmd_export import export
from .cmd_generate import generate
from .cmd_info import info
from .cmd_profile import profile
from .cmd_validate import validate
from .options import CONTEXT_SETTINGS, EXIT_CODES

# The option that sets each spec/config field a core function may name in a FieldError.
FIELD_OPTIONS = {"num_layers": "--layers", "max_seq_len": "--max-seq-len", "dtype": "--dtype", "io": "--io",
                 "output": "-o", "batch": "--batch", "prefill_len": "--prefill-len", "steps": "--steps",
                 "absorb": "--absorb", "seed": "--seed", "quant": "--quant", "page_size": "--page-size",
                 "cache": "--cache", "kv_cache_dtype": "--kv-cache-dtype"}
REPORT_TO = "the mla-export issue tracker"  # where an internal error asks to be reported
MAX_MESSAGE = 2000  # characters of one error message (a value echoed from a file can be huge)

# Exit codes: 0 success, 1 an error in the input (or a failed validation), 2 a bad command line (click),
# 70 an internal error (a bug: please report it), 130 Ctrl-C, 143 SIGTERM.
EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_TERMINATED = 70, 130, 143


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


@click.group(cls=Cli, context_settings=CONTEXT_SETTINGS, epilog=EXIT_CODES)
@click.version_option(__version__, "-V", "--version", prog_name="mla-export")
@click.option("--debug", is_flag=True, help="On an error, also print the Python traceback.")
def main(debug):
    """Export Multi-head Latent Attention (DeepSeek-V2/V3, Kimi K2) models to ONNX with one MlaAttention node
    per layer, validate them against the eager model, build TensorRT engines, profile them, generate text
    with them, and show a config's sizes.

    Progress goes to stderr (-q silences it), results to stdout; `info`, `validate` and `profile` take
    --json for machine-readable output. `mla-export COMMAND -h` shows a command's options."""


for _command in (info, export, validate, build, profile, generate):
    main.add_command(_command)
