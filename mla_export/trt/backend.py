"""Lazy import of a TensorRT flavour, and the plugin library: find, load, check."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from ..common import contract
from ..common.errors import UserError
from ..common.fileio import check_input_file

BACKENDS = {
    "tensorrt": ("tensorrt",),
    "tensorrt-rtx": ("tensorrt_rtx", "tensorrt_rtx_bindings"),
}
INSTALL_HINTS = {
    "tensorrt": "install TensorRT 10.8+ (`pip install tensorrt` on a machine with an NVIDIA driver), or build a "
                "plugin-free engine with `--backend tensorrt-rtx --attention decomposed`",
    "tensorrt-rtx": "install it with `pip install tensorrt-rtx-cu13-libs tensorrt-rtx-cu13-bindings` "
                    "(or `pip install -e .[rtx]`)",
}
PLUGIN_ENV = "MLA_EXPORT_PLUGIN_LIB"
PLUGIN_FILE = "libmla_plugin.so"
PACKAGE_DIR = Path(__file__).resolve().parents[1]


def import_backend(name: str):
    """The TensorRT module for `name` ('tensorrt' or 'tensorrt-rtx'); UserError if it is not installed."""
    if name not in BACKENDS:
        raise UserError(f"--backend {name}: expected one of {', '.join(BACKENDS)}")
    errors = []
    for module in BACKENDS[name]:
        try:
            return __import__(module)
        except (ImportError, OSError) as exc:  # OSError: a stub wheel without its shared libraries
            errors.append(f"{module}: {exc}")
    raise UserError(f"{name} is not installed ({'; '.join(errors)}); {INSTALL_HINTS[name]}")


PROFILE_WARNING = "Profile kMAX values are not self-consistent"  # TensorRT: a profile past its size limits


def make_logger(trt, verbose: bool = False):
    """The one TensorRT logger of build and run: messages on stderr as `[TensorRT] W: ...`, warnings and
    errors only unless `verbose` (then info and verbose messages too). `profile_warnings` collects TensorRT's
    warnings that a profile's MAX shapes are past its limits (the build goes on; `build` then refuses)."""
    severity = trt.ILogger.Severity
    shown = {severity.INTERNAL_ERROR: "E", severity.ERROR: "E", severity.WARNING: "W"}
    if verbose:
        shown.update({severity.INFO: "I", severity.VERBOSE: "V"})

    class StderrLogger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.profile_warnings: list[str] = []

        def log(self, level, message):
            if PROFILE_WARNING in str(message):
                self.profile_warnings.append(str(message))
            if level in shown:
                print(f"[TensorRT] {shown[level]}: {message}", file=sys.stderr, flush=True)

    return StderrLogger()


def find_plugin_library(explicit: str | None = None) -> Path:
    """--plugin-lib, else $MLA_EXPORT_PLUGIN_LIB, else next to the package, else the repo's build/."""
    candidates = []
    if explicit and os.path.lexists(explicit):  # there, but perhaps a directory or a device
        return check_input_file("--plugin-lib", explicit, f"; pass {PLUGIN_FILE} (build it with `make plugins`)")
    if explicit:
        candidates.append(Path(explicit))
    elif os.environ.get(PLUGIN_ENV):
        candidates.append(Path(os.environ[PLUGIN_ENV]))
    else:
        candidates.append(PACKAGE_DIR / "lib" / PLUGIN_FILE)
        candidates.extend(sorted((PACKAGE_DIR.parent / "build").glob(f"plugins/**/{PLUGIN_FILE}")))
    for path in candidates:
        if path.is_file():
            return path
    looked = ", ".join(str(p) for p in candidates) or f"{PACKAGE_DIR.parent / 'build' / 'plugins'}"
    raise UserError(f"plugin library {PLUGIN_FILE} not found (looked in: {looked}); build it with `make plugins`, "
                    f"or pass --plugin-lib PATH / set {PLUGIN_ENV}")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_plugin_library(trt, path: Path):
    """Load `path` into `trt`'s plugin registry and check it registers our creator."""
    registry = trt.get_plugin_registry()
    try:
        handle = registry.load_library(str(path))
    except Exception as exc:  # the bindings raise RuntimeError/TypeError depending on version
        raise UserError(f"plugin library {path} failed to load ({exc}); rebuild it with `make plugins`") from None
    if handle is None:
        raise UserError(f"plugin library {path} failed to load; rebuild it with `make plugins`")
    creator = registry.get_creator(contract.PLUGIN_NAME, contract.PLUGIN_VERSION, contract.PLUGIN_NAMESPACE)
    if creator is None:
        raise UserError(f"plugin library {path} does not register {contract.PLUGIN_NAME} version "
                        f"{contract.PLUGIN_VERSION} in namespace '{contract.PLUGIN_NAMESPACE}' (built for another "
                        "contract version?); rebuild it with `make plugins`")
    return handle
