"""TensorRT: backends (imported lazily), plugin library loading, engine building, the engine sidecar
and the engine runner. Nothing here imports `tensorrt` at module import time."""
