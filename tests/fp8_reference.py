"""The FP8 block convention in float64, written apart from the kernels: block quantization, dequantization, the
product BlockFp8MatMul defines, and the error bounds the kernels' two paths must meet (tests/test_fp8_kernels.py)."""

from __future__ import annotations

import torch

BLOCK = 128
E4M3_MAX = 448.0


def block_scales_like(n: int, k: int, groups: int | None = None) -> tuple[int, ...]:
    blocks = (-(-n // BLOCK), -(-k // BLOCK))
    return blocks if groups is None else (groups, *blocks)


def expand_scales(scale_inv: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """[..., nb, kb] -> [..., n, k] float64: each block's scale on its elements (ragged last blocks cut)."""
    full = scale_inv.double().repeat_interleave(BLOCK, -2)[..., :n, :]
    return full.repeat_interleave(BLOCK, -1)[..., :k]


def quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [..., N, K] -> (q float8_e4m3fn, scale_inv float32 [..., nb, kb]): scale_inv = amax/448 per block
    (1.0 for an all-zero block), q = w / scale_inv rounded by torch's float8 cast."""
    n, k = w.shape[-2:]
    nb, kb = -(-n // BLOCK), -(-k // BLOCK)
    padded = torch.zeros(*w.shape[:-2], nb * BLOCK, kb * BLOCK, dtype=torch.float32, device=w.device)
    padded[..., :n, :k] = w.float()
    blocks = padded.unflatten(-2, (nb, BLOCK)).unflatten(-1, (kb, BLOCK))  # [..., nb, 128, kb, 128]
    amax = blocks.abs().amax(dim=(-3, -1))  # [..., nb, kb]
    scale = torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))
    q = (w.float() / expand_scales(scale, n, k).float()).to(torch.float8_e4m3fn)
    return q, scale


def dequantize(q: torch.Tensor, scale_inv: torch.Tensor) -> torch.Tensor:
    """float64 W[..., n, k] = float(q) * scale_inv[..., n // 128, k // 128]."""
    n, k = q.shape[-2:]
    return q.double() * expand_scales(scale_inv, n, k)


def reference(x: torch.Tensor, q: torch.Tensor, scale_inv: torch.Tensor) -> torch.Tensor:
    """x @ dequantize(q)^T in float64 (x [..., K] with q [N, K]; x [G, M, K] with q [G, N, K])."""
    w = dequantize(q, scale_inv)
    return x.double() @ w.transpose(-1, -2)


def act_quant(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek's act_quant in float32: per [row, 128 columns] block s = max(amax, 1e-30) / 448, xq = e4m3(x / s).
    Returns (xq as float64 values, s expanded to x's shape, float64)."""
    k = x.shape[-1]
    kb = -(-k // BLOCK)
    xf = x.float()
    padded = torch.zeros(*x.shape[:-1], kb * BLOCK, device=x.device)
    padded[..., :k] = xf.abs()
    amax = padded.unflatten(-1, (kb, BLOCK)).amax(-1)  # [..., kb]
    s = amax.clamp_min(1e-30) / E4M3_MAX
    s_full = s.repeat_interleave(BLOCK, -1)[..., :k]
    xq = (xf / s_full).to(torch.float8_e4m3fn)
    return xq.double(), s_full.double()


def accumulation_bound(x: torch.Tensor, q: torch.Tensor, scale_inv: torch.Tensor, splits: int = 1) -> torch.Tensor:
    """Bound on the float32 accumulation error of every output: gamma_n * sum_k |x_k| |w_k| with n = K + 2 per
    K-block (the block's scale product and its addition) + splits (the reduction), gamma_n = n * 2^-24 / (1 - n *
    2^-24) (Higham's bound for a sum of n terms in float32)."""
    k = q.shape[-1]
    n = k + 2 * -(-k // BLOCK) + splits + 2
    u = 2.0 ** -24
    gamma = n * u / (1 - n * u)
    return gamma * (x.double().abs() @ dequantize(q, scale_inv).abs().transpose(-1, -2))


def activation_quant_bound(x: torch.Tensor, q: torch.Tensor, scale_inv: torch.Tensor) -> torch.Tensor:
    """Bound on the native path's extra error: sum_k (2^-4 |x_k| + 2^-10 s_k) |w_k|. e4m3 keeps 3 mantissa bits: a
    normal value is rounded to within 2^-4 of itself, a subnormal one (|x/s| < 2^-6) to within 2^-10 in units of s."""
    _, s_full = act_quant(x)
    per_element = 2.0 ** -4 * x.double().abs() + 2.0 ** -10 * s_full
    return per_element @ dequantize(q, scale_inv).abs().transpose(-1, -2)


def kernel_bound(x: torch.Tensor, q: torch.Tensor, scale_inv: torch.Tensor, splits: int, native: bool,
                 rounding: float, tiny: float) -> torch.Tensor:
    """Element-wise absolute allowance of a kernel output beside `rounding` * |y| (the rounding to T): the
    float32 accumulation, on the native path also the activation quantization (1.1: |x_q s| <= (1 + 2^-4) |x| +
    ...), each itself rounded to T, plus `tiny` (T's smallest subnormal: outputs below it round to 0)."""
    bound = accumulation_bound(x, q, scale_inv, splits)
    if native:
        bound = 1.1 * bound + activation_quant_bound(x, q, scale_inv)
    return bound * (1 + rounding) + tiny
