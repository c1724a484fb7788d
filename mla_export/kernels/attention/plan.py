"""The one table of kernel choices: dims -> specialization, grids, split count, workspace.

Pure Python (no triton, no torch): the Python API (`api.py`) calls `make_plan`, and the AOT build
(`aot.py`) compiles every specialization in `FAMILIES` x `AOT_DTYPES` and writes this table's data
into a generated C++ header (`codegen.py`) that the hand-written C++ plan (plugins/kernels/
mlaKernelsPlan.cpp) reads; `tests/test_kernels_aot.py` checks that both sides choose the same plan
over a sweep of shapes.

Split rule (host-known shapes only, never device data such as cache_seqlens):

    m_blocks  = ceil(S*H / block_m)                   programs per (sequence, split)
    base      = B * m_blocks
    want      = ceil(num_sms / base)                  fill every SM once
    by_length = max(1, ceil(Smax / (block_n * MIN_BLOCKS_PER_SPLIT)))
    splits    = clamp(min(want, by_length, MAX_SPLITS), 1)

Smax is the cache's rows per sequence; with a paged cache (contract version 2), max_pages * page_size.
The page size is a run-time argument of the contract-2 kernels, so the plan's kernel choice depends only on
whether the call is contract version 1 (contiguous, model dtype) or not, and on the kv cache dtype.

Workspace (bytes, each region starting at a multiple of WORKSPACE_ALIGN):

    q_rot  [B, S, H, Dr]          T        rotated q_pe (written by the RoPE kernel)
    o_part [B, S*H, splits, Dc]   float32  per-split normalized outputs   (only when splits > 1)
    lse    [B, S*H, splits]       float32  per-split log2-sum-exp          (only when splits > 1)
"""

from __future__ import annotations

from dataclasses import dataclass

ELEMENT_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
# DataType enum values of plugins/kernels/mlaKernels.h.
DTYPE_ENUM = {"float32": 0, "float16": 1, "bfloat16": 2}
AOT_DTYPES = ("float16", "bfloat16")  # compiled for the plugin; float32 runs only through the Python API
AOT_ARCHS = (80, 86, 89, 90, 100, 120)  # cubins; PTX of the oldest and newest for the GPUs in between and after
# Contract-2 cache kernels (`cache_v2` 1: page size at run time, 0 = contiguous, so one image serves every
# page size) compiled for the plugin per kv cache dtype: 0 rows in T, 1 FP8 (contract.KV_CACHE_DTYPE_*).
# The contiguous model-dtype cache runs contract version 1's kernels (cache_v2 0).
AOT_V2_KV_CACHE_DTYPES = (0, 1)
FP8_CACHE_TILE = 128  # contract.FP8_CACHE_TILE (this module imports nothing)

SMALL_M = 16  # S*H at or below this uses block_m = SMALL_M (tl.dot needs M >= 16)
MAX_SPLITS = 64
MIN_BLOCKS_PER_SPLIT = 4  # a split covers at least this many BLOCK_N row blocks of Smax
WORKSPACE_ALIGN = 256
SMALL_M_NUM_WARPS = 4
ROPE_NUM_WARPS = 4
COMBINE_NUM_WARPS = 4
FP_FUSION = True  # fused multiply-adds, set explicitly (Triton 3.10 changes its default): JIT and AOT alike
DEFAULT_NUM_SMS = 132  # used when no GPU can be asked (interpreter runs); an H100's count


@dataclass(frozen=True)
class Family:
    """Compile-time constants of one (kv_lora_rank, qk_rope_head_dim) pair.

    block_dr: Dr padded to a power of two >= 16 (tl.dot's K minimum); block_m_large: (token, head)
    rows per attention program when S*H > SMALL_M; block_n: cache rows per inner step.
    """

    name: str
    kv_lora_rank: int  # Dc
    rope_dim: int  # Dr
    block_n: int
    block_m_large: int
    num_warps: int
    num_stages: int
    rope_block_h: int  # heads per step of the RoPE kernel's q loop
    aot: bool = True  # compiled for the plugin

    @property
    def block_dr(self) -> int:
        return max(16, _next_pow2(self.rope_dim))

    @property
    def rope_half_block(self) -> int:
        return self.block_dr // 2

    @property
    def block_ms(self) -> tuple[int, ...]:
        return tuple(sorted({SMALL_M, self.block_m_large}))

    def attn_num_warps(self, block_m: int) -> int:
        """Warps of the attention kernel: SMALL_M_NUM_WARPS at block_m == SMALL_M, else num_warps."""
        return SMALL_M_NUM_WARPS if block_m == SMALL_M else self.num_warps


# Shared memory (Triton 3.9, fp16, deepseek, BLOCK_M 32): 56 KB at block_n 16 / 2 stages (fits every arch);
# block_n 32 needs 100 KB, over the 99 KB of sm_86/89/120.
FAMILIES = (
    Family("tiny", kv_lora_rank=32, rope_dim=8, block_n=16, block_m_large=16, num_warps=4, num_stages=2,
           rope_block_h=16),
    Family("deepseek", kv_lora_rank=512, rope_dim=64, block_n=16, block_m_large=32, num_warps=8, num_stages=2,
           rope_block_h=16),
)


@dataclass(frozen=True)
class Dims:
    """Host-known shapes of one call (mirror of mla::kernels::Dims)."""

    batch: int  # B
    new_tokens: int  # S
    num_heads: int  # H
    kv_lora_rank: int  # Dc
    rope_dim: int  # Dr
    max_seq_len: int  # Smax (paged: max_pages * page_size)
    dtype: str  # "float16", "bfloat16", "float32"
    page_size: int = 0  # 0: contiguous cache, else a power of two
    kv_cache_dtype: int = 0  # 0: rows in T, 1: FP8

    @property
    def cache_v2(self) -> int:
        """1 when the contract-2 cache kernels run (paged or FP8), 0 for contract version 1's."""
        return int((self.page_size, self.kv_cache_dtype) != (0, 0))


@dataclass(frozen=True)
class Plan:
    """Every launch decision for one call. Grids are (x, y, z)."""

    family: Family
    block_m: int
    m_blocks: int
    num_splits: int
    rope_grid: tuple[int, int, int]  # one program per new token
    attn_grid: tuple[int, int, int]  # (m_blocks, num_splits, B): head groups of one split adjacent
    combine_grid: tuple[int, int, int]  # one program per (b, token, head) row; (0,1,1) when splits == 1
    attn_num_warps: int
    q_rot_offset: int
    o_part_offset: int
    lse_offset: int
    workspace_bytes: int


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _align(n: int) -> int:
    return _cdiv(n, WORKSPACE_ALIGN) * WORKSPACE_ALIGN


def find_family(kv_lora_rank: int, rope_dim: int, aot_only: bool = False) -> Family | None:
    """The table's family for these dims; for the Python API (aot_only False) a derived one otherwise."""
    for fam in FAMILIES:
        if fam.kv_lora_rank == kv_lora_rank and fam.rope_dim == rope_dim and (fam.aot or not aot_only):
            return fam
    if aot_only or not generic_dims_ok(kv_lora_rank, rope_dim):
        return None
    big = kv_lora_rank >= 256
    return Family(f"generic{kv_lora_rank}x{rope_dim}", kv_lora_rank, rope_dim, block_n=16,
                  block_m_large=32 if big else 16, num_warps=8 if big else 4, num_stages=2,
                  rope_block_h=16, aot=False)


def generic_dims_ok(kv_lora_rank: int, rope_dim: int) -> bool:
    """Dims the kernel source handles: Dc a power of two in [16, 1024], Dr even in [2, 256]."""
    return (16 <= kv_lora_rank <= 1024 and kv_lora_rank == _next_pow2(kv_lora_rank)
            and 2 <= rope_dim <= 256 and rope_dim % 2 == 0)


# Reasons of unsupported_reason, word for word those of mla::kernels::supported (generated from these).
REASON_DTYPE = "dtype: the AOT kernels are compiled for float16 and bfloat16 only"
REASON_DIMS = ("kv_lora_rank/qk_rope_head_dim: no compiled kernel for these dims (compiled: "
               + ", ".join(f"{f.kv_lora_rank}/{f.rope_dim}" for f in FAMILIES if f.aot) + ")")
REASON_NEGATIVE = "negative dimension"
REASON_BATCH = "batch above 65535 (grid z limit)"
REASON_ROWS = "S*H too large for int32 offsets within one sequence"
REASON_CACHE = "page_size/kv_cache_dtype: page_size must be 0 or a power of two, kv_cache_dtype 0 or 1"


def unsupported_reason(dims: Dims) -> str | None:
    """Why the AOT kernels (the plugin) cannot run `dims`, or None. Mirrored by mla::kernels::supported."""
    if dims.dtype not in AOT_DTYPES:
        return REASON_DTYPE
    if find_family(dims.kv_lora_rank, dims.rope_dim, aot_only=True) is None:
        return REASON_DIMS
    if min(dims.batch, dims.new_tokens, dims.num_heads, dims.max_seq_len) < 0:
        return REASON_NEGATIVE
    if dims.batch > 65535:
        return REASON_BATCH
    if dims.new_tokens * dims.num_heads * MAX_SPLITS * dims.kv_lora_rank >= 2**31:
        return REASON_ROWS
    page = dims.page_size
    if page < 0 or page & (page - 1) or (dims.cache_v2 and dims.kv_cache_dtype not in (0,) + AOT_V2_KV_CACHE_DTYPES):
        return REASON_CACHE
    return None


def choose_splits(batch: int, new_tokens: int, num_heads: int, max_seq_len: int, block_m: int, block_n: int,
                  num_sms: int) -> int:
    """The split rule of the module docstring."""
    m_blocks = _cdiv(new_tokens * num_heads, block_m)
    base = batch * m_blocks
    if base <= 0 or num_sms <= 0:
        return 1
    want = _cdiv(num_sms, base)
    by_length = max(1, _cdiv(max_seq_len, block_n * MIN_BLOCKS_PER_SPLIT))
    return max(1, min(want, by_length, MAX_SPLITS))


def make_plan(dims: Dims, num_sms: int, num_splits: int | None = None, family: Family | None = None) -> Plan:
    """The plan for `dims` on a GPU with `num_sms` SMs; `num_splits` overrides the split rule (tests)."""
    fam = family or find_family(dims.kv_lora_rank, dims.rope_dim)
    if fam is None:
        raise ValueError(f"kv_lora_rank={dims.kv_lora_rank}, qk_rope_head_dim={dims.rope_dim}: the kernels need "
                         "kv_lora_rank a power of two in [16, 1024] and an even qk_rope_head_dim in [2, 256]")
    rows = dims.new_tokens * dims.num_heads  # M: (token, head) rows per sequence
    # float32 tiles are twice as large: block_m 32 needs 110 KB of shared memory at Dc 512, over the 99 KB
    # of sm_86/89/120, so float32 (Python API only, never AOT) always uses SMALL_M.
    block_m = SMALL_M if rows <= SMALL_M or dims.dtype == "float32" else fam.block_m_large
    m_blocks = _cdiv(rows, block_m)
    splits = num_splits if num_splits is not None else choose_splits(
        dims.batch, dims.new_tokens, dims.num_heads, dims.max_seq_len, block_m, fam.block_n, num_sms)
    if splits < 1:
        raise ValueError(f"num_splits must be >= 1, got {splits}")
    q_rot_bytes = dims.batch * rows * dims.rope_dim * ELEMENT_BYTES[dims.dtype]
    o_part_bytes = dims.batch * rows * splits * dims.kv_lora_rank * 4 if splits > 1 else 0
    lse_bytes = dims.batch * rows * splits * 4 if splits > 1 else 0
    o_part_offset = _align(q_rot_bytes)
    lse_offset = o_part_offset + _align(o_part_bytes)
    return Plan(
        family=fam, block_m=block_m, m_blocks=m_blocks, num_splits=splits, attn_num_warps=fam.attn_num_warps(block_m),
        rope_grid=(dims.batch * dims.new_tokens, 1, 1),
        attn_grid=(m_blocks, splits, dims.batch),
        combine_grid=(dims.batch * rows if splits > 1 else 0, 1, 1),
        q_rot_offset=0, o_part_offset=o_part_offset, lse_offset=lse_offset,
        workspace_bytes=lse_offset + _align(lse_bytes),
    )


# Kernel kinds of the AOT table, in launch order.
KERNEL_KINDS = ("rope_append", "attention", "combine")


@dataclass(frozen=True)
class KernelSpec:
    """One AOT-compiled specialization; its position in `aot_kernel_table()` is its index in C++."""

    family_index: int
    dtype: str
    kind: str
    block_m: int  # 0 for kinds without one
    num_warps: int
    num_stages: int
    cache_v2: int = 0  # 1: a contract-2 cache kernel (Dims.cache_v2); combine kernels serve every layout with 0
    kv_cache_dtype: int = 0


def aot_kernel_table() -> tuple[KernelSpec, ...]:
    """Every specialization the plugin needs: per AOT family and dtype, rope, attention per block_m, combine
    (contract version 1's, in their version-1 order and indices), then the contract-2 cache kernels, rope and
    attention per block_m, for each kv cache dtype of AOT_V2_KV_CACHE_DTYPES (appended: version-1 indices stay
    valid)."""
    table = []
    for fi, fam in enumerate(FAMILIES):
        if not fam.aot:
            continue
        for dtype in AOT_DTYPES:
            table.append(KernelSpec(fi, dtype, "rope_append", 0, ROPE_NUM_WARPS, 1))
            for bm in fam.block_ms:
                table.append(KernelSpec(fi, dtype, "attention", bm, fam.attn_num_warps(bm), fam.num_stages))
            table.append(KernelSpec(fi, dtype, "combine", 0, COMBINE_NUM_WARPS, 1))
    for kv in AOT_V2_KV_CACHE_DTYPES:
        for fi, fam in enumerate(FAMILIES):
            if not fam.aot:
                continue
            for dtype in AOT_DTYPES:
                table.append(KernelSpec(fi, dtype, "rope_append", 0, ROPE_NUM_WARPS, 1, 1, kv))
                for bm in fam.block_ms:
                    table.append(KernelSpec(fi, dtype, "attention", bm, fam.attn_num_warps(bm), fam.num_stages,
                                            1, kv))
    return tuple(table)


def kernel_indices(plan: Plan, dtype: str, page_size: int = 0, kv_cache_dtype: int = 0) -> tuple[int, int, int]:
    """(rope, attention, combine) indices into `aot_kernel_table()` for an AOT plan and cache layout."""
    fi = FAMILIES.index(plan.family)
    table = aot_kernel_table()

    def find(kind: str, block_m: int, mode: tuple[int, int]) -> int:
        for i, k in enumerate(table):
            if (k.family_index, k.dtype, k.kind, k.block_m, k.cache_v2, k.kv_cache_dtype) == (fi, dtype, kind,
                                                                                               block_m, *mode):
                return i
        raise KeyError((plan.family.name, dtype, kind, block_m, mode))

    mode = (int((page_size, kv_cache_dtype) != (0, 0)), kv_cache_dtype)
    return find("rope_append", 0, mode), find("attention", plan.block_m, mode), find("combine", 0, (0, 0))


def _cache_constexprs(family: Family, cache_v2: int, kv_cache_dtype: int) -> dict:
    return {"CACHE_V2": cache_v2, "KV_FP8": kv_cache_dtype, "CACHE_TILE": min(family.kv_lora_rank, FP8_CACHE_TILE)}


def kernel_constexprs(kind: str, family: Family, block_m: int, dtype: str, cache_v2: int = 0,
                      kv_cache_dtype: int = 0) -> dict:
    """The tl.constexpr arguments of kernel `kind`: one definition for the Python API and the AOT build."""
    if kind == "rope_append":
        return {"DC": family.kv_lora_rank, "DR": family.rope_dim, "HALF_BLOCK": family.rope_half_block,
                "BLOCK_H": family.rope_block_h, **_cache_constexprs(family, cache_v2, kv_cache_dtype)}
    if kind == "attention":
        return {"DC": family.kv_lora_rank, "DR": family.rope_dim, "BLOCK_DR": family.block_dr, "BLOCK_M": block_m,
                "BLOCK_N": family.block_n, "INPUT_PRECISION": "ieee" if dtype == "float32" else "tf32",
                **_cache_constexprs(family, cache_v2, kv_cache_dtype)}
    if kind == "combine":
        return {"DC": family.kv_lora_rank}
    raise ValueError(f"unknown kernel kind {kind!r}")


# Runtime arguments of each kernel kind, in the kernels' order: (name, Triton type), "T" standing for the
# element type. The AOT build checks them against the @triton.jit functions; the hand-written C++
# launchers (plugins/kernels/mlaKernels.cpp) pass them in this order, then Triton's global-scratch and
# profile-scratch pointers. The contract-2 cache kernels (cache_v2 1) take CACHE_RUNTIME_ARGS after them (in
# contract version 1's kernels those are constexpr None: their images take exactly RUNTIME_ARGS), and with the
# FP8 cache, cache_ptr is "*u8" (the e4m3 codes). Smax of a paged call (page_size > 0): the rope table's rows;
# num_pages: the pool's pages (contiguous: B); unused pointers may be null.
RUNTIME_ARGS = {
    "rope_append": (("q_pe_ptr", "*T"), ("kv_latent_ptr", "*T"), ("k_pe_ptr", "*T"), ("cache_ptr", "*T"),
                    ("seqlens_ptr", "*i32"), ("cos_sin_ptr", "*fp32"), ("q_rot_ptr", "*T"),
                    ("S", "i32"), ("H", "i32"), ("Smax", "i32")),
    "attention": (("q_lat_ptr", "*T"), ("q_rot_ptr", "*T"), ("cache_ptr", "*T"), ("seqlens_ptr", "*i32"),
                  ("out_ptr", "*T"), ("o_part_ptr", "*fp32"), ("lse_part_ptr", "*fp32"), ("softmax_scale", "fp32"),
                  ("S", "i32"), ("H", "i32"), ("Smax", "i32"), ("num_splits", "i32")),
    "combine": (("o_part_ptr", "*fp32"), ("lse_part_ptr", "*fp32"), ("out_ptr", "*T"), ("num_splits", "i32")),
}
CACHE_RUNTIME_ARGS = (("block_table_ptr", "*i32"), ("scale_ptr", "*fp32"), ("rope_ptr", "*T"), ("num_pages", "i32"),
                      ("max_pages", "i32"), ("page_size", "i32"))
CACHE_KINDS = ("rope_append", "attention")  # the kinds that read or write the cache
_TRITON_TYPES = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}


def runtime_args(kind: str, dtype: str = "float16", cache_v2: int = 0,
                 kv_cache_dtype: int = 0) -> list[tuple[str, str]]:
    """(name, Triton type) of the runtime arguments of `kind` for element type `dtype` and cache kernel, in order."""
    args = list(RUNTIME_ARGS[kind])
    if kind in CACHE_KINDS and cache_v2:
        args += CACHE_RUNTIME_ARGS
        if kv_cache_dtype:
            args = [(name, "*u8" if name == "cache_ptr" else ty) for name, ty in args]
    return [(name, ty.replace("T", _TRITON_TYPES[dtype])) for name, ty in args]


def kernel_signature(spec: KernelSpec) -> tuple[dict, dict, dict]:
    """(signature, constexprs, attrs) of `spec` for Triton's ASTSource, in the kernel's argument order: runtime
    arguments, then constexprs (the cache arguments are constexpr None in a (0, 0) cache kernel); every pointer
    is declared 16-byte aligned."""
    runtime = runtime_args(spec.kind, spec.dtype, spec.cache_v2, spec.kv_cache_dtype)
    constexprs = kernel_constexprs(spec.kind, FAMILIES[spec.family_index], spec.block_m, spec.dtype,
                                   spec.cache_v2, spec.kv_cache_dtype)
    if spec.kind in CACHE_KINDS and not spec.cache_v2:
        constexprs = {**{name: None for name, _ in CACHE_RUNTIME_ARGS}, **constexprs}
    sig = dict(runtime)
    sig.update({k: "constexpr" for k in constexprs})
    attrs = {(i,): [["tt.divisibility", 16]] for i, (_, ty) in enumerate(runtime) if ty.startswith("*")}
    return sig, constexprs, attrs
