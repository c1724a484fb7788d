"""`mla-export build`: a TensorRT engine and its JSON sidecar from an export."""

from __future__ import annotations

import click

from .options import EXIT_CODES, quiet_option, wrote


@click.command(epilog=EXIT_CODES, short_help="Build a TensorRT engine and its JSON sidecar.")
@click.option("--onnx", "onnx_path", required=True, type=click.Path(), help="An ONNX file written by mla-export export, or the directory of a --tp export.")
@click.option("-o", "--output", required=True, type=click.Path(), help="Engine file to write (plus OUTPUT.json); for a --tp export, a directory that "
              "receives rank{r}.engine (plus its .json) per rank.")
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
@click.option("--pages-range", default=None, metavar="MIN:OPT:MAX", help="Pages per layer pool of a --cache "
              "paged export, both profiles [default: 1:OPT*max_pages+3:MAX*max_pages+3 of --batch-range].")
@click.option("--workspace", help="Workspace memory limit, e.g. 4G.")
@click.option("--timing-cache", type=click.Path(), help="Timing cache file to read and update.")
@click.option("-v", "--verbose", is_flag=True, help="TensorRT's info messages too (stderr; warnings always).")
@quiet_option
def build(onnx_path, output, attention, backend, plugin_lib, batch_range, prefill_range, pages_range, workspace,
          timing_cache, verbose, quiet):
    """Build a TensorRT engine (decode and prefill profiles) and its JSON sidecar."""
    import time

    from ..common.progress import ProgressReporter
    from pathlib import Path

    from ..trt.build import BuildSpec, build_engine, parse_range, parse_size
    from ..trt.build_parallel import build_rank_engines
    from ..trt.sidecar import Sidecar, sidecar_path

    spec = BuildSpec(onnx=onnx_path, output=output, attention=attention, backend=backend, plugin_lib=plugin_lib,
                     batch=parse_range(batch_range, "--batch-range"),
                     prefill_tokens=parse_range(prefill_range, "--prefill-range") if prefill_range else None,
                     pages=parse_range(pages_range, "--pages-range") if pages_range else None,
                     workspace=parse_size(workspace) if workspace else None, timing_cache=timing_cache,
                     verbose=verbose)
    start = time.perf_counter()
    with ProgressReporter("build", quiet=quiet) as progress:
        progress("reading and parsing the model", 0, 1)  # until TensorRT's first build phase
        paths = (build_rank_engines(spec, progress=progress) if Path(onnx_path).is_dir()
                 else [build_engine(spec, progress=progress)])
    sidecar = Sidecar.read(paths[0])
    binding = sidecar.cache_binding  # aliased: bind past and present caches to one buffer
    ranks = f", {sidecar.tp_size} ranks (one engine each)" if sidecar.tp_size > 1 else ""
    layout = (f", {sidecar.cache} cache" + (f" of {sidecar.page_size}-row pages" if sidecar.page_size else "")
              + (" (fp8)" if sidecar.kv_cache_dtype == "fp8" else "")) if sidecar.contract_version != 1 else ""
    click.echo(f"built with {backend}: attention {attention}, cache binding {binding}{ranks}{layout}")
    click.echo(f"{wrote([f for p in paths for f in (p, sidecar_path(p))])} in {time.perf_counter() - start:.1f} s")
