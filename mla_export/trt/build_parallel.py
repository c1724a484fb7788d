"""`build --onnx DIR -o OUTDIR` for a `--tp N` export: one engine per rank, `OUTDIR/rank{r}.engine` and its
sidecar (world size, rank, export id), each built and committed as `build` builds one engine (build.py).

Every rank file is checked against the export's manifest (`read_parallel_export`) before the first engine is
built, so a foreign, changed or missing rank file fails before anything is written; each engine is then
committed on its own (staging folder, rename), rank by rank.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..common.errors import UserError
from ..common.fileio import check_output_dir, shown
from .build import BuildSpec, build_engine
from .collectives import RankIdentity
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
    # The reader has checked every rank file (present, unchanged since export, rank r of this export, one
    # model); build_engine checks each rank's metadata again as it reads the file.
    ranks = [(path, RankIdentity(export.world_size, rank, export.export_id))
             for rank, path in enumerate(export.rank_files)]
    output = output_directory("-o", spec.output)
    output.mkdir(exist_ok=True)
    engines = []
    for path, identity in ranks:
        announce = progress and (lambda what, done, total, r=identity.rank: progress(
            f"rank {r}/{export.world_size}: {what}", done, total))
        rank_spec = dataclasses.replace(spec, onnx=str(path), output=str(output / rank_engine_name(identity.rank)))
        engines.append(build_engine(rank_spec, announce, rank=identity))
    return engines
