"""Shared test helpers: small configs and poisoned caches."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

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
