"""Where the weights come from: safetensors checkpoints (`checkpoint`), seeded or checkpoint weight sources
(`weights`) and the eager model built from them (`eager`). Imports `common` and `model`."""
