"""Decoupled RoPE with YaRN, in DeepSeek's interleaved-pair convention.

Convention: a RoPE vector x of width Dr is rotated in consecutive pairs (x[2k], x[2k+1]) by the
angle p * theta_k (k < Dr/2). HF's port permutes the weights so pairs become halves and uses
`rotate_half`; `rotate_half_reference` implements that one so tests can show both agree. A checkpoint
whose RoPE weights are in halves layout (transformers' `rope_interleave: false`) is brought to pairs
at load time by `halves_to_interleaved` on the output rows of the projections producing q_pe and k_pe.
"""

from __future__ import annotations

import math

import torch

from .config import MlaConfig


def inverse_frequencies(config: MlaConfig) -> torch.Tensor:
    """theta_k for k < Dr/2 as float64 `[Dr/2]`, YaRN-blended when `rope_scaling` is set."""
    dim = config.qk_rope_head_dim
    base = config.rope_theta
    exponents = torch.arange(0, dim, 2, dtype=torch.float64) / dim  # [Dr/2]
    freq_extra = 1.0 / base ** exponents  # [Dr/2] original frequencies
    rs = config.rope_scaling
    if rs is None:
        return freq_extra
    freq_inter = 1.0 / (rs.factor * base ** exponents)  # [Dr/2] interpolated frequencies

    def correction_dim(num_rotations: float) -> float:
        return (dim * math.log(rs.original_max_position_embeddings / (num_rotations * 2 * math.pi))) / (
            2 * math.log(base))

    low = max(math.floor(correction_dim(rs.beta_fast)), 0)
    high = min(math.ceil(correction_dim(rs.beta_slow)), dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)  # [Dr/2]
    extrapolation = 1.0 - ramp  # 1 keeps the original frequency (high-frequency dims)
    return freq_inter * (1 - extrapolation) + freq_extra * extrapolation


def rope_amplitude(config: MlaConfig) -> float:
    """YaRN multiplies cos and sin by mscale(factor, mscale) / mscale(factor, mscale_all_dim)."""
    return 1.0 if config.rope_scaling is None else config.rope_scaling.cos_sin_scale


def rope_cos_sin(config: MlaConfig, max_seq_len: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The op's `rope_cos_sin` table `[max_seq_len, Dr]`: row p = [cos(p theta) ; sin(p theta)] * amplitude.

    Computed in float64, then cast to `dtype`.
    """
    positions = torch.arange(max_seq_len, dtype=torch.float64)  # [Smax]
    angles = torch.outer(positions, inverse_frequencies(config))  # [Smax, Dr/2]
    table = torch.cat([angles.cos(), angles.sin()], dim=-1) * rope_amplitude(config)  # [Smax, Dr]
    return table.to(dtype)


def rotate_interleaved(x: torch.Tensor, cos_sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[2k], x[2k+1]) of `x [..., Dr]` by `cos_sin [..., Dr]` (broadcast over leading axes).

    Computed in the wider of the two dtypes, returned in x's dtype.
    """
    half = x.shape[-1] // 2
    work = torch.promote_types(x.dtype, cos_sin.dtype)
    cos, sin = cos_sin[..., :half].to(work), cos_sin[..., half:].to(work)  # [..., Dr/2]
    pairs = x.to(work).unflatten(-1, (half, 2))  # [..., Dr/2, 2]
    even, odd = pairs[..., 0], pairs[..., 1]  # [..., Dr/2]
    rotated = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1)  # [..., Dr/2, 2]
    return rotated.flatten(-2).to(x.dtype)


def interleaved_to_halves(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Permute axis `dim` from pair layout (x0,x1,x2,x3..) to halves (x0,x2,..,x1,x3,..), as HF's port does."""
    x = x.movedim(dim, -1)
    half = x.shape[-1] // 2
    return x.unflatten(-1, (half, 2)).transpose(-1, -2).flatten(-2).movedim(-1, dim)


def halves_to_interleaved(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """The inverse of `interleaved_to_halves`: axis `dim` from halves (a0..a_{n-1}, b0..b_{n-1}), each
    (a_k, b_k) rotated together, to pairs (a0, b0, a1, b1, ..)."""
    x = x.movedim(dim, -1)
    half = x.shape[-1] // 2
    return x.unflatten(-1, (2, half)).transpose(-1, -2).flatten(-2).movedim(-1, dim)


def rotate_half_reference(x_halves: torch.Tensor, cos_sin: torch.Tensor) -> torch.Tensor:
    """HF's convention on halves-layout input: x * cos + rotate_half(x) * sin (cos/sin repeated twice)."""
    half = x_halves.shape[-1] // 2
    cos = torch.cat([cos_sin[..., :half]] * 2, dim=-1)
    sin = torch.cat([cos_sin[..., half:]] * 2, dim=-1)
    rotated_half = torch.cat([-x_halves[..., half:], x_halves[..., :half]], dim=-1)
    return x_halves * cos + rotated_half * sin
