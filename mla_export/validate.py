"""Validate a runtime (ONNX Runtime here; a TensorRT engine through the same `Runner` protocol)
against the eager float64 model over a prefill and N decode steps, caches included.

Sequences start with ragged cache lengths (random history rows); cache rows beyond each sequence's
length are NaN on both sides, so a runtime that reads them fails loudly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .compare import Comparison, compare, tolerance_for
from .eager import eager_model
from .errors import FieldError, UserError
from .runners import OnnxRuntimeRunner, Runner, from_numpy, to_numpy
from .spec import ModelSpec, torch_dtype


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
        from .fileio import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")


def validate_runner(runner: Runner, spec: ModelSpec, scenario: Scenario,
                    tolerances: tuple[float, float] | None = None, second: Runner | None = None) -> ValidationReport:
    """Run `scenario` through `runner` and the eager float64 model; compare every output and cache.

    With `second` (e.g. ONNX Runtime beside an engine), it runs the same inputs with its own caches and
    `runner`'s outputs are also compared against it, as `polygraphy run --trt --onnxrt` would.
    """
    config, dtype = spec.config, torch_dtype(spec.dtype)
    atol, rtol = tolerances or tolerance_for(spec.dtype)
    histories = scenario.histories(spec.max_seq_len)
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
    for step in range(scenario.steps + 1):
        new_tokens = scenario.prefill_len if step == 0 else 1
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
    rows = torch.arange(max_seq_len)  # [Smax]
    return (rows[None, :] >= (seqlens.to(torch.long) + new_tokens)[:, None])[..., None]  # [B, Smax, 1]


def _run_checked(runner: Runner, feeds: dict, out_names: list[str]) -> dict[str, np.ndarray]:
    outputs = runner.run(dict(feeds))
    missing = [n for n in out_names if n not in outputs]
    if missing:
        raise UserError(f"{runner.name}: outputs {missing} are missing; the graph does not match its metadata")
    return outputs


def print_report(report: ValidationReport, console=None) -> None:
    """A table: per step, the output and the worst cache, then PASS/FAIL."""
    from rich.table import Table

    from .console import make_console

    console = console or make_console()
    table = Table(title=f"{report.runtime} vs eager float64 ({report.dtype}, batch {report.scenario.batch})")
    for column in ("step", "tensor", "max abs err", "at index", "max rel err", "cosine", "NaN/inf mism.", "ok"):
        table.add_column(column)
    for step in report.steps:
        output = step.comparisons[0]
        caches = [c for c in step.comparisons[1:] if " vs " not in c.name]
        rows = [(output, output.name)]
        if caches:
            worst = max(caches, key=lambda c: (not c.passed, c.max_abs_err))
            rows.append((worst, f"{worst.name} (worst of {len(caches)} caches)"))
        cross = [c for c in step.comparisons if " vs " in c.name]
        if cross:
            worst = max(cross, key=lambda c: (not c.passed, c.max_abs_err))
            rows.append((worst, f"{worst.name} (worst of {len(cross)})"))
        for c, label in rows:
            table.add_row(step.step, label, f"{c.max_abs_err:.3e}", str(c.max_abs_index), f"{c.max_rel_err:.3e}",
                          f"{c.cosine:.8f}", str(c.nonfinite_mismatches),
                          "[green]yes[/green]" if c.passed else "[red]NO[/red]")
    console.print(table)
    atol, rtol = report.steps[0].comparisons[0].atol, report.steps[0].comparisons[0].rtol
    verdict = "[bold green]PASS[/bold green]" if report.passed else "[bold red]FAIL[/bold red]"
    console.print(f"{verdict}: {sum(len(s.comparisons) for s in report.steps)} tensors over {len(report.steps)} steps, "
                  f"tolerance |err| <= {atol:g} + {rtol:g}*|ref|")


def validate_engine(engine: str | Path, scenario: Scenario, onnx: str | Path | None = None,
                    plugin_lib: str | None = None) -> ValidationReport:
    """Validate a TensorRT engine against the eager model (and against ONNX Runtime when `onnx` is given)."""
    from .onnx_reader import read_export_spec
    from .spec import spec_from_metadata
    from .trt.runner import TensorRTRunner
    from .trt.sidecar import Sidecar

    from .footprint import check_memory

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
    return validate_runner(TensorRTRunner(engine, plugin_lib, sidecar=sidecar), spec, scenario, second=second)


def validate_onnx(path: str | Path, scenario: Scenario) -> ValidationReport:
    """Validate an mla-export ONNX file on ONNX Runtime (CPU) against the eager float64 model."""
    from .footprint import check_memory, validate_peak_bytes
    from .onnx_reader import read_exported_model

    model = read_exported_model(path)
    spec = model.spec
    check_memory(validate_peak_bytes(spec.config, model.weight_bytes(), spec.io == "tokens")
                 + scenario.peak_bytes(spec),
                 f"validating {Path(path).name} (the float64 eager model beside ONNX Runtime, --batch "
                 f"{scenario.batch}, --prefill-len {scenario.prefill_len})",
                 "validate an export with fewer layers (export --layers N), or a smaller --batch or --prefill-len, "
                 "on this machine")
    scenario.histories(spec.max_seq_len)  # refuses a scenario the cache cannot hold
    return validate_runner(OnnxRuntimeRunner(path), spec, scenario)
