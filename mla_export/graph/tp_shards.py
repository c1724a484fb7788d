"""Which slice of each export-form weight rank r of N holds (`--tp N`, DeepSeek-V3's layout, see
`model/parallel.py`): one table from parameter names to the dimension they are split on.

A rank's weights are exact slices of the single-device export's weights (the same folds, the same FP8
bytes and scales), so a rank file is checked against the whole model's reference as it is. An FP8 weight's
block scales are sliced by blocks: a rank whose rows (or columns) start on a block edge takes those blocks,
and one whose rows lie inside one block takes that block's scale (`tp_layout.check_tp` refuses other splits).
Routed experts are not sliced here: a rank's experts are streamed whole (`TensorParallel.part`).
"""

from __future__ import annotations

import re

import torch

from ..common import contract
from ..model.parallel import TensorParallel

# (pattern on the export form's parameter name, the dimension split across ranks)
SHARD_RULES = (
    (re.compile(r"\.self_attn\.(q_latent_proj|q_pe_proj|q_nope_proj|q_up_proj)\.weight(_scale_inv)?$"), 0),
    (re.compile(r"\.self_attn\.(out_proj|o_proj)\.weight(_scale_inv)?$"), 1),
    (re.compile(r"\.self_attn\.(w_uk|w_uv)(\.weight|\.weight_scale_inv)?$"), 0),  # [H, ...]: by head
    (re.compile(r"\.mlp\.(shared_experts\.)?(gate_proj|up_proj)\.weight(_scale_inv)?$"), 0),
    (re.compile(r"\.mlp\.(shared_experts\.)?down_proj\.weight(_scale_inv)?$"), 1),
    (re.compile(r"^(embed_tokens|lm_head)\.weight$"), 0),
)
SCALE_SUFFIX = "_scale_inv"


def shard_dim(param: str) -> int | None:
    """The dimension `param` is split on across ranks, or None (the same on every rank)."""
    return next((dim for pattern, dim in SHARD_RULES if pattern.search(param)), None)


def rank_slice(value: torch.Tensor, param: str, tp: TensorParallel, full_shapes: dict[str, tuple[int, ...]]
               ) -> torch.Tensor:
    """Rank `tp.rank`'s slice of the single-device `value` of `param` (`value` itself when not split).
    `full_shapes` gives every parameter's single-device shape (an FP8 scale's slice follows its weight's)."""
    dim = shard_dim(param)
    if not tp.enabled or dim is None:
        return value
    if param.endswith(SCALE_SUFFIX) and value.dim() == 2:  # block scales of a 2-D FP8 weight
        width = full_shapes[param.removesuffix(SCALE_SUFFIX)][dim]
        rows = tp.part(width)
        first, last = rows.start // contract.FP8_BLOCK, (rows.stop - 1) // contract.FP8_BLOCK
        return value.narrow(dim, first, last - first + 1)
    part = tp.part(value.shape[dim])
    return value.narrow(dim, part.start, len(part))
