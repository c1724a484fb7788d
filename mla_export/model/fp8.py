"""FP8 block-scaled weights: DeepSeek's format, the `BlockFp8MatMul` op, and the modules that hold them.

Format (`contract.FP8_BLOCK`): a weight W [..., R, C] is float8_e4m3fn values `q` and a float32 scale per
128 x 128 block, scale_inv [..., ceil(R/128), ceil(C/128)] (the last block of a row or column may be
partial), W = float(q) * scale_inv of its block. `quantize_blocks` makes it as DeepSeek's own tooling does
(scale = amax(|block|) / 448, then round to nearest e4m3), deterministically.

`torch.ops.mla.block_fp8_matmul(x, weight, scale_inv, block_size)` is `x @ dequantize(weight)^T` (a
Linear's convention, weight [N, K] or batched [G, N, K]), float32 accumulation (float64 for float64 x),
rounded once to x's dtype; export turns it into the `BlockFp8MatMul` node. `BlockFp8Linear` holds one
such weight; its parameters keep their types when the model is cast (`Float32Params`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..common import contract

FP8_DTYPE = torch.float8_e4m3fn
BLOCK = contract.FP8_BLOCK


def block_grid(shape: tuple[int, ...], block: int = BLOCK) -> tuple[int, ...]:
    """The scale shape of a weight of `shape` [..., R, C]: [..., ceil(R/block), ceil(C/block)]."""
    *lead, rows, cols = shape
    return (*lead, math.ceil(rows / block), math.ceil(cols / block))


def expand_scale(scale_inv: torch.Tensor, shape: tuple[int, ...], block: int = BLOCK) -> torch.Tensor:
    """`scale_inv [..., ceil(R/b), ceil(C/b)]` repeated over its blocks and cut to `shape` [..., R, C]."""
    rows, cols = shape[-2:]
    return scale_inv.repeat_interleave(block, -2)[..., :rows, :].repeat_interleave(block, -1)[..., :cols]


def dequantize_blocks(q: torch.Tensor, scale_inv: torch.Tensor, dtype: torch.dtype = torch.float32,
                      block: int = BLOCK) -> torch.Tensor:
    """W = float(q) * scale_inv per block, in `dtype` (float32 or float64: both hold it exactly)."""
    return q.to(dtype) * expand_scale(scale_inv.to(dtype), tuple(q.shape), block)


CHUNK_BLOCK_ROWS = 16  # row blocks quantized at a time: a V3 out_proj (7168 x 65536) never needs float32 copies


def quantize_blocks(weight: torch.Tensor, block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """(q float8_e4m3fn [..., R, C], scale_inv float32 [..., ceil(R/b), ceil(C/b)]) of a finite `weight`:
    scale_inv = amax(|block|) / FP8_MAX (1.0 for an all-zero block), q = round_to_e4m3(W / scale_inv).
    Rows are taken CHUNK_BLOCK_ROWS blocks at a time, so memory beyond the result stays small."""
    *lead, rows, cols = weight.shape
    grid = block_grid(tuple(weight.shape), block)
    matrices = weight.reshape(-1, rows, cols)  # [G, R, C]
    q = torch.empty(matrices.shape, dtype=FP8_DTYPE)
    scale_inv = torch.empty(matrices.shape[0], *grid[-2:], dtype=torch.float32)
    step = CHUNK_BLOCK_ROWS * block
    for g, matrix in enumerate(matrices):
        for start in range(0, rows, step):
            q[g, start:start + step], scale_inv[g, start // block:(start + step) // block] = \
                _quantize_rows(matrix[start:start + step].to(torch.float32), block)
    return q.view(*lead, rows, cols), scale_inv.view(grid)


def _quantize_rows(w: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`quantize_blocks` of one float32 matrix `w [r, C]` (r <= CHUNK_BLOCK_ROWS blocks)."""
    rows, cols = w.shape
    grid = block_grid(tuple(w.shape), block)
    padded = torch.zeros(grid[0] * block, grid[1] * block, dtype=torch.float32)
    padded[:rows, :cols] = w
    amax = padded.view(grid[0], block, grid[1], block).abs().amax(dim=(1, 3))  # [nb, kb]
    scale_inv = torch.where(amax > 0, amax / contract.FP8_MAX, torch.ones_like(amax))
    scaled = w / expand_scale(scale_inv, tuple(w.shape), block)  # |.| <= 448
    return scaled.clamp(-contract.FP8_MAX, contract.FP8_MAX).to(FP8_DTYPE), scale_inv


def block_fp8_matmul_reference(x: torch.Tensor, weight: torch.Tensor, scale_inv: torch.Tensor,
                               block: int = BLOCK) -> torch.Tensor:
    """`x [..., K] @ W^T` (weight [N, K], or [G, N, K] with x [G, M, K]) in float32 (float64 for float64 x),
    rounded to x's dtype."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    w = dequantize_blocks(weight, scale_inv, acc, block)  # [(G,) N, K]
    return torch.matmul(x.to(acc), w.transpose(-1, -2)).to(x.dtype)


def check_fp8_operands(x: torch.Tensor, weight: torch.Tensor, scale_inv: torch.Tensor, block: int) -> None:
    """ValueError when the operands break the `BlockFp8MatMul` contract (as the plugin checks at build)."""
    if block != BLOCK:
        raise ValueError(f"block_fp8_matmul: block_size={block}; only {BLOCK} is supported")
    if weight.dtype != FP8_DTYPE or weight.dim() not in (2, 3):
        raise ValueError(f"block_fp8_matmul: weight {weight.dtype} {tuple(weight.shape)}; expected a 2-D or 3-D "
                         "float8_e4m3fn tensor")
    if tuple(scale_inv.shape) != block_grid(tuple(weight.shape), block):
        raise ValueError(f"block_fp8_matmul: scale_inv {tuple(scale_inv.shape)} for weight {tuple(weight.shape)}; "
                         f"expected {block_grid(tuple(weight.shape), block)}")
    if x.shape[-1] != weight.shape[-1] or (weight.dim() == 3 and weight.shape[0] > 1 and x.shape[0] != weight.shape[0]):
        raise ValueError(f"block_fp8_matmul: input {tuple(x.shape)} does not match weight {tuple(weight.shape)}")


@torch.library.custom_op("mla::block_fp8_matmul", mutates_args=())
def block_fp8_matmul(x: torch.Tensor, weight: torch.Tensor, scale_inv: torch.Tensor,
                     block_size: int) -> torch.Tensor:
    """`BlockFp8MatMul` as a PyTorch op (CPU: the reference; CUDA: the Triton kernel)."""
    check_fp8_operands(x, weight, scale_inv, block_size)
    return block_fp8_matmul_reference(x, weight, scale_inv, block_size)


@block_fp8_matmul.register_fake
def _block_fp8_matmul_fake(x, weight, scale_inv, block_size):
    return x.new_empty((*x.shape[:-1], weight.shape[-2]))


@block_fp8_matmul.register_kernel("cuda")
def _block_fp8_matmul_cuda(x, weight, scale_inv, block_size):
    """The CUDA implementation: the Triton kernel (Triton is imported at the first call, not before)."""
    check_fp8_operands(x, weight, scale_inv, block_size)
    from ..kernels.fp8.api import block_fp8_matmul_triton

    return block_fp8_matmul_triton(x.contiguous(), weight.contiguous(), scale_inv.float().contiguous(), block_size)


class KeepTypes(nn.Module):
    """A module whose parameters keep their types when the model is cast (`.to(dtype)` moves them only):
    FP8 weights and their float32 scales."""

    def _apply(self, fn, recurse=True):
        def keep_type(t: torch.Tensor) -> torch.Tensor:
            probe = fn(t.new_empty(0))  # what `fn` does to an empty tensor of t's type: cast, move or both
            return fn(t) if probe.dtype == t.dtype else t.to(probe.device)

        return super()._apply(keep_type, recurse)


class BlockFp8Linear(KeepTypes):
    """y = x @ W^T with W an FP8 block-scaled weight: `weight` [(G,) N, K] float8_e4m3fn and
    `weight_scale_inv` [(G,) ceil(N/128), ceil(K/128)] float32 (DeepSeek's parameter names)."""

    def __init__(self, in_features: int, out_features: int, groups: int | None = None):
        super().__init__()
        shape = (out_features, in_features) if groups is None else (groups, out_features, in_features)
        self.weight = nn.Parameter(torch.zeros(shape, dtype=FP8_DTYPE), requires_grad=False)
        self.weight_scale_inv = nn.Parameter(torch.ones(block_grid(shape), dtype=torch.float32), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., K] (or [G, M, K]) -> [..., N]."""
        return torch.ops.mla.block_fp8_matmul(x, self.weight, self.weight_scale_inv, BLOCK)
