"""What the commands share: the options that mean one thing everywhere (--preset, --config, --json,
--absorb, -q, the latent cache's --cache/--page-size/--kv-cache-dtype), the config they name, and how a
command speaks to the user."""

from __future__ import annotations

import click

from ..common.errors import UserError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}
EXIT_CODES = ("Exit codes: 0 success; 1 bad input (a file, an option's value, the environment) or a failed "
              "validation; 2 a bad command line; 70 an internal error (a bug: please report it); 130 interrupted "
              "(Ctrl-C); 143 terminated (SIGTERM).")


def load_config(preset: str | None, config_path: str | None, layers: int | None):
    """The MlaConfig of --preset or --config (exactly one), cut to --layers N when given."""
    from ..model.hf_config import load_config_file, load_preset

    if (preset is None) == (config_path is None):
        raise UserError("pass exactly one of --preset NAME or --config PATH")
    config = load_preset(preset) if preset else load_config_file(config_path)
    return config.with_layers(layers) if layers is not None else config


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
    from ..model.spec import ABSORB_MODES

    return click.option("--absorb", type=click.Choice(ABSORB_MODES), default=ABSORB_MODES[0], show_default=True,
                        help=help_text)


def cache_layout_options(command):
    """`--cache`, `--page-size` and `--kv-cache-dtype`: the latent cache's layout and dtype (MlaAttention contract
    version 2), one meaning in export and profile; `cache_layout` turns them into ModelSpec's keywords."""
    from ..common import contract

    options = [
        click.option("--cache", type=click.Choice(contract.CACHE_LAYOUTS), default=contract.CACHE_LAYOUTS[0],
                     show_default=True, help="The latent cache: one [B, Smax, Dc+Dr] buffer per layer, or a pool of "
                     "pages per layer and a block table shared by the layers (MlaAttention contract version 2)."),
        click.option("--page-size", type=int, metavar="N", help="Rows per page with --cache paged, a power of two.  "
                     f"[default: {contract.DEFAULT_PAGE_SIZE}]"),
        click.option("--kv-cache-dtype", type=click.Choice(contract.KV_CACHE_DTYPES),
                     default=contract.KV_CACHE_DTYPES[0], show_default=True,
                     help="fp8: c_kv stored as e4m3 codes with a power-of-two float32 scale per 128 values per "
                     "token, k_pe in --dtype (FlashMLA's DeepSeek-V3.2 format, 656 bytes per token at DeepSeek's "
                     "dims)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def cache_layout(cache: str, page_size: int | None, kv_cache_dtype: str) -> dict:
    """ModelSpec's `cache`, `page_size` and `kv_cache_dtype` of `cache_layout_options`' values (--page-size
    only with --cache paged; its range is ModelSpec's to check)."""
    from ..common import contract

    if page_size is not None and cache != "paged":
        raise UserError(f"--page-size {page_size} sizes the pages of --cache paged: pass --cache paged, or drop "
                        "--page-size")
    return {"cache": cache, "page_size": contract.DEFAULT_PAGE_SIZE if page_size is None else page_size,
            "kv_cache_dtype": kv_cache_dtype}


def layout_words(cache: str, page_size: int, kv_cache_dtype: str) -> str:
    """The command-line words of a cache layout ("--cache paged --page-size 16 --kv-cache-dtype fp8"; "" for
    the contiguous cache in the model's dtype)."""
    words = [f"--cache paged --page-size {page_size}"] if cache == "paged" else []
    return " ".join(words + (["--kv-cache-dtype fp8"] if kv_cache_dtype == "fp8" else []))


def say(message: str, json_on_stdout: bool = False) -> None:
    """A line for the user: on stdout, or on stderr when stdout carries JSON."""
    click.echo(message, err=json_on_stdout)


def wrote(paths) -> str:
    """'wrote a (1.2 MB), b (3.4 KB)': what a command wrote where, with sizes."""
    from pathlib import Path

    from ..common.progress import human_size

    return "wrote " + ", ".join(f"{p} ({human_size(Path(p).stat().st_size)})" for p in paths)


def print_json(data) -> None:
    import json

    click.echo(json.dumps(data, indent=2))


def input_files(onnx: str | None = None, engine: str | None = None) -> dict[str, str]:
    """The files a command reads, by the option (or what) that names them: an output must be none of them."""
    from pathlib import Path

    files = {}
    if onnx:
        files["--onnx"] = onnx
        try:
            from ..graph.export import referenced_data_file

            data = referenced_data_file(Path(onnx))
        except Exception:  # unreadable: the command itself says why
            data = None
        if data:
            files["the weights file of --onnx"] = str(Path(onnx).parent / data)
    if engine:
        from ..trt.sidecar import sidecar_path

        files["--engine"] = engine
        files["the sidecar of --engine"] = str(sidecar_path(engine))
    return files


def int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise UserError(f"{option} {text}: expected a comma-separated list of positive integers")
    return sorted(set(values))
