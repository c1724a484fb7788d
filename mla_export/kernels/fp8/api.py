"""`block_fp8_matmul_triton`: the BlockFp8MatMul op (contract.py) on torch tensors through the kernels of `gemm`.

Runs on CUDA tensors, or on CPU tensors when the kernels were imported under TRITON_INTERPRET=1 (the tests).
Arguments are checked before anything is launched; launch choices come from `plan.make_plan`, the table the
AOT-compiled plugin kernels use. The path is the device's (native FP8 on sm_89+, weight-only below) unless
`path` names one (tests run both under the interpreter).
"""

from __future__ import annotations

import torch

from ...common.contract import FP8_BLOCK
from . import gemm
from .plan import (FP32_NUM_STAGES, FP_FUSION, GEMM_CONFIGS, QUANT_NUM_WARPS, REDUCE_NUM_WARPS, Fp8Dims, Fp8Plan, kernel_constexprs, make_plan,
                   native_fp8)

_DTYPES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}
PATHS = ("native", "weight_only")


def interpreting() -> bool:
    """True when the kernels were decorated under TRITON_INTERPRET=1 (they then run on CPU tensors)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(gemm.block_fp8_matmul_kernel, InterpretedFunction)


def device_path(device: torch.device) -> str:
    """The path the device runs: "native" on CUDA sm_89+, "weight_only" on sm_80/86 and under the interpreter."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return "native" if native_fp8(10 * major + minor) else "weight_only"
    return "weight_only"


def _check_args(x, weight, scale_inv, block_size, out) -> tuple[Fp8Dims, tuple[int, ...]]:
    """The call's dims and the output shape; raises TypeError/ValueError naming the argument."""
    named = {"input": x, "weight": weight, "scale_inv": scale_inv}
    if out is not None:
        named["out"] = out
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if block_size != FP8_BLOCK:
        raise ValueError(f"block_size must be {FP8_BLOCK} (the FP8 block convention), got {block_size}")
    if x.dtype not in _DTYPES:
        raise TypeError(f"input must be float32, float16 or bfloat16, got {x.dtype}")
    if weight.dtype != torch.float8_e4m3fn:
        raise TypeError(f"weight must be float8_e4m3fn, got {weight.dtype}")
    if scale_inv.dtype != torch.float32:
        raise TypeError(f"scale_inv must be float32, got {scale_inv.dtype}")
    if weight.dim() not in (2, 3):
        raise ValueError(f"weight must be [N, K] or [G, N, K], got {list(weight.shape)}")
    n, k = weight.shape[-2:]
    groups = weight.shape[0] if weight.dim() == 3 else 1
    if x.dim() < 1 or x.shape[-1] != k:
        raise ValueError(f"input must be [..., K={k}] (weight {list(weight.shape)}), got {list(x.shape)}")
    if groups > 1:
        if x.dim() != 3 or x.shape[0] != groups:
            raise ValueError(f"input must be [G={groups}, M, K={k}] for weight {list(weight.shape)}, "
                             f"got {list(x.shape)}")
        rows = x.shape[1]
    else:
        rows = x.numel() // k if k else int(torch.Size(x.shape[:-1]).numel())
    blocks = (-(-n // FP8_BLOCK), -(-k // FP8_BLOCK))
    want = (groups, *blocks) if weight.dim() == 3 else blocks
    if tuple(scale_inv.shape) != want:
        raise ValueError(f"scale_inv must be {list(want)} (one per {FP8_BLOCK}x{FP8_BLOCK} block of weight "
                         f"{list(weight.shape)}), got {list(scale_inv.shape)}")
    out_shape = (*x.shape[:-1], n)
    if out is not None:
        if tuple(out.shape) != out_shape or out.dtype != x.dtype:
            raise ValueError(f"out must be {list(out_shape)} {x.dtype}, got {list(out.shape)} {out.dtype}")
    device = x.device
    for name, t in named.items():
        if t.device != device:
            raise ValueError(f"{name} is on {t.device} but input is on {device}; put every tensor on one device")
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous (call .contiguous())")
    if device.type != "cuda" and not (device.type == "cpu" and interpreting()):
        raise ValueError(f"the Triton kernels need CUDA tensors (got {device}); CPU tensors run only when "
                         "mla_export.kernels was imported with TRITON_INTERPRET=1")
    return Fp8Dims(groups, rows, n, k, _DTYPES[x.dtype]), out_shape


def plan_for(dims: Fp8Dims, config: str | None = None) -> Fp8Plan:
    """The launch plan `block_fp8_matmul_triton` uses for `dims`."""
    return make_plan(dims, config=config)


def block_fp8_matmul_triton(x: torch.Tensor, weight: torch.Tensor, scale_inv: torch.Tensor, block_size: int = 128,
                            *, out: torch.Tensor | None = None, config: str | None = None,
                            path: str | None = None) -> torch.Tensor:
    """BlockFp8MatMul: x @ dequantize(weight, scale_inv)^T, float32 accumulation, rounded once to x.dtype.

    x [..., K] (weight [N, K], or [1, N, K]) or [G, M, K] (weight [G, N, K]) in float32, float16 or bfloat16;
    weight float8_e4m3fn; scale_inv float32 [ceil(N/128), ceil(K/128)] (or [G, ...]): W[n, k] = float(weight[n,
    k]) * scale_inv[n // 128, k // 128]. All contiguous on one device. Returns [..., N] (or [G, M, N]) in x.dtype,
    into `out` when given. Deterministic. `config` ("decode" / "prefill") and `path` ("native" /
    "weight_only") override the plan's and the device's choices (tests); the native path quantizes the
    activations to e4m3 per [row, 128 columns] (its error: gemm.py's docstring).
    """
    dims, out_shape = _check_args(x, weight, scale_inv, block_size, out)
    if path is not None and path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    result = out if out is not None else torch.empty(out_shape, dtype=x.dtype, device=x.device)
    plan = plan_for(dims, config)
    if plan.gemm_grid[0] == 0:
        return result
    native = (path or device_path(x.device)) == "native"
    upcast = not native and x.dtype == torch.bfloat16 and interpreting()
    device = x.device
    cfg = plan.config
    variant = GEMM_CONFIGS.index(cfg)
    launched = plan.launches(native)
    x_in, sx = x, torch.empty(0, dtype=torch.float32, device=device)
    if "act_quant" in launched:  # kernel 1: the activations' e4m3 codes and scales, once per call
        rows = dims.groups * dims.rows
        x_in = torch.empty(rows, dims.k, dtype=torch.uint8, device=device)  # [G*M, K] e4m3 codes
        sx = torch.empty(rows, plan.k_blocks, dtype=torch.float32, device=device)  # [G*M, k_blocks]
        gemm.block_fp8_act_quant_kernel[plan.quant_grid](
            x, x_in, sx, rows, dims.k, **kernel_constexprs("act_quant", 0, dims.dtype, native),
            num_warps=QUANT_NUM_WARPS, num_stages=1, enable_fp_fusion=FP_FUSION)
    partials = torch.empty((plan.splits * dims.groups * dims.rows * dims.n) if plan.splits > 1 else 0,
                           dtype=torch.float32, device=device)  # [splits, G, M, N]
    constexprs = kernel_constexprs("gemm", variant, dims.dtype, native, upcast)
    stages = FP32_NUM_STAGES if dims.dtype == "float32" else cfg.num_stages
    gemm.block_fp8_matmul_kernel[plan.gemm_grid](
        x_in, weight.view(torch.uint8), scale_inv, sx, result, partials, dims.rows, dims.n, dims.k,
        plan.k_blocks_per_split, **constexprs, num_warps=cfg.num_warps, num_stages=stages, enable_fp_fusion=FP_FUSION)
    if "reduce" in launched:
        gemm.block_fp8_reduce_kernel[plan.reduce_grid](
            partials, result, dims.groups * dims.rows * dims.n, plan.splits,
            **kernel_constexprs("reduce", 0, dims.dtype, native), num_warps=REDUCE_NUM_WARPS, num_stages=1,
            enable_fp_fusion=FP_FUSION)
    return result
