"""Export: a spec -> ONNX with one `MlaAttention` node per layer and one `DeepseekMoE` node per MoE layer.

    trace (weightless, `tracing`) -> weights streamed layer by layer into a data file (`weight_stream`)
    -> the nodes' model-local functions, metadata, IR version -> `onnx.checker` (full check) -> commit

Commit: the weights go to a data file whose name is unique to this export (`<name>.onnx.<token>.data`,
or into the .onnx itself below 2 GB); then the .onnx that names it is renamed into place. That rename
is the one commit point: a failure or a kill before it leaves the previous export whole; after it, data
files no committed .onnx names are removed. Staging happens in `.mla-export-<pid>-<token>/` beside the
output, which the next export removes once its process is gone.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Callable

from ..common import contract
from ..common.version import __version__
from ..common.errors import FieldError
from ..common.fileio import (STAGING_PREFIX, check_output_dir, check_utf8_name, remove_stale_staging,
                             write_failed)
from ..model.footprint import check_free_disk, check_memory, export_peak_bytes, model_counts
from ..model.spec import ModelSpec

ONNX_IR_VERSION = 10  # ONNX Runtime 1.22+ reads it; recent onnx writes 11+ by default
EXTERNAL_DATA_THRESHOLD = 1 << 31  # protobuf's 2 GB limit

Progress = Callable[[str, int, int], None]  # (what, done, total)


def data_file_name(output: Path, token: str) -> str:
    """The external data file of one export of `output`: unique to that export."""
    return f"{output.name}.{token}.data"


def _data_file_pattern(output: Path) -> re.Pattern:
    return re.compile(rf"^{re.escape(output.name)}\.[0-9a-f]{{8}}\.data$")


def referenced_data_file(path: Path) -> str | None:
    """The data file an mla-export .onnx names in its metadata ("" when its weights are inside), or None when
    `path` is absent or unreadable."""
    import onnx

    try:
        header = onnx.load(str(path), load_external_data=False)
    except Exception:  # absent, or not ONNX: it names nothing
        return None
    return {p.key: p.value for p in header.metadata_props}.get(contract.META_DATA_FILE)


def remove_stale_files(output: Path) -> None:
    """Remove what earlier exports of `output` left: staging folders of processes that are gone, and data
    files that the committed .onnx does not name."""
    remove_stale_staging(output.parent)
    keep = referenced_data_file(output)
    pattern = _data_file_pattern(output)
    for entry in output.parent.iterdir():
        if pattern.match(entry.name) and entry.name != keep:
            entry.unlink(missing_ok=True)


def written_files(output: Path) -> list[Path]:
    """The files an export at `output` consists of: the .onnx, and its data file if it names one."""
    data = referenced_data_file(output)
    return [output] + ([output.parent / data] if data else [])


def check_output_path(output: str | Path) -> Path:
    """`-o`: a .onnx path in UTF-8 (the .onnx records its data file's name as a UTF-8 string) in an existing,
    writable directory, not a directory itself."""
    output = Path(output)
    check_utf8_name("-o", output)
    if output.suffix != ".onnx":
        raise FieldError("output", str(output), "expected a path ending in .onnx")
    if output.is_dir():
        raise FieldError("output", str(output), "is a directory; expected a file path ending in .onnx")
    check_output_dir("-o", output)
    return output


def check_resources(spec: ModelSpec, directory: Path) -> None:
    """Refuse, before any work, an export this machine cannot finish: its weights' disk space (estimated from
    the config; checked exactly after tracing) and its peak memory."""
    c = spec.config
    weights = model_counts(c, with_embeddings=spec.io == "tokens").exported * spec.element_bytes
    check_free_disk(directory, weights, f"exporting {c.name} ({c.num_hidden_layers} layers, {spec.dtype})")
    check_memory(export_peak_bytes(c, spec.element_bytes), f"exporting {c.name} ({spec.dtype})",
                 "export fewer layers (--layers N) or close other programs")


def _finish(proto, spec: ModelSpec, data_file: str, extra_metadata: dict[str, str]) -> None:
    """Add the nodes' functions, opset, IR version and metadata to the serialized model, in place."""
    import onnx

    from .onnx_fp8 import FP8_OPSET, fp8_function_proto
    from .onnx_moe import moe_function_proto
    from .onnx_cache import cache_function_proto
    from .onnx_node import function_proto

    proto.ir_version = ONNX_IR_VERSION
    ops = {n.op_type for n in proto.graph.node if n.domain == contract.OP_DOMAIN}
    proto.functions.append(cache_function_proto(spec.kv_cache_dtype == "fp8") if spec.cache_contract
                           else function_proto())
    if contract.MOE_OP_TYPE in ops:
        proto.functions.append(moe_function_proto(fp8=spec.quant == "fp8"))
    if contract.FP8_OP_TYPE in ops:
        proto.functions.append(fp8_function_proto())
    if spec.quant == "fp8" or spec.kv_cache_dtype == "fp8":  # Shape and Cast take float8 from opset 19
        for opset in [*proto.opset_import, *(o for f in proto.functions for o in f.opset_import)]:
            if opset.domain == "":
                opset.version = max(opset.version, FP8_OPSET)
    if not any(o.domain == contract.OP_DOMAIN for o in proto.opset_import):
        proto.opset_import.append(onnx.helper.make_opsetid(contract.OP_DOMAIN, contract.OP_DOMAIN_VERSION))
    proto.producer_name, proto.producer_version = "mla_export", __version__
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {**spec.metadata(), contract.META_DATA_FILE: data_file,
                                        contract.META_EOS_TOKEN_IDS: checkpoint_eos_ids(spec.checkpoint),
                                        **extra_metadata})


def checkpoint_eos_ids(checkpoint: str | None) -> str:
    """The EOS ids transformers' generate stops at for `checkpoint` (generation_config.json, else config.json),
    comma-separated; "" for random weights or none recorded."""
    import json

    for name in ("generation_config.json", "config.json"):
        path = Path(checkpoint) / name if checkpoint else None
        if path is not None and path.is_file():
            try:
                value = json.loads(path.read_text()).get("eos_token_id")
            except (ValueError, AttributeError, RecursionError):
                return ""
            values = value if isinstance(value, list) else [value]
            return ",".join(str(v) for v in values if isinstance(v, int) and not isinstance(v, bool) and v >= 0)
    return ""


def _point_at_data(traced, layout, data_file: str) -> None:
    """Make every weight initializer an external reference into `data_file` (no data is read)."""
    import onnx_ir as ir

    graph = traced.model.graph
    for p in layout:
        value = graph.initializers[p.name]
        value.const_value = ir.ExternalTensor(data_file, p.offset, p.length, value.dtype, shape=value.shape,
                                              name=p.name)


def export_onnx(spec: ModelSpec, output: str | Path, progress: Progress | None = None,
                note: Callable[[str], None] | None = None, extra_metadata: dict[str, str] | None = None) -> Path:
    """Export `spec` to `output` (weights in `output.<token>.data` beside it when past 2 GB), layer by layer.

    Nothing is left behind on failure and a previous export at `output` stays whole until the new one is
    complete. `progress(what, done, total)` reports tracing and the bytes written; `note(line)` is told what
    the export leaves out of a checkpoint (its multi-token-prediction layers). `extra_metadata` joins the
    spec's metadata (a --tp export's id).
    """
    import onnx
    import onnx_ir as ir
    from onnx.external_data_helper import load_external_data_for_model

    from ..weights.eager import weight_source
    from ..weights.tensor_names import skipped_summary
    from .tracing import trace_graph
    from .weight_stream import data_bytes, plan_layout, write_weights

    output = check_output_path(output)
    remove_stale_files(output)
    check_resources(spec, output.parent)
    source = weight_source(spec)  # a checkpoint's index, shards and names are checked before any work
    skipped = skipped_summary(getattr(source, "skipped", []))
    if skipped and note is not None:
        note(skipped)
    report = progress or (lambda what, done, total: None)
    report("tracing", 0, 1)
    traced = trace_graph(spec)
    report("tracing", 1, 1)
    layout = plan_layout(traced)
    total = data_bytes(layout)
    external = total >= EXTERNAL_DATA_THRESHOLD
    check_free_disk(output.parent, total * (1 if external else 2), "the export")

    token = secrets.token_hex(4)
    staging = output.parent / f"{STAGING_PREFIX}{os.getpid()}-{token}"
    staging.mkdir()
    try:
        data_file = data_file_name(output, token)
        write_weights(staging / data_file, layout, spec, source,
                      lambda done, size, what: report(f"writing weights ({what})", done, size))
        _point_at_data(traced, layout, data_file)
        proto = ir.serde.serialize_model(traced.model)
        if not external:
            load_external_data_for_model(proto, str(staging))
            (staging / data_file).unlink()
        _finish(proto, spec, data_file if external else "", extra_metadata or {})
        staged = staging / output.name
        onnx.save(proto, str(staged))
        del proto
        report("checking", 0, 1)
        try:
            onnx.checker.check_model(str(staged), full_check=True)
        except onnx.checker.ValidationError as exc:
            raise RuntimeError(f"the exported graph fails onnx.checker: {exc}") from exc
        report("checking", 1, 1)
        if external:
            os.replace(staging / data_file, output.parent / data_file)
        os.replace(staged, output)  # the commit point
    except OSError as exc:
        raise write_failed(output, exc) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        remove_stale_files(output)  # a data file moved in before a failed commit is named by no .onnx
    return output
