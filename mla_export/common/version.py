"""The package's version (one place: the wheel, `--version`, the ONNX metadata and the engine sidecar)."""

__version__ = "0.1.0"
