"""mla-export: Multi-head Latent Attention models to ONNX and TensorRT with an MlaAttention plugin."""

from .common.version import __version__

__all__ = ["__version__"]
