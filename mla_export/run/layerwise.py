"""`validate --per-layer`: an export checked one part at a time, in memory bounded by its largest layer.

For each part (embedding, each decoder layer, head; `graph.parts`) the float64 reference part is built
from the spec's weights (`reference`) and the export's part is run on ONNX Runtime, both over the prefill
and every decode step, each with its own latent cache. The part is fed the reference's own input to it
(teacher-forced: an error in one layer does not spread to the next), so each row of the report is that
part's own error. Beside it the parts also run chained on their own outputs, as the whole graph would:
the last part's outputs and every layer's final cache are compared with the reference end to end.

A paged or FP8 cache (contract version 2): each layer's part is served from its own shuffled pools
(`paged.LayerPartServer`), one set for the teacher-forced run and one for the chained run, and read back
contiguous. An FP8 cache is judged as whole validation judges it (`fp8_cache_check`): the reference layer
attends over the runtime's own cache, so the end-to-end reference runs each layer a second time, over the
chained run's caches, with its own stream of hidden states.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..common.errors import UserError
from ..model.spec import torch_dtype
from .compare import Comparison, compare, compare_by, verdict_for
from .fp8_cache_check import fp8_cache_comparisons, history_as_stored
from .routing_ties import TieWatch, tie_positions
from .reference import (ScenarioInputs, reference_cos_sin, reference_embedding, reference_head,
                        reference_layer)
from .scenario import Progress, Scenario, StepResult, no_progress, run_checked, unwritten_rows

END_TO_END = "end to end"


@dataclass
class PartResult:
    """One part's comparisons over every step (teacher-forced), with the seconds it took."""

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
    # --quant fp8: each step's (rel RMS, cosine) of the chained output against the unquantized model
    quantization_error: list[tuple[str, float, float]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(p.passed for p in self.parts)

    def to_dict(self) -> dict:
        return {"runtime": self.runtime, "dtype": self.dtype, "mode": "per-layer", "passed": self.passed,
                "scenario": self.scenario.__dict__,
                "parts": [{"part": p.label, "passed": p.passed, "seconds": round(p.seconds, 3),
                           "steps": [{"step": s.step, "new_tokens": s.new_tokens, "passed": s.passed,
                                      "comparisons": [c.to_dict() for c in s.comparisons]} for s in p.steps]}
                          for p in self.parts],
                "quantization_error": [{"step": step, "rel_rms": rms, "cosine": cos}
                                       for step, rms, cos in self.quantization_error]}

    def write_json(self, path) -> None:
        import json

        from ..common.fileio import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")


class _Chain:
    """One runtime's state through the parts: each step's current tensor, each layer's final cache (with the
    reference's, its unwritten rows and the rows tied in earlier layers), and the tokens routed at a near tie
    so far: per step `[B, S]`, and as the cache rows they wrote `[B, Smax]`."""

    def __init__(self, tensors: list[torch.Tensor], max_seq_len: int):
        self.tensors = list(tensors)
        self.caches: dict[int, tuple] = {}
        batch = tensors[0].shape[0]
        self.tied = [torch.zeros(batch, t.shape[1], dtype=torch.bool) for t in tensors]
        self.tied_rows = torch.zeros(batch, max_seq_len, dtype=torch.bool)


def _feeds(part, inputs: ScenarioInputs, step: int, tensor: torch.Tensor, cache: torch.Tensor | None,
           spec) -> dict:
    from .runners import to_numpy

    in_names = spec.graph_io_names()[0]
    feeds = {part.inputs[0]: to_numpy(tensor)}
    if cache is not None:
        feeds[part.inputs[1]] = inputs.seqlens[step].numpy()
        feeds[part.inputs[2]] = to_numpy(cache)
    for name in part.graph_inputs:  # graph inputs a part reads for their shapes only (the exporter shares
        if name == in_names[0]:     # one Shape node between layers): the step's own, or one like it
            feeds[name] = to_numpy(inputs.runtime_inputs[step])
        elif name == in_names[1]:
            feeds[name] = inputs.seqlens[step].numpy()
        else:  # another layer's cache: its shape is every layer's
            like = cache if cache is not None else torch.zeros(
                len(inputs.histories), spec.max_seq_len, spec.config.cache_width, dtype=torch_dtype(spec.dtype))
            feeds[name] = to_numpy(like)
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
    from ..graph.parts import layer_parts, part_directory, remove_part, write_part
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
    reference = _Chain(inputs.reference_inputs, spec.max_seq_len)
    # the end-to-end reference: the forced one's stream, except over an FP8 cache (module docstring)
    e2e = _Chain(inputs.reference_inputs, spec.max_seq_len) if spec.kv_cache_dtype == "fp8" else reference
    chained = _Chain(inputs.runtime_inputs, spec.max_seq_len)
    results = []
    with part_directory(model.data_file) as directory:
        for k, part in enumerate(parts):
            report(f"{part.label} ({k + 1}/{len(parts)})", k, len(parts))
            start = time.perf_counter()
            part_path = write_part(model.header, part, elem_type, model.data_file, Path(directory))
            runner = OnnxRuntimeRunner(part_path)
            result = PartResult(part.label)
            if part.layer is None:
                _check_edge(part, inputs, spec, source, runner, reference, e2e, chained, result, verdict)
                del runner
            else:
                runners = (runner, runner)  # the teacher-forced run's and the chained run's
                if spec.cache_contract:  # each with pools of its own, fed and read back contiguous
                    from .paged import LayerPartServer

                    runners = tuple(LayerPartServer(runner, part, spec, scenario.seed) for _ in range(2))
                    part = runners[0].part
                runtime = _run_layer_part(part, inputs, spec, runners, reference, chained, dtype)
                del runner, runners  # the reference layer is built once ONNX Runtime has let the part's weights go
                _check_layer(part, inputs, spec, source, cos_sin, runtime, reference, e2e, chained, result, verdict)
            remove_part(part_path)
            result.seconds = time.perf_counter() - start
            results.append(result)
    results.append(_end_to_end(inputs, spec, e2e, chained, verdict))
    return LayerwiseReport("onnxruntime", spec.dtype, scenario, results,
                           _quantization_error(spec, inputs, source, chained, report))


def _check_edge(part, inputs, spec, source, runner, reference, e2e, chained, result, verdict) -> None:
    """The embedding or the head: reference and runtime over every step's tensors (and the end-to-end
    reference's stream, where it is its own, through the same part)."""
    edge = reference_embedding if part.label == "embedding" else reference_head
    want = edge(source, spec, reference.tensors)
    if e2e is not reference:
        e2e.tensors = list(want) if part.label == "embedding" else edge(source, spec, e2e.tensors)
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


def _initial_cache(inputs, spec, layer: int) -> torch.Tensor:
    """Layer `layer`'s starting cache `[B, Smax, Dc+Dr]` float64 (an FP8 cache's: its c_kv as stored)."""
    cache = inputs.initial_cache(layer)
    return history_as_stored(cache, spec.config.kv_lora_rank) if spec.kv_cache_dtype == "fp8" else cache


def _run_layer_part(part, inputs, spec, runners, reference, chained, dtype) -> tuple[list, list, list]:
    """Decoder layer `part.layer` of the export over every step, fed the reference's input (teacher-forced,
    `runners[0]`) and, chained, the runtime's own (`runners[1]`): (forced outputs, forced caches, chained
    caches), each per step. Run before the reference layer is built, so memory holds one of the two at a time."""
    cache_forced = cache_chained = _initial_cache(inputs, spec, part.layer).to(dtype)  # [B, Smax, Dc+Dr]
    forced, chain = runners
    outputs, caches, chained_caches = [], [], []
    for step in range(inputs.steps):
        out, cache_forced = _run(forced, _feeds(part, inputs, step, reference.tensors[step].to(dtype), cache_forced,
                                                spec), part.outputs)
        outputs.append(out)
        caches.append(cache_forced)
        chained.tensors[step], cache_chained = _run(
            chain, _feeds(part, inputs, step, chained.tensors[step], cache_chained, spec), part.outputs)
        chained_caches.append(cache_chained)
    return outputs, caches, chained_caches


def _check_layer(part, inputs, spec, source, cos_sin, runtime, reference, e2e, chained, result, verdict) -> None:
    """The float64 reference of layer `part.layer` over every step, against the part's `runtime` results
    (`_run_layer_part`): output and cache compared at every step; the tokens routed at a near tie found.
    An FP8 cache: the reference reads the runtime's cache, and runs again over the chained caches for `e2e`."""
    forced_outputs, forced_caches, chained_caches = runtime
    fp8, d_c = spec.kv_cache_dtype == "fp8", spec.config.kv_lora_rank
    layer = reference_layer(spec, source, part.layer)
    watch = TieWatch([layer], spec.dtype, depth=lambda _: 1)  # fed the reference's input: its own error
    chain_watch = TieWatch([layer], spec.dtype, depth=lambda _: part.layer + 1)  # the chained parts' input
    cache_ref = cache_e2e = _initial_cache(inputs, spec, part.layer)  # [B, Smax, Dc+Dr] float64
    rows_e2e = cache_e2e  # FP8: the e2e reference's own rows (unquantized), step by step
    tied_before = chained.tied_rows.clone()  # rows tied in an earlier layer, for the e2e check
    outputs, e2e_outputs = [], []
    for step in range(inputs.steps):
        seqlens, new_tokens = inputs.seqlens[step], inputs.new_tokens(step)
        unwritten = unwritten_rows(seqlens, new_tokens, spec.max_seq_len)  # [B, Smax, 1]
        if fp8:
            layer.self_attn.fp8_cache_check = {"read_cache": forced_caches[step].to(torch.float64)}
        with torch.no_grad():
            out_ref, cache_ref = layer(reference.tensors[step], cache_ref, seqlens, cos_sin)
        untied = torch.zeros(len(inputs.histories), new_tokens, dtype=torch.bool)
        tied = watch.found.pop(0, untied)  # [B, S]
        chain_tied = chain_watch.found.pop(0, untied)
        if fp8:  # the end-to-end reference over the chained run's caches
            layer.self_attn.fp8_cache_check = {"read_cache": chained_caches[step].to(torch.float64)}
            with torch.no_grad():
                out_e2e, present_e2e = layer(e2e.tensors[step], cache_e2e, seqlens, cos_sin)
            watch.found.pop(0, None)
            chain_tied = chain_watch.found.pop(0, untied)
            written = ~unwritten & (torch.arange(spec.max_seq_len)[None, :, None] >= seqlens[:, None, None])
            rows_e2e = torch.where(written, present_e2e, rows_e2e)
            cache_e2e = chained_caches[step].to(torch.float64)  # the next step starts from the runtime's cache
            e2e_outputs.append(out_e2e)
        chained.tied[step] |= chain_tied
        chained.tied_rows |= tie_positions(chain_tied, seqlens, spec.max_seq_len)
        step_result = StepResult(inputs.step_name(step), new_tokens)
        step_result.comparisons.append(compare_by("output", forced_outputs[step], out_ref, verdict,
                                                  exempt=tied[..., None]))
        if fp8:
            step_result.comparisons += fp8_cache_comparisons(part.outputs[1], forced_caches[step], cache_ref, verdict,
                                                             unwritten, None, d_c)
            cache_ref = forced_caches[step].to(torch.float64)
        else:
            step_result.comparisons.append(compare_by(part.outputs[1], forced_caches[step], cache_ref, verdict,
                                                      unwritten))
            rows_e2e = cache_ref
        result.steps.append(step_result)
        outputs.append(out_ref)
    reference.tensors = outputs
    if fp8:
        e2e.tensors = e2e_outputs
    last = inputs.steps - 1
    chained.caches[part.layer] = (chained_caches[-1], rows_e2e,
                                  unwritten_rows(inputs.seqlens[last], inputs.new_tokens(last), spec.max_seq_len),
                                  tied_before)
    watch.close()
    chain_watch.close()


def _end_to_end(inputs, spec, reference, chained, verdict) -> PartResult:
    """The parts chained on their own outputs against the reference: every step's model output, then every
    layer's cache after the last step."""
    result = PartResult(END_TO_END)
    verdict = verdict.through(spec.config.num_hidden_layers)
    out_name = spec.graph_io_names()[1][0]
    for step in range(inputs.steps):
        step_result = StepResult(inputs.step_name(step), inputs.new_tokens(step))
        step_result.comparisons.append(compare_by(out_name, chained.tensors[step], reference.tensors[step], verdict,
                                                  exempt=chained.tied[step][..., None]))
        result.steps.append(step_result)
    for layer, (got, want, unwritten, tied_rows) in sorted(chained.caches.items()):
        name = f"present_latent_cache.{layer}"
        if spec.kv_cache_dtype == "fp8":
            result.steps[-1].comparisons += fp8_cache_comparisons(name, got, want, verdict, unwritten,
                                                                  tied_rows[..., None], spec.config.kv_lora_rank)
        else:
            result.steps[-1].comparisons.append(compare_by(name, got, want, verdict, unwritten,
                                                           exempt=tied_rows[..., None]))
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
    in_names, out_names = spec.step_io_names()  # contiguous: a paged or FP8 engine is behind a CacheServer
    caches = [inputs.initial_cache(i).to(dtype) for i in range(config.num_hidden_layers)]
    chained = _Chain(inputs.runtime_inputs, spec.max_seq_len)
    for step in range(inputs.steps):
        report(f"{runner.name}: {inputs.step_name(step)}", step, inputs.steps + config.num_hidden_layers)
        feeds = {in_names[0]: to_numpy(inputs.runtime_inputs[step]), in_names[1]: inputs.seqlens[step].numpy()}
        feeds.update({name: to_numpy(c) for name, c in zip(in_names[2:], caches)})
        outputs = run_checked(runner, feeds, out_names)
        chained.tensors[step] = from_numpy(outputs[out_names[0]])
        caches = [from_numpy(outputs[n]) for n in out_names[1:]]
    source, cos_sin = weight_source(spec), reference_cos_sin(spec)
    reference = _Chain(inputs.reference_inputs, spec.max_seq_len)
    if spec.io == "tokens":
        reference.tensors = reference_embedding(source, spec, reference.tensors)
    last = inputs.steps - 1
    for index in range(config.num_hidden_layers):
        report(f"reference layer {index}", inputs.steps + index, inputs.steps + config.num_hidden_layers)
        layer, cache = reference_layer(spec, source, index), inputs.initial_cache(index)
        watch = TieWatch([layer], spec.dtype, depth=lambda _, index=index: index + 1)
        tied_before = chained.tied_rows.clone()
        with torch.no_grad():
            for step in range(inputs.steps):
                reference.tensors[step], cache = layer(reference.tensors[step], cache, inputs.seqlens[step], cos_sin)
                if 0 in watch.found:
                    tied = watch.found.pop(0)  # [B, S]
                    chained.tied[step] |= tied
                    chained.tied_rows |= tie_positions(tied, inputs.seqlens[step], spec.max_seq_len)
        chained.caches[index] = (caches[index], cache,
                                 unwritten_rows(inputs.seqlens[last], inputs.new_tokens(last), spec.max_seq_len),
                                 tied_before)
        watch.close()
        del layer
    if spec.io == "tokens":
        reference.tensors = reference_head(source, spec, reference.tensors)
    return LayerwiseReport(runner.name, spec.dtype, scenario, [_end_to_end(inputs, spec, reference, chained, verdict)],
                           _quantization_error(spec, inputs, source, chained, report))


def _quantization_error(spec, inputs, source, chained, report) -> list[tuple[str, float, float]]:
    """For a quantized export: each step's chained output against the unquantized model's (streamed one
    layer at a time, float64), as (step, rel RMS, cosine): the quantization's own error, not judged."""
    if spec.quant == "none" and spec.kv_cache_dtype != "fp8":
        return []
    plain = dataclasses.replace(spec, quant="none", kv_cache_dtype="model")
    cos_sin = reference_cos_sin(spec)
    tensors = list(inputs.reference_inputs)
    if spec.io == "tokens":
        tensors = reference_embedding(source, spec, tensors)
    for index in range(spec.config.num_hidden_layers):
        report(f"unquantized layer {index}", index, spec.config.num_hidden_layers)
        layer, cache = reference_layer(plain, source, index), inputs.initial_cache(index)
        with torch.no_grad():
            for step in range(inputs.steps):
                tensors[step], cache = layer(tensors[step], cache, inputs.seqlens[step], cos_sin)
        del layer
    if spec.io == "tokens":
        tensors = reference_head(source, spec, tensors)
    errors = [compare("output", got, want, float("inf"), 0.0) for got, want in zip(chained.tensors, tensors)]
    return [(inputs.step_name(step), e.rel_rms, e.cosine) for step, e in enumerate(errors)]
