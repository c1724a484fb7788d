"""Valid inputs of an mla-export graph for Polygraphy's standard workflows (`--data-loader-script`).

    polygraphy run model.onnx --onnxrt --data-loader-script $(python -m mla_export.polygraphy_data)
    polygraphy run model.onnx --trt --plugins libmla_plugin.so --onnxrt \\
        --data-loader-script $(python -m mla_export.polygraphy_data)

Polygraphy's random inputs cannot drive these graphs: `cache_seqlens` must leave room for the new tokens
in every cache, and the cache rows below it must hold values (rows at and past it are never read).
`load_data` yields a prefill (4 new tokens per sequence) and a decode step (1), each with its own ragged
histories, random hidden states (or token ids), and caches filled up to each sequence's length. The
model is the first `*.onnx` on Polygraphy's command line, or `$MLA_EXPORT_MODEL`. Running this module
prints the path of this file (for the shell substitution above).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

BATCH = 2
STEPS = ((4, "prefill"), (1, "decode"))


def _model_path() -> Path:
    if os.environ.get("MLA_EXPORT_MODEL"):
        return Path(os.environ["MLA_EXPORT_MODEL"])
    for arg in sys.argv[1:]:
        if arg.endswith(".onnx"):
            return Path(arg)
    raise SystemExit("mla_export.polygraphy_data: name the model (the first *.onnx argument of polygraphy, or "
                     "$MLA_EXPORT_MODEL)")


def feeds(path: str | Path, seed: int = 0) -> list[dict]:
    """The feed dicts (numpy arrays by graph input name) for the mla-export model at `path`."""
    import numpy as np

    from mla_export.graph.onnx_reader import read_export_spec  # absolute: Polygraphy loads this file as a script

    spec = read_export_spec(path)
    c = spec.config
    dtype = {"float32": np.float32, "float16": np.float16}.get(spec.dtype)
    if dtype is None:
        import ml_dtypes

        dtype = ml_dtypes.bfloat16
    if spec.kv_cache_dtype == "fp8":
        raise SystemExit(f"mla_export.polygraphy_data: {path} has an FP8 cache, whose codes ONNX Runtime's Python "
                         "API takes only as raw bytes: validate it with `mla-export validate`")
    rng = np.random.default_rng(seed)
    names, _ = spec.step_io_names()  # a paged export: its pools and block table made from these below
    out = []
    for new_tokens, _ in STEPS:
        room = spec.max_seq_len - new_tokens
        lengths = np.array([min(room, (7 * b + 3) % max(room, 1)) for b in range(BATCH)], dtype=np.int32)
        if spec.io == "tokens":
            x = rng.integers(0, c.vocab_size, (BATCH, new_tokens), dtype=np.int64)
        else:
            x = rng.standard_normal((BATCH, new_tokens, c.hidden_size)).astype(dtype)
        feed = {names[0]: x, names[1]: lengths}
        for name in names[2:]:
            cache = np.zeros((BATCH, spec.max_seq_len, c.cache_width), dtype=dtype)
            for b, rows in enumerate(lengths):
                cache[b, :rows] = rng.standard_normal((rows, c.cache_width)).astype(dtype)
            feed[name] = cache
        if spec.cache == "paged":  # the same rows in shuffled pages (`run/paged.py`), one pool per step
            from mla_export.run.paged import CacheServer

            feed = CacheServer(None, spec, seed=seed).graph_feeds(feed)
        out.append(feed)
    return out


def load_data():
    """Polygraphy's entry point: the feed dicts of the model on the command line."""
    yield from feeds(_model_path())


if __name__ == "__main__":
    print(Path(__file__).resolve())
