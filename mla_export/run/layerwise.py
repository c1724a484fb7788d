"""`validate --per-layer`: an export checked one part at a time, in memory bounded by its largest layer.

For each part (embedding, each decoder layer, head; `graph.parts`) the float64 reference part is built
from the spec's weights (`reference`) and the export's part is run on ONNX Runtime, both over the prefill
and every decode step, each with its own latent cache. The part is fed the reference's own input to it
(teacher-forced: an error in one layer does not spread to the next), so each row of the report is that
part's own error. Beside it the parts also run chained on their own outputs, as the whole graph would:
the last part's outputs and every layer's final cache are compared with the reference end to end.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..common.errors import UserError
from ..model.spec import torch_dtype
from .compare import Comparison, compare_by, verdict_for
from .reference import (ScenarioInputs, reference_cos_sin, reference_embedding, reference_head,
                        reference_layer)
from .scenario import Progress, Scenario, StepResult, no_progress, run_checked, unwritten_rows

END_TO_END = "end to end"


@dataclass
class PartResult:
    """One part's comparisons over every step (teacher-forced), with its time and peak memory."""

    label: str
    steps: list[StepResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(s.passed for s in self.steps)

    @property
    def comparisons(self) -> list[Comparison]:
        return [c for s in self.steps for c in s.comparisons]


@dataclass
class LayerwiseReport:
    runtime: str
    dtype: str
    scenario: Scenario
    parts: list[PartResult]

    @property
    def passed(self) -> bool:
        return all(p.passed for p in self.parts)

    def to_dict(self) -> dict:
        return {"runtime": self.runtime, "dtype": self.dtype, "mode": "per-layer", "passed": self.passed,
                "scenario": self.scenario.__dict__,
                "parts": [{"part": p.label, "passed": p.passed, "seconds": round(p.seconds, 3),
                           "steps": [{"step": s.step, "new_tokens": s.new_tokens, "passed": s.passed,
                                      "comparisons": [c.to_dict() for c in s.comparisons]} for s in p.steps]}
                          for p in self.parts]}

    def write_json(self, path) -> None:
        import json

        from ..common.fileio import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")


class _Chain:
    """One runtime's state through the parts: each step's current tensor and each layer's cache."""

    def __init__(self, tensors: list[torch.Tensor]):
        self.tensors = list(tensors)
        self.caches: dict[int, torch.Tensor] = {}


def _feeds(part, inputs: ScenarioInputs, step: int, tensor: torch.Tensor, cache: torch.Tensor | None,
           spec) -> dict:
    from .runners import to_numpy

    in_names = spec.graph_io_names()[0]
    feeds = {part.inputs[0]: to_numpy(tensor)}
    if cache is not None:
        feeds[part.inputs[1]] = inputs.seqlens[step].numpy()
        feeds[part.inputs[2]] = to_numpy(cache)
    for name in part.graph_inputs:  # graph inputs a part reads for shapes only: the step's own
        feeds[name] = to_numpy(inputs.runtime_inputs[step]) if name == in_names[0] else inputs.seqlens[step].numpy()
    return feeds


def _run(runner, feeds: dict, outputs: tuple[str, ...]) -> list[torch.Tensor]:
    from .runners import from_numpy

    got = runner.run(feeds)
    missing = [n for n in outputs if n not in got]
    if missing:
        raise UserError(f"{runner.name}: the part lacks outputs {missing}; the graph does not match its metadata")
    return [from_numpy(got[n]) for n in outputs]


def validate_per_layer(path: str | Path, scenario: Scenario, progress: Progress | None = None) -> LayerwiseReport:
    """Validate an mla-export ONNX file part by part on ONNX Runtime against the streamed float64 reference."""
    from onnx import TensorProto

    from ..graph.onnx_reader import read_exported_model
    from ..graph.parts import layer_parts, write_part
    from ..model.footprint import check_memory, per_layer_validate_peak_bytes
    from ..weights.eager import weight_source
    from .runners import OnnxRuntimeRunner

    report = progress or no_progress
    report("reading the model", 0, 1)
    model = read_exported_model(path)
    spec = model.spec
    check_memory(per_layer_validate_peak_bytes(spec.config, spec.element_bytes, spec.absorb == "prefolded",
                                               spec.io == "tokens") + scenario.peak_bytes(spec, layers=1),
                 f"validating {Path(path).name} one layer at a time", "lower --batch or --prefill-len")
    inputs = ScenarioInputs.make(spec, scenario.batch, scenario.prefill_len, scenario.steps, scenario.seed,
                                 scenario.histories(spec.max_seq_len))
    parts = layer_parts(model.header, spec, f"--onnx {path}")
    verdict, dtype = verdict_for(spec.dtype), torch_dtype(spec.dtype)
    elem_type = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16,
                 "bfloat16": TensorProto.BFLOAT16}[spec.dtype]
    source, cos_sin = weight_source(spec), reference_cos_sin(spec)
    reference = _Chain(inputs.reference_inputs)
    chained = _Chain(inputs.runtime_inputs)
    results = []
    with tempfile.TemporaryDirectory(prefix="mla-export-parts-") as directory:
        for k, part in enumerate(parts):
            report(f"{part.label} ({k + 1}/{len(parts)})", k, len(parts))
            start = time.perf_counter()
            runner = OnnxRuntimeRunner(write_part(model.header, part, elem_type, model.data_file, Path(directory)))
            result = PartResult(part.label)
            if part.layer is None:
                _check_edge(part, inputs, spec, source, runner, reference, chained, result, verdict)
            else:
                _check_layer(part, inputs, spec, source, cos_sin, runner, reference, chained, result, verdict, dtype)
            del runner
            result.seconds = time.perf_counter() - start
            results.append(result)
    results.append(_end_to_end(inputs, spec, reference, chained, verdict))
    return LayerwiseReport("onnxruntime", spec.dtype, scenario, results)


def _check_edge(part, inputs, spec, source, runner, reference, chained, result, verdict) -> None:
    """The embedding or the head: reference and runtime over every step's tensors."""
    if part.label == "embedding":
        want = reference_embedding(source, spec, reference.tensors)
    else:
        want = reference_head(source, spec, reference.tensors)
    dtype = torch_dtype(spec.dtype)
    for step in range(inputs.steps):
        fed = reference.tensors[step] if part.label == "embedding" else reference.tensors[step].to(dtype)
        got = _run(runner, _feeds(part, inputs, step, fed, None, spec), part.outputs)[0]
        step_result = StepResult(inputs.step_name(step), inputs.new_tokens(step))
        step_result.comparisons.append(compare_by("output", got, want[step], verdict))
        result.steps.append(step_result)
        chained.tensors[step] = _run(runner, _feeds(part, inputs, step, chained.tensors[step], None, spec),
                                     part.outputs)[0]
    reference.tensors = want


def _check_layer(part, inputs, spec, source, cos_sin, runner, reference, chained, result, verdict, dtype) -> None:
    """Decoder layer `part.layer`: each step fed the reference's input (teacher-forced) and, chained, the
    runtime's own; the teacher-forced output and cache compared with the reference's at every step."""
    layer = reference_layer(spec, source, part.layer)
    cache_ref = inputs.initial_cache(part.layer)  # [B, Smax, Dc+Dr] float64
    cache_forced = cache_chained = cache_ref.to(dtype)
    outputs = []
    for step in range(inputs.steps):
        seqlens, new_tokens = inputs.seqlens[step], inputs.new_tokens(step)
        with torch.no_grad():
            out_ref, cache_ref = layer(reference.tensors[step], cache_ref, seqlens, cos_sin)
        out, cache_forced = _run(runner, _feeds(part, inputs, step, reference.tensors[step].to(dtype), cache_forced,
                                                spec), part.outputs)
        step_result = StepResult(inputs.step_name(step), new_tokens)
        step_result.comparisons.append(compare_by("output", out, out_ref, verdict))
        step_result.comparisons.append(compare_by(part.outputs[1], cache_forced, cache_ref, verdict,
                                                  unwritten_rows(seqlens, new_tokens, spec.max_seq_len)))
        result.steps.append(step_result)
        chained.tensors[step], cache_chained = _run(
            runner, _feeds(part, inputs, step, chained.tensors[step], cache_chained, spec), part.outputs)
        outputs.append(out_ref)
    reference.tensors = outputs
    last = inputs.steps - 1
    chained.caches[part.layer] = (cache_chained, cache_ref,
                                  unwritten_rows(inputs.seqlens[last], inputs.new_tokens(last), spec.max_seq_len))
    del layer


def _end_to_end(inputs, spec, reference, chained, verdict) -> PartResult:
    """The parts chained on their own outputs against the reference: every step's model output, then every
    layer's cache after the last step."""
    result = PartResult(END_TO_END)
    out_name = spec.graph_io_names()[1][0]
    for step in range(inputs.steps):
        step_result = StepResult(inputs.step_name(step), inputs.new_tokens(step))
        step_result.comparisons.append(compare_by(out_name, chained.tensors[step], reference.tensors[step], verdict))
        result.steps.append(step_result)
    for layer, (got, want, unwritten) in sorted(chained.caches.items()):
        result.steps[-1].comparisons.append(compare_by(f"present_latent_cache.{layer}", got, want, verdict, unwritten))
    return result


def validate_streamed(runner, spec, scenario: Scenario, progress: Progress | None = None) -> LayerwiseReport:
    """A whole runtime (an engine) against the streamed float64 reference: the runtime runs every step first,
    keeping each step's output and its last caches; then the reference runs one layer at a time and each is
    compared end to end. Memory: one reference layer, plus the runtime's own."""
    from ..weights.eager import weight_source
    from .runners import from_numpy, to_numpy

    report = progress or no_progress
    config, dtype, verdict = spec.config, torch_dtype(spec.dtype), verdict_for(spec.dtype)
    inputs = ScenarioInputs.make(spec, scenario.batch, scenario.prefill_len, scenario.steps, scenario.seed,
                                 scenario.histories(spec.max_seq_len))
    in_names, out_names = spec.graph_io_names()
    caches = [inputs.initial_cache(i).to(dtype) for i in range(config.num_hidden_layers)]
    chained = _Chain(inputs.runtime_inputs)
    for step in range(inputs.steps):
        report(f"{runner.name}: {inputs.step_name(step)}", step, inputs.steps + config.num_hidden_layers)
        feeds = {in_names[0]: to_numpy(inputs.runtime_inputs[step]), in_names[1]: inputs.seqlens[step].numpy()}
        feeds.update({name: to_numpy(c) for name, c in zip(in_names[2:], caches)})
        outputs = run_checked(runner, feeds, out_names)
        chained.tensors[step] = from_numpy(outputs[out_names[0]])
        caches = [from_numpy(outputs[n]) for n in out_names[1:]]
    source, cos_sin = weight_source(spec), reference_cos_sin(spec)
    reference = _Chain(inputs.reference_inputs)
    if spec.io == "tokens":
        reference.tensors = reference_embedding(source, spec, reference.tensors)
    last = inputs.steps - 1
    for index in range(config.num_hidden_layers):
        report(f"reference layer {index}", inputs.steps + index, inputs.steps + config.num_hidden_layers)
        layer, cache = reference_layer(spec, source, index), inputs.initial_cache(index)
        with torch.no_grad():
            for step in range(inputs.steps):
                reference.tensors[step], cache = layer(reference.tensors[step], cache, inputs.seqlens[step], cos_sin)
        chained.caches[index] = (caches[index], cache,
                                 unwritten_rows(inputs.seqlens[last], inputs.new_tokens(last), spec.max_seq_len))
        del layer
    if spec.io == "tokens":
        reference.tensors = reference_head(source, spec, reference.tensors)
    return LayerwiseReport(runner.name, spec.dtype, scenario, [_end_to_end(inputs, spec, reference, chained, verdict)])
