"""The op contracts (`MlaAttention`, `DeepseekMoE`): every name the ONNX graph, the kernels and the
plugins share.

Defined once here and mirrored in `plugins/mlaAttentionPlugin/mlaContract.h` and
`plugins/deepseekMoePlugin/moeContract.h`; tests check exported graphs (and the plugin READMEs)
against this module.

Semantics (T is float32, float16 or bfloat16):

    inputs  0 q_latent      [B, S, H, Dc]     T      absorbed query (W_UK folded in)
            1 q_pe          [B, S, H, Dr]     T      RoPE part of the query, not yet rotated
            2 kv_latent     [B, S, Dc]        T      new tokens' c_kv, after its RMSNorm
            3 k_pe          [B, S, Dr]        T      new tokens' shared RoPE key, not yet rotated
            4 past_cache    [B, Smax, Dc+Dr]  T      latent cache, rows [0, cache_seqlens[b]) valid
            5 cache_seqlens [B]               int32  valid rows per sequence before this call
            6 rope_cos_sin  [Smax, Dr]        float32 row p = cos(p*theta_i) for i < Dr/2, then sin
    outputs 0 attn_latent   [B, S, H, Dc]     T      softmax(q.k * scale) @ c_kv, per head
            1 present_cache [B, Smax, Dc+Dr]  T      past_cache with rows cache_seqlens[b]+i set
                                                     to [kv_latent ; rotated k_pe]

New token i of sequence b sits at position p = cache_seqlens[b] + i, is rotated at p (pairs
(2k, 2k+1), DeepSeek's convention) and attends to rows 0..p. Rows past p are never read; rows
past cache_seqlens[b] + S - 1 are never written; cache_seqlens[b] + S > Smax is out of contract.
"""

from __future__ import annotations

CONTRACT_VERSION = 1

OP_TYPE = "MlaAttention"
OP_DOMAIN = "mla"
OP_DOMAIN_VERSION = 1
PLUGIN_NAME = OP_TYPE
PLUGIN_NAMESPACE = "mla"
PLUGIN_VERSION = "1"

# Op inputs/outputs, in order.
OP_INPUTS = ("q_latent", "q_pe", "kv_latent", "k_pe", "past_cache", "cache_seqlens", "rope_cos_sin")
OP_OUTPUTS = ("attn_latent", "present_cache")

# Attribute name -> ONNX attribute type name. String attributes for the parser's plugin look-up
# are separate: they are consumed by TensorRT's parser, not passed to the creator.
OP_ATTRIBUTES = {
    "num_heads": "INT",
    "kv_lora_rank": "INT",
    "qk_rope_head_dim": "INT",
    "softmax_scale": "FLOAT",
}
PLUGIN_LOOKUP_ATTRIBUTES = {"plugin_namespace": PLUGIN_NAMESPACE, "plugin_version": PLUGIN_VERSION}

# Contract version 2 (issue 24): the latent cache paged and/or stored as FP8. A node of version 2 appends inputs
# (indices 0-6 keep their meaning, so version-1 constants stay valid) and has two more attributes:
#
#     attribute page_size INT      rows per page (a power of two, e.g. 64 or 16); 0: contiguous (one "page" of
#                                  Smax rows per sequence, block_table ignored: page b of the pool is sequence b)
#     attribute kv_cache_dtype INT KV_CACHE_DTYPE_MODEL (rows in T) or KV_CACHE_DTYPE_FP8 (below)
#     4 past_cache    [P, page, Dc+Dr] T (model dtype)  or  [P, page, Dc] float8e4m3fn (fp8: c_kv's codes)
#     7 block_table   [B, max_pages] int32   row b, slot j -> the pool page holding positions [j*page,
#                                            (j+1)*page) of sequence b; slots past ceil((cache_seqlens[b] +
#                                            S) / page) are never read (any value). Contiguous: [B, 1], ignored.
#     8 past_scale    fp8 only: [P, page, ceil(Dc/128)] float32   c_kv's scale per 128 values per token
#     9 past_rope     fp8 only: [P, page, Dr] T                   the rotated k_pe, in T
#     outputs 1 present_cache (input 4 updated), fp8: 2 present_scale (input 8), 3 present_rope (input 9)
#
# Token i of sequence b sits at position p = cache_seqlens[b] + i, in page block_table[b, p // page], row
# p % page. FP8 rows (FlashMLA's DeepSeek-V3.2 format as three planes): c_kv split in tiles of
# FP8_CACHE_TILE values (the last may be partial); scale = 2^ceil(log2(max(amax(|tile|) / 448,
# FP8_CACHE_MIN_SCALE))) (a power of two: dequantizing is exact); code = e4m3(value / scale), round to nearest
# even, saturated; value read back = float(code) * scale. 656 bytes per token at DeepSeek's dims in bfloat16
# (512 codes + 4 x 4 scale bytes + 64 x 2 RoPE bytes) against 1,152. A page id outside [0, P) among the slots
# a call reads or writes is out of contract: no implementation reads or writes outside the pool.
CACHE_CONTRACT_VERSION = 2
READABLE_CONTRACT_VERSIONS = (1, 2)
OP_PAGED_INPUTS = OP_INPUTS + ("block_table",)
OP_FP8_CACHE_INPUTS = OP_PAGED_INPUTS + ("past_scale", "past_rope")
OP_FP8_CACHE_OUTPUTS = OP_OUTPUTS + ("present_scale", "present_rope")
OP_CACHE_ATTRIBUTES = {"page_size": "INT", "kv_cache_dtype": "INT"}
KV_CACHE_DTYPE_MODEL, KV_CACHE_DTYPE_FP8 = 0, 1
CACHE_LAYOUTS = ("contiguous", "paged")  # export --cache
KV_CACHE_DTYPES = ("model", "fp8")  # export --kv-cache-dtype ("model": the export's --dtype)
DEFAULT_PAGE_SIZE = 64  # FlashMLA's and vLLM's page
MAX_PAGE_SIZE = 4096  # --page-size: a power of two from 1 to this
FP8_CACHE_TILE = 128
FP8_CACHE_MIN_SCALE = 1e-4

# The `DeepseekMoE` op: the routed experts of one DeepSeek MoE MLP (router included; the shared experts
# stay standard ops). Semantics in mla_export/moe.py; T is float32, float16 or bfloat16.
#
#     inputs  0 hidden_states   [B, S, d]      T        the MLP's input (after post_attention_layernorm)
#             1 router_weight   [E, d]         float32  mlp.gate.weight; logits = hidden @ router_weight^T
#             2 score_bias      [E]            float32  e_score_correction_bias (selection only; read iff use_bias)
#             3 gate_up_proj    [E, 2I, d]     T        expert j's gate_proj rows, then its up_proj rows
#             4 down_proj       [E, d, I]      T        expert j's down_proj   (E_local for 3-6 in version 3)
#     outputs 0 routed_output   [B, S, d]      T        sum over the token's top_k experts of
#                                                       weight * down(silu(gate(x)) * up(x))
#
# Version 2 adds FP8 experts (`--quant fp8`): gate_up_proj and down_proj as float8e4m3fn, each followed by its
# float32 block scales (FP8 block convention below), as two more inputs:
#             5 gate_up_scale   [E, ceil(2I/128), ceil(d/128)]  float32
#             6 down_scale      [E, ceil(d/128), ceil(I/128)]   float32
# A node has 5 inputs (experts in T) or 7 (experts in FP8). Version-1 files (5 inputs) still read.
#
# Version 3 adds a rank's slice of the experts (`export --tp N`, DeepSeek-V3's MoE layout): the INT attribute
# first_expert (MOE_SLICE_ATTRIBUTES; 0 in a single-device export). gate_up_proj, down_proj and their FP8 scales
# then have leading dim E_local <= num_experts (E/N on a rank), entry j being global expert first_expert + j;
# num_experts stays the global E, router_weight and score_bias stay whole, and routing is computed over all E
# on every rank. routed_output sums only the token's top_k experts in [first_expert, first_expert + E_local)
# (the others contribute 0); the ranks' outputs are summed by an AllReduce outside the node. Files of versions 1
# and 2 (no first_expert) read as first_expert 0, E_local = E.
MOE_CONTRACT_VERSION = 3
MOE_READABLE_VERSIONS = (1, 2, 3)
MOE_OP_TYPE = "DeepseekMoE"
MOE_PLUGIN_NAME = MOE_OP_TYPE
MOE_INPUTS = ("hidden_states", "router_weight", "score_bias", "gate_up_proj", "down_proj")
MOE_FP8_INPUTS = MOE_INPUTS + ("gate_up_scale", "down_scale")
MOE_OUTPUTS = ("routed_output",)
MOE_ATTRIBUTES = {
    "num_experts": "INT",   # E
    "top_k": "INT",         # experts per token
    "n_group": "INT",       # expert groups (1: no group limit)
    "topk_group": "INT",    # groups kept per token
    "scoring_func": "INT",  # MOE_SCORING_*
    "group_score": "INT",   # MOE_GROUP_SCORE_*
    "use_bias": "INT",      # 1: score_bias added to the scores for selection
    "normalize": "INT",     # 1: weights divided by their sum (+1e-20)
    "weight_scale": "FLOAT",  # factor on the (normalized) weights
}
MOE_SLICE_ATTRIBUTES = {"first_expert": "INT"}  # version 3: global id of the node's expert 0 (RoutingRule's are above)
MOE_SCORING_SOFTMAX, MOE_SCORING_SIGMOID = 0, 1
MOE_GROUP_SCORE_MAX, MOE_GROUP_SCORE_TOP2_SUM = 0, 1

# FP8 weights (`--quant fp8`), DeepSeek's block convention: a weight W [..., R, C] is stored as float8e4m3fn
# `q` with a float32 scale per block of FP8_BLOCK x FP8_BLOCK elements (the last block of a row or column may
# be partial): scale_inv [..., ceil(R/128), ceil(C/128)], W[..., r, c] = float(q[..., r, c]) * scale_inv[...,
# r // 128, c // 128]. Quantizing takes scale_inv = amax(|block|) / FP8_MAX (1.0 for an all-zero block).
FP8_BLOCK = 128
FP8_MAX = 448.0  # largest finite float8e4m3fn

# The `BlockFp8MatMul` op: a product with a weight in that FP8 form, in a Linear's convention
# (output = input @ W^T, W [out, in] as DeepSeek's checkpoints store it). T is float32, float16 or bfloat16.
#
#     inputs  0 input             [..., K] T       (weight 2-D, or 3-D with G = 1)  or  [G, M, K] T (G > 1)
#             1 weight            [N, K] or [G, N, K]                         float8e4m3fn
#             2 weight_scale_inv  [ceil(N/128), ceil(K/128)] or [G, ceil(N/128), ceil(K/128)]  float32
#     outputs 0 output            [..., N] T  or  [G, M, N] T
#     attribute block_size INT    FP8_BLOCK (the only value supported)
#
# output = input @ dequantize(weight)^T per G, products accumulated in float32, rounded once to T.
FP8_CONTRACT_VERSION = 1
FP8_OP_TYPE = "BlockFp8MatMul"
FP8_PLUGIN_NAME = FP8_OP_TYPE
FP8_INPUTS = ("input", "weight", "weight_scale_inv")
FP8_OUTPUTS = ("output",)
FP8_ATTRIBUTES = {"block_size": "INT"}
QUANT_MODES = ("none", "fp8")  # --quant: weights in the export's dtype, or the large projections in FP8

# Tensor parallelism (`export --tp N`, DeepSeek-V3's `inference/model.py` layout): each rank's graph holds its
# collectives as nodes of domain `mla` with no function body (an identity body would be wrong for N > 1, and a
# runtime that does not know them must fail loudly). `build` rewrites them to TensorRT's `DistCollective`;
# `validate` cuts each rank's graph at them and runs them with torch.distributed (gloo).
#
#     AllReduce   input [...] T  ->  output [...] T: the elementwise sum of every rank's input (rank order)
#                 attribute world_size INT (N)
#     AllGather   input [..., n, ...] T  ->  output [..., N*n, ...] T: the ranks' inputs concatenated along
#                 `axis` in rank order; attributes world_size INT (N), axis INT (negative counts from the end)
#
# Where they sit per rank graph: after the (vocab-split) embedding (--io tokens), after each layer's attention
# output projection (row-parallel), after each MLP (dense: row-parallel down_proj; MoE: the rank's routed
# experts plus its slice of the shared experts, one sum), and an AllGather of the vocab-split logits.
COLLECTIVE_CONTRACT_VERSION = 1
ALL_REDUCE_OP_TYPE = "AllReduce"
ALL_GATHER_OP_TYPE = "AllGather"
COLLECTIVE_INPUTS = ("input",)
COLLECTIVE_OUTPUTS = ("output",)
ALL_REDUCE_ATTRIBUTES = {"world_size": "INT"}
ALL_GATHER_ATTRIBUTES = {"world_size": "INT", "axis": "INT"}
MAX_TP = 64  # --tp: a power of two from 1 to MAX_TP
# `export --tp N -o DIR` writes rank{r}.onnx (r = 0..N-1) and, last (its rename is the commit point), the
# manifest PARALLEL_MANIFEST: {"format": PARALLEL_FORMAT, "version": 1, "world_size": N, "layout":
# PARALLEL_LAYOUT, "export_id": hex, "contract_versions": {...}, "ranks": [{"rank": r, "file": "rank{r}.onnx",
# "sha256": hex of the .onnx file}]}.
PARALLEL_MANIFEST = "parallel.json"
PARALLEL_FORMAT = "mla-export-parallel"
PARALLEL_LAYOUT = "deepseek-v3-tp"


def rank_file_name(rank: int) -> str:
    """The ONNX file of rank `rank` in a `--tp` export directory."""
    return f"rank{rank}.onnx"


# Graph-level I/O names.
CACHE_SEQLENS = "cache_seqlens"
HIDDEN_STATES_IN = "hidden_states"
HIDDEN_STATES_OUT = "output_hidden_states"
INPUT_IDS = "input_ids"
LOGITS = "logits"


def past_cache_name(layer: int) -> str:
    """Graph input holding layer `layer`'s latent cache before the call."""
    return f"past_latent_cache.{layer}"


def present_cache_name(layer: int) -> str:
    """Graph output holding layer `layer`'s latent cache after the call."""
    return f"present_latent_cache.{layer}"


BLOCK_TABLE = "block_table"  # graph input of a paged export: [batch, max_pages] int32, shared by every layer


def past_pages_name(layer: int) -> str:
    """Graph input holding layer `layer`'s page pool (paged exports; FP8: c_kv's codes)."""
    return f"past_latent_pages.{layer}"


def present_pages_name(layer: int) -> str:
    return f"present_latent_pages.{layer}"


def past_scales_name(layer: int) -> str:
    """Graph input holding layer `layer`'s FP8 cache scales (--kv-cache-dtype fp8)."""
    return f"past_latent_scales.{layer}"


def present_scales_name(layer: int) -> str:
    return f"present_latent_scales.{layer}"


def past_rope_name(layer: int) -> str:
    """Graph input holding layer `layer`'s rotated k_pe rows beside FP8 codes (--kv-cache-dtype fp8)."""
    return f"past_latent_rope.{layer}"


def present_rope_name(layer: int) -> str:
    return f"present_latent_rope.{layer}"


def graph_io_names(num_layers: int, io: str, cache: str = "contiguous", kv_cache_dtype: str = "model"
                   ) -> tuple[list[str], list[str]]:
    """(input names, output names) of an exported graph of `num_layers` layers, in order.

    io "hidden": hidden states in and out; io "tokens": input_ids in, logits out. Then cache_seqlens and, per
    layer, its cache: contiguous `past_latent_cache.i`; paged `block_table` (once) and `past_latent_pages.i`;
    with kv_cache_dtype "fp8" each layer's codes, then `past_latent_scales.i` and `past_latent_rope.i`.
    """
    first_in, first_out = (INPUT_IDS, LOGITS) if io == "tokens" else (HIDDEN_STATES_IN, HIDDEN_STATES_OUT)
    past, present = (past_pages_name, present_pages_name) if cache == "paged" else (past_cache_name,
                                                                                   present_cache_name)
    inputs, outputs = [first_in, CACHE_SEQLENS] + ([BLOCK_TABLE] if cache == "paged" else []), [first_out]
    for i in range(num_layers):
        inputs.append(past(i))
        outputs.append(present(i))
        if kv_cache_dtype == "fp8":
            inputs += [past_scales_name(i), past_rope_name(i)]
            outputs += [present_scales_name(i), present_rope_name(i)]
    return inputs, outputs


# Keys of the ONNX model's metadata_props written by export.
META_PRODUCER = "mla_export"
META_CONTRACT_VERSION = "mla_export.contract_version"
META_CONFIG = "mla_export.config"
META_DTYPE = "mla_export.dtype"
META_NUM_LAYERS = "mla_export.num_layers"
META_MAX_SEQ_LEN = "mla_export.max_seq_len"
META_IO = "mla_export.io"
META_SEED = "mla_export.seed"
META_CHECKPOINT = "mla_export.checkpoint"
META_MOE_CONTRACT_VERSION = "mla_export.moe_contract_version"
META_WEIGHTS = "mla_export.weights"  # how random weights derive from the seed (WEIGHTS_SCHEME)
META_DATA_FILE = "mla_export.data_file"  # the external data file of this export, "" when weights are inside
WEIGHTS_SCHEME = "per-name-1"  # weights.RandomWeights: each tensor from (seed, its checkpoint name)
META_ABSORB = "mla_export.absorb"  # absent in files from before --absorb: read as "prefolded"
META_QUANT = "mla_export.quant"  # QUANT_MODES; absent in files from before --quant: read as "none"
# the checkpoint's EOS ids, comma-separated, as generation_config.json (else config.json) gives them ("" when
# none: random weights); `generate` and the C++ token loop stop there (absent in files from before issue 25)
META_EOS_TOKEN_IDS = "mla_export.eos_token_ids"
META_FP8_CONTRACT_VERSION = "mla_export.fp8_contract_version"  # written by --quant fp8 exports
# Written by --tp N exports (N > 1) in every rank's file; absent: a single-device export (tp 1, rank 0).
META_TP_SIZE = "mla_export.tp_size"
META_TP_RANK = "mla_export.tp_rank"
META_TP_EXPORT_ID = "mla_export.tp_export_id"  # the same in every rank of one export (parallel.json's export_id)
META_COLLECTIVE_CONTRACT_VERSION = "mla_export.collective_contract_version"
META_CACHE = "mla_export.cache"  # CACHE_LAYOUTS; absent in files from before issue 24: "contiguous"
META_PAGE_SIZE = "mla_export.page_size"  # rows per page of a paged export
META_KV_CACHE_DTYPE = "mla_export.kv_cache_dtype"  # KV_CACHE_DTYPES; absent: "model"
