"""The next token from a step's logits: greedy (temperature 0, the default) or sampled with temperature,
top-k and top-p from a seeded generator, so a run with the same seed picks the same tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..common.errors import UserError


@dataclass(frozen=True)
class Sampling:
    """temperature 0: argmax (ties to the lower id, as torch.argmax and transformers' greedy search);
    else softmax(logits / temperature) over the top_k largest (0: all) whose probabilities, largest first,
    reach top_p (the token that crosses it included), drawn from a generator seeded with `seed`."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if not (self.temperature >= 0 and self.temperature != float("inf")):
            raise UserError(f"--temperature {self.temperature}: expected a finite number >= 0 (0 is greedy)")
        if not 0 < self.top_p <= 1:
            raise UserError(f"--top-p {self.top_p}: expected a number in (0, 1] (1 keeps every token)")
        if self.top_k < 0:
            raise UserError(f"--top-k {self.top_k}: expected an integer >= 0 (0 keeps every token)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


class Sampler:
    """Picks one token per row of `[B, V]` logits (float), the generator's state carried between steps."""

    def __init__(self, sampling: Sampling):
        self.sampling = sampling
        self.generator = torch.Generator().manual_seed(sampling.seed)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [B, V] -> ids [B] int64."""
        s = self.sampling
        logits = logits.float()  # [B, V]
        if s.greedy:
            return logits.argmax(dim=-1)
        scaled = logits / s.temperature  # [B, V]
        if 0 < s.top_k < scaled.shape[-1]:
            kth = scaled.topk(s.top_k, dim=-1).values[:, -1:]  # [B, 1]
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        if s.top_p < 1:
            ordered, order = scaled.sort(dim=-1, descending=True)  # [B, V]
            probs = ordered.softmax(dim=-1)
            before = probs.cumsum(dim=-1) - probs  # [B, V]: mass of the tokens ranked above each one
            drop = torch.zeros_like(before, dtype=torch.bool).scatter(-1, order, before >= s.top_p)
            scaled = scaled.masked_fill(drop, float("-inf"))
        probs = scaled.softmax(dim=-1)  # [B, V]
        return torch.multinomial(probs, 1, generator=self.generator)[:, 0]
