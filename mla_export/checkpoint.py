"""Load attention and dense-MLP weights from a local HF DeepSeek-V2/V3 checkpoint directory.

Reads `config.json`, `model.safetensors.index.json` (or a single `model.safetensors`), takes only the
tensors of the requested layers, and dequantizes DeepSeek-V3's FP8 block-scaled weights
(`weight` in float8_e4m3fn with `weight_scale_inv` per 128x128 block) to float32. A checkpoint saved
with `rope_interleave: false` (RoPE rows in halves layout) has its q_pe and k_pe rows permuted to
DeepSeek's pair layout, the one layout of the model and the op contract.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from .config import MlaConfig
from .errors import UserError
from .rope import halves_to_interleaved

FP8_BLOCK = 128
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def _weight_map(directory: Path) -> dict[str, Path]:
    """Tensor name -> safetensors file, from the index or the single file."""
    index = directory / INDEX_FILE
    if index.is_file():
        try:
            mapping = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise UserError(f"checkpoint {index}: not a safetensors index ({exc!r}); expected a 'weight_map'") from None
        return {name: directory / file for name, file in mapping.items()}
    single = directory / SINGLE_FILE
    if single.is_file():
        from safetensors import safe_open

        with safe_open(single, framework="pt") as handle:
            return {name: single for name in handle.keys()}
    raise UserError(f"checkpoint {directory}: found neither {INDEX_FILE} nor {SINGLE_FILE}; "
                    "pass a HF DeepSeek-V2/V3 checkpoint directory")


def dequantize_fp8_blocks(weight: torch.Tensor, scale_inv: torch.Tensor, block: int = FP8_BLOCK) -> torch.Tensor:
    """float8 weight [rows, cols] times its per-block scale [ceil(rows/block), ceil(cols/block)] -> float32."""
    rows, cols = weight.shape
    expected = (math.ceil(rows / block), math.ceil(cols / block))
    if tuple(scale_inv.shape) != expected:
        raise UserError(f"FP8 scale of shape {tuple(scale_inv.shape)} does not match weight {tuple(weight.shape)} "
                        f"(expected {expected} for {block}x{block} blocks)")
    scale = scale_inv.float().repeat_interleave(block, 0)[:rows].repeat_interleave(block, 1)[:, :cols]
    return weight.float() * scale


class CheckpointReader:
    """Reads named tensors from a checkpoint directory, dequantizing FP8 on the way."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise UserError(f"checkpoint {self.directory}: no such directory")
        self.weight_map = _weight_map(self.directory)
        self._handles: dict[Path, object] = {}

    def _handle(self, path: Path):
        from safetensors import safe_open

        if path not in self._handles:
            if not path.is_file():
                raise UserError(f"checkpoint file {path} (named by {INDEX_FILE}) is missing")
            self._handles[path] = safe_open(path, framework="pt")
        return self._handles[path]

    def has(self, name: str) -> bool:
        return name in self.weight_map

    def read(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """The tensor `name` as float32 (dequantized if FP8), checked against `shape`."""
        if name not in self.weight_map:
            raise UserError(f"checkpoint {self.directory}: tensor {name!r} is missing; is this checkpoint for the "
                            "same model as its config.json?")
        tensor = self._handle(self.weight_map[name]).get_tensor(name)
        if tensor.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            scale_name = name + "_scale_inv"
            if scale_name not in self.weight_map:
                raise UserError(f"checkpoint {self.directory}: FP8 tensor {name!r} has no {scale_name!r}")
            tensor = dequantize_fp8_blocks(tensor, self._handle(self.weight_map[scale_name]).get_tensor(scale_name))
        if tuple(tensor.shape) != tuple(shape):
            raise UserError(f"checkpoint {self.directory}: tensor {name!r} has shape {tuple(tensor.shape)}, "
                            f"expected {tuple(shape)} from config.json")
        return tensor.float()


def rope_rows_to_pairs(name: str, weight: torch.Tensor, config: MlaConfig) -> torch.Tensor:
    """`weight` [out, in] with the rows that produce q_pe (per head, in q_b_proj/q_proj) or k_pe (the
    last Dr rows of kv_a_proj_with_mqa) moved from halves layout to pairs; other weights unchanged."""
    d_h, d_r = config.qk_nope_head_dim, config.qk_rope_head_dim
    if name.endswith(("self_attn.q_b_proj.weight", "self_attn.q_proj.weight")):
        heads = weight.view(config.num_attention_heads, d_h + d_r, -1)  # [H, d_h + d_r, q_in]
        rope = halves_to_interleaved(heads[:, d_h:], dim=1)  # [H, d_r, q_in]
        return torch.cat([heads[:, :d_h], rope], dim=1).reshape(weight.shape)
    if name.endswith("self_attn.kv_a_proj_with_mqa.weight"):
        d_c = config.kv_lora_rank
        return torch.cat([weight[:d_c], halves_to_interleaved(weight[d_c:], dim=0)])  # [Dc + Dr, d]
    return weight
