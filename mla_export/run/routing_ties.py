"""Tokens whose expert choice is a near tie, which a correct half-precision runtime may route otherwise.

A runtime's router logits differ from the float64 reference's by its rounding; where a token's k-th and
(k+1)-th experts score within that difference, the runtime may pick the other expert, and that token's MoE
output differs by O(1) though nothing is wrong. Such a token is found by routing its reference logits again
under noise of the runtime's size (TRIALS draws): if any draw changes the chosen set, the choice is fragile.
`validate` leaves the rows of fragile tokens (and, downstream, the cache rows they write) out of the
element-wise rule; the whole-tensor rules still judge them, and the report counts them.
"""

from __future__ import annotations

import torch

from ..model.moe import route, router_logits

# A runtime's error on the router logits, relative to their RMS: ~4x what correct exports show on the
# router's input (relative RMS error: float32 ~3e-7, float16 ~5e-4, bfloat16 ~1e-2; RESULTS.md).
LOGIT_NOISE = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 4e-2}
TRIALS = 16


def fragile_tokens(hidden: torch.Tensor, mlp, dtype: str, depth: int = 1, seed: int = 0) -> torch.Tensor:
    """`[B, S]` bool: the tokens of `hidden [B, S, d]` (the MoE MLP's input, float64) whose routed experts
    under `mlp` (a `MoeMlp`) change when their logits move by the error of a `dtype` runtime whose input has
    come through `depth` layers of its own (the error grows as sqrt(depth))."""
    batch, tokens, width = hidden.shape
    logits = router_logits(hidden.reshape(-1, width), mlp.gate.weight)  # [T, E] float32
    bias = mlp.gate.e_score_correction_bias
    chosen = route(logits, mlp.rule, bias)[1].sort(dim=-1).values  # [T, k]
    scale = LOGIT_NOISE[dtype] * depth ** 0.5 * logits.pow(2).mean(dim=-1, keepdim=True).sqrt()  # [T, 1]
    gen = torch.Generator().manual_seed(seed)
    fragile = torch.zeros(logits.shape[0], dtype=torch.bool)  # [T]
    for _ in range(TRIALS):
        noisy = logits + scale * torch.randn(logits.shape, generator=gen)
        fragile |= (route(noisy, mlp.rule, bias)[1].sort(dim=-1).values != chosen).any(dim=-1)
    return fragile.view(batch, tokens)


class TieWatch:
    """Forward hooks on every MoE MLP of `layers` that record, per call, the fragile tokens of its input:
    `found[i]` is layer i's `[B, S]` mask from the latest call (absent for dense layers). `depth(i)`: how
    many layers of its own the runtime's input to layer i has come through (default: i + 1, a whole model;
    a part fed the reference's input: 1)."""

    def __init__(self, layers, dtype: str, depth=lambda index: index + 1):
        from ..model.model import MoeMlp

        self.dtype, self.depth = dtype, depth
        self.found: dict[int, torch.Tensor] = {}
        self.handles = [layer.mlp.register_forward_hook(self._hook(index))
                        for index, layer in enumerate(layers) if isinstance(layer.mlp, MoeMlp)]

    def _hook(self, index: int):
        def record(module, args, output):
            self.found[index] = fragile_tokens(args[0].detach(), module, self.dtype, self.depth(index))
        return record

    def any_token(self, batch: int, tokens: int) -> torch.Tensor:
        """`[B, S]`: fragile in any layer of the latest call."""
        mask = torch.zeros(batch, tokens, dtype=torch.bool)
        for found in self.found.values():
            mask |= found
        return mask

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def tie_positions(fragile: torch.Tensor, seqlens: torch.Tensor, max_seq_len: int) -> torch.Tensor:
    """`[B, Smax]` bool: the cache rows the fragile tokens `[B, S]` of a step starting at `seqlens [B]` write."""
    batch, tokens = fragile.shape
    rows = torch.zeros(batch, max_seq_len, dtype=torch.bool)
    positions = seqlens.to(torch.long)[:, None] + torch.arange(tokens)[None, :]  # [B, S]
    rows.scatter_(1, positions.clamp(max=max_seq_len - 1), fragile)
    return rows
