"""What a validation runs and what each step of it found, shared by the whole-model and per-layer forms:
the scenario (batch, prefill, decode steps, seed), a step's comparisons, the progress callback type, and
the cache rows a step leaves unwritten."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np

from ..common.errors import FieldError, UserError
from ..model.spec import ModelSpec
from .compare import Comparison

if TYPE_CHECKING:
    import torch

    from .runners import Runner

Progress = Callable[[str, float, float], None]  # (what, done, total), as `progress.ProgressReporter` takes it


def no_progress(what: str, done: float, total: float) -> None:
    """A Progress that shows nothing."""


@dataclass(frozen=True)
class Scenario:
    """One validation run: `batch` sequences with ragged history, a prefill, then decode steps."""

    batch: int = 2
    prefill_len: int = 8
    steps: int = 4
    seed: int = 0

    def __post_init__(self):
        for name, least in (("batch", 1), ("prefill_len", 1), ("steps", 0)):
            if getattr(self, name) < least:
                raise FieldError(name, getattr(self, name), f"expected at least {least}")

    def peak_bytes(self, spec: ModelSpec, layers: int | None = None) -> int:
        """Estimated memory the scenario's tensors need beside the models: the caches of `layers` layers (all
        by default) on both sides (float64 reference, runtime copies, comparisons) and the largest step's
        attention scores and logits."""
        c, element = spec.config, spec.element_bytes
        layers = c.num_hidden_layers if layers is None else layers
        cache = self.batch * spec.max_seq_len * c.cache_width * layers * (32 + 4 * element)
        scores = self.batch * self.prefill_len * c.num_attention_heads * spec.max_seq_len * (3 * 8 + 3 * 4)
        logits = self.batch * self.prefill_len * c.vocab_size * 16 if spec.io == "tokens" else 0
        return cache + scores + logits

    def histories(self, max_seq_len: int) -> list[int]:
        """Cache rows each sequence already holds (ragged), leaving room for prefill + steps."""
        room = max_seq_len - self.prefill_len - self.steps
        if room < 0:
            raise UserError(f"validate: the cache holds {max_seq_len} rows but prefill ({self.prefill_len}) + steps "
                            f"({self.steps}) need {self.prefill_len + self.steps}; lower them or export with a "
                            "larger --max-seq-len")
        return [min((5 * b) % 13, room) for b in range(self.batch)]


@dataclass
class StepResult:
    step: str
    new_tokens: int
    comparisons: list[Comparison] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.comparisons)


def unwritten_rows(seqlens: torch.Tensor, new_tokens: int, max_seq_len: int) -> torch.Tensor:
    """`[B, Smax, 1]` bool: the cache rows a step leaves unwritten (at or past seqlens[b] + new_tokens), which
    hold NaN in the reference by design: the only place where NaN on both sides is agreement."""
    import torch

    rows = torch.arange(max_seq_len)  # [Smax]
    return (rows[None, :] >= (seqlens.to(torch.long) + new_tokens)[:, None])[..., None]  # [B, Smax, 1]


def run_checked(runner: Runner, feeds: dict, out_names: list[str]) -> dict[str, np.ndarray]:
    """`runner`'s outputs on `feeds`; UserError if one of `out_names` is missing."""
    outputs = runner.run(dict(feeds))
    missing = [n for n in out_names if n not in outputs]
    if missing:
        raise UserError(f"{runner.name}: outputs {missing} are missing; the graph does not match its metadata")
    return outputs
