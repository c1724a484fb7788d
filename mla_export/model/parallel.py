"""Tensor and expert parallelism (`--tp N`): which slice of the model rank r of N holds, and the collectives
that join the ranks, as PyTorch ops that export turns into `AllReduce` / `AllGather` nodes.

The layout is DeepSeek-V3's own (`inference/model.py`, `inference/convert.py`):

    attention      q_a_proj, kv_a_proj_with_mqa and their norms whole on every rank; H/N heads per rank
                   (every per-head weight split by head); the output projection row-parallel -> AllReduce
    dense MLP      gate/up column-parallel, down row-parallel (intermediate_size / N each) -> AllReduce
    MoE            the router whole (routing over all E experts, the same on every rank); experts
                   [r*E/N, (r+1)*E/N) whole; the shared experts split like a dense MLP; the rank's routed
                   and shared outputs summed, then one AllReduce (DeepSeek does two: the same sum)
    embeddings     embed_tokens and lm_head split by vocabulary rows: ids outside the rank's rows embed
                   to zero before an AllReduce; the logits' slices AllGather'ed along the vocabulary
    cache          the latent cache is the same on every rank (c_kv and k_pe come from replicated weights):
                   each rank keeps its own copy, 576 values per token per layer at DeepSeek's dims

The collectives' eager form runs over `torch.distributed` (gloo on a CPU): every rank's tensor is gathered
and summed in rank order in float64, so every rank gets the same bits whatever the backend's own order.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .config import MlaConfig


@dataclass(frozen=True)
class TensorParallel:
    """Rank `rank` of `world_size` (1: a single device, no collectives)."""

    world_size: int = 1
    rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def part(self, total: int) -> range:
        """This rank's contiguous share of `total` items (heads, rows, experts): [r*n, (r+1)*n), n = total/N."""
        size = total // self.world_size
        return range(self.rank * size, (self.rank + 1) * size)

    def local_config(self, config: MlaConfig) -> MlaConfig:
        """`config` with this rank's share of the heads and of the dense MLP's width: the shapes of its
        attention and dense MLP modules (everything else about the model unchanged)."""
        if not self.enabled:
            return config
        return dataclasses.replace(config, num_attention_heads=config.num_attention_heads // self.world_size,
                                   intermediate_size=config.intermediate_size // self.world_size)


# ---- collectives -------------------------------------------------------------------------------------------

def _gathered(x: torch.Tensor, world_size: int) -> list[torch.Tensor]:
    """Every rank's `x` (float64), in rank order."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() != world_size:
        raise RuntimeError(f"a collective over {world_size} ranks needs torch.distributed initialised with "
                           f"world size {world_size}")
    x64 = x.detach().to(torch.float64).contiguous()
    parts = [torch.empty_like(x64) for _ in range(world_size)]
    dist.all_gather(parts, x64)
    return parts


@torch.library.custom_op("mla::all_reduce", mutates_args=())
def all_reduce(x: torch.Tensor, world_size: int) -> torch.Tensor:
    """The sum of every rank's `x` (rank order, float64, rounded once to x's dtype); `x` itself for one rank."""
    if world_size == 1:
        return x.clone()
    total = torch.zeros(x.shape, dtype=torch.float64)
    for part in _gathered(x, world_size):
        total += part
    return total.to(x.dtype)


@all_reduce.register_fake
def _all_reduce_fake(x, world_size):
    return torch.empty_like(x)


@torch.library.custom_op("mla::all_gather", mutates_args=())
def all_gather(x: torch.Tensor, world_size: int, axis: int) -> torch.Tensor:
    """Every rank's `x` concatenated along `axis`, in rank order."""
    if world_size == 1:
        return x.clone()
    return torch.cat(_gathered(x, world_size), dim=axis).to(x.dtype)


@all_gather.register_fake
def _all_gather_fake(x, world_size, axis):
    shape = list(x.shape)
    shape[axis] = shape[axis] * world_size
    return x.new_empty(shape)


def reduce_ranks(x: torch.Tensor, tp: TensorParallel) -> torch.Tensor:
    """`x` summed over the ranks (the AllReduce node); `x` unchanged on a single device (no node)."""
    return torch.ops.mla.all_reduce(x, tp.world_size) if tp.enabled else x


def gather_ranks(x: torch.Tensor, tp: TensorParallel, axis: int) -> torch.Tensor:
    """The ranks' `x` concatenated along `axis` (the AllGather node); `x` unchanged on a single device."""
    return torch.ops.mla.all_gather(x, tp.world_size, axis) if tp.enabled else x


class VocabParallelEmbedding(torch.nn.Module):
    """`embed_tokens` holding this rank's vocabulary rows `[V/N, d]`: ids outside them embed to zero, and the
    ranks' embeddings are summed (each id is in exactly one rank's rows)."""

    def __init__(self, vocab_size: int, dim: int, tp: TensorParallel):
        super().__init__()
        rows = tp.part(vocab_size)
        self.tp, self.first, self.rows = tp, rows.start, len(rows)
        self.weight = torch.nn.Parameter(torch.zeros(self.rows, dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [B, S] int64 -> [B, S, d]."""
        local = ids - self.first  # [B, S]
        inside = (local >= 0) & (local < self.rows)  # [B, S]
        rows = torch.nn.functional.embedding(local.clamp(0, self.rows - 1), self.weight)  # [B, S, d]
        return reduce_ranks(torch.where(inside[..., None], rows, torch.zeros_like(rows)), self.tp)
