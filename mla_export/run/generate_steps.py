"""The step functions `generate` drives: one call of the model on new token ids with the latent caches held
between calls, on ONNX Runtime, the eager PyTorch model, or a TensorRT engine.

Each keeps its caches where its runtime computes (ORT: OrtValues bound with IO binding, two per layer
swapped every step, so no cache goes through numpy; eager: torch tensors; engine: device tensors bound
as the sidecar's `cache_binding` says) and returns only the logits the loop asks for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ..common import contract
from ..common.errors import UserError
from ..model.spec import ModelSpec, torch_dtype


class StepModel(Protocol):
    """A token model with latent caches: `reset(batch)` empties them; `step(ids [B,S] int64, seqlens [B]
    int32, last [B])` runs S new tokens per sequence at rows seqlens[b].. of its caches and returns the
    logits `[B, V]` float32 (CPU) at column last[b] of each row."""

    name: str
    spec: ModelSpec

    def reset(self, batch: int) -> None: ...

    def step(self, ids: np.ndarray, seqlens: np.ndarray, last: np.ndarray) -> torch.Tensor: ...


def require_tokens(spec: ModelSpec, source: str) -> None:
    """Refuses a model without token I/O (an `--io hidden` export has no embedding or logits)."""
    if spec.io != "tokens":
        raise UserError(f"{source}: exported with --io {spec.io} (hidden states in and out, no logits); generate "
                        "needs token ids -> logits: re-export it with --io tokens")


def _numpy_dtype(name: str):
    if name == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return {"float32": np.float32, "float16": np.float16}[name]


class OnnxRuntimeSteps:
    """An `--io tokens` export on ONNX Runtime. With `io_binding` (the default) each layer's cache is two
    OrtValues, past bound to one and present to the other, swapped every step: the caches never leave ONNX
    Runtime. Without it the caches go through numpy feeds and outputs (kept for the benchmark's comparison)."""

    def __init__(self, path: str | Path, spec: ModelSpec, io_binding: bool = True):
        from .runners import OnnxRuntimeRunner

        require_tokens(spec, f"--onnx {path}")
        self.spec, self.io_binding = spec, io_binding
        self.session = OnnxRuntimeRunner(path).session
        self.device = "cuda" if "CUDAExecutionProvider" in self.session.get_providers() else "cpu"
        self.name = f"onnxruntime ({self.device}{', io binding' if io_binding else ''})"
        self.layers = spec.config.num_hidden_layers
        self.caches: list[list] = []
        self.bindings: list = []
        self.parity = 0

    def reset(self, batch: int) -> None:
        import onnxruntime as ort

        shape = (batch, self.spec.max_seq_len, self.spec.config.cache_width)
        dtype = _numpy_dtype(self.spec.dtype)
        if not self.io_binding:
            self.caches = [np.zeros(shape, dtype) for _ in range(self.layers)]
            return
        self.caches = [[ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, dtype), self.device) for _ in range(2)]
                       for _ in range(self.layers)]
        self.bindings = []  # by parity: past on buffer `parity`, present on the other; bound once, here
        for parity in range(2):
            binding = self.session.io_binding()
            binding.bind_output(contract.LOGITS, "cpu")  # first: get_outputs()[0]; bound again every step
            for i, pair in enumerate(self.caches):
                binding.bind_ortvalue_input(contract.past_cache_name(i), pair[parity])
                binding.bind_ortvalue_output(contract.present_cache_name(i), pair[1 - parity])
            self.bindings.append(binding)
        self.parity = 0

    def step(self, ids: np.ndarray, seqlens: np.ndarray, last: np.ndarray) -> torch.Tensor:
        rows = np.arange(ids.shape[0])
        if not self.io_binding:
            feeds = {contract.INPUT_IDS: ids, contract.CACHE_SEQLENS: seqlens}
            feeds.update({contract.past_cache_name(i): c for i, c in enumerate(self.caches)})
            names = [contract.LOGITS] + [contract.present_cache_name(i) for i in range(self.layers)]
            logits, *self.caches = self.session.run(names, feeds)
            return torch.from_numpy(np.ascontiguousarray(logits[rows, last])).float()  # [B, V]
        binding = self.bindings[self.parity]
        binding.bind_cpu_input(contract.INPUT_IDS, ids)
        binding.bind_cpu_input(contract.CACHE_SEQLENS, seqlens)
        binding.bind_output(contract.LOGITS, "cpu")  # ORT allocates it (its shape changes), in its first slot
        self.session.run_with_iobinding(binding)
        self.parity = 1 - self.parity
        logits = binding.get_outputs()[0].numpy()  # [B, S, V]
        return torch.from_numpy(np.ascontiguousarray(logits[rows, last])).float()  # [B, V]


class RunnerSteps:
    """An `--io tokens` export behind any contiguous-cache `Runner`: a --tp export's ranks in lockstep
    (`parallel.ParallelOnnxRunner`) and/or a paged or FP8 cache served from page pools (`paged.CacheServer`);
    the caches go through numpy each step. `close` stops what the runner started."""

    def __init__(self, runner, spec: ModelSpec, name: str, owned=None):
        require_tokens(spec, name)
        self.runner, self.spec, self.name, self.owned = runner, spec, name, owned
        self.layers = spec.config.num_hidden_layers
        self.caches: list[np.ndarray] = []

    @classmethod
    def open(cls, path, spec: ModelSpec, parallel=None) -> "RunnerSteps":
        """The runner for an export file (`path`) or a --tp export (`parallel`), served from pools when its
        cache is paged or FP8."""
        if parallel is not None:
            from .parallel import ParallelOnnxRunner

            runner = owned = ParallelOnnxRunner(parallel)
            name = f"onnxruntime (cpu, {parallel.world_size} ranks)"
        else:
            from .runners import OnnxRuntimeRunner

            runner, owned, name = OnnxRuntimeRunner(path), None, "onnxruntime (cpu)"
        if spec.cache_contract:
            from .paged import CacheServer

            runner = CacheServer(runner, spec)
            name += f", {spec.cache} cache" + (" (fp8)" if spec.kv_cache_dtype == "fp8" else "")
        return cls(runner, spec, name, owned)

    def reset(self, batch: int) -> None:
        shape = (batch, self.spec.max_seq_len, self.spec.config.cache_width)
        self.caches = [np.zeros(shape, _numpy_dtype(self.spec.dtype)) for _ in range(self.layers)]
        if hasattr(self.runner, "reset"):
            self.runner.reset()

    def step(self, ids: np.ndarray, seqlens: np.ndarray, last: np.ndarray) -> torch.Tensor:
        feeds = {contract.INPUT_IDS: ids, contract.CACHE_SEQLENS: seqlens}
        feeds.update({contract.past_cache_name(i): c for i, c in enumerate(self.caches)})
        outputs = self.runner.run(feeds)
        self.caches = [outputs[contract.present_cache_name(i)] for i in range(self.layers)]
        logits = outputs[contract.LOGITS]  # [B, S, V]
        return torch.from_numpy(np.ascontiguousarray(logits[np.arange(ids.shape[0]), last])).float()  # [B, V]

    def close(self) -> None:
        if self.owned is not None:
            self.owned.close()


class EagerSteps:
    """The eager PyTorch model of `spec` in its export form (`spec.absorb`, `spec.quant`) with its weights,
    on the CPU (or the GPU where torch sees one: the attention then runs the Triton kernels)."""

    def __init__(self, spec: ModelSpec):
        from ..graph.export_form import export_form_model
        from ..weights.eager import weight_source

        require_tokens(spec, "--eager")
        self.spec = spec
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = export_form_model(spec, weight_source(spec), torch_dtype(spec.dtype)).to(self.device)
        self.name = f"eager ({self.device}, {spec.absorb})"
        self.caches: list[torch.Tensor] = []

    def reset(self, batch: int) -> None:
        shape = (batch, self.spec.max_seq_len, self.spec.config.cache_width)
        self.caches = [torch.zeros(shape, dtype=torch_dtype(self.spec.dtype), device=self.device)
                       for _ in range(self.spec.config.num_hidden_layers)]

    def step(self, ids: np.ndarray, seqlens: np.ndarray, last: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            logits, *self.caches = self.model(torch.from_numpy(ids).to(self.device),
                                              torch.from_numpy(seqlens).to(self.device), *self.caches)
        rows = torch.arange(ids.shape[0], device=self.device)
        return logits[rows, torch.from_numpy(last).to(self.device)].float().cpu()  # [B, V]


class EngineSteps:
    """A TensorRT engine built from an `--io tokens` export (a GPU; thin, over `TensorRTRunner`'s binding):
    the caches stay on the device, bound as the sidecar's cache_binding says (aliased: one buffer per layer
    that the plugin writes in place); only the asked-for logits rows come back to the host."""

    def __init__(self, engine: str | Path, plugin_lib: str | None = None):
        from ..model.spec import spec_from_metadata
        from ..trt.sidecar import Sidecar
        from .trt_runner import TensorRTRunner

        sidecar = Sidecar.read_single_device(engine)
        self.spec = spec_from_metadata(sidecar.onnx_metadata, f"--engine {engine}")
        require_tokens(self.spec, f"--engine {engine}")
        self.profiles = {p["name"]: p["shapes"][contract.INPUT_IDS] for p in sidecar.profiles}
        self.runner = TensorRTRunner(engine, plugin_lib, sidecar=sidecar)
        self.torch = self.runner.torch
        self.name = self.runner.name
        self.caches: list = []

    def check_shape(self, batch: int, new_tokens: int) -> None:
        """Refuses a (batch, new tokens) outside the engine's profile for it (TensorRT would fail the step)."""
        name = "decode" if new_tokens == 1 else "prefill"
        low, _, high = self.profiles[name]
        if not (low[0] <= batch <= high[0] and low[1] <= new_tokens <= high[1]):
            raise UserError(f"the engine's {name} profile takes batch {low[0]}..{high[0]} and {low[1]}..{high[1]} "
                            f"new tokens, not {batch} x {new_tokens}; rebuild it with --batch-range/--prefill-range")

    def reset(self, batch: int) -> None:
        self.check_shape(batch, 1)
        shape = (batch, self.spec.max_seq_len, self.spec.config.cache_width)
        self.caches = [self.torch.zeros(shape, dtype=torch_dtype(self.spec.dtype), device="cuda")
                       for _ in range(self.spec.config.num_hidden_layers)]

    def step(self, ids: np.ndarray, seqlens: np.ndarray, last: np.ndarray) -> torch.Tensor:
        torch = self.torch
        self.check_shape(*ids.shape)
        inputs = {contract.INPUT_IDS: torch.from_numpy(ids).cuda(),
                  contract.CACHE_SEQLENS: torch.from_numpy(seqlens).cuda()}
        inputs.update({contract.past_cache_name(i): c for i, c in enumerate(self.caches)})
        bound = self.runner.bind(inputs, new_tokens=ids.shape[1])
        self.runner.execute()
        self.caches = [bound[contract.present_cache_name(i)] for i in range(len(self.caches))]
        self.runner.stream.synchronize()  # the step ran on the runner's stream; what follows, on torch's own
        logits = bound[contract.LOGITS]  # [B, S, V] on the device
        rows = torch.arange(ids.shape[0], device="cuda")
        return logits[rows, torch.from_numpy(last).cuda()].float().cpu()  # [B, V]


def engine_steps(engine: str | Path, plugin_lib: str | None = None):
    """The steps of a TensorRT engine: `EngineSteps` (caches kept on the device) for a contiguous cache in the
    model's dtype; a paged or FP8 one (contract 2) behind `RunnerSteps`, served from page pools like an
    --onnx file (`paged.CacheServer`; the pools go through the host each step)."""
    from ..model.spec import spec_from_metadata
    from ..trt.sidecar import Sidecar
    from .paged import CacheServer
    from .trt_runner import TensorRTRunner

    sidecar = Sidecar.read_single_device(engine)
    spec = spec_from_metadata(sidecar.onnx_metadata, f"--engine {engine}")
    if not spec.cache_contract:
        return EngineSteps(engine, plugin_lib)
    require_tokens(spec, f"--engine {engine}")
    runner = CacheServer(TensorRTRunner(engine, plugin_lib, sidecar=sidecar), spec)
    return RunnerSteps(runner, spec, runner.name)
