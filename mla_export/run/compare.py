"""The one comparator: tests, `validate` and benchmarks all judge tensors with `compare`.

A comparison reports the max absolute error and where it is, the max relative error, the relative RMS
error (`||actual - expected|| / ||expected||`), the cosine similarity (both over the elements finite on
both sides), the number of NaN/inf mismatches, and how much of its tolerance the worst element uses
(`tolerance_used`, and where). It passes when every element satisfies |actual - expected| <= atol +
rtol * |expected| (tolerance_used <= 1), no mismatch exists and, where the caller gives the bounds (as
`validate` does, per dtype: `verdict_for`), the relative RMS error is at most `max_rel_rms` and the
cosine at least `min_cosine`. The element-wise rule is absolute where |expected| is small, so it alone
passes a wrong tensor whose values are all small; the two whole-tensor rules scale with the tensor. The
max relative error is for information only (it is large wherever |expected| is near zero).

A non-finite value on either side is a mismatch: NaN matching NaN, or an infinity matching the same
infinity, counts as agreement only where the caller says the reference is *expected* to be non-finite
(`expected_nonfinite`, e.g. cache rows a test filled with NaN that must stay untouched). So a model
whose every output is NaN fails, as does one that turns a finite reference value into inf.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

# Default tolerances by the dtype of the tested side (the reference is float64).
TOLERANCES = {
    "float64": (1e-9, 1e-9),
    "float32": (2e-4, 2e-3),
    "float16": (3e-2, 3e-2),
    "bfloat16": (1.5e-1, 6e-2),
}


# Whole-tensor bounds by dtype: (max relative RMS error, min cosine), from measured margins
# (benchmarks/bench_validate_margins.py, RESULTS.md): correct exports stay well inside them, and a weight
# scaled by 1.01 in one layer lands outside (in float16 only these bounds catch it, not the element-wise one).
WHOLE_TENSOR_BOUNDS = {
    "float64": (1e-9, 1.0 - 1e-12),
    "float32": (1e-5, 1.0 - 1e-9),
    "float16": (3e-3, 1.0 - 1e-5),
    "bfloat16": (3e-2, 1.0 - 1e-3),
}


def tolerance_for(dtype: str) -> tuple[float, float]:
    """(atol, rtol) for a tested tensor of `dtype` ('float32', 'float16', ...)."""
    return TOLERANCES[dtype]


@dataclass(frozen=True)
class Verdict:
    """Every bound a tensor of one dtype must meet: element-wise `atol + rtol * |ref|`, and over the whole
    tensor a relative RMS error of at most `max_rel_rms` and a cosine of at least `min_cosine`."""

    atol: float
    rtol: float
    max_rel_rms: float
    min_cosine: float


    def through(self, layers: int) -> "Verdict":
        """The bounds for a tensor that came through `layers` layers of the runtime's own (a whole model, or
        parts chained end to end): independent rounding errors add up in quadrature, so atol, rtol and the
        relative RMS bound grow as sqrt(layers), and 1 - cos (half the relative error squared) as layers."""
        grow = max(layers, 1) ** 0.5
        return Verdict(self.atol * grow, self.rtol * grow, self.max_rel_rms * grow,
                       1.0 - (1.0 - self.min_cosine) * grow * grow)


def verdict_for(dtype: str) -> Verdict:
    """The bounds `validate` judges a tensor of `dtype` by, for one layer fed the reference's own input."""
    return Verdict(*TOLERANCES[dtype], *WHOLE_TENSOR_BOUNDS[dtype])


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
    tolerance_used: float = 0.0  # max over elements of |actual - expected| / (atol + rtol * |expected|)
    tolerance_index: tuple[int, ...] = ()  # where that maximum is
    rel_rms: float = 0.0  # ||actual - expected|| / ||expected|| over the elements finite on both sides
    exempt: int = 0  # elements left out of the element-wise rule (rows of tokens routed at a near tie)
    max_rel_rms: float | None = None  # the bounds it was held to (None: not checked)
    min_cosine: float | None = None

    @property
    def rel_rms_failed(self) -> bool:
        return self.max_rel_rms is not None and not self.rel_rms <= self.max_rel_rms

    @property
    def cosine_failed(self) -> bool:
        return self.min_cosine is not None and not self.cosine >= self.min_cosine

    def to_dict(self) -> dict:
        """The fields as JSON can hold them: a non-finite number (an infinite tolerance_used where atol and
        rtol are 0, a NaN cosine) as None."""
        return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in asdict(self).items()}


def _as_float64(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor (torch is not imported here: validate's checks run before it)
        import torch

        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def _as_bool(mask) -> np.ndarray:
    return (mask.cpu().numpy() if hasattr(mask, "detach") else np.asarray(mask)).astype(bool)


def compare(name: str, actual, expected, atol: float, rtol: float, expected_nonfinite=None,
            max_rel_rms: float | None = None, min_cosine: float | None = None, exempt=None,
            extra_allowed=None) -> Comparison:
    """Compare `actual` against the reference `expected` (torch tensors or arrays of one shape).

    `max_rel_rms`, `min_cosine`: whole-tensor bounds it must also meet (None: not checked).
    `exempt`: a boolean array broadcastable to the shape, true where an element is left out of the
    element-wise rule and of the whole-tensor ones (a token a correct runtime may route to other experts: the
    reference is no judge of it); it still counts in the NaN rules; None: nowhere.
    `extra_allowed`: an array broadcastable to the shape added to each element's tolerance (an FP8 cache's
    half step of rounding); None: nothing.

    `expected_nonfinite`: a boolean array (or tensor) broadcastable to the shape, true where the reference is
    meant to be non-finite; only there does an equal non-finite value on both sides count as agreement.
    None (the default): nowhere, so any NaN or infinity on either side fails.
    """
    a, e = _as_float64(actual), _as_float64(expected)
    if a.shape != e.shape:
        raise ValueError(f"{name}: shape {a.shape} does not match the reference's {e.shape}")
    a_bad, e_bad = ~np.isfinite(a), ~np.isfinite(e)
    same_nonfinite = a_bad & e_bad & ((np.isnan(a) & np.isnan(e)) | (a == e))
    if expected_nonfinite is None:
        same_nonfinite = np.zeros_like(same_nonfinite)
    else:
        same_nonfinite &= np.broadcast_to(_as_bool(expected_nonfinite), a.shape)
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
    judged_elements = both if exempt is None else both & ~np.broadcast_to(_as_bool(exempt), a.shape)
    af, ef = np.where(judged_elements, a, 0.0).ravel(), np.where(judged_elements, e, 0.0).ravel()
    error_norm = float(np.linalg.norm(np.where(judged_elements, diff, 0.0)))
    ref_norm = float(np.linalg.norm(ef))
    if ref_norm > 0:
        rel_rms = error_norm / ref_norm
    else:  # an all-zero reference: no error is relative to nothing
        rel_rms = 0.0 if error_norm == 0 else float("inf")
    norms = float(np.linalg.norm(af) * ref_norm)
    if norms > 0:
        cosine = float(af @ ef / norms)
    else:  # nothing to measure an angle on: equal only if both are all zeros (and something was compared)
        cosine = 1.0 if not af.any() and not ef.any() and (both.any() or not a.size) else 0.0
    allowed = atol + rtol * np.abs(np.where(both, e, 0.0))
    if extra_allowed is not None:
        allowed = allowed + np.broadcast_to(_as_float64(extra_allowed), a.shape)
    judged = diff
    exempt_count = 0
    if exempt is not None:
        free = np.broadcast_to(_as_bool(exempt), a.shape)
        exempt_count = int(free.sum())
        judged = np.where(free, 0.0, diff)
    within = bool(np.all(judged <= allowed))
    if diff.size:
        with np.errstate(divide="ignore", invalid="ignore"):
            used = np.where(judged > 0, judged / allowed, 0.0)  # inf where atol = rtol*|e| = 0 and they differ
        worst = int(np.argmax(used))
        tolerance_used = float(used.reshape(-1)[worst])
        tolerance_index = tuple(int(i) for i in np.unravel_index(worst, used.shape))
    else:
        tolerance_used, tolerance_index = 0.0, ()
    nonfinite = int(mismatch.sum())
    result = Comparison(name, tuple(a.shape), max_abs, index, max_rel, cosine, nonfinite, atol, rtol,
                        within and nonfinite == 0, tolerance_used, tolerance_index, rel_rms, exempt_count,
                        max_rel_rms, min_cosine)
    result.passed = result.passed and not result.rel_rms_failed and not result.cosine_failed
    return result


def compare_by(name: str, actual, expected, verdict: Verdict, expected_nonfinite=None, exempt=None) -> Comparison:
    """`compare` under every bound of `verdict`."""
    return compare(name, actual, expected, verdict.atol, verdict.rtol, expected_nonfinite,
                   verdict.max_rel_rms, verdict.min_cosine, exempt)
