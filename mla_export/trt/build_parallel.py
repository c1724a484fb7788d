"""`build --onnx DIR -o OUTDIR` for a `--tp N` export: one engine per rank, `OUTDIR/rank{r}.engine` and its
sidecar (world size, rank, export id), each built and committed as `build` builds one engine (build.py).

Every rank file is read and checked against the export's manifest before the first engine is built, so a
foreign or missing rank file fails before anything is written; each engine is then committed on its own
(staging folder, rename), rank by rank.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..common.errors import UserError
from ..common.fileio import check_output_dir, shown
from ..graph.onnx_reader import read_exported_model
from .build import BuildSpec, build_engine
from .collectives import RankIdentity, rank_identity
from .sidecar import ENGINE_SUFFIX


def rank_engine_name(rank: int) -> str:
    """The engine file of rank `rank` in a `build --onnx DIR` output directory."""
    return f"rank{rank}{ENGINE_SUFFIX}"


def output_directory(option: str, path: str | Path) -> Path:
    """`path` as the engines' directory: an existing directory, or a new one in a writable directory."""
    path = Path(path)
    if path.is_dir():
        check_output_dir(option, path / rank_engine_name(0))
        return path
    if path.exists():
        raise UserError(f"{option} {shown(path)}: is a file; for a --tp export, -o names a directory for the "
                        "rank engines")
    check_output_dir(option, path)
    return path


def build_rank_engines(spec: BuildSpec, progress=None) -> list[Path]:
    """Build every rank of the `--tp` export in directory `spec.onnx` into directory `spec.output` (created if
    absent); returns the engine paths in rank order. UserError on a bad export or a failed build."""
    from ..graph.parallel_export import read_parallel_export

    export = read_parallel_export(spec.onnx)
    if spec.timing_cache:
        raise UserError("--timing-cache: one cache for several rank builds is not supported; drop the option for a "
                        "--tp export")
    ranks = []
    for rank, path in enumerate(export.rank_files):
        identity = rank_identity(read_exported_model(path).metadata, str(path))
        expected = RankIdentity(export.world_size, rank, export.export_id)
        if identity != expected:
            raise UserError(f"{shown(path)}: its metadata says rank {identity.rank} of {identity.size} (export "
                            f"{identity.export_id}), the manifest rank {rank} of {export.world_size} (export "
                            f"{export.export_id}); re-export {shown(spec.onnx)}")
        ranks.append((path, expected))
    output = output_directory("-o", spec.output)
    output.mkdir(exist_ok=True)
    engines = []
    for path, identity in ranks:
        announce = progress and (lambda what, done, total, r=identity.rank: progress(
            f"rank {r}/{export.world_size}: {what}", done, total))
        rank_spec = dataclasses.replace(spec, onnx=str(path), output=str(output / rank_engine_name(identity.rank)))
        engines.append(build_engine(rank_spec, announce, rank=identity))
    return engines
