"""mla-export: Multi-head Latent Attention models to ONNX and TensorRT with an MlaAttention plugin."""

__version__ = "0.1.0"
