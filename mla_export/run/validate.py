"""Validate a runtime (ONNX Runtime here; a TensorRT engine through the same `Runner` protocol)
against the eager float64 model over a prefill and N decode steps, caches included.

Sequences start with ragged cache lengths (random history rows); cache rows beyond each sequence's
length are NaN on both sides, so a runtime that reads them fails loudly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING


from ..common.errors import UserError
from ..model.spec import ModelSpec, torch_dtype
from .compare import compare_by, verdict_for
from .scenario import Progress, Scenario, StepResult, no_progress, run_checked, unwritten_rows

if TYPE_CHECKING:  # torch is imported when a validation runs, after every check of the command's input
    from .runners import Runner

__all__ = ["Scenario", "StepResult", "ValidationReport", "validate_engine", "validate_onnx", "validate_runner"]

@dataclass
class ValidationReport:
    runtime: str
    dtype: str
    scenario: Scenario
    steps: list[StepResult]
    # --quant fp8: each step's (rel RMS, cosine) of the runtime's output against the unquantized model
    # (the quantization's own error: reported, not judged); empty for unquantized exports
    quantization_error: list[tuple[str, float, float]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(s.passed for s in self.steps)

    def to_dict(self) -> dict:
        return {"runtime": self.runtime, "dtype": self.dtype, "passed": self.passed,
                "scenario": self.scenario.__dict__,
                "steps": [{"step": s.step, "new_tokens": s.new_tokens, "passed": s.passed,
                           "comparisons": [c.to_dict() for c in s.comparisons]} for s in self.steps],
                "quantization_error": [{"step": step, "rel_rms": rms, "cosine": cos}
                                       for step, rms, cos in self.quantization_error]}

    def write_json(self, path: str | Path) -> None:
        from ..common.fileio import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")


def validate_runner(runner: Runner, spec: ModelSpec, scenario: Scenario, second: Runner | None = None,
                    progress: Progress | None = None) -> ValidationReport:
    """Run `scenario` through `runner` and the eager float64 model; compare every output and cache.

    With `second` (e.g. ONNX Runtime beside an engine), it runs the same inputs with its own caches and
    `runner`'s outputs are also compared against it, as `polygraphy run --trt --onnxrt` would.
    `progress(what, done, total)` is told each step as it starts ("step 2/9: decode 1", steps done, steps).
    """
    import torch

    from ..weights.eager import eager_model
    from .compare import compare
    from .fp8_cache_check import fp8_cache_comparisons, history_as_stored
    from .reference import ScenarioInputs, reference_model
    from .routing_ties import TieWatch, tie_positions
    from .runners import from_numpy, to_numpy

    config = spec.config
    verdict = verdict_for(spec.dtype).through(config.num_hidden_layers)
    inputs = ScenarioInputs.make(spec, scenario.batch, scenario.prefill_len, scenario.steps, scenario.seed,
                                 scenario.histories(spec.max_seq_len))
    report = progress or no_progress
    total = inputs.steps
    report("building the eager float64 model", 0, total)
    model = reference_model(spec)
    fp8_cache = spec.kv_cache_dtype == "fp8"  # judged as `fp8_cache_check` says
    quantized = spec.quant != "none" or fp8_cache
    plain = eager_model(spec.single_device(), torch.float64) if quantized else None  # the unquantized model
    caches_ref = [inputs.initial_cache(i) for i in range(config.num_hidden_layers)]  # [B, Smax, Dc+Dr] float64
    caches_plain = list(caches_ref)
    if fp8_cache:
        caches_ref = [history_as_stored(c, config.kv_lora_rank) for c in caches_ref]
    quantization_error = []
    dtype = torch_dtype(spec.dtype)
    caches_run = [c.to(dtype) for c in caches_ref]
    caches_second = list(caches_run)
    in_names, out_names = spec.step_io_names()  # a paged or FP8 cache: the runner is a `paged.CacheServer`
    watch = TieWatch(model.layers, spec.dtype)
    # [B, Smax] per layer: cache rows written by tokens routed at a near tie in an earlier layer
    tied_rows = [torch.zeros(scenario.batch, spec.max_seq_len, dtype=torch.bool) for _ in caches_ref]

    results = []
    for step in range(total):
        seqlens, new_tokens = inputs.seqlens[step], inputs.new_tokens(step)
        report(f"step {step + 1}/{total}: {inputs.step_name(step)}", step, total)
        feeds = {in_names[0]: to_numpy(inputs.runtime_inputs[step]), in_names[1]: seqlens.numpy()}
        feeds.update({name: to_numpy(c) for name, c in zip(in_names[2:], caches_run)})
        outputs = run_checked(runner, feeds, out_names)
        caches_run = [from_numpy(outputs[n]) for n in out_names[1:]]
        for layer, cache in zip(model.layers, caches_run):  # FP8: the reference attends over the runtime's cache
            layer.self_attn.fp8_cache_check = {"read_cache": cache.to(torch.float64)} if fp8_cache else {}
        with torch.no_grad():
            out_ref, *caches_ref = model(inputs.reference_inputs[step], seqlens, *caches_ref)
        if plain is not None:
            with torch.no_grad():
                out_plain, *caches_plain = plain(inputs.reference_inputs[step], seqlens, *caches_plain)
            error = compare(out_names[0], from_numpy(outputs[out_names[0]]), out_plain, float("inf"), 0.0)
            quantization_error.append((inputs.step_name(step), error.rel_rms, error.cosine))
        result = StepResult(inputs.step_name(step), new_tokens)
        unwritten = unwritten_rows(seqlens, new_tokens, spec.max_seq_len)  # the NaN rows both sides must keep
        tied = torch.zeros(scenario.batch, new_tokens, dtype=torch.bool)  # [B, S], over the layers so far
        for layer in range(len(tied_rows)):
            tied_rows[layer] |= tie_positions(tied, seqlens, spec.max_seq_len)
            tied |= watch.found.pop(layer, tied)
        result.comparisons.append(compare_by(out_names[0], from_numpy(outputs[out_names[0]]), out_ref, verdict,
                                             exempt=tied[..., None]))
        for name, got, ref, rows in zip(out_names[1:], caches_run, caches_ref, tied_rows):
            if fp8_cache:
                result.comparisons += fp8_cache_comparisons(name, got, ref, verdict, unwritten, rows[..., None],
                                                            config.kv_lora_rank)
            else:
                result.comparisons.append(compare_by(name, got, ref, verdict, unwritten, exempt=rows[..., None]))
        if fp8_cache:  # the next step starts from the runtime's own cache (module docstring of fp8_cache_check)
            caches_ref = [c.to(torch.float64) for c in caches_run]
        for rank, peer in getattr(runner, "peer_outputs", {}).items():  # a --tp runner: every rank's outputs
            for name in out_names:
                allowed = unwritten if name != out_names[0] else None
                result.comparisons.append(compare_by(f"rank {rank} vs 0: {name}", from_numpy(peer[name]),
                                                     from_numpy(outputs[name]), verdict, allowed))
        if second is not None:
            feeds.update({name: to_numpy(c) for name, c in zip(in_names[2:], caches_second)})
            other = run_checked(second, feeds, out_names)
            caches_second = [from_numpy(other[n]) for n in out_names[1:]]
            for name in out_names:
                allowed = unwritten if name != out_names[0] else None
                result.comparisons.append(compare_by(f"{name} vs {second.name}", from_numpy(outputs[name]),
                                                     from_numpy(other[name]), verdict, allowed))
        results.append(result)
    watch.close()
    return ValidationReport(runner.name, spec.dtype, scenario, results, quantization_error)


def validate_engine(engine: str | Path, scenario: Scenario, onnx: str | Path | None = None,
                    plugin_lib: str | None = None, progress: Progress | None = None,
                    per_layer: bool = False) -> ValidationReport:
    """Validate a TensorRT engine against the eager model (and against ONNX Runtime when `onnx` is given).
    With `per_layer`, against the float64 reference streamed one layer at a time (no ONNX Runtime beside)."""
    from ..graph.onnx_reader import read_export_spec
    from ..model.footprint import check_memory
    from ..model.spec import spec_from_metadata
    from ..trt.sidecar import Sidecar
    from .runners import OnnxRuntimeRunner
    from .trt_runner import TensorRTRunner

    sidecar = Sidecar.read_single_device(engine)
    spec = spec_from_metadata(sidecar.onnx_metadata, f"--engine {engine}")
    check_memory(scenario.peak_bytes(spec), f"validating {Path(engine).name} with --batch {scenario.batch}",
                 "lower --batch or --prefill-len")
    scenario.histories(spec.max_seq_len)  # refuses a scenario the cache cannot hold
    if onnx is not None and read_export_spec(onnx) != spec:
        raise UserError(f"--onnx {onnx} is not the model {engine} was built from (their metadata differ)")
    (progress or no_progress)("loading the engine", 0, scenario.steps + 1)
    if per_layer and spec.kv_cache_dtype == "fp8":  # the streamed comparison has no FP8-cache verdict yet
        raise UserError(f"--engine {engine} --per-layer: an engine with an FP8 cache is validated whole only; "
                        "drop --per-layer")
    runner = TensorRTRunner(engine, plugin_lib, sidecar=sidecar)
    if spec.cache_contract:  # served from page pools, read back contiguous, as an --onnx file is
        from .paged import CacheServer

        runner = CacheServer(runner, spec, seed=scenario.seed)
    if per_layer:
        from .layerwise import validate_streamed

        return validate_streamed(runner, spec, scenario, progress=progress)
    second = OnnxRuntimeRunner(onnx) if onnx is not None else None
    if second is not None and spec.cache_contract:  # pools of its own, fed the same contiguous caches
        from .paged import CacheServer

        second = CacheServer(second, spec, seed=scenario.seed)
    return validate_runner(runner, spec, scenario, second=second, progress=progress)


def whole_peak_bytes(model, scenario: Scenario) -> int:
    """Estimated peak memory of validating `model` (an ExportedModel) whole: the float64 eager model beside
    ONNX Runtime's copy, and the scenario's tensors."""
    from ..model.footprint import validate_peak_bytes

    spec = model.spec
    return (validate_peak_bytes(spec.config, model.weight_bytes(), spec.io == "tokens")
            + scenario.peak_bytes(spec))


def validate_onnx(path: str | Path, scenario: Scenario, progress: Progress | None = None,
                  per_layer: bool | None = None) -> ValidationReport:
    """Validate an mla-export ONNX file on ONNX Runtime (CPU) against the eager float64 model: whole, or
    with `per_layer` one layer at a time (`layerwise`); None: whole where it fits in memory, else per layer."""
    from ..graph.onnx_reader import read_exported_model
    from ..graph.parallel_export import is_parallel_export
    from ..model.footprint import available_memory

    if is_parallel_export(path):
        return validate_parallel(path, scenario, progress, per_layer)
    (progress or no_progress)("reading the model", 0, scenario.steps + 1)
    model = read_exported_model(path)
    refuse_rank_file(model.spec, path)
    scenario.histories(model.spec.max_seq_len)  # refuses a scenario the cache cannot hold
    if per_layer is None:
        free = available_memory()
        per_layer = free is not None and whole_peak_bytes(model, scenario) > free
    if per_layer:
        from .layerwise import validate_per_layer

        return validate_per_layer(path, scenario, progress=progress)
    from ..model.footprint import check_memory

    check_memory(whole_peak_bytes(model, scenario),
                 f"validating {Path(path).name} --whole (--batch {scenario.batch}, --prefill-len "
                 f"{scenario.prefill_len})",
                 "use --per-layer, or lower --batch or --prefill-len")
    (progress or no_progress)("loading the model into ONNX Runtime", 0, scenario.steps + 1)
    from .runners import OnnxRuntimeRunner

    runner = OnnxRuntimeRunner(path)
    if model.spec.cache_contract:  # served from page pools, read back contiguous
        from .paged import CacheServer

        runner = CacheServer(runner, model.spec, seed=scenario.seed)
    return validate_runner(runner, model.spec, scenario, progress=progress)


def refuse_rank_file(spec: ModelSpec, path: str | Path) -> None:
    """A --tp rank file is part of a model, not a model: UserError naming its directory."""
    if spec.tp_size > 1:
        raise UserError(f"--onnx {path} is rank {spec.tp_rank} of {spec.tp_size} of a --tp export: pass its "
                        f"directory (--onnx {Path(path).parent})")


def validate_parallel(directory: str | Path, scenario: Scenario, progress: Progress | None = None,
                      per_layer: bool | None = None) -> ValidationReport:
    """Validate a --tp export directory: its ranks run in lockstep, one process each (`run/parallel.py`),
    against the eager float64 model of the whole model; every rank's outputs and caches are compared too."""
    from ..graph.parallel_export import read_parallel_export
    from ..model.footprint import check_memory, validate_peak_bytes
    from .parallel import ParallelOnnxRunner

    if per_layer:
        raise UserError(f"--per-layer: a --tp export is validated whole (its ranks in lockstep); drop --per-layer "
                        f"for {directory}")
    report = progress or no_progress
    report("reading the ranks", 0, scenario.steps + 1)
    export = read_parallel_export(directory)
    spec = export.spec.single_device()
    scenario.histories(spec.max_seq_len)  # refuses a scenario the cache cannot hold
    weights = sum(model.weight_bytes() for model in export.ranks)
    check_memory(validate_peak_bytes(spec.config, weights, spec.io == "tokens") + scenario.peak_bytes(spec),
                 f"validating {directory} ({export.world_size} ranks, --batch {scenario.batch})",
                 "lower --batch or --prefill-len")
    report(f"starting {export.world_size} rank processes", 0, scenario.steps + 1)
    with ParallelOnnxRunner(export) as ranks:
        runner = ranks
        if spec.cache_contract:  # every rank fed the same block table and pools by one server
            from .paged import CacheServer

            runner = CacheServer(ranks, spec, seed=scenario.seed)
        return validate_runner(runner, spec, scenario, progress=progress)
