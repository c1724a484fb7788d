"""Reading back an ONNX file written by `export`: is it ours, and which model and settings made it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import contract
from .errors import UserError
from .spec import ModelSpec, spec_from_metadata


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


@dataclass(frozen=True)
class ExportedModel:
    """An mla-export ONNX file read once: its path, the spec in its metadata, the metadata itself,
    and the header (ModelProto without weights)."""

    path: Path
    spec: ModelSpec
    metadata: dict[str, str]
    header: object  # onnx.ModelProto, external data not loaded

    def attention_nodes(self) -> list:
        """The graph's `MlaAttention` nodes, in graph order."""
        return [n for n in self.header.graph.node if n.op_type == contract.OP_TYPE and n.domain == contract.OP_DOMAIN]


def read_exported_model(path: str | Path) -> ExportedModel:
    """Read an mla-export ONNX file's header and metadata; UserError if the file is not ours."""
    header = load_onnx_header(path)
    metadata = {p.key: p.value for p in header.metadata_props}
    spec = spec_from_metadata(metadata, f"--onnx {path}")
    model = ExportedModel(Path(path), spec, metadata, header)
    nodes = len(model.attention_nodes())
    if nodes != spec.config.num_hidden_layers:
        raise UserError(f"--onnx {path}: {nodes} {contract.OP_TYPE} nodes for {spec.config.num_hidden_layers} "
                        "layers; the graph was modified after export")
    return model


def read_export_spec(path: str | Path) -> ModelSpec:
    """The `ModelSpec` recorded in an mla-export ONNX file; UserError if the file is not ours."""
    return read_exported_model(path).spec
