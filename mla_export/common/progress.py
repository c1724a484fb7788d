"""Progress of long work, on stderr: a rich progress bar on a terminal, plain throttled lines otherwise
(CI logs, pipes), nothing with `quiet`. Core functions take a `progress(what, done, total)` callable
and know nothing of terminals.

`what` names the work: "writing weights (layer 3)", "step 2/9: decode 1". In plain lines each stage is
printed when it starts, then at most every `min_interval` seconds; a stage is `what` up to " (", its
numbers aside, so "step 2/9: decode 1" and "step 3/9: decode 2" are one stage.
"""

from __future__ import annotations

import re
import sys
import time


def human_size(nbytes: float) -> str:
    """`nbytes` as a size a person reads: 917.5 KB, 3.59 GB."""
    scale, unit = next((s, u) for s, u in ((1e9, "GB"), (1e6, "MB"), (1e3, "KB"), (1, "B")) if nbytes >= s or s == 1)
    return f"{nbytes / scale:,.{0 if unit == 'B' else 2}f} {unit}"


class ProgressReporter:
    """Callable as `progress(what, done, total)`; use as a context manager around the work."""

    def __init__(self, title: str, quiet: bool = False, unit: str = "", min_interval: float = 5.0):
        """`unit` "bytes" shows amounts as sizes (KB ... GB), "steps" shows none (`what` counts them, as in
        "case 3/8"), anything else done/total; plain lines at most every `min_interval` seconds for the same
        stage."""
        self.title, self.quiet, self.unit, self.min_interval = title, quiet, unit, min_interval
        self.terminal = sys.stderr.isatty()
        self._bar = None
        self._task = None
        self._last: dict[str, float] = {}

    def __enter__(self) -> "ProgressReporter":
        if not self.quiet and self.terminal:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("{task.description}"), BarColumn(bar_width=20),
                                 TextColumn("{task.fields[amount]}"), TimeElapsedColumn(),
                                 console=Console(stderr=True), transient=True)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.title, total=1, amount="")
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def _amount(self, done: float, total: float) -> str:
        if self.unit == "steps":
            return ""
        if self.unit != "bytes":
            return f"{done:g}/{total:g}"
        scale, unit = next((s, u) for s, u in ((1e9, "GB"), (1e6, "MB"), (1e3, "KB"), (1, "B")) if total >= s or s == 1)
        return f"{done / scale:,.1f}/{total / scale:,.1f} {unit}"

    def __call__(self, what: str, done: float, total: float) -> None:
        if self.quiet:
            return
        step = re.sub(r"\d+", "#", what.split(" (")[0])
        amount = self._amount(done, total) if total > 1 else ""
        if self._bar is not None:
            self._bar.update(self._task, description=f"{self.title}: {what}", completed=done, total=max(total, 1),
                             amount=amount)
            return
        now = time.monotonic()
        if step in self._last and (done >= total or now - self._last[step] < self.min_interval):
            return
        self._last[step] = now
        print(f"{self.title}: {what} {amount}".rstrip(), file=sys.stderr, flush=True)
