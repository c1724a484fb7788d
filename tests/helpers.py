"""Shared test helpers: small configs, poisoned caches, and how far MoE routing is from a tie."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from mla_export.common import contract
from mla_export.common.moe_rule import RoutingRule
from mla_export.model.config import MlaConfig, YarnScaling
from mla_export.model.hf_config import load_preset

# The CUDA toolkit's headers (cuda.h, cuda_runtime_api.h), which the C++ builds compile against.
CUDA_INCLUDE = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "include"


def tiny(**overrides) -> MlaConfig:
    return dataclasses.replace(load_preset("tiny"), **overrides)


def tiny_no_q_lora() -> MlaConfig:
    return tiny(q_lora_rank=None, name="tiny-no-q-lora")


def tiny_plain_rope() -> MlaConfig:
    return tiny(rope_scaling=None, name="tiny-plain-rope")


def tiny_coarse_eps() -> MlaConfig:
    """rms_norm_eps 1e-2, far from the latent norms' fixed 1e-6: a form that gives a latent norm the decoder's
    eps (or the reverse) differs from the others by far more than rounding."""
    return tiny(rms_norm_eps=1e-2, name="tiny-coarse-eps")


def yarn(factor=8.0, original=32, mscale=1.0, mscale_all_dim=1.0) -> YarnScaling:
    return YarnScaling(factor=factor, original_max_position_embeddings=original, mscale=mscale,
                       mscale_all_dim=mscale_all_dim)


def history_cache(config: MlaConfig, histories: list[int], max_seq_len: int, seed: int = 0,
                  dtype=torch.float64) -> list[torch.Tensor]:
    """Per-layer caches whose first histories[b] rows are random and the rest NaN."""
    gen = torch.Generator().manual_seed(seed)
    caches = []
    for _ in range(config.num_hidden_layers):
        cache = torch.full((len(histories), max_seq_len, config.cache_width), float("nan"), dtype=dtype)
        for b, rows in enumerate(histories):
            cache[b, :rows] = torch.randn(rows, config.cache_width, generator=gen, dtype=torch.float64).to(dtype)
        caches.append(cache)
    return caches


# Routing computed two ways (kernel, ONNX Runtime, a float64 loop) picks the same experts only when no choice is
# within rounding of a tie; float32 rounds at ~1e-7 of the values compared, so a margin of 1e-4 leaves 1000x.
ROUTING_MARGIN = 1e-4


def routing_margin(logits: torch.Tensor, rule: RoutingRule, bias: torch.Tensor) -> float:
    """How far the routing of `logits [T, E]` is from a tie: the smallest gap, over tokens, between the last
    kept and the first dropped group score, then the last chosen and the first passed-over expert, as a share
    of the larger one's magnitude (bias included), in float64. 0 for an exact tie."""
    logits = logits.detach().double()  # [T, E]
    tokens = logits.shape[0]
    scores = logits.sigmoid() if rule.scoring == contract.MOE_SCORING_SIGMOID else logits.softmax(dim=-1)  # [T, E]
    bias = bias.detach().double() if rule.use_bias else torch.zeros(rule.num_experts, dtype=torch.float64)  # [E]
    choice, size = scores + bias, scores.abs() + bias.abs()  # [T, E]: what is ranked, and its magnitude

    def gap(values: torch.Tensor, sizes: torch.Tensor, k: int) -> torch.Tensor:  # [T, n] -> [T]
        if k >= values.shape[-1]:
            return torch.full((tokens,), float("inf"), dtype=torch.float64)
        order = values.argsort(dim=-1, descending=True, stable=True)  # [T, n]
        v, m = values.gather(-1, order), sizes.gather(-1, order)  # [T, n]
        return (v[:, k - 1] - v[:, k]) / torch.maximum(m[:, k - 1], m[:, k])

    gaps = []
    if rule.topk_group < rule.n_group:
        grouped = choice.view(tokens, rule.n_group, rule.group_size)  # [T, G, E/G]
        members = grouped.topk(2 if rule.group_score == contract.MOE_GROUP_SCORE_TOP2_SUM else 1, dim=-1)
        group_scores = members.values.sum(dim=-1)  # [T, G]
        group_sizes = size.view(grouped.shape).gather(-1, members.indices).sum(dim=-1)  # [T, G]
        gaps.append(gap(group_scores, group_sizes, rule.topk_group))
        kept = torch.zeros_like(group_scores, dtype=torch.bool)  # [T, G]
        kept.scatter_(1, group_scores.argsort(dim=-1, descending=True, stable=True)[:, :rule.topk_group], True)
        choice = grouped.masked_fill(~kept[..., None], float("-inf")).view(tokens, -1)  # [T, E]
    gaps.append(gap(choice, size, rule.top_k))
    return float(torch.stack(gaps).min()) if tokens else float("inf")
