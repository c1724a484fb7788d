"""Judging an FP8 latent cache (`--kv-cache-dtype fp8`) against the float64 reference.

A runtime's c_kv differs from the reference's by its own rounding (1e-7 relative in float32, 1e-3 in
float16), and FP8 codes are 12.5% apart: a value near a rounding midpoint lands on the neighbouring code on
one side and not the other, so neither the codes nor anything computed from them can be compared as the
same numbers. Validation therefore splits the question, as the contract does:

- the rows a step stores: the runtime's dequantized c_kv must be within half an FP8 step of the
  reference's unquantized c_kv (plus the dtype's own tolerance), its k_pe rows under the normal rule;
- the attention: the reference reads the runtime's own cache (`ops.mla_attention_reference(read_cache=)`),
  so its outputs compare under the normal rule; the next step starts from the runtime's cache.
"""

from __future__ import annotations

import torch

from ..model.cache_ops import fp8_cache_scales, fp8_round_trip
from .compare import Comparison, Verdict, compare, compare_by


def history_as_stored(cache: torch.Tensor, d_c: int) -> torch.Tensor:
    """A starting cache `[B, Smax, Dc+Dr]` with its c_kv rows as an FP8 cache holds them (NaN rows kept)."""
    c_kv = cache[..., :d_c]
    valid = torch.isfinite(c_kv).all(-1, keepdim=True)  # [B, Smax, 1]
    stored = fp8_round_trip(torch.where(valid, c_kv, 0.0).to(torch.float32)).to(cache.dtype)
    return torch.cat([torch.where(valid, stored, c_kv), cache[..., d_c:]], dim=-1)


def half_step(c_kv: torch.Tensor) -> torch.Tensor:
    """Half the distance between FP8 codes around each value of `c_kv [..., Dc]` as its tile's scale stores
    it: 2^-4 |x| for e4m3's normal codes (3 mantissa bits), 2^-10 x scale below them (its subnormal step)."""
    finite = torch.nan_to_num(c_kv.to(torch.float64), nan=0.0)
    scales = fp8_cache_scales(finite).to(torch.float64)
    per_value = scales.repeat_interleave(128, dim=-1)[..., :c_kv.shape[-1]]
    return torch.maximum(finite.abs() * 2.0**-4, per_value * 2.0**-10) * (1 + 1e-6)


def fp8_cache_comparisons(name: str, got: torch.Tensor, ref: torch.Tensor, verdict: Verdict, unwritten,
                          exempt, d_c: int) -> list[Comparison]:
    """The stored rows of one layer's cache: c_kv within half an FP8 step of the unquantized reference (no
    whole-tensor bounds: FP8's own error is not a runtime's fault), k_pe under the normal rule."""
    allowance = half_step(ref[..., :d_c])
    codes = compare(f"{name} c_kv", got[..., :d_c], ref[..., :d_c], verdict.atol, verdict.rtol, unwritten,
                    None, None, exempt, extra_allowed=allowance)
    rope = compare_by(f"{name} k_pe", got[..., d_c:], ref[..., d_c:], verdict, unwritten, exempt)
    return [codes, rope]
