"""The model itself, in PyTorch: the configuration (`config`, `hf_config`), what an export is (`spec`), the
decoupled RoPE (`rope`), the reference ops (`ops`, `moe`), the modules (`model`), the absorbed-weight folds
(`folding`) and the memory and disk figures (`footprint`). Imports `common` and, lazily, `kernels`; nothing
that reads files of weights, writes ONNX or runs an engine."""
