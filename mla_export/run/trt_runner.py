"""Run an mla-export engine with TensorRT on a GPU (the `Runner` protocol of validate, and profile).

Thin by design (it needs TensorRT and a GPU, which CI does not have): everything it decides is
checked before TensorRT is touched (`Sidecar`, `check_compatible`); the rest follows TensorRT 10's
documented Python API: deserialize_cuda_engine, create_execution_context,
set_optimization_profile_async, set_input_shape, set_tensor_address, execute_async_v3.
The cache planes (latent caches; contract 2: page pools, FP8 codes/scales/rope) are bound as the sidecar's
`cache_binding` says (aliasing.py, `alias_pairs`): "aliased", each
past and present on one device buffer, as TensorRT binds an aliased plugin output; "copy", present on a
buffer of its own. The runner's name says which (it heads validate's report and profile's rows).

Why not Polygraphy's TrtRunner: it gives every output a buffer of its own and copies it back after each
inference, so it cannot bind `present_latent_cache.i` to `past_latent_cache.i`'s device buffer, which an
engine with the aliased cache needs (avoiding a cache copy per step is the point of that binding).
Polygraphy still runs our files: `mla_export.polygraphy_data` is a data loader for `polygraphy run`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..common.errors import UserError
from .runners import from_numpy, to_numpy
from ..trt.backend import file_sha256, find_plugin_library, import_backend, load_plugin_library, make_logger
from ..trt.sidecar import RuntimeEnvironment, Sidecar, check_compatible


def _require_cuda():
    import torch

    if not torch.cuda.is_available():
        raise UserError("running a TensorRT engine needs an NVIDIA GPU with a CUDA build of torch; none is "
                        "available (validate the ONNX file with `mla-export validate --onnx` instead)")
    return torch


def present_cache_tensor(cache_binding: str, past):
    """The tensor to bind a present plane to, given its past plane's: the same one when aliased (the plugin
    writes only the new rows into it), else a new one of its shape and type (the step writes every row)."""
    return past if cache_binding == "aliased" else past.new_empty(past.shape)


def cache_aliases(sidecar: Sidecar, engine: str | Path) -> dict[str, str]:
    """Each cache plane's present_* output -> the past_* input it is bound beside (every plane of either
    contract: latent caches, page pools, FP8 codes/scales/rope), from the engine's recorded export."""
    from ..model.spec import spec_from_metadata
    from ..trt.aliasing import alias_pairs

    spec = spec_from_metadata(sidecar.onnx_metadata, f"--engine {engine}")
    return alias_pairs(spec.config.num_hidden_layers, spec.io, spec.cache, spec.kv_cache_dtype)


def torch_dtype_table(trt, torch) -> dict:
    """TensorRT DataType -> torch dtype for the engine's I/O (FP8: an FP8 cache's codes, float8_e4m3fn)."""
    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.INT32: torch.int32,
             trt.DataType.INT64: torch.int64, trt.DataType.BF16: torch.bfloat16}
    if hasattr(trt.DataType, "FP8"):
        table[trt.DataType.FP8] = torch.float8_e4m3fn
    return table


class TensorRTRunner:
    """Feeds numpy arrays by graph input name, returns outputs by name; caches bound per the sidecar."""

    def __init__(self, engine_path: str | Path, plugin_lib: str | None = None, sidecar: Sidecar | None = None):
        """`sidecar`: the engine's sidecar when the caller has read it already (else read here). The engines of
        a `--tp` export are refused: each needs its own process and an NCCL communicator (the C++ example)."""
        self.sidecar = (sidecar or Sidecar.read_single_device(engine_path)).single_device(engine_path)
        self.aliases = cache_aliases(self.sidecar, engine_path)
        data = Path(engine_path).read_bytes()
        self.sidecar.check_engine_bytes(engine_path, data)  # the engine its sidecar describes, not another build's
        torch = _require_cuda()
        self.trt = trt = import_backend(self.sidecar.tensorrt_flavour)
        plugin = None
        if self.sidecar.attention == "plugin":
            plugin = find_plugin_library(plugin_lib or self.sidecar.plugin_path)
        major, minor = torch.cuda.get_device_capability()
        env = RuntimeEnvironment(self.sidecar.tensorrt_flavour, str(trt.__version__), torch.cuda.get_device_name(),
                                 f"{major}.{minor}", file_sha256(plugin) if plugin else None)
        check_compatible(self.sidecar, env)
        self.logger = make_logger(trt)
        if plugin is not None:
            load_plugin_library(trt, plugin)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            raise UserError(f"TensorRT could not deserialize {engine_path} (see its log); rebuild the engine")
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream()
        self.torch, self.device = torch, "cuda"
        self.cache_binding = self.sidecar.cache_binding
        self.name = f"{self.sidecar.tensorrt_flavour} engine ({self.cache_binding} cache)"
        self.profile_index = {p["name"]: i for i, p in enumerate(self.sidecar.profiles)}
        self.io_names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]

    def _torch_dtype(self, name: str):
        return torch_dtype_table(self.trt, self.torch)[self.engine.get_tensor_dtype(name)]

    def bind(self, inputs: dict, new_tokens: int) -> dict:
        """Bind device tensors `inputs` (the graph's own names: caches, pools and planes as past_*) and allocate
        outputs, each present_* plane per `cache_binding` beside its past_*; returns all bound tensors."""
        torch, ctx = self.torch, self.context
        profile = "decode" if new_tokens == 1 else "prefill"
        ctx.set_optimization_profile_async(self.profile_index[profile], self.stream.cuda_stream)
        bound = dict(inputs)
        for name, tensor in inputs.items():
            ctx.set_input_shape(name, tuple(tensor.shape))
            ctx.set_tensor_address(name, tensor.data_ptr())
        for name in self.io_names:
            if name in inputs:
                continue
            if name in self.aliases:
                bound[name] = present_cache_tensor(self.cache_binding, inputs[self.aliases[name]])
            else:
                bound[name] = torch.empty(tuple(ctx.get_tensor_shape(name)), dtype=self._torch_dtype(name),
                                          device=self.device)
            ctx.set_tensor_address(name, bound[name].data_ptr())
        return bound

    def execute(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise UserError("TensorRT execution failed (see its log)")

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        inputs = {name: from_numpy(array).to(self.device) for name, array in feeds.items()}  # float8 codes too
        first = next(iter(feeds.values()))
        bound = self.bind(inputs, new_tokens=first.shape[1])
        self.execute()
        self.stream.synchronize()
        return {name: to_numpy(bound[name].cpu()) for name in self.io_names
                if self.engine.get_tensor_mode(name) == self.trt.TensorIOMode.OUTPUT}
