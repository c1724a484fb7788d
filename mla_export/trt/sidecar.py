"""The engine's JSON sidecar (`model.engine.json`): what built it, for which GPU, with which plugin,
its optimization profiles and I/O table, the latent cache's layout (contiguous or paged, page size, element
type: what a runner allocates and binds), and the engine it belongs to (size and sha256); the checks a
runner makes before loading the engine.

The engine and its sidecar are one output in two files: `build` commits them with the sidecar's rename
(`build.save_engine`), and a reader refuses an engine whose size or sha256 is not the one its sidecar
records (a mismatched pair: an interrupted build, or files copied from two builds).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..common import contract
from ..common.version import __version__
from ..common.errors import UserError
from ..common.fileio import atomic_write_text, check_input_file
from .aliasing import CACHE_BINDINGS
from .backend import BACKENDS

SIDECAR_FORMAT = "mla-export-engine"
SIDECAR_VERSION = 3  # 2: `export` renamed `onnx_metadata`; 3: engine_size and engine_sha256
ATTENTION_MODES = ("plugin", "decomposed")
PROFILE_NAMES = ("decode", "prefill")
ENGINE_SUFFIX = ".engine"  # build --onnx DIR: OUTDIR/rank{r}.engine


def sidecar_path(engine: str | Path) -> Path:
    return Path(str(engine) + ".json")


def bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Sidecar:
    tensorrt_flavour: str  # "tensorrt" or "tensorrt-rtx"
    tensorrt_version: str
    attention: str  # "plugin" or "decomposed"
    gpu_name: str | None  # None: built without a GPU (TensorRT-RTX compiles for the device at run time)
    compute_capability: str | None  # "9.0"
    plugin_sha256: str | None
    plugin_path: str | None
    profiles: list[dict] = field(default_factory=list)  # {"name", "shapes": {input: [min, opt, max]}}
    io: list[dict] = field(default_factory=list)  # {"name", "mode", "dtype", "shape"}
    onnx_metadata: dict = field(default_factory=dict)  # the ONNX file's metadata_props, as they are
    cache_binding: str = "copy"  # "aliased" | "copy" (aliasing.py)
    tp_size: int = 1  # ranks of the `--tp` export this engine is one of (1: a single-device engine)
    tp_rank: int = 0  # which of them
    tp_export_id: str | None = None  # the export's id (parallel.json's export_id), the same in every rank
    cache: str = "contiguous"  # contract.CACHE_LAYOUTS: "paged" (pools and block_table; contract 2)
    page_size: int = 0  # rows per page of a paged cache; 0: contiguous (as the node's attribute)
    kv_cache_dtype: str = "model"  # contract.KV_CACHE_DTYPES: "fp8" (codes, scales, rope planes; contract 2)
    engine_size: int | None = None  # bytes of the engine file this sidecar belongs to
    engine_sha256: str | None = None  # and their sha256
    contract_version: int = contract.CONTRACT_VERSION
    mla_export_version: str = __version__
    format: str = SIDECAR_FORMAT
    format_version: int = SIDECAR_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    def write(self, engine: str | Path) -> Path:
        """Write this sidecar beside `engine` (atomically). `build` commits engine and sidecar together instead
        (`build.save_engine`)."""
        return atomic_write_text(sidecar_path(engine), self.to_json())

    @classmethod
    def read(cls, engine: str | Path) -> "Sidecar":
        """The sidecar of `engine`, checked: its JSON shape, format version, and the engine file's size."""
        path = sidecar_path(engine)
        check_input_file("--engine", engine, "; pass the engine file `mla-export build` wrote")
        if path.exists() and not path.is_file():
            raise UserError(f"--engine {engine}: its sidecar {path.name} is not a regular file; rebuild the engine")
        if not path.is_file():
            raise UserError(f"--engine {engine}: its sidecar {path.name} is missing; engines built by "
                            "`mla-export build` have one (rebuild the engine)")
        try:
            data = json.loads(path.read_text())
            sidecar = cls(**check_shape(data))
        except RecursionError:
            raise UserError(f"{path}: not an mla-export engine sidecar (nested too deeply); rebuild the engine") \
                from None
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError) as exc:
            raise UserError(f"{path}: not an mla-export engine sidecar ({str(exc)[:300]}); rebuild the "
                            "engine") from None
        size = Path(engine).stat().st_size
        if size != sidecar.engine_size:
            raise mismatched(engine, f"it holds {size:,} bytes, the sidecar says {sidecar.engine_size:,}")
        return sidecar

    @classmethod
    def read_single_device(cls, engine: str | Path) -> "Sidecar":
        """`read`, refusing (one message) the engines of a `--tp` export: a directory of rank engines, or one
        rank's engine. Python runs one device; the ranks run in the C++ example, one process each with NCCL."""
        if Path(engine).is_dir() and (Path(engine) / f"rank0{ENGINE_SUFFIX}").is_file():
            raise UserError(f"--engine {engine}: the engines of a --tp export run one process per rank with NCCL: "
                            "use examples/cpp (mla_decode_demo --rank R --world-size N)")
        return cls.read(engine).single_device(engine)

    def single_device(self, engine: str | Path) -> "Sidecar":
        """This sidecar, unless its engine is one rank of a `--tp` export (UserError)."""
        if self.tp_size > 1:
            raise UserError(f"--engine {engine}: rank {self.tp_rank} of a --tp {self.tp_size} export; Python "
                            "runs one device: use examples/cpp, one process per rank with NCCL")
        return self

    def check_engine_bytes(self, engine: str | Path, data: bytes) -> None:
        """Refuse engine bytes that are not the ones this sidecar was written for (sha256)."""
        if len(data) != self.engine_size or bytes_sha256(data) != self.engine_sha256:
            raise mismatched(engine, f"sha256 {bytes_sha256(data)[:12]}, the sidecar says "
                                     f"{str(self.engine_sha256)[:12]}")


def mismatched(engine: str | Path, detail: str) -> UserError:
    return UserError(f"--engine {engine}: it and its sidecar are not from the same build ({detail}); rebuild the "
                     "engine")


# JSON types of each field: a tuple of accepted types (None: null).
_TYPES = {
    "tensorrt_flavour": (str,), "tensorrt_version": (str,), "attention": (str,), "gpu_name": (str, None),
    "compute_capability": (str, None), "plugin_sha256": (str, None), "plugin_path": (str, None),
    "profiles": (list,), "io": (list,), "onnx_metadata": (dict,), "cache_binding": (str,),
    "tp_size": (int,), "tp_rank": (int,), "tp_export_id": (str, None), "cache": (str,), "page_size": (int,),
    "kv_cache_dtype": (str,), "engine_size": (int,),
    "engine_sha256": (str,), "contract_version": (int,), "mla_export_version": (str,), "format": (str,),
    "format_version": (int,),
}


# Fields a sidecar may leave out, and what their absence means.
_OPTIONAL = {"cache_binding": "copy",  # no alias declared: present has a buffer of its own (aliasing.py)
             "tp_size": 1, "tp_rank": 0, "tp_export_id": None,  # before --tp: one device
             "cache": "contiguous", "page_size": 0, "kv_cache_dtype": "model"}  # before contract 2


def _is(value, kinds: tuple) -> bool:
    return any(value is None if k is None else isinstance(value, k) and not (k is int and isinstance(value, bool))
               for k in kinds)


def _shape_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(d, int) and not isinstance(d, bool) for d in value)


def check_shape(data) -> dict:
    """`data` (a parsed sidecar) if it has the sidecar's JSON shape; ValueError saying what is wrong."""
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, found {type(data).__name__}")
    if data.get("format") != SIDECAR_FORMAT or data.get("format_version") != SIDECAR_VERSION:
        raise ValueError(f"format {str(data.get('format'))[:40]!r} version {str(data.get('format_version'))[:20]!r}; "
                         f"this mla-export reads version {SIDECAR_VERSION}")
    names = {f.name for f in fields(Sidecar)}
    unknown = sorted(set(data) - names)
    missing = sorted(names - set(data) - set(_OPTIONAL))
    if unknown or missing:
        raise ValueError(f"unknown field(s) {unknown[:3]}" if unknown else f"missing field(s) {missing[:3]}")
    data = {**_OPTIONAL, **data}
    for name, kinds in _TYPES.items():
        if not _is(data[name], kinds):
            raise ValueError(f"field {name} is {type(data[name]).__name__}")
    paged = data["cache"] == "paged"
    if paged != (data["page_size"] > 0) or data["page_size"] & (data["page_size"] - 1):
        raise ValueError(f"page_size {data['page_size']} with cache {str(data['cache'])[:20]!r} (a paged cache has "
                         "a power of two, a contiguous one 0)")
    if data["engine_size"] < 0 or len(data["engine_sha256"]) != 64:
        raise ValueError("engine_size/engine_sha256 are not a size and a sha256")
    if not 0 <= data["tp_rank"] < data["tp_size"] or (data["tp_size"] > 1) != (data["tp_export_id"] is not None):
        raise ValueError(f"tp_rank {data['tp_rank']} of tp_size {data['tp_size']} (export id "
                         f"{str(data['tp_export_id'])[:20]!r}) is not a rank of a --tp export")
    checks = {"tensorrt_flavour": tuple(BACKENDS), "attention": ATTENTION_MODES, "cache_binding": CACHE_BINDINGS,
              "cache": contract.CACHE_LAYOUTS, "kv_cache_dtype": contract.KV_CACHE_DTYPES}
    for name, allowed in checks.items():
        if data[name] not in allowed:
            raise ValueError(f"{name} {data[name][:40]!r} (knows {', '.join(allowed)})")
    profiles = data["profiles"]
    if [p.get("name") if isinstance(p, dict) else None for p in profiles] != list(PROFILE_NAMES) or not all(
            isinstance(p.get("shapes"), dict) and all(
                isinstance(k, str) and isinstance(v, list) and len(v) == 3 and all(map(_shape_list, v))
                for k, v in p["shapes"].items()) for p in profiles):
        raise ValueError(f"profiles are not the {' and '.join(PROFILE_NAMES)} profiles with [min, opt, max] shapes")
    for entry in data["io"]:
        if not (isinstance(entry, dict) and isinstance(entry.get("name"), str) and entry.get("mode") in
                ("input", "output") and isinstance(entry.get("dtype"), str) and _shape_list(entry.get("shape"))):
            raise ValueError("io is not a list of {name, mode, dtype, shape}")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in data["onnx_metadata"].items()):
        raise ValueError("onnx_metadata is not a table of strings")
    meta = data["onnx_metadata"]  # the cache fields repeat the export's metadata (absent: contiguous, model)
    recorded = (meta.get(contract.META_CACHE, "contiguous"), meta.get(contract.META_KV_CACHE_DTYPE, "model"),
                meta.get(contract.META_PAGE_SIZE) if paged else "0")
    if recorded != (data["cache"], data["kv_cache_dtype"], str(data["page_size"])):
        raise ValueError(f"cache {str(data['cache'])[:20]!r}, page_size {data['page_size']}, kv_cache_dtype "
                         f"{str(data['kv_cache_dtype'])[:20]!r} are not the export's (onnx_metadata)")
    return data


@dataclass(frozen=True)
class RuntimeEnvironment:
    """What a runner has: TensorRT flavour/version, GPU, and the plugin library it loaded."""

    tensorrt_flavour: str
    tensorrt_version: str
    gpu_name: str | None
    compute_capability: str | None
    plugin_sha256: str | None


def check_compatible(sidecar: Sidecar, env: RuntimeEnvironment) -> None:
    """Refuse an engine that this TensorRT, GPU, plugin or mla-export cannot run; the message says why."""
    rebuild = "rebuild it here with `mla-export build`"
    if sidecar.contract_version not in contract.READABLE_CONTRACT_VERSIONS:
        speaks = " and ".join(str(v) for v in contract.READABLE_CONTRACT_VERSIONS)
        raise UserError(f"engine speaks MlaAttention contract {sidecar.contract_version}, this mla-export speaks "
                        f"{speaks}; re-export and {rebuild}")
    if sidecar.tensorrt_flavour != env.tensorrt_flavour or sidecar.tensorrt_version != env.tensorrt_version:
        raise UserError(f"engine built with {sidecar.tensorrt_flavour} {sidecar.tensorrt_version}, this is "
                        f"{env.tensorrt_flavour} {env.tensorrt_version}; engines are tied to the TensorRT version: "
                        f"{rebuild}")
    if sidecar.compute_capability is not None and sidecar.compute_capability != env.compute_capability:
        raise UserError(f"engine built for {sidecar.gpu_name} (compute capability {sidecar.compute_capability}), "
                        f"this GPU is {env.gpu_name} ({env.compute_capability}); {rebuild}")
    if sidecar.attention == "plugin" and sidecar.plugin_sha256 != env.plugin_sha256:
        raise UserError(f"engine built with plugin library sha256 {str(sidecar.plugin_sha256)[:12]}..., the loaded "
                        f"one is {str(env.plugin_sha256)[:12]}...; pass the library it was built with "
                        f"(--plugin-lib {sidecar.plugin_path}) or {rebuild}")


def cache_fields(model) -> dict:
    """The sidecar's cache fields (and MlaAttention contract version) for an engine of `model` (a ModelSpec)."""
    paged = model.cache == "paged"
    return {"cache": model.cache, "page_size": model.page_size if paged else 0,
            "kv_cache_dtype": model.kv_cache_dtype,
            "contract_version": contract.CACHE_CONTRACT_VERSION if model.cache_contract else contract.CONTRACT_VERSION}
