"""Validate a runtime (ONNX Runtime here; a TensorRT engine through the same `Runner` protocol)
against the eager float64 model over a prefill and N decode steps, caches included.

Sequences start with ragged cache lengths (random history rows); cache rows beyond each sequence's
length are NaN on both sides, so a runtime that reads them fails loudly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from .compare import Comparison, compare, tolerance_for
from ..common.errors import FieldError, UserError

if TYPE_CHECKING:  # torch is imported when a validation runs, after every check of the command's input
    import torch

    from .runners import Runner
from ..model.spec import ModelSpec, torch_dtype

Progress = Callable[[str, float, float], None]  # (what, done, total), as `progress.ProgressReporter` takes it


def _no_progress(what: str, done: float, total: float) -> None:
    pass


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

    def peak_bytes(self, spec: ModelSpec) -> int:
        """Estimated memory the scenario's tensors need beside the models: every layer's cache on both sides
        (float64 reference, runtime copies, comparisons) and the largest step's attention scores and logits."""
        c, element = spec.config, spec.element_bytes
        cache = self.batch * spec.max_seq_len * c.cache_width * c.num_hidden_layers * (32 + 4 * element)
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


@dataclass
class ValidationReport:
    runtime: str
    dtype: str
    scenario: Scenario
    steps: list[StepResult]

    @property
    def passed(self) -> bool:
        return all(s.passed for s in self.steps)

    def to_dict(self) -> dict:
        return {"runtime": self.runtime, "dtype": self.dtype, "passed": self.passed,
                "scenario": self.scenario.__dict__,
                "steps": [{"step": s.step, "new_tokens": s.new_tokens, "passed": s.passed,
                           "comparisons": [c.to_dict() for c in s.comparisons]} for s in self.steps]}

    def write_json(self, path: str | Path) -> None:
        from ..common.fileio import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")


def validate_runner(runner: Runner, spec: ModelSpec, scenario: Scenario,
                    tolerances: tuple[float, float] | None = None, second: Runner | None = None,
                    progress: Progress | None = None) -> ValidationReport:
    """Run `scenario` through `runner` and the eager float64 model; compare every output and cache.

    With `second` (e.g. ONNX Runtime beside an engine), it runs the same inputs with its own caches and
    `runner`'s outputs are also compared against it, as `polygraphy run --trt --onnxrt` would.
    `progress(what, done, total)` is told each step as it starts ("step 2/9: decode 1", steps done, steps).
    """
    import torch

    from ..weights.eager import eager_model
    from .runners import from_numpy, to_numpy

    config, dtype = spec.config, torch_dtype(spec.dtype)
    atol, rtol = tolerances or tolerance_for(spec.dtype)
    histories = scenario.histories(spec.max_seq_len)
    report = progress or _no_progress
    total = scenario.steps + 1
    report("building the eager float64 model", 0, total)
    model = eager_model(spec, torch.float64)
    gen = torch.Generator().manual_seed(scenario.seed)
    shape = (scenario.batch, spec.max_seq_len, config.cache_width)
    caches_ref = []
    for _ in range(config.num_hidden_layers):
        cache = torch.full(shape, float("nan"), dtype=torch.float64)
        for b, rows in enumerate(histories):
            cache[b, :rows] = torch.randn(rows, config.cache_width, generator=gen, dtype=torch.float64)
        caches_ref.append(cache.to(dtype).to(torch.float64))  # both sides start from the same rounded values
    caches_run = [c.to(dtype) for c in caches_ref]
    caches_second = list(caches_run)
    seqlens = torch.tensor(histories, dtype=torch.int32)
    in_names, out_names = spec.graph_io_names()

    results = []
    for step in range(total):
        new_tokens = scenario.prefill_len if step == 0 else 1
        report(f"step {step + 1}/{total}: {'prefill' if step == 0 else f'decode {step}'}", step, total)
        if spec.io == "tokens":
            x_run = torch.randint(0, config.vocab_size, (scenario.batch, new_tokens), generator=gen)
            x_ref = x_run
        else:
            x_run = torch.randn(scenario.batch, new_tokens, config.hidden_size, generator=gen).to(dtype)
            x_ref = x_run.to(torch.float64)
        with torch.no_grad():
            out_ref, *caches_ref = model(x_ref, seqlens, *caches_ref)
        feeds = {in_names[0]: to_numpy(x_run), in_names[1]: seqlens.numpy()}
        feeds.update({name: to_numpy(c) for name, c in zip(in_names[2:], caches_run)})
        outputs = _run_checked(runner, feeds, out_names)
        caches_run = [from_numpy(outputs[n]) for n in out_names[1:]]
        result = StepResult("prefill" if step == 0 else f"decode {step}", new_tokens)
        unwritten = unwritten_rows(seqlens, new_tokens, spec.max_seq_len)  # the NaN rows both sides must keep
        result.comparisons.append(compare(out_names[0], from_numpy(outputs[out_names[0]]), out_ref, atol, rtol))
        for name, got, ref in zip(out_names[1:], caches_run, caches_ref):
            result.comparisons.append(compare(name, got, ref, atol, rtol, expected_nonfinite=unwritten))
        if second is not None:
            feeds.update({name: to_numpy(c) for name, c in zip(in_names[2:], caches_second)})
            other = _run_checked(second, feeds, out_names)
            caches_second = [from_numpy(other[n]) for n in out_names[1:]]
            for name in out_names:
                allowed = unwritten if name != out_names[0] else None
                result.comparisons.append(compare(f"{name} vs {second.name}", from_numpy(outputs[name]),
                                                  from_numpy(other[name]), atol, rtol, expected_nonfinite=allowed))
        results.append(result)
        seqlens = seqlens + new_tokens
    return ValidationReport(runner.name, spec.dtype, scenario, results)


def unwritten_rows(seqlens: torch.Tensor, new_tokens: int, max_seq_len: int) -> torch.Tensor:
    """`[B, Smax, 1]` bool: the cache rows a step leaves unwritten (at or past seqlens[b] + new_tokens), which
    hold NaN in the reference by design: the only place where NaN on both sides is agreement."""
    import torch

    rows = torch.arange(max_seq_len)  # [Smax]
    return (rows[None, :] >= (seqlens.to(torch.long) + new_tokens)[:, None])[..., None]  # [B, Smax, 1]


def _run_checked(runner: Runner, feeds: dict, out_names: list[str]) -> dict[str, np.ndarray]:
    outputs = runner.run(dict(feeds))
    missing = [n for n in out_names if n not in outputs]
    if missing:
        raise UserError(f"{runner.name}: outputs {missing} are missing; the graph does not match its metadata")
    return outputs


MAX_FAILURES_SHOWN = 6  # failing rows of the table explained under it; --json has every tensor


def _short(name: str) -> str:
    """A tensor name for the table: present_latent_cache.3 -> cache 3 (the outputs keep their names)."""
    prefix = "present_latent_cache."
    return name.replace(prefix, "cache ") if name.startswith(prefix) else name


def report_rows(report: ValidationReport) -> list[tuple[str, str, Comparison]]:
    """(step, label, comparison) per table row: each step's output, its worst cache and, with a second
    runtime, the worst of the comparisons against it (worst: failing first, then the most tolerance used)."""
    rows = []
    for step in report.steps:
        output = step.comparisons[0]
        rows.append((step.step, _short(output.name), output))
        for group in ([c for c in step.comparisons[1:] if " vs " not in c.name],
                      [c for c in step.comparisons if " vs " in c.name]):
            if group:
                worst = max(group, key=lambda c: (not c.passed, c.tolerance_used, c.max_abs_err))
                label = _short(worst.name) + (f" (worst of {len(group)})" if len(group) > 1 else "")
                rows.append((step.step, label, worst))
    return rows


def _why(c: Comparison) -> str:
    """What decided a failure: the element furthest outside its tolerance, and NaN/inf mismatches."""
    reasons = []
    if c.tolerance_used > 1:
        reasons.append(f"at index {c.tolerance_index} the error is {c.tolerance_used:.3g}x the tolerance")
    if c.nonfinite_mismatches:
        reasons.append(f"{c.nonfinite_mismatches:,} NaN/inf where the other side is finite (or differs)")
    return "; ".join(reasons)


def print_report(report: ValidationReport, console=None) -> None:
    """The comparison as a table that fits 80 columns: per step, the output, the worst cache (and the worst
    against a second runtime), with the share of the tolerance the worst element uses (err/tol), which is
    what decides; then what failed, and PASS or FAIL."""
    from ..common.console import add_columns, make_console, prose, ratio, sci, table

    console = console or make_console()
    s = report.scenario
    first = report.steps[0].comparisons[0]
    atol, rtol = first.atol, first.rtol
    t = table(f"{report.runtime} vs eager float64 ({report.dtype}, batch {s.batch}, prefill {s.prefill_len}, "
              f"{s.steps} decode steps)")
    add_columns(t, "step", "tensor", "max |err|", "max rel", "1 - cos", "err/tol", "ok", numbers_from=2)
    rows = report_rows(report)
    for step, label, c in rows:
        t.add_row(step, label, sci(c.max_abs_err), sci(c.max_rel_err, 1), sci(max(0.0, 1.0 - c.cosine), 1),
                  ratio(c.tolerance_used), "yes" if c.passed else "[red]NO[/red]")
    console.print(t)
    console.print(prose(f"tol = {atol:g} + {rtol:g} x |ref| per element ({report.dtype}). A tensor passes when "
                        "every element is within tol (err/tol <= 1) and no NaN/inf appears where the reference is "
                        "finite. max rel is for information: it is large where |ref| is near 0, where atol decides.",
                        console), markup=False, style="dim")
    failed = [c for step in report.steps for c in step.comparisons if not c.passed]
    shown = [(step, c) for step, _, c in rows if not c.passed][:MAX_FAILURES_SHOWN]  # the table's, in its order
    for step, c in shown:
        console.print(prose(f"FAIL {step}, {c.name}: {_why(c)}", console), markup=False)
    if len(failed) > len(shown):
        console.print(f"and {len(failed) - len(shown)} more failing tensors (every one: --json)")
    count = sum(len(s_.comparisons) for s_ in report.steps)
    if failed:
        console.print(f"[bold red]FAIL[/bold red]: {len(failed)} of {count} tensors over {len(report.steps)} steps")
    else:
        worst = max((c for _, _, c in rows), key=lambda c: c.tolerance_used)
        console.print(f"[bold green]PASS[/bold green]: {count} tensors over {len(report.steps)} steps; the worst "
                      f"element uses {ratio(worst.tolerance_used)} of its tolerance")


def validate_engine(engine: str | Path, scenario: Scenario, onnx: str | Path | None = None,
                    plugin_lib: str | None = None, progress: Progress | None = None) -> ValidationReport:
    """Validate a TensorRT engine against the eager model (and against ONNX Runtime when `onnx` is given)."""
    from ..graph.onnx_reader import read_export_spec
    from ..model.spec import spec_from_metadata
    from .runners import OnnxRuntimeRunner
    from .trt_runner import TensorRTRunner
    from ..trt.sidecar import Sidecar

    from ..model.footprint import check_memory

    sidecar = Sidecar.read(engine)
    spec = spec_from_metadata(sidecar.onnx_metadata, f"--engine {engine}")
    check_memory(scenario.peak_bytes(spec), f"validating {Path(engine).name} with --batch {scenario.batch}",
                 "lower --batch or --prefill-len")
    scenario.histories(spec.max_seq_len)  # refuses a scenario the cache cannot hold
    second = None
    if onnx is not None:
        if read_export_spec(onnx) != spec:
            raise UserError(f"--onnx {onnx} is not the model {engine} was built from (their metadata differ)")
        second = OnnxRuntimeRunner(onnx)
    (progress or _no_progress)("loading the engine", 0, scenario.steps + 1)
    return validate_runner(TensorRTRunner(engine, plugin_lib, sidecar=sidecar), spec, scenario, second=second,
                           progress=progress)


def validate_onnx(path: str | Path, scenario: Scenario, progress: Progress | None = None) -> ValidationReport:
    """Validate an mla-export ONNX file on ONNX Runtime (CPU) against the eager float64 model."""
    from ..model.footprint import check_memory, validate_peak_bytes
    from ..graph.onnx_reader import read_exported_model

    (progress or _no_progress)("reading the model", 0, scenario.steps + 1)
    model = read_exported_model(path)
    spec = model.spec
    check_memory(validate_peak_bytes(spec.config, model.weight_bytes(), spec.io == "tokens")
                 + scenario.peak_bytes(spec),
                 f"validate --batch {scenario.batch} --prefill-len {scenario.prefill_len}",
                 "lower them, or export fewer --layers")
    scenario.histories(spec.max_seq_len)  # refuses a scenario the cache cannot hold
    (progress or _no_progress)("loading the model into ONNX Runtime", 0, scenario.steps + 1)
    from .runners import OnnxRuntimeRunner

    return validate_runner(OnnxRuntimeRunner(path), spec, scenario, progress=progress)
