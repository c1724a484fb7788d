"""The one table of launch choices of the DeepseekMoE kernels: shapes -> chunks, GEMM config, grids, workspace.

Pure Python (no triton, no torch), like `plan.py` for MlaAttention: the Python API (`moe_api.py`) calls
`make_plan`, the AOT build compiles every specialization of `aot_kernel_table()` and writes this module's
data as a generated C++ header that the hand-written C++ plan (plugins/kernels/moeKernelsPlan.cpp) reads;
`tests/test_moe_kernels_aot.py` checks that both choose the same plan over a sweep of shapes.

The op runs on the T = B*S tokens in chunks of at most CHUNK_TOKENS (the workspace is sized for one
chunk, whatever the engine's profile); per chunk, seven launches, all on host-known shapes:

    1 router_logits  (cdiv(Tc, 16), cdiv(E, 16))   logits = hidden @ router_weight^T, float32
    2 topk           (cdiv(Tc, TOPK_BLOCK_T),)     scores, groups, top_k experts and weights per token
    3 count          (cdiv(El, COUNT_BLOCK_E),)    slots per local expert (a slot is (token, k): Tc*K slots)
    4 align          (El,)                         local slots grouped by expert in slot order, padded to
                                                   BLOCK_M; the expert of every BLOCK_M-row block, -1 past the last
    5 gate_up        (max_blocks, cdiv(I, BN))     act = silu(x W_gate^T) * (x W_up^T) per row, T
    6 down           (max_blocks, cdiv(d, BN))     y[slot] = weight[slot] * act W_down^T, T
    7 combine        (Tc, cdiv(d, COMBINE_BLOCK_D)) out[t] = sum_k y[t*K + k] over local slots, float32, k in order

E is num_experts (routing is over all of them); El = local_experts, the experts this call holds (contract
version 3: a `--tp` rank's slice first_expert .. first_expert + El - 1; El = E on one device). first_expert is a
runtime argument only: it changes no launch choice.

max_blocks = cdiv(Tc*K, BLOCK_M) + min(El, Tc*K) bounds the padded blocks whatever the routing; blocks
past the last used one (expert -1) exit at once, so an expert no token routes to is never read.

GEMM config: "decode" (BLOCK_M 16: few tokens per expert, weight-bandwidth bound) when
Tc*K <= DECODE_SLOTS_PER_EXPERT * E, else "prefill" (E, not El: a rank's experts get El/E of the slots on
average, so the rule reads the same per local expert) (BLOCK_M 64: compute bound). FP8 experts (contract
version 2) have their own pair, FP8_CONFIG_OFFSET further in GEMM_CONFIGS: BLOCK_K 128, one scale block (and
one activation-quantization group) per K-tile; the same kernels with FP8 = 1, compiled per arch with
NATIVE_FP8 = native_fp8(arch) (FP8 x FP8 products on sm_89+, weight-only dequantization on sm_80/86).

Workspace (bytes, each region at a multiple of WORKSPACE_ALIGN; Tc = the largest chunk):
    logits       [Tc, E]                 float32
    topk_ids     [Tc, K]                 int32
    topk_weights [Tc, K]                 float32
    counts       [El]                    int32
    sorted_slots [max_blocks * BLOCK_M]  int32   slot of each padded row, Tc*K in padding rows
    block_expert [max_blocks]            int32
    act          [max_blocks * BLOCK_M, I]  T
    y            [Tc*K, d]               T
"""

from __future__ import annotations

from dataclasses import dataclass

from ..attention.plan import DTYPE_ENUM, ELEMENT_BYTES, FP_FUSION  # noqa: F401  (FP_FUSION: one setting for both ops)

AOT_DTYPES = ("float16", "bfloat16")  # compiled for the plugin; float32 runs only through the Python API
CHUNK_TOKENS = 4096
WORKSPACE_ALIGN = 256
DIM_MULTIPLE = 16  # AOT: hidden_size and moe_intermediate_size are declared multiples of 16 (vector loads)

ROUTER_BLOCK_T, ROUTER_BLOCK_E, ROUTER_BLOCK_D, ROUTER_NUM_WARPS = 16, 16, 64, 4
TOPK_BLOCK_T, TOPK_NUM_WARPS = 4, 4
TOPK_BLOCK_ES = (16, 32, 64, 128, 256, 512)  # compiled padded expert counts; MAX_EXPERTS is the last
MAX_EXPERTS = TOPK_BLOCK_ES[-1]
MAX_TOP_K = 16  # BLOCK_K of the top-k kernel
MAX_GROUPS = 32  # BLOCK_G of the top-k kernel
COUNT_BLOCK_E, COUNT_CHUNK, COUNT_NUM_WARPS = 16, 128, 4
ALIGN_CHUNK, ALIGN_NUM_WARPS = 256, 4
COMBINE_BLOCK_D, COMBINE_NUM_WARPS = 512, 4
DECODE_SLOTS_PER_EXPERT = 16


@dataclass(frozen=True)
class GemmConfig:
    """Block sizes of the two expert GEMMs (gate_up and down share them)."""

    name: str
    block_m: int  # padded rows (slots of one expert) per program
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    fp8: bool = False  # for FP8 experts (BLOCK_K divides FP8_BLOCK)


# Shared memory (fp16/bf16, gate_up holds two weight tiles): decode 16x64x64 at 4 stages and prefill 64x64x64 at
# 3 stages stay under the 99 KB of sm_86/89/120 (aot.py checks every arch).
GEMM_CONFIGS = (
    GemmConfig("decode", block_m=16, block_n=64, block_k=64, num_warps=4, num_stages=4),
    GemmConfig("prefill", block_m=64, block_n=64, block_k=64, num_warps=4, num_stages=3),
    # FP8 experts: the weight tiles are 1 byte per element, so BLOCK_K 128 costs the shared memory of 64 in T.
    GemmConfig("decode", block_m=16, block_n=64, block_k=128, num_warps=4, num_stages=4, fp8=True),
    GemmConfig("prefill", block_m=64, block_n=64, block_k=128, num_warps=4, num_stages=3, fp8=True),
)
FP8_CONFIG_OFFSET = 2  # GEMM_CONFIGS[i + FP8_CONFIG_OFFSET] is config i for FP8 experts
FP8_BLOCK = 128  # contract.FP8_BLOCK: the experts' scale blocks are FP8_BLOCK x FP8_BLOCK
NATIVE_FP8_MIN_ARCH = 89  # FP8 tensor cores: sm_89, 90, 100, 120; sm_80/86/87 dequantize the weights instead
FP32_NUM_STAGES = 2  # float32 tiles are twice as large (Python API only)


def native_fp8(arch: int) -> bool:
    """Whether the FP8 expert kernels compiled for compute capability `arch` use FP8 x FP8 products."""
    return arch >= NATIVE_FP8_MIN_ARCH


def config_named(name: str, fp8: bool = False) -> GemmConfig:
    """The GEMM config called `name` ("decode", "prefill") for experts in T or in FP8."""
    for c in GEMM_CONFIGS:
        if c.name == name and c.fp8 == bool(fp8):
            return c
    raise ValueError(f"GEMM config {name!r}: expected one of {sorted({c.name for c in GEMM_CONFIGS})}")


@dataclass(frozen=True)
class MoeDims:
    """Host-known shapes of one call (mirror of mla::kernels::moe::Dims). Routing flags do not change the plan."""

    tokens: int  # T = B * S
    hidden: int  # d
    inter: int  # I, moe_intermediate_size
    num_experts: int  # E
    top_k: int  # K
    n_group: int
    dtype: str  # "float16", "bfloat16", "float32"
    fp8_experts: int = 0  # 1: gate_up_proj / down_proj in FP8 with block scales (contract version 2)
    local_experts: int = 0  # El, the experts held (contract version 3); 0: all num_experts

    @property
    def held_experts(self) -> int:
        """El: the experts this call's weight stacks hold (num_experts unless local_experts says fewer)."""
        return self.local_experts or self.num_experts


@dataclass(frozen=True)
class ChunkPlan:
    """The launches of one chunk of `tokens` tokens. Grids are (x, y, z)."""

    tokens: int
    config: GemmConfig
    slots: int  # tokens * top_k
    max_blocks: int
    logits_grid: tuple[int, int, int]
    topk_grid: tuple[int, int, int]
    count_grid: tuple[int, int, int]
    align_grid: tuple[int, int, int]
    gate_up_grid: tuple[int, int, int]
    down_grid: tuple[int, int, int]
    combine_grid: tuple[int, int, int]

    def grids(self) -> tuple[tuple[int, int, int], ...]:
        """Grids in KERNEL_KINDS order."""
        return (self.logits_grid, self.topk_grid, self.count_grid, self.align_grid, self.gate_up_grid,
                self.down_grid, self.combine_grid)


@dataclass(frozen=True)
class MoePlan:
    """Every launch decision of one call: chunks, their launches, the workspace layout."""

    chunk_tokens: int
    num_chunks: int
    topk_block_e: int
    full: ChunkPlan  # every chunk but the last
    last: ChunkPlan  # the last chunk (== full when T is a multiple of chunk_tokens)
    logits_offset: int
    ids_offset: int
    weights_offset: int
    counts_offset: int
    sorted_offset: int
    block_expert_offset: int
    act_offset: int
    y_offset: int
    workspace_bytes: int

    def chunk(self, index: int) -> tuple[int, ChunkPlan]:
        """(first token, plan) of chunk `index`."""
        return index * self.chunk_tokens, self.last if index == self.num_chunks - 1 else self.full


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _align(n: int) -> int:
    return _cdiv(n, WORKSPACE_ALIGN) * WORKSPACE_ALIGN


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def topk_block_e(num_experts: int) -> int:
    """The top-k kernel's padded expert count: the smallest of TOPK_BLOCK_ES holding E (else the next power of 2,
    Python API only)."""
    for block in TOPK_BLOCK_ES:
        if num_experts <= block:
            return block
    return _next_pow2(num_experts)


def choose_config(tokens: int, top_k: int, num_experts: int, fp8: bool = False) -> GemmConfig:
    """decode while the chunk's slots average at most DECODE_SLOTS_PER_EXPERT per expert, else prefill (the
    FP8 pair for FP8 experts)."""
    index = 0 if tokens * top_k <= DECODE_SLOTS_PER_EXPERT * num_experts else 1
    return GEMM_CONFIGS[index + (FP8_CONFIG_OFFSET if fp8 else 0)]


def max_blocks(slots: int, num_experts: int, block_m: int) -> int:
    """Upper bound of sum_e cdiv(count_e, block_m) over any routing of `slots` slots."""
    return _cdiv(slots, block_m) + min(num_experts, slots)


def chunk_plan(dims: MoeDims, tokens: int, config: GemmConfig | None = None) -> ChunkPlan:
    """The launches of a chunk of `tokens` tokens; `config` overrides the decode/prefill rule (tests)."""
    cfg = config or choose_config(tokens, dims.top_k, dims.num_experts, bool(dims.fp8_experts))
    slots = tokens * dims.top_k
    blocks = max_blocks(slots, dims.held_experts, cfg.block_m)
    return ChunkPlan(
        tokens=tokens, config=cfg, slots=slots, max_blocks=blocks,
        logits_grid=(_cdiv(tokens, ROUTER_BLOCK_T), _cdiv(dims.num_experts, ROUTER_BLOCK_E), 1),
        topk_grid=(_cdiv(tokens, TOPK_BLOCK_T), 1, 1),
        count_grid=(_cdiv(dims.held_experts, COUNT_BLOCK_E), 1, 1),
        align_grid=(dims.held_experts, 1, 1),
        gate_up_grid=(blocks, _cdiv(dims.inter, cfg.block_n), 1),
        down_grid=(blocks, _cdiv(dims.hidden, cfg.block_n), 1),
        combine_grid=(tokens, _cdiv(dims.hidden, COMBINE_BLOCK_D), 1),
    )


def make_plan(dims: MoeDims, chunk_tokens: int | None = None, config: str | None = None) -> MoePlan:
    """The plan for `dims`. `chunk_tokens` and `config` (a GEMM_CONFIGS name) override the defaults (tests)."""
    chunk = chunk_tokens or CHUNK_TOKENS
    if chunk < 1:
        raise ValueError(f"chunk_tokens must be >= 1, got {chunk}")
    cfg = config_named(config, bool(dims.fp8_experts)) if config is not None else None
    num_chunks = _cdiv(dims.tokens, chunk) if dims.tokens > 0 else 0
    full = chunk_plan(dims, min(dims.tokens, chunk), cfg)
    last = chunk_plan(dims, dims.tokens - (num_chunks - 1) * chunk, cfg) if num_chunks > 1 else full
    rows = max(p.max_blocks * p.config.block_m for p in (full, last))  # padded rows of the largest chunk
    blocks = max(full.max_blocks, last.max_blocks)
    elem = ELEMENT_BYTES[dims.dtype]
    sizes = (full.tokens * dims.num_experts * 4, full.slots * 4, full.slots * 4, dims.held_experts * 4, rows * 4,
             blocks * 4, rows * dims.inter * elem, full.slots * dims.hidden * elem)
    offsets = []
    at = 0
    for size in sizes:
        offsets.append(at)
        at += _align(size)
    return MoePlan(chunk, num_chunks, topk_block_e(dims.num_experts), full, last, *offsets, workspace_bytes=at)


# Reasons of unsupported_reason, word for word those of mla::kernels::moe::unsupportedReason.
REASON_DTYPE = "dtype: the AOT kernels are compiled for float16 and bfloat16 only"
REASON_EXPERTS = f"num_experts: the AOT kernels take 1 to {MAX_EXPERTS} routed experts"
REASON_LOCAL_EXPERTS = "local experts: a call holds 1 to num_experts of the routed experts"
REASON_TOP_K = f"top_k: the AOT kernels take 1 to {MAX_TOP_K} experts per token"
REASON_GROUPS = f"n_group: the AOT kernels take 1 to {MAX_GROUPS} expert groups"
REASON_DIMS = (f"hidden_size and moe_intermediate_size must be positive multiples of {DIM_MULTIPLE} "
               "for the AOT kernels")
REASON_NEGATIVE = "negative number of tokens"


def unsupported_reason(dims: MoeDims) -> str | None:
    """Why the AOT kernels (the plugin) cannot run `dims`, or None. Mirrored by moe::unsupportedReason."""
    if dims.dtype not in AOT_DTYPES:
        return REASON_DTYPE
    if not 1 <= dims.num_experts <= MAX_EXPERTS:
        return REASON_EXPERTS
    if not 1 <= dims.held_experts <= dims.num_experts:
        return REASON_LOCAL_EXPERTS
    if not 1 <= dims.top_k <= min(MAX_TOP_K, dims.num_experts):
        return REASON_TOP_K
    if not 1 <= dims.n_group <= MAX_GROUPS:
        return REASON_GROUPS
    if min(dims.hidden, dims.inter) < 1 or dims.hidden % DIM_MULTIPLE or dims.inter % DIM_MULTIPLE:
        return REASON_DIMS
    if dims.tokens < 0:
        return REASON_NEGATIVE
    return None


# Kernel kinds, in launch order.
KERNEL_KINDS = ("router_logits", "topk", "count", "align", "gate_up", "down", "combine")
TYPED_KINDS = ("router_logits", "gate_up", "down", "combine")  # specialized per element type T
DTYPE_FREE = ""  # the dtype of kernels that read no T tensor


@dataclass(frozen=True)
class KernelSpec:
    """One AOT-compiled specialization; its position in `aot_kernel_table()` is its index in C++.
    variant: the GEMM config index (gate_up, down), the padded expert count (topk), else 0."""

    kind: str
    dtype: str  # DTYPE_FREE for topk/count/align
    variant: int
    num_warps: int
    num_stages: int


def aot_kernel_table() -> tuple[KernelSpec, ...]:
    """Every specialization the plugin needs."""
    table = [KernelSpec("topk", DTYPE_FREE, block, TOPK_NUM_WARPS, 1) for block in TOPK_BLOCK_ES]
    table.append(KernelSpec("count", DTYPE_FREE, 0, COUNT_NUM_WARPS, 1))
    table.append(KernelSpec("align", DTYPE_FREE, 0, ALIGN_NUM_WARPS, 1))
    for dtype in AOT_DTYPES:
        table.append(KernelSpec("router_logits", dtype, 0, ROUTER_NUM_WARPS, 2))
        for ci, cfg in enumerate(GEMM_CONFIGS):
            table.append(KernelSpec("gate_up", dtype, ci, cfg.num_warps, cfg.num_stages))
            table.append(KernelSpec("down", dtype, ci, cfg.num_warps, cfg.num_stages))
        table.append(KernelSpec("combine", dtype, 0, COMBINE_NUM_WARPS, 1))
    return tuple(table)


def kernel_variant(kind: str, plan: MoePlan, chunk: ChunkPlan) -> int:
    """The `variant` of kernel `kind` in a chunk of `plan`."""
    if kind == "topk":
        return plan.topk_block_e
    if kind in ("gate_up", "down"):
        return GEMM_CONFIGS.index(chunk.config)
    return 0


def kernel_indices(plan: MoePlan, chunk: ChunkPlan, dtype: str) -> tuple[int, ...]:
    """Indices into `aot_kernel_table()` of the launches of `chunk`, in KERNEL_KINDS order."""
    table = aot_kernel_table()
    found = []
    for kind in KERNEL_KINDS:
        key = (kind, dtype if kind in TYPED_KINDS else DTYPE_FREE, kernel_variant(kind, plan, chunk))
        matches = [i for i, k in enumerate(table) if (k.kind, k.dtype, k.variant) == key]
        if len(matches) != 1:
            raise KeyError(key)
        found.append(matches[0])
    return tuple(found)


def kernel_constexprs(kind: str, variant: int, dtype: str, native: bool = False) -> dict:
    """The tl.constexpr arguments of kernel `kind`: one definition for the Python API and the AOT build.
    `native`: FP8 configs use FP8 x FP8 products (the device's or the compiled arch's `native_fp8`)."""
    if kind == "router_logits":
        return {"BLOCK_T": ROUTER_BLOCK_T, "BLOCK_E": ROUTER_BLOCK_E, "BLOCK_D": ROUTER_BLOCK_D}
    if kind == "topk":
        return {"BLOCK_T": TOPK_BLOCK_T, "BLOCK_E": variant, "BLOCK_G": MAX_GROUPS, "BLOCK_K": MAX_TOP_K}
    if kind == "count":
        return {"BLOCK_E": COUNT_BLOCK_E, "CHUNK": COUNT_CHUNK}
    if kind == "align":
        return {"CHUNK": ALIGN_CHUNK}
    if kind in ("gate_up", "down"):
        cfg = GEMM_CONFIGS[variant]
        return {"BLOCK_M": cfg.block_m, "BLOCK_N": cfg.block_n, "BLOCK_K": cfg.block_k,
                "INPUT_PRECISION": "ieee" if dtype == "float32" else "tf32", "FP8": int(cfg.fp8),
                "NATIVE_FP8": int(cfg.fp8 and native)}
    if kind == "combine":
        return {"BLOCK_D": COMBINE_BLOCK_D}
    raise ValueError(f"unknown kernel kind {kind!r}")


# Runtime arguments of each kernel kind, in the kernels' order: (name, Triton type), "T" standing for the
# element type and "*W" for the expert weights' (T, or "*u8" for FP8 experts: e4m3 bytes; their "scale_ptr"
# is then read, else unused and passed null). "E" is num_experts (routing), "E_local" the experts held (El).
# The hand-written C++ launchers (plugins/kernels/moeKernels.cpp) pass them in this order, then
# Triton's global-scratch and profile-scratch pointers. "D" and "I" are declared multiples of DIM_MULTIPLE.
RUNTIME_ARGS = {
    "router_logits": (("hidden_ptr", "*T"), ("router_ptr", "*fp32"), ("logits_ptr", "*fp32"), ("T", "i32"),
                      ("E", "i32"), ("D", "i32")),
    "topk": (("logits_ptr", "*fp32"), ("bias_ptr", "*fp32"), ("ids_ptr", "*i32"), ("weights_ptr", "*fp32"),
             ("T", "i32"), ("E", "i32"), ("top_k", "i32"), ("n_group", "i32"), ("topk_group", "i32"),
             ("scoring", "i32"), ("group_score", "i32"), ("use_bias", "i32"), ("normalize", "i32"),
             ("weight_scale", "fp32")),
    "count": (("ids_ptr", "*i32"), ("counts_ptr", "*i32"), ("num_slots", "i32"), ("E_local", "i32"),
              ("first_expert", "i32")),
    "align": (("ids_ptr", "*i32"), ("counts_ptr", "*i32"), ("sorted_ptr", "*i32"), ("block_expert_ptr", "*i32"),
              ("num_slots", "i32"), ("E_local", "i32"), ("first_expert", "i32"), ("block_m", "i32"),
              ("max_blocks", "i32")),
    "gate_up": (("hidden_ptr", "*T"), ("w_ptr", "*W"), ("scale_ptr", "*fp32"), ("sorted_ptr", "*i32"), ("block_expert_ptr", "*i32"),
                ("act_ptr", "*T"), ("num_slots", "i32"), ("top_k", "i32"), ("D", "i32"), ("I", "i32")),
    "down": (("act_ptr", "*T"), ("w_ptr", "*W"), ("scale_ptr", "*fp32"), ("sorted_ptr", "*i32"), ("block_expert_ptr", "*i32"),
             ("weights_ptr", "*fp32"), ("y_ptr", "*T"), ("num_slots", "i32"), ("D", "i32"), ("I", "i32")),
    "combine": (("y_ptr", "*T"), ("ids_ptr", "*i32"), ("out_ptr", "*T"), ("top_k", "i32"), ("D", "i32"),
                ("first_expert", "i32"), ("E_local", "i32")),
}
DIVISIBLE_ARGS = ("D", "I")
_TRITON_TYPES = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32", DTYPE_FREE: "fp32"}


def runtime_args(kind: str, dtype: str = "float16", fp8: bool = False) -> list[tuple[str, str]]:
    """(name, Triton type) of the runtime arguments of `kind` for element type `dtype` (and FP8 experts), in
    order."""
    types = {"*T": "*" + _TRITON_TYPES[dtype], "*W": "*u8" if fp8 else "*" + _TRITON_TYPES[dtype]}
    return [(name, types.get(ty, ty)) for name, ty in RUNTIME_ARGS[kind]]


def kernel_signature(spec: KernelSpec, arch: int | None = None) -> tuple[dict, dict, dict]:
    """(signature, constexprs, attrs) of `spec` compiled for compute capability `arch` (which decides NATIVE_FP8)
    for Triton's ASTSource: runtime arguments then constexprs; every pointer is declared 16-byte aligned, and D and
    I multiples of DIM_MULTIPLE."""
    fp8 = spec.kind in ("gate_up", "down") and GEMM_CONFIGS[spec.variant].fp8
    runtime = runtime_args(spec.kind, spec.dtype, fp8)
    constexprs = kernel_constexprs(spec.kind, spec.variant, spec.dtype, arch is not None and native_fp8(arch))
    sig = dict(runtime)
    sig.update({k: "constexpr" for k in constexprs})
    attrs = {(i,): [["tt.divisibility", 16]] for i, (name, ty) in enumerate(runtime)
             if ty.startswith("*") or name in DIVISIBLE_ARGS}
    return sig, constexprs, attrs
