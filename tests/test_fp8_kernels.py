"""The BlockFp8MatMul Triton kernels (mla_export/kernels/fp8) against float64 on the dequantized weights: on the CPU
under the Triton interpreter, both paths (native FP8 and weight-only), or on a GPU.

Without CUDA, conftest.py sets TRITON_INTERPRET=1 before triton is imported, so the kernels' own source runs on CPU
tensors. Seen under the interpreter (Triton 3.9): an FP8 `tl.dot` of e4m3 operands is exact (its products in
float32), but its float32 -> float8e4nv cast rounds wrongly at binade edges (0.499 -> 0.25), which is why the
kernel rounds to e4m3 itself before an exact cast; its bfloat16 `tl.dot` is wrong (the weight-only path then dots
the same bf16 values in float32, UPCAST_DOT: identical products, so the same sums up to their order) and its
float32 -> bfloat16 store truncates (38.48 -> 38.25) instead of rounding to nearest, so bf16 outputs get one ulp
under the interpreter and half an ulp on a GPU. The bf16 tensor-core dot itself and the real sizes are GPU tests.

Tolerances (fp8_reference.py), per output element, all bounds rather than fitted numbers:
    weight-only: rounding of the output to T (u_T |y|) + float32 accumulation (gamma_n sum |x||w|); the FP8 weight
                 and the activation are exact operands (e4m3 has 3 mantissa bits, every T holds them).
    native:      the same + the activation's e4m3 rounding, sum_k (2^-4 |x_k| + 2^-10 s_k) |w_k|.
A second native test pins the activation quantization itself: with DeepSeek's act_quant done by torch, the kernel
equals x_q @ W^T to accumulation error alone, 2^-4 relative being ~10^5 times that bound.
"""

from __future__ import annotations

import pytest
import torch

from mla_export.kernels.fp8 import plan as fp8_plan
from mla_export.run.compare import compare

import fp8_reference as ref

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
PATHS = ["weight_only", "native"]
# Unit roundoff of the output's rounding to T; the interpreter's bf16 store truncates (module docstring).
ROUNDING = {torch.float32: 2.0 ** -24, torch.float16: 2.0 ** -11,
            torch.bfloat16: 2.0 ** -8 if ON_GPU else 2.0 ** -7}
# The smallest positive subnormal of T: outputs below it round to 0 (an absolute part of the rounding).
TINY = {torch.float32: 2.0 ** -149, torch.float16: 2.0 ** -24, torch.bfloat16: 2.0 ** -133}


@pytest.fixture(scope="module", autouse=True)
def _kernels_can_run():
    if not ON_GPU:
        from mla_export.kernels.fp8.api import interpreting

        assert interpreting(), "TRITON_INTERPRET=1 must be set before triton is imported (tests/conftest.py does)"


def api():
    from mla_export.kernels.fp8 import api as fp8_api

    return fp8_api


def paths_here() -> list[str]:
    """The native path needs sm_89+ on a GPU; the interpreter runs both."""
    if ON_GPU and api().device_path(torch.device("cuda")) != "native":
        return ["weight_only"]
    return PATHS


def random_weight(shape, seed: int, spread: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """A quantized random weight; `spread` gives the blocks magnitudes 1e-3..1e3 (so every scale differs)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(*shape, generator=g).to(DEVICE)  # quantized where the kernel runs (GPU sizes are large)
    if spread:
        n, k = shape[-2:]
        blocks = 10.0 ** (6 * torch.rand(*ref.block_scales_like(n, k), generator=g) - 3)
        w = w * ref.expand_scales(blocks.to(DEVICE), n, k).float()
    return ref.quantize(w)


def check(x, q, s, path, out=None, **overrides):
    """Run the kernel on DEVICE and hold it to its path's bound; returns (output, comparison)."""
    x, q, s = (t.to(DEVICE) for t in (x, q, s))  # the float64 reference runs where the kernel does
    dims = api()._check_args(x, q, s, 128, None)[0]
    splits = fp8_plan.make_plan(dims, config=overrides.get("config")).splits
    got = api().block_fp8_matmul_triton(x, q, s, 128, path=path, out=None if out is None else out.to(DEVICE),
                                        **overrides).cpu()
    want = ref.reference(x, q, s).cpu()
    atol = ref.kernel_bound(x, q, s, splits, path == "native", ROUNDING[x.dtype], TINY[x.dtype]).cpu().numpy()
    result = compare("block_fp8_matmul", got, want, atol, ROUNDING[x.dtype])
    assert got.dtype == x.dtype and got.shape == want.shape
    assert result.passed, result
    return got, result


SHAPES = [  # (M, N, K): ragged N and K, exact blocks, one row, both configs, several row tiles
    (1, 200, 300), (5, 40, 64), (3, 128, 128), (16, 136, 257), (17, 130, 257), (70, 72, 200), (2, 8, 16),
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_float64_on_ragged_shapes(shape, dtype, path):
    if path not in paths_here():
        pytest.skip("native FP8 needs sm_89 or later")
    m, n, k = shape
    q, s = random_weight((n, k), seed=m * 1000 + n + k)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(k)).to(dtype)  # [M, K]
    check(x, q, s, path)


@pytest.mark.parametrize("config", ["decode", "prefill"])
def test_native_quantizes_activations_as_act_quant(config):
    """The e4m3 rounding of x / s (and s itself) is DeepSeek's act_quant, not merely within its bound: in the GEMM
    (decode) and in kernel 1, whose codes the GEMM reads (prefill)."""
    if "native" not in paths_here():
        pytest.skip("native FP8 needs sm_89 or later")
    q, s = random_weight((96, 300), seed=3)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(9, 300, generator=g) * torch.logspace(-3, 3, 300)  # [M, K]: blocks of mixed magnitudes
    x[2, :128] = 0.0  # an all-zero row block: s = 1e-30 / 448, quantized to zeros
    x[3, 5] = 1e-8  # far below its block's amax: an e4m3 subnormal (or zero)
    got = api().block_fp8_matmul_triton(x.to(DEVICE), q.to(DEVICE), s.to(DEVICE), path="native",
                                        config=config).cpu()
    xq, s_full = ref.act_quant(x)
    want = (xq * s_full) @ ref.dequantize(q, s).T
    atol = ref.accumulation_bound(xq * s_full, q, s).numpy() + 2.0 ** -149
    result = compare("native vs act_quant", got, want, atol, 2.0 ** -24)
    assert result.passed, result
    # and the quantization is visible: against the unquantized activations the error is far larger
    assert (got.double() - ref.reference(x, q, s)).abs().max() > 100 * atol.max()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_zero_tiny_and_large_scales_side_by_side(dtype, path):
    """Row block 0 has scale 1e-30 (its outputs ~1e-28: each must still be within rounding of float64), row block
    1 alternates 0 and 1e3 along K, row block 2 mixes tiny and large scales in its K-blocks."""
    if path not in paths_here():
        pytest.skip("native FP8 needs sm_89 or later")
    n, k = 300, 400
    g = torch.Generator().manual_seed(5)
    q = (torch.randn(n, k, generator=g) * 100).clamp(-448, 448).to(torch.float8_e4m3fn)
    s = torch.tensor([[1e-30, 1e-30, 1e-30, 1e-30], [0.0, 1e3, 0.0, 1e3], [1e-30, 1e3, 1e-30, 1.0]])
    x = torch.randn(4, k, generator=g).to(dtype)
    got, _ = check(x, q, s, path)
    assert torch.all(got[:, :128].double().abs() < 1e-20) and torch.any(got[:, :128] != 0)
    assert torch.all(torch.isfinite(got))


@pytest.mark.parametrize("path", PATHS)
def test_all_zero_scales_give_zeros(path):
    if path not in paths_here():
        pytest.skip("native FP8 needs sm_89 or later")
    q, s = random_weight((40, 200), seed=6)
    x = torch.randn(3, 200, generator=torch.Generator().manual_seed(6))
    got = api().block_fp8_matmul_triton(x.to(DEVICE), q.to(DEVICE), torch.zeros_like(s).to(DEVICE), path=path)
    assert torch.equal(got.cpu(), torch.zeros(3, 40))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_batched_weights(dtype, path):
    """G = 3 weights [G, N, K] with x [G, M, K] (W_UK^T / W_UV per head), each group its own scales."""
    if path not in paths_here():
        pytest.skip("native FP8 needs sm_89 or later")
    q, s = random_weight((3, 72, 160), seed=7)
    x = torch.randn(3, 5, 160, generator=torch.Generator().manual_seed(7)).to(dtype)  # [G, M, K]
    got, _ = check(x, q, s, path)
    assert got.shape == (3, 5, 72)


@pytest.mark.parametrize("path", PATHS)
def test_leading_dims_and_a_broadcast_group(path):
    """x [B, S, K] with a 2-D weight and with a [1, N, K] weight: y [B, S, N], the same values."""
    if path not in paths_here():
        pytest.skip("native FP8 needs sm_89 or later")
    q, s = random_weight((48, 64), seed=8)
    x = torch.randn(2, 3, 64, generator=torch.Generator().manual_seed(8)).half()  # [B, S, K]
    two_d, _ = check(x, q, s, path)
    three_d, _ = check(x, q[None], s[None], path)
    assert two_d.shape == (2, 3, 48) and torch.equal(two_d, three_d)


@pytest.mark.parametrize("config", ["decode", "prefill"])
def test_split_k_and_every_element_written(config):
    """Decode M = 1 with K = 1100 (9 K-blocks) splits K; the NaN-filled `out` shows that every element is written
    by the split path and by the unsplit one (K = 100), and two runs are bit-identical (no atomics)."""
    for k, split in ((1100, True), (100, False)):
        q, s = random_weight((40, k), seed=9)
        x = torch.randn(1, k, generator=torch.Generator().manual_seed(9)).half()
        dims = api()._check_args(x, q, s, 128, None)[0]
        assert (fp8_plan.make_plan(dims, config=config).splits > 1) == split
        out = torch.full((1, 40), float("nan"), dtype=torch.float16)
        first, _ = check(x, q, s, "weight_only", out=out, config=config)
        again = api().block_fp8_matmul_triton(x.to(DEVICE), q.to(DEVICE), s.to(DEVICE), path="weight_only",
                                              config=config).cpu()
        assert torch.equal(first, again)


def test_empty_rows_and_empty_k():
    q, s = random_weight((40, 64), seed=10)
    empty = api().block_fp8_matmul_triton(torch.zeros(0, 64, device=DEVICE), q.to(DEVICE), s.to(DEVICE))
    assert empty.shape == (0, 40)
    q0 = torch.zeros(40, 0, dtype=torch.float8_e4m3fn)
    zeros = api().block_fp8_matmul_triton(torch.zeros(3, 0, device=DEVICE), q0.to(DEVICE),
                                          torch.zeros(1, 0, device=DEVICE))
    assert torch.equal(zeros.cpu(), torch.zeros(3, 40))


def test_bad_arguments_are_refused_with_the_fix():
    q, s = random_weight((40, 64), seed=11)
    x = torch.randn(3, 64)
    cases = [
        (dict(x=x.to(torch.int32)), TypeError, "float32, float16 or bfloat16"),
        (dict(weight=q.float()), TypeError, "float8_e4m3fn"),
        (dict(scale_inv=s.half()), TypeError, "scale_inv must be float32"),
        (dict(scale_inv=s[:, :0]), ValueError, "one per 128x128 block"),
        (dict(x=torch.randn(3, 65)), ValueError, "K=64"),
        (dict(block_size=64), ValueError, "block_size must be 128"),
        (dict(weight=q[None].expand(2, 40, 64).contiguous(), scale_inv=s[None].expand(2, 1, 1).contiguous()),
         ValueError, "[G=2, M, K=64]"),
        (dict(x=torch.randn(64, 3).T), ValueError, "contiguous"),
    ]
    for change, error, text in cases:
        args = dict(x=x, weight=q, scale_inv=s, block_size=128) | change
        with pytest.raises(error, match=text.replace("[", r"\[")):
            api().block_fp8_matmul_triton(args["x"], args["weight"], args["scale_inv"], args["block_size"])


def test_plan_workspace_covers_every_smaller_call():
    """workspace_bytes(M) >= the workspace of every M' <= M (an engine sizes it once, at its profile's largest M);
    no split is empty; the grid covers every tile; the regions do not overlap."""
    for n, k, groups in ((576, 7168, 1), (7168, 18432, 1), (40, 1100, 1), (128, 512, 128), (1536, 7168, 1)):
        sizes = []
        for rows in range(0, 400):
            dims = fp8_plan.Fp8Dims(groups, rows, n, k, "bfloat16")
            p = fp8_plan.make_plan(dims)
            sizes.append(p.call_bytes)
            assert p.workspace_bytes >= max(sizes), (n, k, groups, rows)
            if rows:
                assert (p.splits - 1) * p.k_blocks_per_split < p.k_blocks <= p.splits * p.k_blocks_per_split
                assert p.gemm_grid == (p.m_tiles * p.n_tiles, p.splits, groups)
                assert p.m_tiles * p.config.block_m >= rows and p.n_tiles * p.config.block_n >= n
                assert p.config.name == ("decode" if rows <= fp8_plan.DECODE_MAX_ROWS else "prefill")
                if p.quant_first:  # codes [G*M, K] u8, then scales [G*M, k_blocks] f32, then partials
                    assert p.sx_offset >= groups * rows * k and p.partial_offset >= p.sx_offset + groups * rows * 4 \
                        * p.k_blocks
                assert p.call_bytes >= p.partial_offset + (4 * p.splits * groups * rows * n if p.splits > 1 else 0)
        assert max(sizes) > 0 or k <= 128


# ---- GPU: the compiled kernels (JIT here, the same source as the AOT cubins) at DeepSeek-V3 sizes ----

V3_SHAPES = [(576, 7168), (1536, 7168), (7168, 18432), (24576, 1536), (7168, 2048)]  # (N, K)


@pytest.mark.gpu
@pytest.mark.parametrize("nk", V3_SHAPES, ids=str)
def test_deepseek_v3_shapes_on_gpu(nk):
    """Decode (1, 16 rows: split-K), prefill (200, 1024 rows) in bfloat16 on both paths the GPU runs."""
    n, k = nk
    q, s = random_weight((n, k), seed=n + k, spread=False)
    for rows in (1, 16, 200, 1024):
        x = torch.randn(rows, k, generator=torch.Generator().manual_seed(rows)).bfloat16()
        for path in paths_here():
            check(x, q, s, path)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_per_head_weights_on_gpu(dtype):
    """W_UK^T per head: G = 128, [128, 512, 128] with x [128, M, 128] in T."""
    q, s = random_weight((128, 512, 128), seed=12)
    x = torch.randn(128, 4, 128, generator=torch.Generator().manual_seed(12)).to(dtype)
    for path in paths_here():
        check(x, q, s, path)
