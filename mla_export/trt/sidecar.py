"""The engine's JSON sidecar (`model.engine.json`): what built it, for which GPU, with which plugin,
its optimization profiles and I/O table; and the check a runner makes before loading the engine."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import __version__, contract
from ..errors import UserError
from ..fileio import atomic_write_text
from .aliasing import CACHE_BINDINGS

SIDECAR_FORMAT = "mla-export-engine"
SIDECAR_VERSION = 2  # 2: `export` renamed `onnx_metadata`


def sidecar_path(engine: str | Path) -> Path:
    return Path(str(engine) + ".json")


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
    contract_version: int = contract.CONTRACT_VERSION
    mla_export_version: str = __version__
    format: str = SIDECAR_FORMAT
    format_version: int = SIDECAR_VERSION

    def write(self, engine: str | Path) -> Path:
        return atomic_write_text(sidecar_path(engine), json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, engine: str | Path) -> "Sidecar":
        path = sidecar_path(engine)
        if not Path(engine).is_file():
            raise UserError(f"--engine {engine}: no such file")
        if not path.is_file():
            raise UserError(f"--engine {engine}: its sidecar {path.name} is missing; engines built by "
                            "`mla-export build` have one (rebuild the engine)")
        try:
            data = json.loads(path.read_text())
            if data.get("format") != SIDECAR_FORMAT or data.get("format_version") != SIDECAR_VERSION:
                raise ValueError(f"format {data.get('format')!r} version {data.get('format_version')!r}")
            if data.get("cache_binding", "copy") not in CACHE_BINDINGS:
                raise ValueError(f"cache_binding {data['cache_binding']!r} (knows {', '.join(CACHE_BINDINGS)})")
            return cls(**data)
        except (json.JSONDecodeError, TypeError, ValueError) as exc:
            raise UserError(f"{path}: not an mla-export engine sidecar ({exc}); rebuild the engine") from None


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
    if sidecar.contract_version != contract.CONTRACT_VERSION:
        raise UserError(f"engine speaks MlaAttention contract {sidecar.contract_version}, this mla-export speaks "
                        f"{contract.CONTRACT_VERSION}; re-export and {rebuild}")
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
