"""A `--tp N` export: a directory of N rank files and the manifest that ties them together.

    export_parallel(spec, DIR)  ->  DIR/rank0.onnx .. rank{N-1}.onnx (each written as `export_onnx` writes
                                    a file, weights layer by layer), then DIR/parallel.json
    read_parallel_export(DIR)   ->  the ranks, checked: present, unchanged since export (sha256), of one
                                    export (the same id in every rank's metadata), of one model

The manifest is written last, through a temporary file and a rename: that rename commits the export. The
previous manifest is removed before the first rank is written, so an interrupted export leaves a directory
that every reader refuses ("no parallel.json"), never a mix of two exports that looks whole.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..common import contract
from ..common.errors import FieldError, UserError
from ..common.fileio import atomic_write_text, check_input_dir, check_utf8_name
from ..model.spec import ModelSpec
from .export import Progress, export_onnx, written_files
from .onnx_reader import ExportedModel, read_exported_model

MANIFEST_VERSION = 1


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_output_directory(output: str | Path) -> Path:
    """`-o` of a --tp export: a directory (made if absent, inside an existing one), not a .onnx path."""
    output = Path(output)
    check_utf8_name("-o", output)
    if output.suffix == ".onnx" or output.is_file():
        raise FieldError("output", str(output), "with --tp N > 1 expected a directory for the rank files "
                         "(e.g. -o model-tp2)")
    if not output.parent.is_dir():
        raise FieldError("output", str(output), f"its parent directory {output.parent} does not exist")
    return output


def export_parallel(spec: ModelSpec, output: str | Path, progress: Progress | None = None,
                    note: Callable[[str], None] | None = None) -> Path:
    """Export every rank of `spec` (tp_size N > 1) into the directory `output`; returns the manifest's path."""
    output = check_output_directory(output)
    try:
        output.mkdir(exist_ok=True)
        (output / contract.PARALLEL_MANIFEST).unlink(missing_ok=True)
    except OSError as exc:
        raise UserError(f"-o {output}: cannot write there ({exc.strerror}); choose a writable directory") from None
    export_id = secrets.token_hex(8)
    extra = {contract.META_TP_EXPORT_ID: export_id}
    report = progress or (lambda what, done, total: None)
    ranks = []
    for rank in range(spec.tp_size):
        path = output / contract.rank_file_name(rank)
        export_onnx(spec.rank(rank), path, lambda what, done, total, r=rank: report(f"rank {r}: {what}", done, total),
                    note=note if rank == 0 else None, extra_metadata=extra)
        ranks.append({"rank": rank, "file": path.name, "sha256": file_sha256(path)})
    manifest = {"format": contract.PARALLEL_FORMAT, "version": MANIFEST_VERSION, "world_size": spec.tp_size,
                "layout": contract.PARALLEL_LAYOUT, "export_id": export_id,
                "contract_versions": {"mla_attention": contract.CONTRACT_VERSION,
                                      "deepseek_moe": contract.MOE_CONTRACT_VERSION,
                                      "collectives": contract.COLLECTIVE_CONTRACT_VERSION},
                "ranks": ranks}
    manifest_path = atomic_write_text(output / contract.PARALLEL_MANIFEST, json.dumps(manifest, indent=2) + "\n")
    _remove_other_ranks(output, spec.tp_size)
    return Path(manifest_path)


def _remove_other_ranks(output: Path, world_size: int) -> None:
    """Remove rank files (and their data) of an earlier export with more ranks than this one."""
    for path in output.glob("rank*.onnx"):
        index = path.stem.removeprefix("rank")
        if index.isdigit() and int(index) >= world_size and path.name == contract.rank_file_name(int(index)):
            for file in written_files(path):
                file.unlink(missing_ok=True)


@dataclass(frozen=True)
class ParallelExport:
    """A checked --tp export directory: its ranks' files, read and checked (`ExportedModel`), in rank order."""

    directory: Path
    world_size: int
    export_id: str
    ranks: tuple[ExportedModel, ...]

    @property
    def rank_files(self) -> list[Path]:
        return [r.path for r in self.ranks]

    @property
    def spec(self) -> ModelSpec:
        """The whole model the ranks split (`ModelSpec.single_device`), with tp_size N."""
        return self.ranks[0].spec.rank(0)


def is_parallel_export(path: str | Path) -> bool:
    """Whether `path` names a directory (a --tp export, or meant to be one) rather than a file."""
    return Path(path).is_dir()


def _manifest(directory: Path) -> dict:
    source = f"--onnx {directory}"
    path = directory / contract.PARALLEL_MANIFEST
    if not path.is_file():
        raise UserError(f"{source} is a directory without {contract.PARALLEL_MANIFEST} (not a finished --tp "
                        "export): pass a .onnx file, or re-export with --tp N -o DIR")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise UserError(f"{source}: {contract.PARALLEL_MANIFEST} is not readable JSON ({str(exc)[:120]}); "
                        "re-export") from None
    ok = (isinstance(manifest, dict) and manifest.get("format") == contract.PARALLEL_FORMAT
          and manifest.get("version") == MANIFEST_VERSION and isinstance(manifest.get("world_size"), int)
          and isinstance(manifest.get("ranks"), list) and isinstance(manifest.get("export_id"), str)
          and len(manifest["ranks"]) == manifest["world_size"] > 1
          and all(isinstance(r, dict) and r.get("rank") == i and isinstance(r.get("file"), str)
                  and isinstance(r.get("sha256"), str) for i, r in enumerate(manifest["ranks"])))
    if not ok:
        raise UserError(f"{source}: {contract.PARALLEL_MANIFEST} is not an mla-export --tp manifest (version "
                        f"{MANIFEST_VERSION}); re-export with this mla-export")
    return manifest


def read_parallel_export(directory: str | Path) -> ParallelExport:
    """Read and check a --tp export directory; UserError (one message) for a missing, changed, foreign or
    mixed rank file."""
    directory = check_input_dir("--onnx", directory, "; pass a --tp export directory")
    manifest = _manifest(directory)
    source = f"--onnx {directory}"
    ranks = []
    for entry in manifest["ranks"]:
        rank, path = entry["rank"], directory / Path(entry["file"]).name
        if not path.is_file():
            raise UserError(f"{source}: rank {rank}'s file {path.name} is missing; re-export the directory")
        if file_sha256(path) != entry["sha256"]:
            raise UserError(f"{source}: {path.name} is not the file this export wrote (its sha256 differs from "
                            f"{contract.PARALLEL_MANIFEST}); re-export the directory")
        model = read_exported_model(path)
        spec, meta = model.spec, model.metadata
        if (spec.tp_size, spec.tp_rank) != (manifest["world_size"], rank) \
                or meta.get(contract.META_TP_EXPORT_ID) != manifest["export_id"]:
            raise UserError(f"{source}: {path.name} is rank {spec.tp_rank} of {spec.tp_size} of another export, "
                            f"not rank {rank} of {manifest['world_size']} of this one; re-export the directory")
        if ranks and spec.rank(0) != ranks[0].spec.rank(0):
            raise UserError(f"{source}: {path.name} holds another model than rank 0 (their metadata differ); "
                            "re-export the directory")
        ranks.append(model)
    return ParallelExport(directory, manifest["world_size"], manifest["export_id"], tuple(ranks))
