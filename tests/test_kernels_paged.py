"""The Triton kernels with contract-2 caches (paged pools, FP8 rows) against float64, under the Triton interpreter
on the CPU (conftest.py) or on a GPU.

Each case builds a pool inside NaN guard pages (tests/paged_reference.py): every row NaN except each sequence's
valid rows, written through a shuffled block table whose sequences' pages interleave and whose unused slots hold
2147480000. The kernels run in place on the pool, then: attention vs the float64 reference on the gathered
contiguous view (FP8: on the dequantized rows, with the new tokens' c_kv quantized and dequantized as the cache
stores them), every output finite, the new rows vs the reference (FP8 codes and scales identical to the torch
transcription of the scale rule), and every other pool row and both guards bit-identical.
"""

from __future__ import annotations

import pytest
import torch

from mla_export.run.compare import compare, tolerance_for
from mla_export.model.ops import mla_attention_reference

from paged_reference import (GARBAGE_PAGE, GUARD_PAGES, Pool, dequantize_rows, gather, int_view, new_row_places,
                             quantize_rows, shuffled_table)
from test_kernels import DEEPSEEK, DEVICE, ON_GPU, TINY, make_case


@pytest.fixture(scope="module", autouse=True)
def _kernels_can_run():
    if not ON_GPU:
        from mla_export.kernels.attention.api import interpreting

        assert interpreting(), "TRITON_INTERPRET=1 must be set before triton is imported (tests/conftest.py does)"


def build(batch, new_tokens, heads, dims, lens, page, max_pages, dtype, fp8, seed=0, spare=3):
    """(op inputs, pool, block table, rows per page). page 0: the contiguous layout (pool page b = sequence b,
    max_pages rows per sequence)."""
    d_c, d_r = dims
    rows = page or max_pages
    smax = rows * (max_pages if page else 1)
    args = make_case(batch, new_tokens, heads, dims, lens, smax, dtype, seed)
    g = torch.Generator().manual_seed(seed + 1)
    if page:
        table, num_pages = shuffled_table(lens, new_tokens, page, max_pages, spare, g)
    else:
        table, num_pages = torch.arange(batch, dtype=torch.int32)[:, None], batch
    pool = Pool(num_pages, rows, d_c, d_r, dtype, fp8, DEVICE)
    cache = args[4]  # [B, Smax, Dc+Dr], NaN past each length
    for b, n in enumerate(lens):
        for j in range(-(-n // rows)):
            pool.write(int(table[b, j]), cache[b, j * rows:min(n, (j + 1) * rows)])
    return args, pool, table, rows


def run(args, pool, table, rows, page, fp8, num_splits, scale):
    from mla_export.kernels import mla_attention_triton

    q_latent, q_pe, kv_latent, k_pe, _, seqlens, cos_sin = [t.to(DEVICE) for t in args]
    out = torch.full_like(q_latent, float("nan"))
    planes = pool.planes
    result = mla_attention_triton(q_latent, q_pe, kv_latent, k_pe, planes[0], seqlens, cos_sin, scale, out=out,
                                  num_splits=num_splits, in_place=True, block_table=table.to(DEVICE),
                                  past_scale=planes[1] if fp8 else None, past_rope=planes[2] if fp8 else None,
                                  page_size=page, kv_cache_dtype=int(fp8))
    assert result[0] is out and all(p is q for p, q in zip(result[1:], planes)) and len(result) == 1 + len(planes)
    return out.cpu()


def reference(args, pool, table, lens, fp8, scale):
    """(attn float64, present rows in T [B, Smax, Dc+Dr]) on the gathered contiguous view."""
    q_latent, q_pe, kv_latent, k_pe, _, seqlens, cos_sin = args
    new_tokens = q_latent.shape[1]
    contiguous = gather(pool, table, lens, new_tokens)  # [B, Smax, Dc+Dr] float64
    kv = dequantize_rows(*quantize_rows(kv_latent)) if fp8 else kv_latent.double()  # as the cache stores it
    ref_attn, _ = mla_attention_reference(q_latent.double(), q_pe.double(), kv, k_pe.double(), contiguous, seqlens,
                                          cos_sin.double(), scale)
    _, ref_present = mla_attention_reference(q_latent, q_pe, kv_latent, k_pe, contiguous.to(q_latent.dtype), seqlens,
                                             cos_sin, scale)  # rotation in float32, rows in T
    return ref_attn, ref_present


def check_pool(pool, before, table, lens, new_tokens, rows, ref_present, kv_latent, dtype):
    """New rows vs the reference; every other row of every plane, guards included, bit-identical."""
    d_c = kv_latent.shape[-1]
    atol, rtol = tolerance_for(str(dtype).removeprefix("torch."))
    written = torch.zeros(pool.buffers[0].shape[:2], dtype=torch.bool)  # [guard+P+guard, rows]
    for b, i, page_id, row in new_row_places(table, lens, new_tokens, rows):
        written[GUARD_PAGES + page_id, row] = True
        want = ref_present[b, lens[b] + i]  # [Dc+Dr] T
        if pool.fp8:
            codes, scales = quantize_rows(kv_latent[b, i])
            # Exact: the kernel promises the contract's quantization of the same T values.
            assert torch.equal(int_view(pool.planes[0][page_id, row].cpu()), int_view(codes)), (b, i, "codes")
            assert torch.equal(int_view(pool.planes[1][page_id, row].cpu()), int_view(scales)), (b, i, "scales")
            got = compare(f"rope[{b},{i}]", pool.planes[2][page_id, row].cpu(), want[d_c:], atol, rtol)
        else:
            got = compare(f"row[{b},{i}]", pool.planes[0][page_id, row].cpu(), want, atol, rtol)
        assert got.passed, got
    for k, (old, buffer) in enumerate(zip(before, pool.buffers)):
        now = int_view(buffer).cpu()
        assert torch.equal(now[~written], old.cpu()[~written]), f"plane {k}: a row the call must not write changed"
    return written


# (B, S, H, dims, cache lengths, page (0: contiguous), max_pages (contiguous: Smax), dtype, fp8, num_splits)
CASES = [
    (4, 1, 4, TINY, [0, 15, 16, 40], 16, 4, torch.float32, False, None),  # empty; decode at row page-1; new page
    (2, 7, 4, TINY, [60, 3], 64, 2, torch.float16, False, 3),  # prefill crossing a page boundary
    (3, 1, 16, DEEPSEEK, [63, 1, 130], 64, 3, torch.float16, False, 5),
    (2, 33, 16, DEEPSEEK, [5, 40], 16, 5, torch.float32, False, 2),  # prefill over several pages
    (4, 1, 4, TINY, [0, 15, 16, 40], 16, 4, torch.float32, True, None),
    (2, 7, 4, TINY, [60, 3], 64, 2, torch.float16, True, 3),
    (3, 1, 16, DEEPSEEK, [63, 1, 130], 64, 3, torch.float16, True, 5),
    (2, 33, 16, DEEPSEEK, [5, 40], 16, 5, torch.float32, True, 2),
    (3, 2, 4, TINY, [0, 9, 30], 0, 32, torch.float32, True, 2),  # contiguous FP8
    (2, 1, 16, DEEPSEEK, [100, 7], 0, 112, torch.float16, True, None),
    (3, 1, 4, TINY, [63, 64, 65], 64, 2, torch.float16, False, 40),  # more splits than blocks
]


def _case_id(c):
    return (f"B{c[0]}-S{c[1]}-H{c[2]}-Dc{c[3][0]}-page{c[5]}x{c[6]}-{str(c[7])[6:]}-{'fp8' if c[8] else 'model'}"
            f"-splits{c[9]}")


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_paged_and_fp8_kernels_match_reference(case):
    batch, new_tokens, heads, dims, lens, page, max_pages, dtype, fp8, splits = case
    args, pool, table, rows = build(batch, new_tokens, heads, dims, lens, page, max_pages, dtype, fp8)
    before = pool.snapshot()
    scale = (dims[0] + dims[1]) ** -0.5
    ref_attn, ref_present = reference(args, pool, table, lens, fp8, scale)
    attn = run(args, pool, table, rows, page, fp8, splits, scale)
    assert torch.isfinite(attn).all(), "an output element was not written (NaN left) or is not finite"
    result = compare("attn_latent", attn, ref_attn, *tolerance_for(str(dtype).removeprefix("torch.")))
    assert result.passed, result
    check_pool(pool, before, table, lens, new_tokens, rows, ref_present, args[2], dtype)


@pytest.mark.parametrize("fp8", [False, True], ids=["model", "fp8"])
def test_paged_equals_contiguous_bit_for_bit(fp8):
    """The paged kernels do the contiguous kernels' arithmetic in the same order (BLOCK_N divides the page; only
    addresses differ, split_kv.py), so outputs and stored rows are identical, not merely close."""
    lens, new_tokens, page, max_pages = [17, 40, 2], 3, 16, 3
    args, paged, table, rows = build(3, new_tokens, 4, TINY, lens, page, max_pages, torch.float16, fp8)
    _, contiguous, identity, smax = build(3, new_tokens, 4, TINY, lens, 0, page * max_pages, torch.float16, fp8)
    attn_paged = run(args, paged, table, rows, page, fp8, 2, 0.1)
    attn_contiguous = run(args, contiguous, identity, smax, 0, fp8, 2, 0.1)
    assert torch.equal(int_view(attn_paged), int_view(attn_contiguous))
    for b, i, page_id, row in new_row_places(table, lens, new_tokens, page):
        pos = lens[b] + i
        for plane_p, plane_c in zip(paged.planes, contiguous.planes):
            assert torch.equal(int_view(plane_p[page_id, row]), int_view(plane_c[b, pos])), (b, i)


@pytest.mark.parametrize("fp8", [False, True], ids=["model", "fp8"])
def test_page_ids_outside_the_pool_are_never_dereferenced(fp8):
    """Out of contract: ids -1, P and 2147480000 among the slots sequence 1 needs. Nothing outside the pool is
    read or written (guards bit-identical), that sequence's rows are not written anywhere, and the other
    sequences are unaffected (their attention and rows checked as usual)."""
    lens, new_tokens, page, max_pages = [20, 40, 5], 2, 16, 3
    args, pool, table, rows = build(3, new_tokens, 4, TINY, lens, page, max_pages, torch.float32, fp8)
    ref_attn, ref_present = reference(args, pool, table, lens, fp8, 0.1)
    bad = table.clone()
    bad[1, :3] = torch.tensor([-1, pool.planes[0].shape[0], GARBAGE_PAGE], dtype=torch.int32)  # rows 0..41 of seq 1
    before = pool.snapshot()
    attn = run(args, pool, bad, rows, page, fp8, 2, 0.1)
    keep = [0, 2]
    result = compare("attn_latent", attn[keep], ref_attn[keep], *tolerance_for("float32"))
    assert result.passed, result
    sub = [lens[b] for b in keep]
    check_pool(pool, before, bad[keep], sub, new_tokens, rows, ref_present[keep], args[2][keep], torch.float32)


def _edge_rows(d_c: int, dtype: torch.dtype) -> torch.Tensor:
    """[N, Dc] c_kv rows that hit the scale rule's and the e4m3 rounding's edges, per tile of min(Dc, 128)."""
    tile = min(d_c, 128)
    g = torch.Generator().manual_seed(7)
    base = torch.randn(tile, generator=g, dtype=torch.float64)
    rows = [torch.zeros(tile), torch.full((tile,), -0.0)]  # all-zero tiles: scale 2^-13
    for k in (-3, 0, 5):  # amax exactly 448 * 2^k, with the value grid's ties at that scale
        ties = torch.tensor([448.0, -448.0, 1.0625, -1.1875, 3 * 2.0 ** -10, -(2.0 ** -10), 2.0 ** -10, 0.0])
        rows.append(torch.cat([ties, base[ties.numel():]]) * 2.0 ** k)
    finfo = torch.finfo(dtype)
    rows.append(torch.full((tile,), finfo.tiny) * torch.linspace(-1, 1, tile))  # values at the smallest normal
    rows.append((base / base.abs().max()) * finfo.tiny * 2.0 ** -3)  # subnormals of the model dtype
    rows.append(torch.cat([torch.tensor([448.0]), base[1:] * 1e-3]))  # codes in e4m3's subnormal range
    for k in (-30, -12, 0, 7 if dtype == torch.float16 else 9):  # amax just above and just below 448 * 2^k
        rows.append(torch.cat([torch.tensor([448.0 * 2.0 ** k * (1 + 2.0 ** -9)]), base[1:]]))
        rows.append(torch.cat([torch.tensor([-448.0 * 2.0 ** k * (1 - 2.0 ** -9)]), base[1:]]))
    for k in (-20, -5, 3, 12):
        rows.append(base * 10.0 ** (k / 4))
    out = torch.stack([r.double() for r in rows]).to(dtype)  # [N, tile]
    return out.repeat(1, d_c // tile) * torch.linspace(0.5, 1, d_c).to(dtype)[None, :] ** (d_c > tile)


@pytest.mark.parametrize("dims", [TINY, DEEPSEEK], ids=["Dc32", "Dc512"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_fp8_append_codes_and_scales_equal_the_scale_rule(dims, dtype):
    """The RoPE-append kernel's codes and scales are those of the torch transcription, bit for bit, on edge rows
    (all-zero and -0.0 tiles, amax exactly 448 * 2^k and just around it, ties, subnormals). bfloat16: only the
    appended rows are checked (the interpreter's bf16 dot makes the attention output meaningless there)."""
    kv = _edge_rows(dims[0], dtype)  # [N, Dc]
    count = kv.shape[0]
    args, pool, table, rows = build(1, count, 1, dims, [3], 16, -(-(count + 3) // 16), dtype, True)
    args = list(args)
    args[2] = kv[None]  # [1, N, Dc]
    run(args, pool, table, rows, 16, True, 1, 0.1)
    codes, scales = quantize_rows(kv)
    for i, (_, _, page_id, row) in enumerate(new_row_places(table, [3], count, 16)):
        assert torch.equal(int_view(pool.planes[0][page_id, row].cpu()), int_view(codes[i])), (i, kv[i, :8])
        assert torch.equal(int_view(pool.planes[1][page_id, row].cpu()), int_view(scales[i])), (i, scales[i])
    assert (scales[0] == 2.0 ** -13).all() and (int_view(codes[1]) == 0x80).all()  # the oracle's own edges


def test_cache_layout_arguments_are_checked():
    from mla_export.kernels import mla_attention_triton

    args, pool, table, _ = build(2, 1, 4, TINY, [3, 20], 16, 2, torch.float32, True)
    ops = [t.to(DEVICE) for t in args]
    common = dict(block_table=table.to(DEVICE), past_scale=pool.planes[1], past_rope=pool.planes[2], page_size=16,
                  kv_cache_dtype=1)
    cases = [(dict(page_size=12), ValueError, "page_size must be 0"),
             (dict(kv_cache_dtype=2), ValueError, "kv_cache_dtype must be"),
             (dict(block_table=table.long().to(DEVICE)), TypeError, "block_table must be int32"),
             (dict(block_table=table[:1].to(DEVICE)), ValueError, "block_table must be [B=2"),
             (dict(past_scale=pool.planes[1][..., :0]), ValueError, "past_scale must have shape"),
             (dict(past_rope=None), TypeError, "past_rope must be a torch.Tensor"),
             (dict(page_size=32), ValueError, "page_size=32")]
    for change, error, text in cases:
        with pytest.raises(error, match=text.replace("[", r"\[")):
            mla_attention_triton(*ops[:4], pool.planes[0], *ops[5:], 0.1, **{**common, **change})
    with pytest.raises(ValueError, match="past_scale is for the FP8 cache only"):
        mla_attention_triton(*ops[:4], pool.planes[0], *ops[5:], 0.1, **{**common, "kv_cache_dtype": 0})


@pytest.mark.gpu
@pytest.mark.parametrize("fp8", [False, True], ids=["model", "fp8"])
@pytest.mark.parametrize("page", [64, 16])
def test_paged_kernels_on_gpu_bfloat16_real_sizes(page, fp8):
    case = (8, 1, 128, DEEPSEEK, [4096, 1, 4000, 63, 64, 65, 2048, 300], page, 4160 // page, torch.bfloat16, fp8,
            None)
    test_paged_and_fp8_kernels_match_reference(case)


@pytest.mark.parametrize("fp8", [False, True], ids=["model", "fp8"])
def test_kernels_match_the_official_references(fp8):
    """Against model/cache_ops.py's references (the eager model's and validate's), float64 on the same pool:
    attention within tolerance, FP8 codes and scales of the new rows identical; the reference's quantizer
    also equals this file's oracle on the edge rows."""
    from mla_export.model.cache_ops import (mla_attention_fp8_cache_reference, mla_attention_paged_reference,
                                            quantize_cache_rows)

    lens, new_tokens, page = [5, 40, 17], 3, 16
    args, pool, table, rows = build(3, new_tokens, 4, TINY, lens, page, 4, torch.float16, fp8)
    wide = [t.double() for t in args[:4]]
    seqlens, cos_sin = args[5], args[6].double()
    planes = [p.cpu() for p in pool.planes]
    if fp8:
        ref = mla_attention_fp8_cache_reference(*wide, planes[0], seqlens, cos_sin, table, planes[1],
                                                planes[2].double(), 0.1, page)
        _, codes, scales, _ = mla_attention_fp8_cache_reference(*args[:4], planes[0], seqlens, args[6], table,
                                                                planes[1], planes[2], 0.1, page)
    else:
        ref = mla_attention_paged_reference(*wide, planes[0].double(), seqlens, cos_sin, table, 0.1)
    attn = run(args, pool, table, rows, page, fp8, None, 0.1)
    result = compare("attn_latent", attn, ref[0], *tolerance_for("float16"))
    assert result.passed, result
    if fp8:
        for b, i, page_id, row in new_row_places(table, lens, new_tokens, page):
            assert torch.equal(int_view(pool.planes[0][page_id, row].cpu()), int_view(codes[page_id, row])), (b, i)
            assert torch.equal(int_view(pool.planes[1][page_id, row].cpu()), int_view(scales[page_id, row])), (b, i)
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            edges = _edge_rows(512, dtype)
            official, mine = quantize_cache_rows(edges), quantize_rows(edges)
            assert all(torch.equal(int_view(o), int_view(m)) for o, m in zip(official, mine)), dtype
