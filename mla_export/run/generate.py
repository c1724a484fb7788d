"""The token loop of `generate`: prefill a ragged batch of prompts, then decode one token per sequence per
step, the latent caches held by the step model between calls.

A ragged batch is prefilled in one call: prompts of lengths L_b are right-padded to the longest, Lmax, and
every sequence writes cache rows 0..Lmax-1. New token i attends to rows 0..i only (causal), so a prompt's
own tokens never see the padding after it, and its next token is read at column L_b - 1. Then each
sequence's cache_seqlens is set to L_b, not Lmax: the padded rows lie past it, are never read, and the
decode steps overwrite them one by one. (Left padding would shift every position and is not how this cache
works.) A sequence that has finished (EOS, a stop string, or its budget) still takes part in the batch's
decode steps (its row is computed and ignored) until every sequence has finished.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..common.errors import UserError
from .generate_steps import StepModel
from .sampling import Sampler

# on_token(sequence, token id) after each token a sequence generates; returns True where the sequence
# should stop there (a stop string found in its text)
TokenCallback = Callable[[int, int], bool]


@dataclass
class Timings:
    """Seconds: the prefill call, prefill to the first tokens picked, the decode steps; tokens they made."""

    prefill_s: float = 0.0
    first_token_s: float = 0.0
    decode_s: float = 0.0
    decode_tokens: int = 0
    decode_steps: int = 0

    @property
    def decode_tokens_per_s(self) -> float:
        return self.decode_tokens / self.decode_s if self.decode_s > 0 else 0.0

    def to_dict(self) -> dict:
        return {"prefill_s": self.prefill_s, "time_to_first_token_s": self.first_token_s,
                "decode_s": self.decode_s, "decode_tokens": self.decode_tokens, "decode_steps": self.decode_steps,
                "decode_tokens_per_s": self.decode_tokens_per_s}


@dataclass
class Sequence:
    prompt_ids: list[int]
    ids: list[int] = field(default_factory=list)  # generated, EOS included where it ended on one
    finish: str | None = None  # "eos", "stop" or "length" once finished


def check_room(prompts: list[list[int]], max_new_tokens: int, max_seq_len: int, vocab_size: int) -> None:
    """Refuses prompts the cache cannot hold with `max_new_tokens` more (the last one is never fed back), an
    empty prompt, and ids outside the model's vocabulary."""
    if max_new_tokens < 1:
        raise UserError(f"--max-new-tokens {max_new_tokens}: expected at least 1")
    longest = max(len(p) for p in prompts)
    for b, prompt in enumerate(prompts):
        if not prompt:
            raise UserError(f"prompt {b + 1} encodes to no tokens; give it some text")
        bad = [t for t in prompt if not 0 <= t < vocab_size]
        if bad:
            raise UserError(f"prompt {b + 1} holds token id {bad[0]}, outside the model's vocabulary of {vocab_size}: "
                            "the tokenizer is not this model's (pass the right --tokenizer)")
        need = max(longest, len(prompt) + max_new_tokens - 1)
        if need > max_seq_len:
            raise UserError(f"prompt {b + 1}: {len(prompt)} tokens + --max-new-tokens {max_new_tokens} need {need} "
                            f"cache rows, the model has {max_seq_len}; shorten it, lower --max-new-tokens or export "
                            "a larger --max-seq-len")


def generate(model: StepModel, prompts: list[list[int]], max_new_tokens: int, sampler: Sampler,
             eos_ids: set[int], on_token: TokenCallback | None = None) -> tuple[list[Sequence], Timings]:
    """Up to `max_new_tokens` tokens for each of `prompts` (lists of ids), one ragged batch; a sequence ends
    at an EOS id (kept as its last id), where `on_token` says so, or at its budget."""
    spec = model.spec
    check_room(prompts, max_new_tokens, spec.max_seq_len, spec.config.vocab_size)
    batch, lengths = len(prompts), np.array([len(p) for p in prompts], dtype=np.int32)
    ids = np.zeros((batch, int(lengths.max())), dtype=np.int64)  # [B, Lmax], padded on the right with id 0
    for b, prompt in enumerate(prompts):
        ids[b, :len(prompt)] = prompt
    sequences = [Sequence(list(p)) for p in prompts]
    timings = Timings()
    model.reset(batch)

    def record(tokens) -> int:
        """Appends each unfinished sequence's token; returns how many were appended."""
        made = 0
        for b, token in enumerate(tokens.tolist()):
            seq = sequences[b]
            if seq.finish is not None:
                continue
            seq.ids.append(token)
            made += 1
            stop = on_token(b, token) if on_token is not None else False
            if token in eos_ids:
                seq.finish = "eos"
            elif stop:
                seq.finish = "stop"
            elif len(seq.ids) >= max_new_tokens:
                seq.finish = "length"
        return made

    start = time.perf_counter()
    logits = model.step(ids, np.zeros(batch, dtype=np.int32), lengths - 1)  # [B, V]
    timings.prefill_s = time.perf_counter() - start
    tokens = sampler(logits)  # [B]
    timings.first_token_s = time.perf_counter() - start
    record(tokens)
    seqlens = lengths.copy()  # [B]: the padded rows past each prompt are overwritten from here on
    decode_start = time.perf_counter()
    while any(s.finish is None for s in sequences):
        logits = model.step(tokens.numpy().astype(np.int64)[:, None], seqlens, np.zeros(batch, dtype=np.int64))
        seqlens = seqlens + 1
        tokens = sampler(logits)
        timings.decode_tokens += record(tokens)
        timings.decode_steps += 1
    timings.decode_s = time.perf_counter() - decode_start
    return sequences, timings
