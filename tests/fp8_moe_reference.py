"""FP8 experts for the DeepseekMoE kernel tests: block quantization (written here, apart from the exporter's), the
float64 dequantization, the float64 routed output and a per-element bound on the kernels' error.

The bound follows each rounding the kernels make (experts.py), element by element, in float64:
  - gate_up:  g' = g + dg, with dg <= Q * (|W_gu| @ (|x| + GRID * amax_group(x)))   (native: activation FP8)
                                  +  ACC * (|W_gu| @ |x|)                            (float32 products and sums)
  - act = silu(g) * u stored in T: |silu(g') u' - silu(g) u| <= 1.1 dg_gate (|u| + dg_up) + |silu(g)| dg_up,
    silu' being at most 1.0998 in magnitude; then the rounding to T, u_T (|act| + dact), and 2^-20 relative for
    the float32 exp and products (GPU exp is an approximation within 2 ulp);
  - down: the same as gate_up on act' (its own group amax), plus |W_d| @ dact, then y rounded to T;
  - combine: routing weights to 1e-5 relative (float32 logits against float64), the float32 sum and the
    rounding of the output to T.
Q = 2^-4 is the largest relative error of rounding to nearest on e4m3's 3 mantissa bits, GRID = 2^-10 / 448 the
absolute error below its smallest normal (2^-6, step 2^-9) in units of the group's amax; Q and GRID are 0 on the
weight-only path, where FP8 -> T is exact and the products of T values are exact in float32. The bound is
then multiplied by SLACK = 1.25 (and ABS_FLOOR added) for the float32 terms bounded loosely above.

That worst case adds every element's quantization error with the same sign, so it is loose (about sqrt(K)
above the errors seen). `emulate=True` gives the tight check of the native path: the reference then applies
DeepSeek's act_quant itself, in float64, and the bound only allows for the kernel's float32 arithmetic and the
rare element whose rounding can go either way within it (`_act_quant`).
"""

from __future__ import annotations

import torch

from mla_export.common.contract import FP8_BLOCK, FP8_MAX
from mla_export.model.moe import RoutingRule, route, router_logits

Q = 2.0 ** -4
GRID = 2.0 ** -10 / FP8_MAX
UNIT = {torch.float32: 2.0 ** -24, torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}
SILU_LIPSCHITZ = 1.1
WEIGHT_REL = 1e-5
SLACK = 1.25
ABS_FLOOR = 1e-30
SCALE_FLOOR = 1.1754944e-38  # experts.SCALE_FLOOR: the kernels' smallest activation scale


def quantize_blocks(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [E, R, C] (any float) -> (q [E, R, C] float8_e4m3fn, scale [E, ceil(R/128), ceil(C/128)] float32) with
    scale = amax(|block|) / 448 (1 for an all-zero block) and q = w / scale rounded to nearest e4m3."""
    e, r, c = w.shape
    rb, cb = -(-r // FP8_BLOCK), -(-c // FP8_BLOCK)
    padded = torch.zeros(e, rb * FP8_BLOCK, cb * FP8_BLOCK, dtype=torch.float64)
    padded[:, :r, :c] = w.double()
    blocks = padded.view(e, rb, FP8_BLOCK, cb, FP8_BLOCK)  # [E, Rb, 128, Cb, 128]
    amax = blocks.abs().amax(dim=(2, 4))  # [E, Rb, Cb]
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax)).float()
    q = (w.double() / expand(scale, r, c).double()).to(torch.float8_e4m3fn)
    return q, scale


def expand(scale: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """[..., Rb, Cb] block scales -> [..., rows, cols], each entry repeated over its block."""
    return scale.repeat_interleave(FP8_BLOCK, -2)[..., :rows, :].repeat_interleave(FP8_BLOCK, -1)[..., :cols]


def dequantize64(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """q [E, R, C] float8_e4m3fn times its block scales, exactly (4 + 24 significant bits fit float64)."""
    return q.double() * expand(scale.double(), q.shape[-2], q.shape[-1])


def _group_amax(a: torch.Tensor) -> torch.Tensor:
    """a [n, K] -> [n, K]: each element replaced by the amax of its row's 128-column group."""
    n, k = a.shape
    groups = -(-k // FP8_BLOCK)
    padded = torch.zeros(n, groups * FP8_BLOCK, dtype=a.dtype)
    padded[:, :k] = a.abs()
    return padded.view(n, groups, FP8_BLOCK).amax(-1).repeat_interleave(FP8_BLOCK, -1)[:, :k]


_GRID = torch.arange(127, dtype=torch.uint8).view(torch.float8_e4m3fn).double()  # e4m3 values 0 .. 448


def round_e4m3(v: torch.Tensor) -> torch.Tensor:
    """float64 values in [-448, 448] rounded to nearest e4m3 (ties to the even code), in float64."""
    mag = v.abs()
    hi = torch.searchsorted(_GRID, mag).clamp(max=126)  # first grid value >= |v|
    lo = (hi - 1).clamp(min=0)
    up = (_GRID[hi] - mag < mag - _GRID[lo]) | ((_GRID[hi] - mag == mag - _GRID[lo]) & (hi % 2 == 0))
    return torch.where(up, _GRID[hi], _GRID[lo]).copysign(v)


def _scale_of(amax: torch.Tensor) -> torch.Tensor:
    return torch.clamp(amax.float() / FP8_MAX, min=SCALE_FLOOR).double()  # float32 as the kernel computes it


def _act_quant(center: torch.Tensor, radius: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek's act_quant of center [n, K] in float64 (scale = amax / 448 per [row, 128], values rounded to
    e4m3), and how far the kernel's quantization of any value within `radius` of center can be from it: the
    rounding is monotone, so the extremes of the value and scale ranges bound it (divisions within 2^-21)."""
    scale = _scale_of(_group_amax(center))
    ideal = round_e4m3((center / scale).clamp(-FP8_MAX, FP8_MAX)) * scale
    s_lo = _scale_of(_group_amax((center.abs() - radius).clamp(min=0))) * (1 - 2 ** -22)
    s_hi = _scale_of(_group_amax(center.abs() + radius)) * (1 + 2 ** -22)
    ends = [(center + sign * radius) / s for sign in (-1, 1) for s in (s_lo, s_hi)]
    v_lo = torch.stack(ends).amin(0) - 2 ** -21 * torch.stack(ends).abs().amax(0)
    v_hi = torch.stack(ends).amax(0) + 2 ** -21 * torch.stack(ends).abs().amax(0)
    err = torch.stack([(round_e4m3(v.clamp(-FP8_MAX, FP8_MAX)) * s - ideal).abs()
                       for v in (v_lo, v_hi) for s in (s_lo, s_hi)]).amax(0)
    return ideal, err


def _operand(center: torch.Tensor, radius: torch.Tensor, native: bool, emulate: bool):
    """(the reference's left operand [n, K], bound of the kernel's operand's distance from it) for a kernel
    input within `radius` of `center`."""
    if not native:
        return center, radius  # FP8 -> T exact: the kernel multiplies its input as it is
    if emulate:
        return _act_quant(center, radius)
    grown = center.abs() + radius
    return center, radius + Q * grown + GRID * _group_amax(grown)


def _product(center, radius, w: torch.Tensor, native: bool, emulate: bool):
    """(a @ w^T, its error bound) [n, N] for the kernel's product of an input within `radius` of `center`."""
    a, err = _operand(center, radius, native, emulate)
    k = a.shape[-1]
    return a @ w.T, err @ w.abs().T + (k + 8) * 2.0 ** -24 * ((a.abs() + err) @ w.abs().T)


def expected_and_bound(x: torch.Tensor, router: torch.Tensor, bias: torch.Tensor, gate_up: torch.Tensor,
                       down: torch.Tensor, rule: RoutingRule, dtype: torch.dtype, native: bool,
                       emulate: bool = False):
    """(routed output [T, d] float64, per-element error bound [T, d]) for tokens x [T, d] (already rounded to
    `dtype`) and dequantized experts gate_up [E, 2I, d], down [E, d, I] (float64). The output is the op's
    semantics (moe_reference in float64); with `emulate` (native path only) it is DeepSeek's FP8 numerics instead:
    both products' left operands act_quant-ed in float64, and the bound is then that of float32 arithmetic."""
    weights, experts = route(router_logits(x.float(), router), rule, bias)  # [T, K] each
    inter = down.shape[-1]
    unit = UNIT[dtype]
    out = torch.zeros(x.shape, dtype=torch.float64)
    bound = torch.zeros_like(out)
    for t in range(x.shape[0]):
        for w, e in zip(weights[t].double().tolist(), experts[t].tolist()):
            row = x[t:t + 1].double()  # [1, d]
            gu, dgu = _product(row, torch.zeros_like(row), gate_up[e], native, emulate)  # [1, 2I] each
            g, u, dg, du = gu[:, :inter], gu[:, inter:], dgu[:, :inter], dgu[:, inter:]
            act = torch.nn.functional.silu(g) * u  # [1, I]
            dact = SILU_LIPSCHITZ * dg * (u.abs() + du) + torch.nn.functional.silu(g).abs() * du
            dact = dact + (unit + 2.0 ** -20) * (act.abs() + dact)  # act stored in T
            y, dy = _product(act, dact, down[e], native, emulate)  # [1, d] each
            dy = dy + unit * (y.abs() + dy)  # y stored in T
            out[t] += w * y[0]
            bound[t] += abs(w) * (dy[0] + WEIGHT_REL * y[0].abs())
    bound = bound + 2.0 ** -22 * bound.abs() + unit * (out.abs() + bound)  # float32 sum, rounding to T
    return out, SLACK * bound + ABS_FLOOR


def check_within(got: torch.Tensor, want: torch.Tensor, bound: torch.Tensor, what: str) -> float:
    """Assert |got - want| <= bound element-wise (and got finite); returns the largest error / bound ratio."""
    got = got.double().cpu().reshape(want.shape)
    assert torch.isfinite(got).all(), f"{what}: {int((~torch.isfinite(got)).sum())} non-finite outputs"
    ratio = (got - want).abs() / bound
    worst = int(ratio.argmax())
    assert float(ratio.max()) <= 1.0, (f"{what}: error {float((got - want).abs().view(-1)[worst]):.3g} at "
                                       f"{divmod(worst, want.shape[-1])} over its bound "
                                       f"{float(bound.view(-1)[worst]):.3g} (ratio {float(ratio.max()):.3g})")
    return float(ratio.max())
