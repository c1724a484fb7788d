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
