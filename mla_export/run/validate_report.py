"""The pass/fail report of `validate`, whole or per layer, as a table that fits 80 columns.

Each row is a tensor (or the worst of a group: a step's caches, a part's steps) with what decides: the
share of its element-wise tolerance the worst element uses (err/tol), its relative RMS error and its
cosine against the bounds of its dtype; then what failed, and PASS or FAIL.
"""

from __future__ import annotations

from .compare import Comparison

MAX_FAILURES_SHOWN = 6  # failing rows of the table explained under it; --json has every tensor
CACHE_PREFIX = "present_latent_cache."
FP8_CACHE_SUFFIX = " c_kv"  # an FP8 cache's stored c_kv rows, judged within half an FP8 step (`fp8_cache_check`)
RANK_PREFIX = "rank "  # a --tp export's comparisons of rank r's outputs with rank 0's ("rank 1 vs 0: <tensor>")


def _short(name: str) -> str:
    """A tensor name for the table: present_latent_cache.3 -> cache 3 (the outputs keep their names)."""
    return name.replace(CACHE_PREFIX, "cache ") if name.startswith(CACHE_PREFIX) else name


def _severity(c: Comparison) -> tuple:
    return (not c.passed, c.tolerance_used, c.rel_rms)


def _worst_row(where: str, group: list[Comparison], rows: list, name: str | None = None) -> None:
    if group:
        worst = max(group, key=_severity)
        label = (name or _short(worst.name)) + (f" (worst of {len(group)})" if len(group) > 1 else "")
        rows.append((where, label, worst))


def report_rows(report) -> list[tuple[str, str, Comparison]]:
    """(where, label, comparison) per table row. A whole-model report: per step, the output, the worst cache
    and, with a second runtime, the worst comparison against it (with --tp ranks, the worst rank against rank 0). A per-layer report: per part, the worst of
    its outputs and the worst of its caches over the steps; end to end, each step's output and the worst
    final cache."""
    rows = []
    if hasattr(report, "parts"):
        for part in report.parts:
            if part.label == "end to end":
                for step in part.steps:
                    rows.append((f"e2e {step.step}", _short(step.comparisons[0].name), step.comparisons[0]))
                _worst_row("e2e caches", [c for c in part.comparisons if c.name.startswith(CACHE_PREFIX)], rows)
                continue
            _worst_row(part.label, [c for c in part.comparisons if not c.name.startswith(CACHE_PREFIX)], rows)
            _worst_row(part.label, [c for c in part.comparisons if c.name.startswith(CACHE_PREFIX)], rows)
        return rows
    for step in report.steps:
        output = step.comparisons[0]
        rows.append((step.step, _short(output.name), output))
        _worst_row(step.step, [c for c in step.comparisons[1:] if " vs " not in c.name], rows)
        _worst_row(step.step, [c for c in step.comparisons if " vs " in c.name and not c.name.startswith(RANK_PREFIX)],
                   rows)
        _worst_row(step.step, [c for c in step.comparisons if c.name.startswith(RANK_PREFIX)], rows, "ranks vs rank 0")
    return rows


def _why(c: Comparison) -> str:
    """What decided a failure: the element furthest outside its tolerance, NaN/inf mismatches, and the
    whole-tensor bounds."""
    reasons = []
    if c.tolerance_used > 1:
        reasons.append(f"at index {c.tolerance_index} the error is {c.tolerance_used:.3g}x the tolerance")
    if c.nonfinite_mismatches:
        reasons.append(f"{c.nonfinite_mismatches:,} NaN/inf where the other side is finite (or differs)")
    if c.rel_rms_failed:
        reasons.append(f"relative RMS error {c.rel_rms:.3g} > {c.max_rel_rms:g}")
    if c.cosine_failed:
        reasons.append(f"cosine {c.cosine:.6g} < {c.min_cosine:.6g}")
    return "; ".join(reasons)


def _all_comparisons(report) -> list[tuple[str, Comparison]]:
    if hasattr(report, "parts"):
        return [(f"{p.label}, {s.step}", c) for p in report.parts for s in p.steps for c in s.comparisons]
    return [(s.step, c) for s in report.steps for c in s.comparisons]


def print_report(report, console=None) -> None:
    """The comparison as a table that fits 80 columns, what failed and why, then PASS or FAIL."""
    from ..common.console import add_columns, make_console, prose, ratio, sci, table

    console = console or make_console()
    s = report.scenario
    comparisons = _all_comparisons(report)
    first = comparisons[0][1]
    per_layer = hasattr(report, "parts")
    how = "per layer, " if per_layer else ""
    t = table(f"{report.runtime} vs eager float64 ({how}{report.dtype}, batch {s.batch}, prefill "
              f"{s.prefill_len}, {s.steps} decode steps)")
    add_columns(t, "part" if per_layer else "step", "tensor", "max rel", "rel RMS", "1 - cos", "err/tol", "ok",
                numbers_from=2)
    rows = report_rows(report)
    for where, label, c in rows:
        t.add_row(where, label, sci(c.max_rel_err, 1), sci(c.rel_rms, 1), sci(max(0.0, 1.0 - c.cosine), 1),
                  ratio(c.tolerance_used), "yes" if c.passed else "[red]NO[/red]")
    console.print(t)
    bounds = ""
    if first.max_rel_rms is not None:
        bounds = (f", its relative RMS error is at most {first.max_rel_rms:.3g} and 1 - cos at most "
                  f"{1.0 - first.min_cosine:.1g}")
    tied = [c for _, c in comparisons if c.exempt]
    if tied:
        bounds += (f"; {len(tied)} tensors leave the rows of tokens routed at a near tie (which a correct "
                   "runtime may route otherwise) out of the element-wise rule")
    teacher = (" Each layer is fed the reference's own input (its error alone); e2e rows chain the parts on "
               "their own outputs." if per_layer else "")
    layers = len(report.parts) - 1 - sum(p.label in ("embedding", "head") for p in report.parts) if per_layer \
        else len({c.name.split()[0] for c in report.steps[0].comparisons
                  if c.name.startswith(CACHE_PREFIX) and " vs " not in c.name})
    grown = (f" e2e rows: every bound grown as sqrt({layers} layers)." if per_layer else
             f" These are one layer's bounds grown as sqrt({layers} layers)." if layers > 1 else "")
    fp8_cache = (" FP8 cache: each stored c_kv value within tol plus half an FP8 step of the unquantized "
                 "reference (no whole-tensor bounds), the reference attending over the runtime's own cache."
                 if any(c.name.endswith(FP8_CACHE_SUFFIX) for _, c in comparisons) else "")
    console.print(prose(f"tol = {first.atol:.3g} + {first.rtol:.3g} x |ref| per element ({report.dtype}). A tensor "
                        f"passes when every element is within tol (err/tol <= 1){bounds}, and no NaN/inf appears "
                        f"where the reference is finite. max rel is for information.{teacher}{grown}{fp8_cache}",
                        console), markup=False, style="dim")
    quantized = getattr(report, "quantization_error", None)
    if quantized:
        rms = max(e[1] for e in quantized)
        cos = min(e[2] for e in quantized)
        console.print(prose(f"vs the unquantized model (FP8's own error, not judged): output rel RMS "
                            f"up to {rms:.2g}, 1 - cos up to {max(0.0, 1.0 - cos):.2g}", console), markup=False)
    failed = [(where, c) for where, c in comparisons if not c.passed]
    shown = [(where, c) for where, _, c in rows if not c.passed][:MAX_FAILURES_SHOWN]  # the table's, in its order
    for where, c in shown:
        console.print(prose(f"FAIL {where}, {c.name}: {_why(c)}", console), markup=False)
    if len(failed) > len(shown):
        console.print(f"and {len(failed) - len(shown)} more failing tensors (every one: --json)")
    count = len(comparisons)
    over = f"{len(report.parts) - 1} parts" if per_layer else f"{len(report.steps)} steps"
    if failed:
        console.print(f"[bold red]FAIL[/bold red]: {len(failed)} of {count} tensors over {over}")
    else:
        worst = max((c for _, _, c in rows), key=lambda c: c.tolerance_used)
        console.print(f"[bold green]PASS[/bold green]: {count} tensors over {over}; the worst element uses "
                      f"{ratio(worst.tolerance_used)} of its tolerance")
