"""The one comparator: tests, `validate` and benchmarks all judge tensors with `compare`.

A comparison reports the max absolute error and where it is, the max relative error, the cosine
similarity, and positions where exactly one side is NaN or infinite. It passes when every element
satisfies |actual - expected| <= atol + rtol * |expected| (NaN matching NaN and equal infinities
count as equal) and no NaN/inf mismatch exists.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

# Default tolerances by the dtype of the tested side (the reference is float64).
TOLERANCES = {
    "float64": (1e-9, 1e-9),
    "float32": (2e-4, 2e-3),
    "float16": (3e-2, 3e-2),
    "bfloat16": (1.5e-1, 6e-2),
}


def tolerance_for(dtype: str) -> tuple[float, float]:
    """(atol, rtol) for a tested tensor of `dtype` ('float32', 'float16', ...)."""
    return TOLERANCES[dtype]


@dataclass
class Comparison:
    name: str
    shape: tuple[int, ...]
    max_abs_err: float
    max_abs_index: tuple[int, ...]
    max_rel_err: float
    cosine: float
    nonfinite_mismatches: int
    atol: float
    rtol: float
    passed: bool

    def to_dict(self) -> dict:
        return asdict(self)


def _as_float64(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def compare(name: str, actual, expected, atol: float, rtol: float) -> Comparison:
    """Compare `actual` against the reference `expected` (torch tensors or arrays of one shape)."""
    a, e = _as_float64(actual), _as_float64(expected)
    if a.shape != e.shape:
        raise ValueError(f"{name}: shape {a.shape} does not match the reference's {e.shape}")
    a_bad, e_bad = ~np.isfinite(a), ~np.isfinite(e)
    same_nonfinite = a_bad & e_bad & ((np.isnan(a) & np.isnan(e)) | (a == e))
    mismatch = (a_bad | e_bad) & ~same_nonfinite
    both = ~(a_bad | e_bad)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.where(both, np.abs(a - e), 0.0)
    if diff.size:
        flat = int(np.argmax(diff))
        index = tuple(int(i) for i in np.unravel_index(flat, diff.shape))
        max_abs = float(diff.reshape(-1)[flat])
        rel = diff / np.maximum(np.abs(np.where(both, e, 0.0)), np.finfo(np.float64).tiny)
        max_rel = float(np.max(np.where(diff > 0, rel, 0.0)))
    else:
        index, max_abs, max_rel = (), 0.0, 0.0
    af, ef = np.where(both, a, 0.0).ravel(), np.where(both, e, 0.0).ravel()
    norms = float(np.linalg.norm(af) * np.linalg.norm(ef))
    cosine = float(af @ ef / norms) if norms > 0 else (1.0 if not af.any() and not ef.any() else 0.0)
    within = bool(np.all(diff <= atol + rtol * np.abs(np.where(both, e, 0.0))))
    nonfinite = int(mismatch.sum())
    return Comparison(name, tuple(a.shape), max_abs, index, max_rel, cosine, nonfinite, atol, rtol,
                      within and nonfinite == 0)
