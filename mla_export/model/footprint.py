"""How big a model is, and whether this machine can hold the work: parameter counts (total, and activated
per token), bytes per dtype, and the up-front disk and memory checks of export and validate.

Counts follow the parameters of the eager model (`model.py`); the checks refuse, before any work starts,
what would run out of disk or memory, with the estimate and what is available, each in the unit its size
calls for (KiB, MiB or GiB: never "0.0 GiB").
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from ..common import contract
from ..common.console import size_text
from ..common.errors import UserError
from .config import MlaConfig

GIB = 1 << 30


@dataclass(frozen=True)
class LayerCounts:
    """Parameters of one decoder layer: attention (unfolded and pre-folded), norms, MLP; for an MoE layer
    `routed_expert` is one routed expert's SwiGLU and `experts` how many there are."""

    attention: int
    attention_prefolded: int
    norms: int
    mlp: int  # dense MLP, or router + shared experts of an MoE layer
    routed_expert: int = 0
    experts: int = 0
    top_k: int = 0

    def total(self, prefolded: bool = False) -> int:
        attention = self.attention_prefolded if prefolded else self.attention
        return attention + self.norms + self.mlp + self.experts * self.routed_expert

    def activated(self) -> int:
        """Parameters one token uses (top_k of the routed experts)."""
        return self.attention + self.norms + self.mlp + self.top_k * self.routed_expert


def layer_counts(c: MlaConfig, layer: int) -> LayerCounts:
    h, dh, dr, dv, dc, d = (c.num_attention_heads, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim,
                            c.kv_lora_rank, c.hidden_size)
    q_in = c.q_lora_rank if c.q_lora_rank is not None else d
    compression = d * c.q_lora_rank + c.q_lora_rank if c.q_lora_rank is not None else 0
    latent = d * (dc + dr) + dc  # kv_a_proj_with_mqa, kv_a_layernorm
    attention = compression + q_in * h * (dh + dr) + latent + dc * h * (dh + dv) + h * dv * d
    prefolded = compression + q_in * h * (dc + dr) + latent + h * dc * d
    if not c.is_moe_layer(layer):
        return LayerCounts(attention, prefolded, 2 * d, 3 * d * c.intermediate_size)
    inter = c.moe_intermediate_size
    shared = 3 * d * inter * (c.n_shared_experts or 0)
    router = c.n_routed_experts * (d + 1)
    return LayerCounts(attention, prefolded, 2 * d, router + shared, 3 * d * inter, c.n_routed_experts,
                       c.num_experts_per_tok)


@dataclass(frozen=True)
class ModelCounts:
    total: int  # every parameter of the unfolded model
    activated: int  # per token
    exported: int  # values the pre-folded export stores (rope table aside)
    expert: int  # routed-expert parameters (all layers)
    activated_expert: int  # routed-expert parameters one token reads (all layers)


def model_counts(c: MlaConfig, with_embeddings: bool = True) -> ModelCounts:
    layers = [layer_counts(c, i) for i in range(c.num_hidden_layers)]
    edges = (2 * c.vocab_size * c.hidden_size + c.hidden_size) if with_embeddings else 0
    return ModelCounts(
        total=sum(lc.total() for lc in layers) + edges,
        activated=sum(lc.activated() for lc in layers) + edges,
        exported=sum(lc.total(prefolded=True) for lc in layers) + edges,
        expert=sum(lc.experts * lc.routed_expert for lc in layers),
        activated_expert=sum(lc.top_k * lc.routed_expert for lc in layers))


def available_memory() -> int | None:
    """Bytes of memory available to a new process (Linux MemAvailable), or None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_free_disk(directory: Path, need: int, what: str) -> None:
    """Refuse `what` up front when `directory`'s file system has less than `need` bytes free."""
    free = shutil.disk_usage(directory).free
    if need > free:
        raise UserError(f"{what} needs {size_text(need)} of disk in {directory}, which has {size_text(free)} free; "
                        "free space, or export fewer --layers or a smaller --dtype")


def check_memory(need: int, what: str, hint: str) -> None:
    """Refuse `what` up front when it needs more memory than is available (where that is known)."""
    free = available_memory()
    if free is not None and need > free:
        raise UserError(f"{what} needs about {size_text(need)} of memory and {size_text(free)} is available; {hint}")


def export_peak_bytes(c: MlaConfig, dtype_bytes: int) -> int:
    """Estimated peak memory of a layer-by-layer export: the largest layer's attention read in float32 and
    folded in float64, the largest other tensor in float32 and in `dtype_bytes`, and the process itself."""
    h, dc, d = c.num_attention_heads, c.kv_lora_rank, c.hidden_size
    q_in = c.q_lora_rank if c.q_lora_rank is not None else d
    attention = max(layer_counts(c, i).attention for i in range(c.num_hidden_layers))
    folding = 8 * (q_in * h * dc + q_in * h * (c.qk_nope_head_dim + c.qk_rope_head_dim)) + dtype_bytes * h * dc * d
    largest = max(c.vocab_size * d, d * c.intermediate_size)
    return 4 * attention + folding + (4 + dtype_bytes) * largest + 1 * GIB


def validate_peak_bytes(c: MlaConfig, data_bytes: int, with_embeddings: bool) -> int:
    """Estimated peak memory of `validate --onnx`: the float64 eager model, ONNX Runtime's copy of the
    exported weights (`data_bytes`, read once and partly copied), and the process itself: within 5% of the measured
    peak of deepseek-v2-lite --layers 3 (17.2 GiB, benchmarks/RESULTS.md)."""
    return 8 * model_counts(c, with_embeddings).total + 3 * data_bytes // 2 + 1 * GIB


def per_layer_validate_peak_bytes(c: MlaConfig, dtype_bytes: int, prefolded: bool, with_embeddings: bool) -> int:
    """Estimated peak memory of `validate --per-layer`: the largest part, its float64 reference layer or ONNX
    Runtime's copy of its exported weights (one after the other; the embedding and head: their float32
    matrix beside it), and the process."""
    layers = [layer_counts(c, i) for i in range(c.num_hidden_layers)]
    layer = max(max(8 * lc.total(), 2 * dtype_bytes * lc.total(prefolded)) for lc in layers)
    edge = (4 + 2 * dtype_bytes) * c.vocab_size * c.hidden_size if with_embeddings else 0
    return max(layer, edge) + 1 * GIB


def fp8_matrices(c: MlaConfig, layer: int, absorb: str) -> list[tuple[int, int, int]]:
    """The FP8 weights of one layer of an FP8 export (`fp8_forms.py`) as (rows, cols, how many)."""
    h, dh, dr, dv, dc, d = (c.num_attention_heads, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim,
                            c.kv_lora_rank, c.hidden_size)
    q_in = c.q_lora_rank if c.q_lora_rank is not None else d
    mats = [(dc + dr, d, 1)] + ([(c.q_lora_rank, d, 1)] if c.q_lora_rank is not None else [])
    if absorb == "prefolded":
        mats += [(h * dc, q_in, 1), (h * dr, q_in, 1), (d, h * dc, 1)]
    else:
        mats += [(h * (dh + dr), q_in, 1), (dc, dh, h), (dv, dc, h), (d, h * dv, 1)]
    if not c.is_moe_layer(layer):
        return mats + [(c.intermediate_size, d, 2), (d, c.intermediate_size, 1)]
    inter, shared = c.moe_intermediate_size, (c.n_shared_experts or 0) * c.moe_intermediate_size
    if shared:
        mats += [(shared, d, 2), (d, shared, 1)]
    return mats + [(2 * inter, d, c.n_routed_experts), (d, inter, c.n_routed_experts)]


def _fp8_bytes(rows: int, cols: int) -> int:
    """One FP8 matrix with its float32 scale per 128x128 block."""
    return rows * cols + -(-rows // 128) * -(-cols // 128) * 4


def weight_bytes(c: MlaConfig, element_bytes: int, quant: str, absorb: str, with_embeddings: bool = True) -> dict:
    """Bytes of the export's weights: per layer (`layers`), `total`, and `per_decode_token` (what one token's
    step reads: every weight but the routed experts, of which top_k per MoE layer). FP8 weights count one
    byte per value plus their scales; everything else (norms, embeddings, head) `element_bytes`, the router
    float32."""
    layers, per_token = [], 0
    for i in range(c.num_hidden_layers):
        lc = layer_counts(c, i)
        router = lc.experts * (c.hidden_size + 1)  # float32 in every form
        total = lc.total(prefolded=absorb == "prefolded") * element_bytes + router * (4 - element_bytes)
        expert = lc.routed_expert * element_bytes
        if quant == "fp8":
            mats = fp8_matrices(c, i, absorb)
            others = lc.norms + (c.q_lora_rank or 0) + c.kv_lora_rank  # the layer norms and the latent norms
            total = sum(n * _fp8_bytes(r, k) for r, k, n in mats) + others * element_bytes + router * 4
            expert = sum(_fp8_bytes(r, k) for r, k, n in mats[-2:]) if lc.experts else 0
        layers.append(total)
        per_token += total - (lc.experts - lc.top_k) * expert if lc.experts else total
    edges = (2 * c.vocab_size * c.hidden_size + c.hidden_size) * element_bytes if with_embeddings else 0
    read = (c.vocab_size * c.hidden_size + 2 * c.hidden_size) * element_bytes if with_embeddings else 0  # head, a row
    return {"layers": layers, "total": sum(layers) + edges, "per_decode_token": per_token + read}


# ------------------------------------------------------------------------------------ per rank of --tp N

@dataclass(frozen=True)
class RankLayer:
    """One layer's weights on one rank of a `--tp` export (DeepSeek-V3's layout, `tp_layout.py`): matrices as
    (rows, cols, how many) in the form the export stores, vectors as value counts."""

    attention: list  # projections: q_a_proj, kv_a_proj_with_mqa whole; the per-head ones for H/N heads
    latent_norms: int  # q_a_layernorm, kv_a_layernorm (whole)
    mlp: list  # the dense MLP's 1/N, or the shared experts' 1/N
    expert: list  # one routed expert (gate_up_proj, down_proj)
    local_experts: int  # E/N whole routed experts
    top_k: int
    router: int  # gate.weight [E, d] and its bias (whole, float32)
    norms: int  # input_layernorm, post_attention_layernorm (whole)


def rank_layer(c: MlaConfig, layer: int, tp: int, absorb: str) -> RankLayer:
    """The weights of `layer` on each of `tp` ranks (every rank holds the same shapes)."""
    h, dh, dr, dv, dc, d = (c.num_attention_heads // tp, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim,
                            c.kv_lora_rank, c.hidden_size)
    q_in = c.q_lora_rank if c.q_lora_rank is not None else d
    attention = [(dc + dr, d, 1)] + ([(c.q_lora_rank, d, 1)] if c.q_lora_rank is not None else [])
    if absorb == "prefolded":  # q_latent_proj [h*Dc, q_in], q_pe_proj [h*Dr, q_in], out_proj [d, h*Dc]
        attention += [(h * dc, q_in, 1), (h * dr, q_in, 1), (d, h * dc, 1)]
    else:  # q_up_proj [h*(Dn+Dr), q_in], W_UK^T [h, Dc, Dn], W_UV [h, Dv, Dc], o_proj [d, h*Dv]
        attention += [(h * (dh + dr), q_in, 1), (dc, dh, h), (dv, dc, h), (d, h * dv, 1)]
    latent_norms = (c.q_lora_rank or 0) + dc
    if not c.is_moe_layer(layer):
        inter = c.intermediate_size // tp
        return RankLayer(attention, latent_norms, [(inter, d, 2), (d, inter, 1)], [], 0, 0, 0, 2 * d)
    inter, shared = c.moe_intermediate_size, (c.n_shared_experts or 0) * c.moe_intermediate_size // tp
    mlp = [(shared, d, 2), (d, shared, 1)] if shared else []
    return RankLayer(attention, latent_norms, mlp, [(2 * inter, d, 1), (d, inter, 1)], c.n_routed_experts // tp,
                     c.num_experts_per_tok, c.n_routed_experts * (d + 1), 2 * d)


def _matrices_bytes(matrices: list, element_bytes: int, quant: str) -> int:
    return sum(n * (_fp8_bytes(r, k) if quant == "fp8" else r * k * element_bytes) for r, k, n in matrices)


def rank_weight_bytes(c: MlaConfig, tp: int, element_bytes: int, quant: str, absorb: str,
                      with_embeddings: bool = True) -> dict:
    """Bytes of one rank's weights in a `--tp` export (rank 0's = every rank's: the split is even), by part:
    `attention` (projections, latent norms), `mlp` (dense MLP or router, shared and local routed experts),
    `embeddings_head_norms` (the vocab/N rows of embed_tokens and lm_head, the final and layer norms), `total`,
    `layers` (per layer) and `per_decode_token` (what one token's step reads on a rank: every weight but the
    routed experts, of which top_k/N per MoE layer with routing balanced; lm_head's rows, one embedding row,
    the final norm). Units as `weight_bytes`, which tp=1 reproduces; `tp` must split `c` (`tp_layout`)."""
    attention = mlp = norms = per_token = 0
    layers = []
    for i in range(c.num_hidden_layers):
        part = rank_layer(c, i, tp, absorb)
        layer_attention = _matrices_bytes(part.attention, element_bytes, quant) + part.latent_norms * element_bytes
        expert = _matrices_bytes(part.expert, element_bytes, quant)
        layer_mlp = _matrices_bytes(part.mlp, element_bytes, quant) + part.local_experts * expert + 4 * part.router
        attention, mlp, norms = attention + layer_attention, mlp + layer_mlp, norms + part.norms * element_bytes
        layers.append(layer_attention + layer_mlp + part.norms * element_bytes)
        per_token += layers[-1] - part.local_experts * expert + part.top_k * expert // tp
    d = c.hidden_size
    edges = (2 * c.vocab_size // tp * d + d) * element_bytes if with_embeddings else 0
    read = (c.vocab_size // tp * d + 2 * d) * element_bytes if with_embeddings else 0  # head rows, a row, norm
    return {"attention": attention, "mlp": mlp, "embeddings_head_norms": edges + norms, "total": sum(layers) + edges,
            "layers": layers, "per_decode_token": per_token + read}


def rank_cache_bytes_per_token(c: MlaConfig, tp: int, element_bytes: int, kv_cache_dtype: str = "model") -> dict:
    """Latent-cache bytes per token on one rank of `tp`: per layer and for the whole model. Every rank holds the
    whole cache (c_kv and k_pe are shared by all heads), so any `tp` gives the single-device figure."""
    per_layer = latent_cache_bytes_per_token(c, element_bytes, kv_cache_dtype)
    return {"tp": tp, "per_layer": per_layer, "model": per_layer * c.num_hidden_layers}


def collectives(c: MlaConfig, tp: int, element_bytes: int, with_embeddings: bool = True) -> dict:
    """The collectives of a `--tp` export and their payload per token (values x `element_bytes`, the activation
    type): per layer two AllReduce of the hidden state (after the attention's output projection, after the
    MLP); per model, with the embeddings, one AllReduce after embed_tokens and one AllGather of the logits
    (each rank sends vocab/N values, receives vocab). None at tp=1."""
    if tp == 1:
        return {"per_layer": [], "per_model": [], "bytes_per_token": 0}
    d, vocab = c.hidden_size, c.vocab_size

    def reduce(after: str) -> dict:
        return {"op": "AllReduce", "after": after, "values": d, "bytes": d * element_bytes}

    per_layer = [reduce("the attention output projection"), reduce("the MLP (MoE: routed + shared)")]
    per_model = []
    if with_embeddings:
        per_model = [reduce("embed_tokens"), {"op": "AllGather", "after": "lm_head", "values": vocab // tp,
                                              "bytes": vocab // tp * element_bytes,
                                              "received_bytes": vocab * element_bytes}]
    total = c.num_hidden_layers * sum(x["bytes"] for x in per_layer) + sum(x["bytes"] for x in per_model)
    return {"per_layer": per_layer, "per_model": per_model, "bytes_per_token": total}


# ------------------------------------------------------------------------------------ latent cache sizing

MAX_PAGE_SIZE = contract.MAX_PAGE_SIZE  # ModelSpec.page_size's bound (rows per page)


def latent_cache_bytes_per_token(c: MlaConfig, element_bytes: int, kv_cache_dtype: str = "model") -> int:
    """Bytes of one token's latent-cache row in one layer. "model": Dc+Dr values of `element_bytes`; "fp8"
    (contract version 2, FlashMLA's DeepSeek-V3.2 format): Dc e4m3 codes, one float32 scale per
    FP8_CACHE_TILE of them, Dr k_pe values of `element_bytes` (656 B at Dc=512, Dr=64 in bfloat16)."""
    if kv_cache_dtype == "model":
        return c.cache_width * element_bytes
    scales = -(-c.kv_lora_rank // contract.FP8_CACHE_TILE)
    return c.kv_lora_rank + 4 * scales + c.qk_rope_head_dim * element_bytes


def check_page_size(page_size: int) -> None:
    """Refuse a page size that is not a power of two from 1 to MAX_PAGE_SIZE."""
    if page_size < 1 or page_size & (page_size - 1) or page_size > MAX_PAGE_SIZE:
        raise UserError(f"--page-size {page_size}: expected a power of two from 1 to {MAX_PAGE_SIZE} (rows per "
                        f"page; {contract.DEFAULT_PAGE_SIZE} is FlashMLA's and vLLM's)")


def contiguous_sequences(memory: int, max_seq_len: int, bytes_per_token: int) -> int:
    """Sequences a contiguous cache of `memory` bytes holds: each reserves `max_seq_len` rows whatever its
    length (`bytes_per_token`: all layers)."""
    return memory // (max_seq_len * bytes_per_token)


def paged_sequences(memory: int, context: int, page_size: int, bytes_per_token: int) -> int:
    """Sequences of `context` tokens a paged cache of `memory` bytes holds: each takes its rows plus, on
    average over lengths, half a page left empty in its last page (`bytes_per_token`: all layers)."""
    return 2 * memory // ((2 * context + page_size) * bytes_per_token)
