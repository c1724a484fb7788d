"""`mla_attention_triton`: the MlaAttention op on torch tensors through the three Triton kernels.

Runs on CUDA tensors, or on CPU tensors when the kernels were imported under TRITON_INTERPRET=1
(the tests). Arguments are checked before anything is launched; launch choices come from
`plan.make_plan`, the same table the AOT-compiled plugin kernels use.
"""

from __future__ import annotations

import torch

from . import split_kv as attention, combine, rope_append
from .plan import (COMBINE_NUM_WARPS, DEFAULT_NUM_SMS, FP_FUSION, ROPE_NUM_WARPS, Dims, Plan, kernel_constexprs,
                   make_plan)

_DTYPES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}


def interpreting() -> bool:
    """True when the kernels were decorated under TRITON_INTERPRET=1 (they then run on CPU tensors)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(attention.mla_attention_kernel, InterpretedFunction)


def _check_args(q_latent, q_pe, kv_latent, k_pe, past_cache, cache_seqlens, rope_cos_sin, out) -> Dims:
    named = {"q_latent": q_latent, "q_pe": q_pe, "kv_latent": kv_latent, "k_pe": k_pe, "past_cache": past_cache,
             "cache_seqlens": cache_seqlens, "rope_cos_sin": rope_cos_sin}
    if out is not None:
        named["out"] = out
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if q_latent.dim() != 4:
        raise ValueError(f"q_latent must be [B, S, H, Dc], got shape {tuple(q_latent.shape)}")
    if q_pe.dim() != 4:
        raise ValueError(f"q_pe must be [B, S, H, Dr], got shape {tuple(q_pe.shape)}")
    batch, new_tokens, heads, d_c = q_latent.shape
    d_r = q_pe.shape[-1]
    smax = past_cache.shape[1] if past_cache.dim() == 3 else -1
    expected = {"q_pe": (batch, new_tokens, heads, d_r), "kv_latent": (batch, new_tokens, d_c),
                "k_pe": (batch, new_tokens, d_r), "past_cache": (batch, smax, d_c + d_r), "cache_seqlens": (batch,)}
    if out is not None:
        expected["out"] = tuple(q_latent.shape)
    for name, shape in expected.items():
        if tuple(named[name].shape) != shape:
            raise ValueError(f"{name} must have shape {list(shape)} (from q_latent [B,S,H,Dc]={list(q_latent.shape)} "
                             f"and q_pe's Dr={d_r}), got {list(named[name].shape)}")
    if rope_cos_sin.dim() != 2 or rope_cos_sin.shape[1] != d_r or rope_cos_sin.shape[0] < smax:
        raise ValueError(f"rope_cos_sin must be [Smax={smax}, Dr={d_r}] (at least Smax rows), "
                         f"got {list(rope_cos_sin.shape)}")
    dtype = q_latent.dtype
    if dtype not in _DTYPES:
        raise TypeError(f"q_latent must be float16, bfloat16 or float32, got {dtype}")
    for name in ("q_pe", "kv_latent", "k_pe", "past_cache") + (("out",) if out is not None else ()):
        if named[name].dtype != dtype:
            raise TypeError(f"{name} must have q_latent's dtype {dtype}, got {named[name].dtype}")
    if cache_seqlens.dtype != torch.int32:
        raise TypeError(f"cache_seqlens must be int32, got {cache_seqlens.dtype}")
    if rope_cos_sin.dtype != torch.float32:
        raise TypeError(f"rope_cos_sin must be float32, got {rope_cos_sin.dtype}")
    device = q_latent.device
    for name, t in named.items():
        if t.device != device:
            raise ValueError(f"{name} is on {t.device} but q_latent is on {device}; put every tensor on one device")
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous (call .contiguous())")
    if device.type != "cuda" and not (device.type == "cpu" and interpreting()):
        raise ValueError(f"the Triton kernels need CUDA tensors (got {device}); CPU tensors run only when "
                         "mla_export.kernels was imported with TRITON_INTERPRET=1")
    if d_r % 2:
        raise ValueError(f"qk_rope_head_dim (Dr) must be even, got {d_r}")
    return Dims(batch, new_tokens, heads, d_c, d_r, smax, _DTYPES[dtype])


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return DEFAULT_NUM_SMS


def plan_for(dims: Dims, device: torch.device, num_splits: int | None = None) -> Plan:
    """The launch plan for `dims` on `device` (its SM count), as `mla_attention_triton` uses it."""
    return make_plan(dims, _num_sms(device), num_splits=num_splits)


def mla_attention_triton(q_latent: torch.Tensor, q_pe: torch.Tensor, kv_latent: torch.Tensor, k_pe: torch.Tensor,
                         past_cache: torch.Tensor, cache_seqlens: torch.Tensor, rope_cos_sin: torch.Tensor,
                         softmax_scale: float, *, out: torch.Tensor | None = None, num_splits: int | None = None,
                         in_place: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """MlaAttention (contract.py) with the Triton kernels. Returns (attn_latent, present_cache).

    q_latent [B,S,H,Dc], q_pe [B,S,H,Dr], kv_latent [B,S,Dc], k_pe [B,S,Dr], past_cache [B,Smax,Dc+Dr]:
    one dtype T (float16, bfloat16 or float32), contiguous, row-major. cache_seqlens [B] int32 (device data,
    never read on the host), rope_cos_sin [Smax,Dr] float32 (row p = cos(p theta_k) for k < Dr/2, then sin).
    out: optional [B,S,H,Dc] T for attn_latent. in_place: write the new rows into past_cache itself and
    return it as present_cache (else present_cache is a copy). num_splits overrides the split rule.
    Out-of-contract calls (cache_seqlens[b] + S > Smax) never touch memory outside the cache; their
    results are undefined.
    """
    dims = _check_args(q_latent, q_pe, kv_latent, k_pe, past_cache, cache_seqlens, rope_cos_sin, out)
    plan = plan_for(dims, q_latent.device, num_splits)
    present = past_cache if in_place else past_cache.clone()  # [B, Smax, Dc+Dr]
    attn = out if out is not None else torch.empty_like(q_latent)  # [B, S, H, Dc]
    if dims.batch * dims.new_tokens * dims.num_heads == 0:
        return attn, present
    fam = plan.family
    rows = dims.new_tokens * dims.num_heads  # M rows per sequence
    workspace = torch.empty(plan.workspace_bytes, dtype=torch.uint8, device=q_latent.device)
    q_rot = workspace[:dims.batch * rows * dims.rope_dim * q_latent.element_size()].view(q_latent.dtype)
    if plan.num_splits > 1:
        o_part = workspace[plan.o_part_offset:plan.lse_offset].view(torch.float32)  # [B*M*splits*Dc]
        lse = workspace[plan.lse_offset:].view(torch.float32)  # [B*M*splits]
    else:
        o_part = lse = q_rot  # unused by the kernel when num_splits == 1

    rope_append.mla_rope_append_kernel[plan.rope_grid](
        q_pe, kv_latent, k_pe, present, cache_seqlens, rope_cos_sin, q_rot,
        dims.new_tokens, dims.num_heads, dims.max_seq_len,
        **kernel_constexprs("rope_append", fam, 0, dims.dtype), num_warps=ROPE_NUM_WARPS,
        num_stages=1, enable_fp_fusion=FP_FUSION)
    attention.mla_attention_kernel[plan.attn_grid](
        q_latent, q_rot, present, cache_seqlens, attn, o_part, lse, float(softmax_scale),
        dims.new_tokens, dims.num_heads, dims.max_seq_len, plan.num_splits,
        **kernel_constexprs("attention", fam, plan.block_m, dims.dtype), num_warps=plan.attn_num_warps,
        num_stages=fam.num_stages, enable_fp_fusion=FP_FUSION)
    if plan.num_splits > 1:
        combine.mla_combine_kernel[plan.combine_grid](o_part, lse, attn, plan.num_splits,
                                                      **kernel_constexprs("combine", fam, 0, dims.dtype),
                                                      num_warps=COMBINE_NUM_WARPS, num_stages=1,
                                                      enable_fp_fusion=FP_FUSION)
    return attn, present
