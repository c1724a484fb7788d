"""The Triton kernels against the float64 reference: on the CPU under the Triton interpreter, or on a GPU.

Without CUDA, conftest.py sets TRITON_INTERPRET=1 for the session before triton is first imported, so
the kernels run on CPU tensors under the interpreter. bf16 `tl.dot` is wrong under the interpreter (seen: errors of 1e10 on a trivial product), so the
bf16 checks and the real-size sweeps are GPU tests (`@pytest.mark.gpu`, skipped without CUDA); on a
GPU machine the whole sweep runs through the JIT-compiled kernels on CUDA tensors.

Every case poisons cache rows at and past each sequence's length (and the tail) with NaN, pre-fills
the output with NaN, and checks: attention vs the float64 reference, every output element finite,
the new cache rows vs the reference, every other cache row bit-identical.
"""

from __future__ import annotations

import re

import pytest
import torch

from mla_export.run.compare import compare, tolerance_for
from mla_export.kernels.attention import plan
from mla_export.model.ops import mla_attention_reference

ON_GPU = torch.cuda.is_available()

DEVICE = "cuda" if ON_GPU else "cpu"
DEEPSEEK = (512, 64)  # (Dc, Dr)
TINY = (32, 8)
_BITS = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32}


@pytest.fixture(scope="module", autouse=True)
def _kernels_can_run():
    """Without a GPU the kernels must have been decorated under the interpreter (conftest.py sets it)."""
    if not ON_GPU:
        from mla_export.kernels.attention.api import interpreting

        assert interpreting(), "TRITON_INTERPRET=1 must be set before triton is imported (tests/conftest.py does)"


def make_case(batch, new_tokens, heads, dims, lens, max_seq_len, dtype, seed=0):
    """Random inputs; cache rows at/after each length poisoned with NaN."""
    d_c, d_r = dims
    g = torch.Generator().manual_seed(seed)
    q_latent = torch.randn(batch, new_tokens, heads, d_c, generator=g).to(dtype)  # [B, S, H, Dc]
    q_pe = torch.randn(batch, new_tokens, heads, d_r, generator=g).to(dtype)  # [B, S, H, Dr]
    kv_latent = torch.randn(batch, new_tokens, d_c, generator=g).to(dtype)  # [B, S, Dc]
    k_pe = torch.randn(batch, new_tokens, d_r, generator=g).to(dtype)  # [B, S, Dr]
    cache = torch.randn(batch, max_seq_len, d_c + d_r, generator=g).to(dtype)  # [B, Smax, Dc+Dr]
    for b, n in enumerate(lens):
        cache[b, n:] = float("nan")
    seqlens = torch.tensor(lens, dtype=torch.int32)  # [B]
    angles = torch.arange(max_seq_len, dtype=torch.float64)[:, None] * torch.rand(d_r // 2, generator=g,
                                                                                  dtype=torch.float64)
    cos_sin = torch.cat([angles.cos(), angles.sin()], dim=-1).float()  # [Smax, Dr]
    return q_latent, q_pe, kv_latent, k_pe, cache, seqlens, cos_sin


def check(batch, new_tokens, heads, dims, lens, max_seq_len, dtype, num_splits, seed=0):
    """Run the kernels on one case and check everything the module docstring lists."""
    from mla_export.kernels import mla_attention_triton

    args = make_case(batch, new_tokens, heads, dims, lens, max_seq_len, dtype, seed)
    q_latent, q_pe, kv_latent, k_pe, cache, seqlens, cos_sin = args
    past = cache.clone()
    scale = (dims[0] + dims[1]) ** -0.5
    out = torch.full_like(q_latent, float("nan"), device=DEVICE)  # [B, S, H, Dc]
    on_device = [t.to(DEVICE) for t in args]
    attn, present = mla_attention_triton(*on_device, scale, out=out, num_splits=num_splits)
    assert attn is out
    attn, present = attn.cpu(), present.cpu()
    # Exact (as bits, so NaN rows compare too): inputs the kernels must leave untouched.
    assert torch.equal(on_device[4].cpu().view(_BITS[dtype]), past.view(_BITS[dtype])), "input cache changed"
    assert torch.equal(cache.view(_BITS[dtype]), past.view(_BITS[dtype])), "past_cache changed without in_place"

    wide = [t.double() for t in (q_latent, q_pe, kv_latent, k_pe, cache)]
    ref_attn, _ = mla_attention_reference(*wide, seqlens, cos_sin.double(), scale)  # [B, S, H, Dc] float64
    _, ref_present = mla_attention_reference(*args, scale)  # present in dtype, rotation in float32
    assert torch.isfinite(attn).all(), "an output element was not written (NaN left) or is not finite"
    atol, rtol = tolerance_for(str(dtype).removeprefix("torch."))
    result = compare("attn_latent", attn, ref_attn, atol, rtol)
    assert result.passed, result
    for b, n in enumerate(lens):
        new = slice(n, n + new_tokens)
        got = compare(f"cache[{b}] new rows", present[b, new], ref_present[b, new], atol, rtol)
        assert got.passed, got
        bits, ref_bits = present[b].view(_BITS[dtype]), past[b].view(_BITS[dtype])  # [Smax, Dc+Dr]
        # Exact: rows the step must not touch are copied through bit for bit.
        assert torch.equal(bits[:n], ref_bits[:n]), f"sequence {b}: rows before {n} changed"
        assert torch.equal(bits[n + new_tokens:], ref_bits[n + new_tokens:]), f"sequence {b}: rows past the new ones"
    return result


# (B, S, H, dims, cache lengths, Smax, dtype, num_splits): a representative sweep, not a product.
# Cache lengths cover {1, 63, 64, 65, 300}; S covers {1, 2, 7, 33}; splits include more splits
# than cache blocks (BLOCK_N = 16: 300 rows are 19 blocks; 40 splits leave empty ones).
CASES = [
    (3, 1, 16, DEEPSEEK, [1, 64, 300], 320, torch.float16, 1),
    (3, 1, 16, DEEPSEEK, [63, 300, 65], 320, torch.float16, 40),
    (1, 1, 128, DEEPSEEK, [300], 304, torch.float32, 3),
    (1, 1, 128, DEEPSEEK, [65], 80, torch.float16, None),
    (3, 2, 16, DEEPSEEK, [63, 1, 300], 320, torch.float32, 2),
    (3, 2, 128, DEEPSEEK, [1, 64, 65], 80, torch.float16, 5),
    (1, 7, 16, DEEPSEEK, [64], 80, torch.float16, 4),
    (1, 33, 16, DEEPSEEK, [65], 100, torch.float16, 1),
    (1, 33, 16, DEEPSEEK, [0], 40, torch.float32, 2),
    (3, 1, 4, TINY, [1, 64, 65], 80, torch.float32, 1),
    (3, 7, 4, TINY, [63, 1, 300], 320, torch.float16, 7),
    (1, 33, 4, TINY, [1], 40, torch.float32, 50),
    (1, 2, 4, TINY, [300], 302, torch.float16, None),
    (3, 1, 128, DEEPSEEK, [300, 1, 63], 320, torch.float32, None),
    (3, 7, 16, DEEPSEEK, [65, 300, 1], 320, torch.float32, 3),
    (1, 33, 128, DEEPSEEK, [63], 100, torch.float16, 1),
    (1, 2, 16, DEEPSEEK, [64], 70, torch.float16, 20),
    (2, 1, 4, TINY, [0, 300], 301, torch.float16, 2),  # an empty cache; a cache filled to its last row
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"B{c[0]}-S{c[1]}-H{c[2]}-Dc{c[3][0]}-{c[5]}-"
                         f"{str(c[6])[6:]}-splits{c[7]}")
def test_kernels_match_reference(case):
    check(*case)


def test_in_place_updates_the_given_cache():
    from mla_export.kernels import mla_attention_triton

    args = [t.to(DEVICE) for t in make_case(2, 2, 4, TINY, [3, 10], 16, torch.float32)]
    _, ref_present = mla_attention_reference(*args[:4], args[4].clone(), *args[5:], 0.1)
    cache = args[4]
    attn, present = mla_attention_triton(*args, 0.1, in_place=True)
    assert present is cache
    poisoned = torch.isnan(ref_present)  # rows past each sequence's new ones: NaN by design, kept as they were
    assert poisoned.any() and not poisoned[0, :5].any()  # the mask below allows NaN only there
    result = compare("present", present, ref_present, *tolerance_for("float32"), expected_nonfinite=poisoned)
    assert result.passed, result


def test_out_of_contract_call_writes_nothing_outside_the_cache():
    """cache_seqlens[b] + S > Smax is out of contract: its results are undefined, but no write may land
    past row Smax-1 (here: in the next sequence's rows, or past the cache in the same allocation)."""
    from mla_export.kernels import mla_attention_triton

    smax, new_tokens = 16, 3
    args = [t.to(DEVICE) for t in make_case(2, new_tokens, 4, TINY, [smax - 1, 2], smax, torch.float32)]
    buffer = torch.randn(3, smax, 40, device=DEVICE)  # [3, Smax, Dc+Dr]: sequences 0, 1, then a guard
    buffer[:2] = args[4]
    before = buffer.clone()
    args[4] = buffer[:2]  # a contiguous view: the guard sequence lies right after the cache
    mla_attention_triton(*args, 0.1, in_place=True)
    bits, old = buffer.view(torch.int32), before.view(torch.int32)  # exact: memory no write may touch
    assert torch.equal(bits[2], old[2]), "a write landed past the cache"
    assert torch.equal(bits[0, :smax - 1], old[0, :smax - 1]), "sequence 0: rows before its new ones changed"
    assert not torch.equal(bits[0, smax - 1], old[0, smax - 1]), "sequence 0: its one in-cache new row not written"
    assert torch.equal(bits[1, :2], old[1, :2]) and torch.equal(bits[1, 2 + new_tokens:], old[1, 2 + new_tokens:])


def test_empty_batch_returns_without_launching():
    from mla_export.kernels import mla_attention_triton

    args = [t.to(DEVICE) for t in make_case(0, 1, 4, TINY, [], 16, torch.float32)]
    attn, present = mla_attention_triton(*args, 0.1)
    assert attn.shape == (0, 1, 4, 32) and present.shape == (0, 16, 40)


def _bad(what):
    args = [t.to(DEVICE) for t in make_case(1, 1, 4, TINY, [3], 16, torch.float32)]
    kwargs = {}
    if what == "dtype":
        args[1] = args[1].half()
    elif what == "seqlens":
        args[5] = args[5].long()
    elif what == "table":
        args[6] = args[6].double()
    elif what == "shape":
        args[2] = args[2][..., :16]
    elif what == "table_rows":
        args[6] = args[6][:8]
    elif what == "contiguous":
        args[0] = args[0].transpose(2, 3).contiguous().transpose(2, 3)
    elif what == "out":
        kwargs["out"] = torch.empty(1, 1, 4, 16, device=DEVICE)
    elif what == "tensor":
        args[3] = args[3].tolist()
    return args, kwargs


@pytest.mark.parametrize("what, error, text", [
    ("dtype", TypeError, "q_pe must have q_latent's dtype"),
    ("seqlens", TypeError, "cache_seqlens must be int32"),
    ("table", TypeError, "rope_cos_sin must be float32"),
    ("shape", ValueError, "kv_latent must have shape [1, 1, 32]"),
    ("table_rows", ValueError, "rope_cos_sin must be [Smax=16, Dr=8]"),
    ("contiguous", ValueError, "q_latent must be contiguous"),
    ("out", ValueError, "out must have shape"),
    ("tensor", TypeError, "k_pe must be a torch.Tensor"),
])
def test_bad_arguments_are_refused_with_a_message(what, error, text):
    from mla_export.kernels import mla_attention_triton

    args, kwargs = _bad(what)
    with pytest.raises(error, match=re.escape(text)):
        mla_attention_triton(*args, 0.1, **kwargs)


def test_cuda_implementation_is_registered():
    import mla_export.model.ops  # noqa: F401  (registers the op and its CUDA implementation)

    assert torch._C._dispatch_has_kernel_for_dispatch_key("mla::mla_attention", "CUDA")


def test_split_rule_uses_only_host_shapes():
    dims = plan.Dims(1, 1, 128, 512, 64, 65537, "bfloat16")
    p = plan.make_plan(dims, num_sms=132)
    assert p.block_m == 32 and p.m_blocks == 4 and p.num_splits == 33  # ceil(132 / 4) SM-filling splits
    assert plan.make_plan(plan.Dims(64, 1, 128, 512, 64, 4097, "bfloat16"), 132).num_splits == 1
    assert plan.make_plan(plan.Dims(1, 1, 16, 512, 64, 64, "bfloat16"), 132).num_splits == 1  # one block
    assert plan.make_plan(plan.Dims(1, 1, 16, 512, 64, 1 << 20, "bfloat16"), 132).num_splits == plan.MAX_SPLITS
    assert p.workspace_bytes >= p.lse_offset + 128 * 33 * 4 > p.o_part_offset + 128 * 33 * 512 * 4 - 1


# GPU checks (owed where no GPU is lent): bf16, real sizes, the custom op's CUDA implementation.
GPU_CASES = [
    (3, 1, 16, DEEPSEEK, [1, 63, 300], 320, torch.bfloat16, None),
    (3, 2, 128, DEEPSEEK, [64, 65, 300], 320, torch.bfloat16, 4),
    (1, 7, 16, TINY, [65], 80, torch.bfloat16, 3),
    (8, 1, 128, DEEPSEEK, [4096, 1, 4000, 63, 64, 65, 2048, 300], 4097, torch.bfloat16, None),
    (2, 8, 128, DEEPSEEK, [4000, 17], 4096, torch.float16, None),
    (1, 1, 128, DEEPSEEK, [65535], 65536, torch.bfloat16, None),
    (2, 512, 16, DEEPSEEK, [0, 700], 1300, torch.bfloat16, None),
]


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: f"B{c[0]}-S{c[1]}-H{c[2]}-Dc{c[3][0]}-{c[5]}-"
                         f"{str(c[6])[6:]}-splits{c[7]}")
def test_kernels_match_reference_on_gpu(case):
    check(*case)


@pytest.mark.gpu
def test_custom_op_runs_the_kernels_on_cuda():
    import mla_export.model.ops  # noqa: F401  (registers the CUDA implementation)

    args = [t.cuda() for t in make_case(2, 1, 16, DEEPSEEK, [5, 100], 128, torch.bfloat16)]
    attn, present = torch.ops.mla.mla_attention(*args, 16, 512, 64, 0.05)
    ref_attn, ref_present = mla_attention_reference(*[t.double() for t in args[:5]], args[5], args[6].double(), 0.05)
    result = compare("attn_latent", attn, ref_attn, *tolerance_for("bfloat16"))
    assert result.passed, result
    assert present.data_ptr() != args[4].data_ptr()
