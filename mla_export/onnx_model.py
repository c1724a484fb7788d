"""Reading back an ONNX file written by `export`: is it ours, and which model and settings made it."""

from __future__ import annotations

import json
from pathlib import Path

from . import contract
from .config import MlaConfig
from .errors import UserError


def load_onnx_header(path: str | Path):
    """The ModelProto of `path` without its weights (cheap even for multi-GB models)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise UserError(f"--onnx {path}: no such file")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several types for a file that is not ONNX
        raise UserError(f"--onnx {path}: not a readable ONNX model ({type(exc).__name__}: {exc})") from None


def spec_from_metadata(meta: dict[str, str], source: str):
    """The `ExportSpec` in mla-export metadata (of an ONNX file or an engine sidecar)."""
    from .export import ExportSpec

    if contract.META_PRODUCER not in meta or contract.META_CONFIG not in meta:
        raise UserError(f"{source}: not written by mla-export (no mla_export metadata); "
                        "export it with `mla-export export`")
    version = meta.get(contract.META_CONTRACT_VERSION)
    if version != str(contract.CONTRACT_VERSION):
        raise UserError(f"{source}: MlaAttention contract version {version}, this mla-export speaks "
                        f"{contract.CONTRACT_VERSION}; re-export it with this version")
    try:
        config = MlaConfig.from_hf_dict(json.loads(meta[contract.META_CONFIG]))
        return ExportSpec(config=config, dtype=meta[contract.META_DTYPE],
                          max_seq_len=int(meta[contract.META_MAX_SEQ_LEN]), seed=int(meta[contract.META_SEED]),
                          checkpoint=meta.get(contract.META_CHECKPOINT) or None, io=meta[contract.META_IO])
    except (KeyError, ValueError, json.JSONDecodeError) as exc:
        raise UserError(f"{source}: mla-export metadata is damaged ({exc!r}); re-export the model") from None


def read_export_spec(path: str | Path):
    """The `ExportSpec` recorded in an mla-export ONNX file; UserError if the file is not ours."""
    model = load_onnx_header(path)
    spec = spec_from_metadata({p.key: p.value for p in model.metadata_props}, f"--onnx {path}")
    config = spec.config
    nodes = [n for n in model.graph.node if n.op_type == contract.OP_TYPE and n.domain == contract.OP_DOMAIN]
    if len(nodes) != config.num_hidden_layers:
        raise UserError(f"--onnx {path}: {len(nodes)} {contract.OP_TYPE} nodes for {config.num_hidden_layers} "
                        "layers; the graph was modified after export")
    return spec
