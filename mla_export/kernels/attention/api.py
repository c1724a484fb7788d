"""`mla_attention_triton`: the MlaAttention op on torch tensors through the three Triton kernels.

Runs on CUDA tensors, or on CPU tensors when the kernels were imported under TRITON_INTERPRET=1
(the tests). Arguments are checked before anything is launched; launch choices come from
`plan.make_plan`, the same table the AOT-compiled plugin kernels use. Cache layouts of contract version 2
(paged and/or FP8, common/contract.py) are keyword arguments; without them the call is contract version 1.
"""

from __future__ import annotations

import torch

from ...common.contract import FP8_CACHE_TILE, KV_CACHE_DTYPE_FP8, KV_CACHE_DTYPE_MODEL
from . import split_kv as attention, combine, rope_append
from .plan import (COMBINE_NUM_WARPS, DEFAULT_NUM_SMS, FP_FUSION, ROPE_NUM_WARPS, Dims, Plan, kernel_constexprs,
                   make_plan)

_DTYPES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}
_TORCH_DTYPES = {name: dtype for dtype, name in _DTYPES.items()}


def interpreting() -> bool:
    """True when the kernels were decorated under TRITON_INTERPRET=1 (they then run on CPU tensors)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(attention.mla_attention_kernel, InterpretedFunction)


def _check_args(q_latent, q_pe, kv_latent, k_pe, past_cache, cache_seqlens, rope_cos_sin, out,
                layout: bool = False) -> Dims:
    """The call's dims; raises TypeError/ValueError naming the argument. `layout`: the cache has a contract-2
    layout, checked by `_check_cache` (past_cache is then only checked for being a tensor on the device)."""
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
    smax = past_cache.shape[1] if past_cache.dim() == 3 and not layout else -1
    expected = {"q_pe": (batch, new_tokens, heads, d_r), "kv_latent": (batch, new_tokens, d_c),
                "k_pe": (batch, new_tokens, d_r), "cache_seqlens": (batch,)}
    if not layout:
        expected["past_cache"] = (batch, smax, d_c + d_r)
    if out is not None:
        expected["out"] = tuple(q_latent.shape)
    for name, shape in expected.items():
        if tuple(named[name].shape) != shape:
            raise ValueError(f"{name} must have shape {list(shape)} (from q_latent [B,S,H,Dc]={list(q_latent.shape)} "
                             f"and q_pe's Dr={d_r}), got {list(named[name].shape)}")
    if rope_cos_sin.dim() != 2 or rope_cos_sin.shape[1] != d_r or (not layout and rope_cos_sin.shape[0] < smax):
        raise ValueError(f"rope_cos_sin must be [Smax={smax}, Dr={d_r}] (at least Smax rows), "
                         f"got {list(rope_cos_sin.shape)}")
    dtype = q_latent.dtype
    if dtype not in _DTYPES:
        raise TypeError(f"q_latent must be float16, bfloat16 or float32, got {dtype}")
    same_dtype = ("q_pe", "kv_latent", "k_pe") + (() if layout else ("past_cache",))
    same_dtype += ("out",) if out is not None else ()
    for name in same_dtype:
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


def _check_cache(dims: Dims, past_cache, rope_cos_sin, block_table, past_scale, past_rope, page_size: int,
                 kv_cache_dtype: int) -> tuple[Dims, int, int]:
    """A contract-2 cache layout checked against the call's dims: (plan dims, kernel Smax, num_pages).
    The plan's Smax is max_pages * page_size for a paged cache; the kernels' Smax is then the rope table's rows."""
    if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 0 or page_size & (page_size - 1):
        raise ValueError(f"page_size must be 0 (contiguous) or a power of two, got {page_size!r}")
    if kv_cache_dtype not in (KV_CACHE_DTYPE_MODEL, KV_CACHE_DTYPE_FP8):
        raise ValueError(f"kv_cache_dtype must be {KV_CACHE_DTYPE_MODEL} (model dtype) or {KV_CACHE_DTYPE_FP8} "
                         f"(fp8), got {kv_cache_dtype!r}")
    fp8 = kv_cache_dtype == KV_CACHE_DTYPE_FP8
    dtype = _TORCH_DTYPES[dims.dtype]
    if fp8:
        planes = {"past_scale": past_scale, "past_rope": past_rope}
    else:
        planes = {}
        for name, t in (("past_scale", past_scale), ("past_rope", past_rope)):
            if t is not None:
                raise ValueError(f"{name} is for the FP8 cache only (kv_cache_dtype={KV_CACHE_DTYPE_FP8}); "
                                 "leave it out")
    named = dict(planes, **({"block_table": block_table} if page_size else {}))
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    width = dims.kv_lora_rank if fp8 else dims.kv_lora_rank + dims.rope_dim
    cache_dtype = torch.float8_e4m3fn if fp8 else dtype
    if past_cache.dim() != 3 or past_cache.shape[2] != width:
        raise ValueError(f"past_cache must be [pages, rows, {width}] ({'Dc' if fp8 else 'Dc+Dr'}), "
                         f"got {list(past_cache.shape)}")
    if past_cache.dtype != cache_dtype:
        raise TypeError(f"past_cache must be {cache_dtype} for kv_cache_dtype={kv_cache_dtype}, got {past_cache.dtype}")
    pages, rows = past_cache.shape[:2]
    if page_size:
        if rows != page_size:
            raise ValueError(f"past_cache must be [num_pages, page_size={page_size}, {width}], "
                             f"got {list(past_cache.shape)}")
        if block_table.dim() != 2 or block_table.shape[0] != dims.batch:
            raise ValueError(f"block_table must be [B={dims.batch}, max_pages], got {list(block_table.shape)}")
        if block_table.dtype != torch.int32:
            raise TypeError(f"block_table must be int32, got {block_table.dtype}")
        plan_smax, kernel_smax = block_table.shape[1] * page_size, rope_cos_sin.shape[0]
    else:
        if pages != dims.batch:
            raise ValueError(f"past_cache must be [B={dims.batch}, Smax, {width}] (contiguous), "
                             f"got {list(past_cache.shape)}")
        if rope_cos_sin.shape[0] < rows:
            raise ValueError(f"rope_cos_sin must be [Smax={rows}, Dr={dims.rope_dim}] (at least Smax rows), "
                             f"got {list(rope_cos_sin.shape)}")
        plan_smax = kernel_smax = rows
    if fp8:
        tiles = -(-dims.kv_lora_rank // FP8_CACHE_TILE)
        for name, t, shape, want in (("past_scale", past_scale, (pages, rows, tiles), torch.float32),
                                     ("past_rope", past_rope, (pages, rows, dims.rope_dim), dtype)):
            if tuple(t.shape) != shape:
                raise ValueError(f"{name} must have shape {list(shape)} (from past_cache {list(past_cache.shape)}), "
                                 f"got {list(t.shape)}")
            if t.dtype != want:
                raise TypeError(f"{name} must be {want}, got {t.dtype}")
    for name, t in dict(named, past_cache=past_cache).items():
        if t.device != rope_cos_sin.device:
            raise ValueError(f"{name} is on {t.device} but q_latent is on {rope_cos_sin.device}; put every tensor "
                             "on one device")
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous (call .contiguous())")
    plan_dims = Dims(dims.batch, dims.new_tokens, dims.num_heads, dims.kv_lora_rank, dims.rope_dim, plan_smax,
                     dims.dtype, page_size, kv_cache_dtype)
    return plan_dims, kernel_smax, pages


def mla_attention_triton(q_latent: torch.Tensor, q_pe: torch.Tensor, kv_latent: torch.Tensor, k_pe: torch.Tensor,
                         past_cache: torch.Tensor, cache_seqlens: torch.Tensor, rope_cos_sin: torch.Tensor,
                         softmax_scale: float, *, out: torch.Tensor | None = None, num_splits: int | None = None,
                         in_place: bool = False, block_table: torch.Tensor | None = None,
                         past_scale: torch.Tensor | None = None, past_rope: torch.Tensor | None = None,
                         page_size: int = 0, kv_cache_dtype: int = KV_CACHE_DTYPE_MODEL) -> tuple[torch.Tensor, ...]:
    """MlaAttention (contract.py) with the Triton kernels. Returns (attn_latent, present_cache), and with the
    FP8 cache (attn_latent, present_cache, present_scale, present_rope).

    q_latent [B,S,H,Dc], q_pe [B,S,H,Dr], kv_latent [B,S,Dc], k_pe [B,S,Dr], past_cache [B,Smax,Dc+Dr]:
    one dtype T (float16, bfloat16 or float32), contiguous, row-major. cache_seqlens [B] int32 (device data,
    never read on the host), rope_cos_sin [Smax,Dr] float32 (row p = cos(p theta_k) for k < Dr/2, then sin).
    out: optional [B,S,H,Dc] T for attn_latent. in_place: write the new rows into past_cache itself and
    return it as present_cache (else present_cache is a copy). num_splits overrides the split rule.
    Out-of-contract calls (cache_seqlens[b] + S > Smax) never touch memory outside the cache; their
    results are undefined.

    Contract version 2: page_size > 0 makes past_cache a pool [P, page_size, Dc+Dr] addressed through
    block_table [B, max_pages] int32 (device data); kv_cache_dtype 1 (FP8) makes past_cache the e4m3 codes
    [P, rows, Dc] float8_e4m3fn, with past_scale [P, rows, ceil(Dc/128)] float32 and past_rope [P, rows, Dr] T
    (contiguous FP8: P = B, rows = Smax). Page ids outside [0, P) are never dereferenced (their rows are
    neither read nor written: results undefined).
    """
    layout = page_size != 0 or kv_cache_dtype != KV_CACHE_DTYPE_MODEL
    dims = _check_args(q_latent, q_pe, kv_latent, k_pe, past_cache, cache_seqlens, rope_cos_sin, out, layout)
    kernel_smax, num_pages, max_pages = dims.max_seq_len, 0, 0
    if layout:
        dims, kernel_smax, num_pages = _check_cache(dims, past_cache, rope_cos_sin, block_table, past_scale,
                                                    past_rope, page_size, kv_cache_dtype)
        max_pages = block_table.shape[1] if page_size else 0
    fp8 = kv_cache_dtype == KV_CACHE_DTYPE_FP8
    plan = plan_for(dims, q_latent.device, num_splits)
    planes = [past_cache] + ([past_scale, past_rope] if fp8 else [])
    present = [t if in_place else t.clone() for t in planes]  # cache [B,Smax,Dc+Dr] or pool planes
    attn = out if out is not None else torch.empty_like(q_latent)  # [B, S, H, Dc]
    if dims.batch * dims.new_tokens * dims.num_heads == 0:
        return (attn, *present)
    fam = plan.family
    rows = dims.new_tokens * dims.num_heads  # M rows per sequence
    workspace = torch.empty(plan.workspace_bytes, dtype=torch.uint8, device=q_latent.device)
    q_rot = workspace[:dims.batch * rows * dims.rope_dim * q_latent.element_size()].view(q_latent.dtype)
    if plan.num_splits > 1:
        o_part = workspace[plan.o_part_offset:plan.lse_offset].view(torch.float32)  # [B*M*splits*Dc]
        lse = workspace[plan.lse_offset:].view(torch.float32)  # [B*M*splits]
    else:
        o_part = lse = q_rot  # unused by the kernel when num_splits == 1
    cache = present[0].view(torch.uint8) if fp8 else present[0]  # the kernels read and write e4m3 codes as bytes
    # Cache arguments: None in contract version 1 (constexpr there, as in the AOT images); a contiguous pool's
    # block table is never read (cache_seqlens stands in); the scale and rope planes only exist for FP8.
    cache_args = (block_table if page_size else cache_seqlens, present[1] if fp8 else None,
                  present[2] if fp8 else None, num_pages, max_pages, page_size) if layout else (None,) * 6
    mode = (int(layout), kv_cache_dtype)

    rope_append.mla_rope_append_kernel[plan.rope_grid](
        q_pe, kv_latent, k_pe, cache, cache_seqlens, rope_cos_sin, q_rot,
        dims.new_tokens, dims.num_heads, kernel_smax, *cache_args,
        **kernel_constexprs("rope_append", fam, 0, dims.dtype, *mode), num_warps=ROPE_NUM_WARPS,
        num_stages=1, enable_fp_fusion=FP_FUSION)
    attention.mla_attention_kernel[plan.attn_grid](
        q_latent, q_rot, cache, cache_seqlens, attn, o_part, lse, float(softmax_scale),
        dims.new_tokens, dims.num_heads, kernel_smax, plan.num_splits, *cache_args,
        **kernel_constexprs("attention", fam, plan.block_m, dims.dtype, *mode), num_warps=plan.attn_num_warps,
        num_stages=fam.num_stages, enable_fp_fusion=FP_FUSION)
    if plan.num_splits > 1:
        combine.mla_combine_kernel[plan.combine_grid](o_part, lse, attn, plan.num_splits,
                                                      **kernel_constexprs("combine", fam, 0, dims.dtype),
                                                      num_warps=COMBINE_NUM_WARPS, num_stages=1,
                                                      enable_fp_fusion=FP_FUSION)
    return (attn, *present)
