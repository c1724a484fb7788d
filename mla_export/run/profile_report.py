"""`profile`'s results: one row per (phase, batch, context) with latency percentiles, tokens/s and cache
GB/s against the device's copy bandwidth; the report's table (80 columns), JSON, CSV and plot. No torch:
the command checks its options against these before any model is loaded (the timing is `profile`)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..common.errors import UserError
from ..common.fileio import atomic_write_bytes, atomic_write_text


@dataclass
class ProfileRow:
    target: str
    phase: str  # "prefill" or "decode"
    batch: int
    context: int
    new_tokens: int
    median_ms: float
    p90_ms: float
    p99_ms: float
    tokens_per_s: float
    cache_gb_s: float | None = None  # decode only
    percent_of_copy: float | None = None


PLOT_FORMATS = (".png", ".svg", ".pdf")  # --plot's format follows its extension
DEFAULT_CONTEXTS = tuple(2**k for k in range(4, 11))  # 16 ... 1024: enough points to see a trend


def default_contexts(max_seq_len: int | None) -> list[int]:
    """The contexts timed when none are given: DEFAULT_CONTEXTS that a cache of `max_seq_len` rows holds
    (context + 1 new token), or the longest it holds when it holds none of them."""
    if max_seq_len is None:
        return list(DEFAULT_CONTEXTS)
    fitting = [c for c in DEFAULT_CONTEXTS if c + 1 <= max_seq_len]
    return fitting or [max(1, max_seq_len - 1)]


@dataclass
class ProfileReport:
    device: str
    copy_gb_s: float
    rows: list[ProfileRow] = field(default_factory=list)
    model: str = ""  # the config's name and layers, e.g. "deepseek-v2-lite, 1 layer"
    dtype: str = ""
    cache: str = "contiguous"  # the latent cache timed: its layout, rows per page (paged) and dtype
    page_size: int | None = None
    kv_cache_dtype: str = "model"

    @property
    def layout(self) -> str:
        """The cache in words: "contiguous cache", "paged cache (16-row pages), fp8 c_kv"."""
        pages = f" ({self.page_size}-row pages)" if self.cache == "paged" else ""
        return f"{self.cache} cache{pages}" + (", fp8 c_kv" if self.kv_cache_dtype == "fp8" else "")

    def to_dict(self) -> dict:
        return {"model": self.model, "dtype": self.dtype, "cache": self.cache, "page_size": self.page_size,
                "kv_cache_dtype": self.kv_cache_dtype, "device": self.device, "copy_gb_s": self.copy_gb_s,
                "rows": [asdict(r) for r in self.rows]}

    def write_json(self, path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    def write_csv(self, path) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(asdict(self.rows[0]).keys()) if self.rows else ["target"])
        writer.writeheader()
        for row in self.rows:
            writer.writerow(asdict(row))
        atomic_write_text(path, buffer.getvalue())


PHASE_NOTES = {"prefill": "all context tokens new, empty cache",
               "decode": "one new token after context cached tokens"}


def print_profile(report: ProfileReport, console=None) -> None:
    """One table per phase, laid out for 80 columns (prefill has no cache bandwidth: its columns are left out)."""
    from ..common.console import add_columns, make_console, sig, table

    console = console or make_console()
    target = report.rows[0].target if report.rows else ""
    console.print(f"{target} on {report.device}: {report.model}, {report.dtype}, {report.layout}; copy bandwidth "
                  f"{report.copy_gb_s:,.1f} GB/s", markup=False)
    for phase in ("prefill", "decode"):
        rows = [r for r in report.rows if r.phase == phase]
        if not rows:
            continue
        t = table(f"{phase}: {PHASE_NOTES[phase]}")
        columns = ["batch", "context", "p50 ms", "p90 ms", "p99 ms", "tokens/s"]
        if phase == "decode":
            columns += ["cache GB/s", "% of copy"]
        add_columns(t, *columns, numbers_from=0)
        for r in rows:
            cells = [f"{r.batch:,}", f"{r.context:,}", sig(r.median_ms), sig(r.p90_ms), sig(r.p99_ms),
                     f"{r.tokens_per_s:,.0f}"]
            if phase == "decode":
                cells += [sig(r.cache_gb_s, 3), f"{r.percent_of_copy:.1f}"]
            t.add_row(*cells)
        console.print()
        console.print(t)


def _plain_ticks(axis, values) -> None:
    """Ticks at `values` on a log axis, labelled as plain numbers (64, 256, 1024, not 2^6)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    axis.set_ticks(values)
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0f}"))
    axis.set_minor_formatter(NullFormatter())


def _latency_axis(ax, lowest: float, highest: float) -> None:
    """The latency axis: logarithmic with plain labels (0.5, 1, 2, 5, 10 ...) where the values span more than
    a factor of 10, else linear from 0; never a 10^x label."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    if highest > 10 * lowest:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    else:
        ax.set_ylim(0, highest * 1.1)


def _draw_phase(ax, rows: list[ProfileRow], phase: str, colors: list[str]) -> None:
    """One panel: per batch, p50 as a line with markers over a p90-p99 band, against context."""
    from matplotlib.patches import Patch

    for i, batch in enumerate(sorted({r.batch for r in rows})):
        points = sorted((r.context, r.median_ms, r.p90_ms, r.p99_ms) for r in rows if r.batch == batch)
        x, p50, p90, p99 = (list(v) for v in zip(*points))
        color = colors[i % len(colors)]
        ax.fill_between(x, p90, p99, color=color, alpha=0.2, linewidth=0)
        ax.plot(x, p50, marker="o", markersize=4, color=color, label=f"batch {batch}")
    ax.set_xscale("log", base=2)
    _plain_ticks(ax.xaxis, sorted({r.context for r in rows}))
    _latency_axis(ax, min(r.median_ms for r in rows), max(r.p99_ms for r in rows))
    ax.set_xlabel("context (tokens)")
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"{phase}: {PHASE_NOTES[phase]}", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=handles + [Patch(facecolor="gray", alpha=0.25, label="p90-p99 (lines: p50)")], fontsize=9)


def plot_profile(report: ProfileReport, path) -> None:
    """Latency vs context, prefill and decode side by side: per batch the median (p50) as a line and the
    p90-p99 range as a band; plain tick labels; the model, dtype, target and device in the title. The format
    follows the extension of `path` (PLOT_FORMATS)."""
    suffix = Path(path).suffix.lower()
    if suffix not in PLOT_FORMATS:
        raise UserError(f"--plot {path}: the format follows the extension; expected one of {', '.join(PLOT_FORMATS)}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = [p for p in ("prefill", "decode") if any(r.phase == p for r in report.rows)]
    target = report.rows[0].target if report.rows else ""
    buffer = io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # SVG text stays text (searchable, editable)
        fig, axes = plt.subplots(1, len(phases), figsize=(6.4 * len(phases), 4.8), squeeze=False)
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for ax, phase in zip(axes[0], phases):
            _draw_phase(ax, [r for r in report.rows if r.phase == phase], phase, colors)
        fig.suptitle(f"{report.model}, {report.dtype}, {report.layout} - {target} on {report.device}")
        fig.tight_layout()
        fig.savefig(buffer, format=suffix[1:], dpi=100)
        plt.close(fig)
    atomic_write_bytes(Path(path), buffer.getvalue())
