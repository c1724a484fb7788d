"""The one table of launch choices of the BlockFp8MatMul kernels: shapes -> GEMM config, split-K, grids, workspace.

Pure Python (no triton, no torch), like the MlaAttention and DeepseekMoE plans: the Python API (`api.py`) calls
`make_plan`, the AOT build compiles every specialization of `aot_kernel_table()` and writes this module's data as a
generated C++ header that the hand-written C++ plan (plugins/kernels/fp8KernelsPlan.cpp) reads;
`tests/test_fp8_kernels_aot.py` checks that both choose the same plan over a sweep of shapes.

One call: y[g] = x[g] @ dequantize(w[g])^T for g < G, x [G, M, K] T, w [G, N, K] float8e4m3fn with float32
scale_inv [G, ceil(N/128), ceil(K/128)] (contract.py's FP8 block convention), y [G, M, N] T. Launches:

    1 act_quant (cdiv(G*M, QUANT_BLOCK_R), k_blocks)  native path, prefill config only: x -> e4m3 codes and their
                                                 scales per [row, 128 columns] block, into the workspace
    2 gemm      (m_tiles * n_tiles, splits, G)   K-blocks [s * kb_per_split, (s+1) * kb_per_split) of each tile;
                                                 splits == 1: y in T; else float32 partials [splits, G, M, N]
    3 reduce    (cdiv(G*M*N, REDUCE_BLOCK),)     only when splits > 1: y = sum of the partials, s = 0.. in order

BLOCK_K is the scale block (128) and BLOCK_N divides it, so every K-step of a program reads one weight scale.
GEMM config: "decode" (BLOCK_M 16: weight-bandwidth bound) while M <= DECODE_MAX_ROWS, else "prefill".
Split-K (decode mostly): when G * tiles < TARGET_PROGRAMS the K-blocks are split so that about TARGET_PROGRAMS
programs stream the weight, at most MAX_SPLITS, each split a whole number of K-blocks and none empty.
The plan reads shapes only (no device property): the same on every GPU.

Path, chosen per arch at compile time (same arguments, grids and workspace): native FP8 on sm_89 and later
(activations quantized to e4m3 per [row, 128-column] block, by kernel 1 for prefill or in the GEMM for decode;
FP8 tl.dot), weight-only below (the weight decoded to the activation dtype in registers, tl.dot in that dtype;
kernel 1 is not launched). Both accumulate in float32.

Workspace (each region at a multiple of WORKSPACE_ALIGN): with the prefill config xq [G*M, K] uint8 and
sx [G*M, k_blocks] float32 (used on the native path only, reserved on every arch), then the partials
[splits, G, M, N] float32 when splits > 1. `workspace_bytes` is the largest total over every M' <= M (same G, N,
K), so one size serves every call of an engine profile up to M.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...common.contract import FP8_BLOCK, FP8_MAX
from ..attention.plan import DTYPE_ENUM, ELEMENT_BYTES, FP_FUSION  # noqa: F401  (one setting for every op)

AOT_DTYPES = ("float16", "bfloat16")  # compiled for the plugin; float32 runs only through the Python API
NATIVE_MIN_ARCH = 89  # FP8 tensor cores (e4m3 mma): sm_89, 90, 100, 120; weight-only below
BLOCK_K = FP8_BLOCK  # one K-step is one scale block
DECODE_MAX_ROWS = 16
TARGET_PROGRAMS = 256  # split-K until about this many programs (H100: 132 SMs, two programs each)
MAX_SPLITS = 32
MAX_GROUPS = 65535  # the grid's z
K_MULTIPLE, N_MULTIPLE = 16, 8  # AOT: 16-byte rows of the FP8 weight and of the T output
REDUCE_BLOCK, REDUCE_NUM_WARPS = 1024, 4
QUANT_BLOCK_R, QUANT_NUM_WARPS = 16, 4
GROUP_M = 8  # programs walk GROUP_M row tiles per column tile (weight tiles reused from L2)
MIN_AMAX = 1e-30  # activation scale floor (an all-zero row block quantizes to zeros, never 0/0)
WORKSPACE_ALIGN = 256
assert FP8_MAX == 448.0


@dataclass(frozen=True)
class GemmConfig:
    """Block sizes of the GEMM kernel (BLOCK_K is BLOCK_K: the scale block)."""

    name: str
    block_m: int
    block_n: int  # divides FP8_BLOCK
    num_warps: int
    num_stages: int


# Shared memory (weight tile 1 byte/element, activation tile in T) stays under the 99 KB of sm_86/89/120 (aot.py
# checks every arch): decode 16x64 x 4 stages, prefill 64x128 x 3 stages.
GEMM_CONFIGS = (
    GemmConfig("decode", block_m=16, block_n=64, num_warps=4, num_stages=4),
    GemmConfig("prefill", block_m=64, block_n=128, num_warps=4, num_stages=3),
)
FP32_NUM_STAGES = 2  # float32 activation tiles are twice as large (Python API only)
assert all(FP8_BLOCK % c.block_n == 0 for c in GEMM_CONFIGS)


def config_named(name: str) -> GemmConfig:
    for c in GEMM_CONFIGS:
        if c.name == name:
            return c
    raise ValueError(f"GEMM config {name!r}: expected one of {[c.name for c in GEMM_CONFIGS]}")


def native_fp8(arch: int) -> bool:
    """True when sm_<arch> runs the native FP8 path (its kernels are compiled with NATIVE)."""
    return arch >= NATIVE_MIN_ARCH


@dataclass(frozen=True)
class Fp8Dims:
    """Host-known shapes of one call (mirror of mla::kernels::fp8::Dims)."""

    groups: int  # G (1 for a 2-D weight)
    rows: int  # M per group
    n: int
    k: int
    dtype: str  # "float16", "bfloat16", "float32"


@dataclass(frozen=True)
class Fp8Plan:
    """Every launch decision of one call. Grids are (x, y, z); reduce_grid is (0, 0, 0) when splits == 1."""

    config: GemmConfig
    m_tiles: int
    n_tiles: int
    k_blocks: int
    splits: int
    k_blocks_per_split: int
    quant_grid: tuple[int, int, int]  # (0, 0, 0) unless the prefill config (launched on the native path only)
    gemm_grid: tuple[int, int, int]
    reduce_grid: tuple[int, int, int]
    xq_offset: int  # workspace byte offsets: quantized activations, their scales, the partials
    sx_offset: int
    partial_offset: int
    call_bytes: int  # this call's workspace (partial_offset + its partials)
    workspace_bytes: int  # the largest call_bytes over rows <= this call's rows

    @property
    def quant_first(self) -> bool:
        return self.quant_grid[0] > 0

    def launches(self, native: bool) -> tuple[str, ...]:
        """The kernel kinds launched, in order, on the native or the weight-only path."""
        if self.gemm_grid[0] == 0:
            return ()
        return (("act_quant",) if native and self.quant_first else ()) + ("gemm",) + \
            (("reduce",) if self.splits > 1 else ())


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _align(n: int) -> int:
    return _cdiv(n, WORKSPACE_ALIGN) * WORKSPACE_ALIGN


def choose_config(rows: int) -> GemmConfig:
    """decode while M <= DECODE_MAX_ROWS, else prefill."""
    return GEMM_CONFIGS[0] if rows <= DECODE_MAX_ROWS else GEMM_CONFIGS[1]


def split_k(programs: int, k_blocks: int) -> tuple[int, int]:
    """(splits, k_blocks_per_split) for `programs` output tiles (all groups) and `k_blocks` K-blocks."""
    if programs <= 0 or programs >= TARGET_PROGRAMS or k_blocks <= 1:
        return 1, max(k_blocks, 0)
    want = min(MAX_SPLITS, k_blocks, _cdiv(TARGET_PROGRAMS, programs))
    per_split = _cdiv(k_blocks, want)
    return _cdiv(k_blocks, per_split), per_split


@dataclass(frozen=True)
class _Layout:
    """One config's tiling of `rows` rows and its workspace regions."""

    m_tiles: int
    n_tiles: int
    splits: int
    per_split: int
    xq_offset: int
    sx_offset: int
    partial_offset: int
    total: int


def _layout(dims: Fp8Dims, rows: int, cfg: GemmConfig) -> _Layout:
    m_tiles, n_tiles = _cdiv(rows, cfg.block_m), _cdiv(dims.n, cfg.block_n)
    k_blocks = _cdiv(dims.k, BLOCK_K)
    splits, per_split = split_k(dims.groups * m_tiles * n_tiles, k_blocks)
    quant = cfg is GEMM_CONFIGS[1]  # prefill: kernel 1's regions
    sx_offset = _align(dims.groups * rows * dims.k) if quant else 0
    partial_offset = sx_offset + (_align(dims.groups * rows * k_blocks * 4) if quant else 0)
    partial = _align(splits * dims.groups * rows * dims.n * 4) if splits > 1 else 0
    return _Layout(m_tiles, n_tiles, splits, per_split, 0, sx_offset, partial_offset, partial_offset + partial)


def workspace_bound(dims: Fp8Dims) -> int:
    """max over 1 <= M' <= dims.rows of the workspace bytes (the planned config of each M'); 0 without rows."""
    if min(dims.rows, dims.n, dims.groups) <= 0:
        return 0
    best = _layout(dims, min(dims.rows, DECODE_MAX_ROWS), GEMM_CONFIGS[0]).total
    prefill = GEMM_CONFIGS[1]
    n_tiles = _cdiv(dims.n, prefill.block_n)
    # Every region grows with M' inside a row-tile count and splits only fall as tiles grow: the worst M' of each
    # tile count is its largest; past TARGET_PROGRAMS tiles nothing is split and M itself is the worst.
    max_tiles = min(_cdiv(dims.rows, prefill.block_m), _cdiv(TARGET_PROGRAMS, dims.groups * n_tiles))
    candidates = [min(dims.rows, tiles * prefill.block_m) for tiles in range(1, max_tiles + 1)] + [dims.rows]
    for rows in candidates:
        if rows > DECODE_MAX_ROWS:
            best = max(best, _layout(dims, rows, prefill).total)
    return best


def make_plan(dims: Fp8Dims, config: str | None = None) -> Fp8Plan:
    """The plan for `dims`; `config` (a GEMM_CONFIGS name) overrides the decode/prefill rule (tests)."""
    cfg = config_named(config) if config is not None else choose_config(dims.rows)
    lay = _layout(dims, max(dims.rows, 0), cfg)
    k_blocks = _cdiv(dims.k, BLOCK_K)
    gemm_grid = (lay.m_tiles * lay.n_tiles, lay.splits, dims.groups)
    if min(gemm_grid) <= 0:
        gemm_grid = (0, 0, 0)
    quant_grid = (_cdiv(dims.groups * dims.rows, QUANT_BLOCK_R), k_blocks, 1) \
        if cfg is GEMM_CONFIGS[1] and gemm_grid[0] and k_blocks else (0, 0, 0)
    reduce_grid = (_cdiv(dims.groups * dims.rows * dims.n, REDUCE_BLOCK), 1, 1) if lay.splits > 1 and gemm_grid[0] \
        else (0, 0, 0)
    bound = workspace_bound(dims) if config is None else max(lay.total, workspace_bound(dims))
    return Fp8Plan(cfg, lay.m_tiles, lay.n_tiles, k_blocks, lay.splits, lay.per_split, quant_grid, gemm_grid,
                   reduce_grid, lay.xq_offset, lay.sx_offset, lay.partial_offset, lay.total, bound)


# Reasons of unsupported_reason, word for word those of mla::kernels::fp8::plan::unsupportedReason.
REASON_DTYPE = "dtype: the AOT kernels are compiled for float16 and bfloat16 only"
REASON_BLOCK = f"block_size: the kernels take {FP8_BLOCK} only"
REASON_DIMS = (f"K must be a positive multiple of {K_MULTIPLE} and N of {N_MULTIPLE} for the AOT kernels")
REASON_GROUPS = f"groups: the AOT kernels take 1 to {MAX_GROUPS} weight groups"
REASON_NEGATIVE = "negative number of rows"
REASON_SIZE = "G * M * N and G * M * K must stay below 2^31 elements for the AOT kernels"


def unsupported_reason(dims: Fp8Dims, block_size: int = FP8_BLOCK) -> str | None:
    """Why the AOT kernels (the plugin) cannot run `dims`, or None. Mirrored by fp8::plan::unsupportedReason."""
    if dims.dtype not in AOT_DTYPES:
        return REASON_DTYPE
    if block_size != FP8_BLOCK:
        return REASON_BLOCK
    if dims.k < 1 or dims.n < 1 or dims.k % K_MULTIPLE or dims.n % N_MULTIPLE:
        return REASON_DIMS
    if not 1 <= dims.groups <= MAX_GROUPS:
        return REASON_GROUPS
    if dims.rows < 0:
        return REASON_NEGATIVE
    if dims.groups * dims.rows * max(dims.n, dims.k) >= 2 ** 31:
        return REASON_SIZE
    return None


# Kernel kinds, in launch order.
KERNEL_KINDS = ("act_quant", "gemm", "reduce")


@dataclass(frozen=True)
class KernelSpec:
    """One AOT-compiled specialization; its position in `aot_kernel_table()` is its index in C++.
    variant: the GEMM config index (gemm), else 0."""

    kind: str
    dtype: str
    variant: int
    num_warps: int
    num_stages: int


def aot_kernel_table() -> tuple[KernelSpec, ...]:
    """Every specialization the plugin needs (the same table on every arch; the path is the arch's)."""
    table = []
    for dtype in AOT_DTYPES:
        table.append(KernelSpec("act_quant", dtype, 0, QUANT_NUM_WARPS, 1))
        for ci, cfg in enumerate(GEMM_CONFIGS):
            table.append(KernelSpec("gemm", dtype, ci, cfg.num_warps, cfg.num_stages))
        table.append(KernelSpec("reduce", dtype, 0, REDUCE_NUM_WARPS, 1))
    return tuple(table)


def kernel_indices(plan: Fp8Plan, dtype: str) -> tuple[int, int, int]:
    """Indices into `aot_kernel_table()` of (act_quant, gemm, reduce) for `plan`."""
    table = aot_kernel_table()
    keys = (("act_quant", dtype, 0), ("gemm", dtype, GEMM_CONFIGS.index(plan.config)), ("reduce", dtype, 0))
    found = []
    for key in keys:
        matches = [i for i, k in enumerate(table) if (k.kind, k.dtype, k.variant) == key]
        if len(matches) != 1:
            raise KeyError(key)
        found.append(matches[0])
    return found[0], found[1], found[2]


def x_fp8(kind: str, variant: int, native: bool) -> bool:
    """True when the GEMM reads kernel 1's e4m3 codes (the native path's prefill config) instead of x."""
    return kind == "gemm" and native and GEMM_CONFIGS[variant].name == "prefill"


def kernel_constexprs(kind: str, variant: int, dtype: str, native: bool, upcast_dot: bool = False) -> dict:
    """The tl.constexpr arguments of kernel `kind`: one definition for the Python API and the AOT build.
    upcast_dot: only for the interpreter's bfloat16 runs (its bf16 tl.dot is wrong; the operands are exact in
    float32, so the float32 dot computes the same products)."""
    if kind == "gemm":
        cfg = GEMM_CONFIGS[variant]
        return {"BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n, "BLOCK_K": BLOCK_K, "GROUP_M": GROUP_M,
                "NATIVE": native, "X_FP8": x_fp8(kind, variant, native), "UPCAST_DOT": upcast_dot,
                "INPUT_PRECISION": "ieee" if dtype == "float32" else "tf32"}
    if kind == "act_quant":
        return {"BLOCK_R": QUANT_BLOCK_R, "BLOCK_K": BLOCK_K}
    if kind == "reduce":
        return {"BLOCK": REDUCE_BLOCK}
    raise ValueError(f"unknown kernel kind {kind!r}")


# Runtime arguments of each kernel kind, in the kernels' order: (name, Triton type), "*T" standing for the element
# type. The hand-written C++ launchers (plugins/kernels/fp8Kernels.cpp) pass them in this order, then Triton's
# global-scratch and profile-scratch pointers. The weight travels as bytes (*u8: sm_80/86 have no FP8 type), and so
# do kernel 1's codes (the GEMM's x_ptr is *u8 where x_fp8).
RUNTIME_ARGS = {
    "act_quant": (("x_ptr", "*T"), ("xq_ptr", "*u8"), ("sx_ptr", "*fp32"), ("R", "i32"), ("K", "i32")),
    "gemm": (("x_ptr", "*T"), ("w_ptr", "*u8"), ("s_ptr", "*fp32"), ("sx_ptr", "*fp32"), ("y_ptr", "*T"),
             ("part_ptr", "*fp32"), ("M", "i32"), ("N", "i32"), ("K", "i32"), ("k_blocks_per_split", "i32")),
    "reduce": (("part_ptr", "*fp32"), ("y_ptr", "*T"), ("total", "i32"), ("splits", "i32")),
}
DIVISIBILITY = {"K": K_MULTIPLE, "N": N_MULTIPLE}  # declared to the AOT compiler (unsupported_reason holds them)
_TRITON_TYPES = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}


def runtime_args(kind: str, dtype: str = "float16", codes: bool = False) -> list[tuple[str, str]]:
    """(name, Triton type) of the runtime arguments of `kind` for element type `dtype`, in order; `codes`: the
    GEMM's x_ptr holds kernel 1's e4m3 codes."""
    def typed(name: str, ty: str) -> str:
        if ty != "*T":
            return ty
        return "*u8" if codes and name == "x_ptr" else "*" + _TRITON_TYPES[dtype]
    return [(name, typed(name, ty)) for name, ty in RUNTIME_ARGS[kind]]


def kernel_signature(spec: KernelSpec, arch: int) -> tuple[dict, dict, dict]:
    """(signature, constexprs, attrs) of `spec` compiled for sm_<arch> for Triton's ASTSource: runtime arguments
    then constexprs (NATIVE per `native_fp8(arch)`); pointers 16-byte aligned, K and N per DIVISIBILITY."""
    runtime = runtime_args(spec.kind, spec.dtype, x_fp8(spec.kind, spec.variant, native_fp8(arch)))
    constexprs = kernel_constexprs(spec.kind, spec.variant, spec.dtype, native_fp8(arch))
    sig = dict(runtime)
    sig.update({k: "constexpr" for k in constexprs})
    attrs = {}
    for i, (name, ty) in enumerate(runtime):
        if ty.startswith("*"):
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in DIVISIBILITY:
            attrs[(i,)] = [["tt.divisibility", DIVISIBILITY[name]]]
    return sig, constexprs, attrs
