"""The text side of `generate`: each sequence's generated ids decoded as they come, stop strings found in
that text, and what is printed when: one prompt streams its text as tokens arrive; several print each
completion as soon as it finishes, numbered. Text is held back while it ends inside a UTF-8 character (the
tokenizer decodes a partial byte sequence as U+FFFD) or could be the start of a stop string."""

from __future__ import annotations

from typing import Callable

from .tokenizer import TextTokenizer


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """`text` up to the first stop string in it (which is left out), and whether one was found."""
    found = [text.index(s) for s in stops if s in text]
    return (text[:min(found)], True) if found else (text, False)


class TextStream:
    """`on_token(b, id)` for `generate.generate`: decodes sequence b's ids, says whether it hit a stop string,
    and writes text through `write` (nothing when `write` is None: --json on stdout)."""

    def __init__(self, tokenizer: TextTokenizer, count: int, stops: list[str], eos_ids: set[int],
                 max_new_tokens: int, write: Callable[[str], None] | None):
        self.tokenizer, self.stops, self.eos_ids, self.max_new = tokenizer, [s for s in stops if s], eos_ids, max_new_tokens
        self.write, self.stream = write, count == 1
        self.ids: list[list[int]] = [[] for _ in range(count)]
        self.shown = [0] * count  # characters of each text written so far (streaming)
        self.done = [False] * count
        self.hold = max((len(s) for s in self.stops), default=1) - 1

    def text(self, b: int) -> str:
        """Sequence b's text so far, cut at a stop string."""
        return cut_at_stop(self.tokenizer.decode(self.ids[b]), self.stops)[0]

    def __call__(self, b: int, token: int) -> bool:
        self.ids[b].append(token)
        full = self.tokenizer.decode(self.ids[b])
        text, stopped = cut_at_stop(full, self.stops)
        finished = stopped or token in self.eos_ids or len(self.ids[b]) >= self.max_new
        if self.write is not None and self.stream:
            ready = len(text) if finished else max(self.shown[b], len(text.rstrip("\ufffd")) - self.hold)
            if ready > self.shown[b]:
                self.write(text[self.shown[b]:ready])
                self.shown[b] = ready
            if finished:
                self.write("\n")
        elif self.write is not None and finished:
            self.write(f"[{b + 1}] {text}\n")
        self.done[b] = finished
        return stopped
