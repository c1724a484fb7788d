"""Runners: something that runs an exported graph on named numpy feeds (ONNX Runtime here; a
TensorRT engine in `trt/runner.py`), and the numpy <-> torch conversions they share."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from ..common.errors import UserError


class Runner(Protocol):
    """Runs the exported graph: feeds by graph input name -> outputs by graph output name (numpy)."""

    name: str

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def to_numpy(x: torch.Tensor) -> np.ndarray:
    """A CPU torch tensor as numpy (bfloat16 and float8_e4m3fn through ml_dtypes, which ONNX Runtime accepts)."""
    if x.dtype in (torch.bfloat16, torch.float8_e4m3fn):
        import ml_dtypes

        if x.dtype == torch.float8_e4m3fn:  # an FP8 cache's codes
            return x.contiguous().view(torch.uint8).numpy().view(ml_dtypes.float8_e4m3fn)
        return x.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return x.numpy()


def from_numpy(x: np.ndarray) -> torch.Tensor:
    """A numpy array as a torch tensor (ml_dtypes bfloat16 and float8_e4m3fn back to torch's)."""
    if x.dtype.name == "bfloat16":
        return torch.from_numpy(x.view(np.int16)).view(torch.bfloat16)
    if x.dtype.name == "float8_e4m3fn":
        return torch.from_numpy(np.ascontiguousarray(x).view(np.uint8)).view(torch.float8_e4m3fn)
    return torch.from_numpy(np.ascontiguousarray(x))


class OnnxRuntimeRunner:
    """ONNX Runtime session: the CUDA provider where torch sees a GPU, else the CPU provider."""

    def __init__(self, path: str | Path, providers: list[str] | None = None):
        import onnxruntime as ort

        if providers is None:
            providers = (["CUDAExecutionProvider", "CPUExecutionProvider"] if torch.cuda.is_available()
                         else ["CPUExecutionProvider"])
        options = ort.SessionOptions()
        options.log_severity_level = 4  # fatal only: its errors reach the user as one message (UserError)
        self.name, self.path = "onnxruntime", path
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # ORT raises its own exception types per failure
            hint = ("ONNX Runtime's CPU provider has no bfloat16 kernels for these ops: validate a float32 or "
                    "float16 export on the CPU, or a bfloat16 one on a GPU") if "NOT_IMPLEMENTED" in str(exc) else \
                "the file may be damaged; re-export it"
            raise UserError(f"ONNX Runtime cannot load {path} ({str(exc).splitlines()[0][:300]}); {hint}") from None

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One call by graph names; an ONNX Runtime failure while running (e.g. a Gather index outside a pool:
        the graph reads where its inputs do not reach) is a UserError naming the file and ORT's first line."""
        from onnxruntime.capi import onnxruntime_pybind11_state as state

        names = [o.name for o in self.session.get_outputs()]
        try:
            return dict(zip(names, run_session(self.session, names, feeds)))
        except (state.Fail, state.InvalidArgument, state.RuntimeException) as exc:  # raised while running
            raise UserError(f"ONNX Runtime failed running {Path(self.path).name} "
                            f"({str(exc).splitlines()[0][:300]}): the graph does not run on these inputs; "
                            "re-export it, or report it if mla-export wrote it") from None


def run_session(session, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """`session.run(names, feeds)` with float8 feeds and outputs (an FP8 cache's codes) as
    ml_dtypes.float8_e4m3fn arrays, which ONNX Runtime's Python API takes and gives only as raw bytes."""
    import onnxruntime as ort
    from onnx import TensorProto

    feeds = {name: ort.OrtValue.ortvalue_from_numpy_with_onnx_type(np.ascontiguousarray(x).view(np.uint8),
                                                                  TensorProto.FLOAT8E4M3FN)
             if isinstance(x, np.ndarray) and x.dtype.name == "float8_e4m3fn" else x for name, x in feeds.items()}
    results = session.run(names, feeds)
    fp8 = {o.name for o in session.get_outputs() if o.type == "tensor(float8e4m3fn)"}
    if fp8:
        import ml_dtypes

        results = [r.view(ml_dtypes.float8_e4m3fn) if name in fp8 else r for name, r in zip(names, results)]
    return results
