"""Load attention and dense-MLP weights from a local HF DeepSeek-V2/V3 checkpoint directory.

Reads `config.json`, `model.safetensors.index.json` (or a single `model.safetensors`), takes only the
tensors of the requested layers, and dequantizes DeepSeek-V3's FP8 block-scaled weights
(`weight` in float8_e4m3fn with `weight_scale_inv` per 128x128 block) to float32. A checkpoint saved
with `rope_interleave: false` (RoPE rows in halves layout) has its q_pe and k_pe rows permuted to
DeepSeek's pair layout, the one layout of the model and the op contract.

Everything read is checked, each with one message naming the file or tensor: the index (a `weight_map`
of tensor names to files in the checkpoint directory; a file outside it is refused, so a checkpoint cannot
make the tool read other files), the checkpoint's own config.json (its `quantization_config`: none or
DeepSeek's FP8), each shard (truncated, empty or not safetensors) and its FP8 tensors (DeepSeek's format
only: float8_e5m2, or e4m3 without `weight_scale_inv`, is refused, not read as stored), each tensor (a
floating-point type, finite values, the config's shape) and each FP8 scale (2-D, one per 128x128 block,
finite and positive).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path, PurePosixPath

import torch

from ..common.errors import UserError
from ..common.fileio import check_input_dir, check_input_file
from ..model.config import MlaConfig
from ..model.hf_config import check_quantization
from ..model.rope import halves_to_interleaved

FP8_BLOCK = 128
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
SCALE_SUFFIX = "_scale_inv"  # DeepSeek's FP8 block scale of `<name>.weight` is `<name>.weight_scale_inv`
CHECKPOINT_HINT = "; pass a HF DeepSeek-V2/V3 checkpoint directory"


FLOAT_TYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _shard_path(directory: Path, index: Path, name, file) -> Path:
    """`directory/file` for a weight_map entry, refused unless `file` is a plain relative name inside the
    checkpoint directory (no absolute path, no `..`): a checkpoint must not make the tool read other files.
    Symbolic links inside the directory (the HF hub cache's) are followed as they are."""
    if not isinstance(name, str) or not isinstance(file, str) or not file:
        raise UserError(f"checkpoint {index}: weight_map entry {str(name)[:80]!r}: {str(file)[:80]!r} is not a "
                        "tensor name mapped to a file name")
    parts = PurePosixPath(file.replace("\\", "/")).parts
    if os.path.isabs(file) or ".." in parts or "\0" in file:
        raise UserError(f"checkpoint {directory}: its index maps {name!r} to {file!r}, outside the checkpoint "
                        "directory; fix the index")
    return directory / file


def _weight_map(directory: Path) -> dict[str, Path]:
    """Tensor name -> safetensors file, from the index or the single file."""
    index = directory / INDEX_FILE
    if os.path.lexists(index):
        check_input_file("checkpoint", index)
        try:
            data = json.loads(index.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"checkpoint {index}: not valid JSON ({_json_error(exc)}); download it again") \
                from None
        except RecursionError:
            raise UserError(f"checkpoint {index}: JSON nested too deeply; expected a safetensors index") from None
        mapping = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(mapping, dict):
            raise UserError(f"checkpoint {index}: not a safetensors index; expected an object with a 'weight_map' "
                            "of tensor names to file names")
        return {name: _shard_path(directory, index, name, file) for name, file in mapping.items()}
    single = directory / SINGLE_FILE
    if os.path.lexists(single):
        check_input_file("checkpoint", single)
        return {name: single for name in _open_shard(single, None).keys()}
    raise UserError(f"checkpoint {directory}: found neither {INDEX_FILE} nor {SINGLE_FILE}; "
                    "pass a HF DeepSeek-V2/V3 checkpoint directory")


def _open_shard(path: Path, index: Path | None):
    """A safetensors file opened lazily; UserError naming it if it is missing, empty, truncated or not
    safetensors (a header claiming more than the file holds included)."""
    from safetensors import safe_open

    named = f" (named by {index.name})" if index is not None else ""
    if not os.path.lexists(path):
        raise UserError(f"checkpoint file {path}{named} is missing")
    check_input_file("checkpoint file", path, named)
    try:
        return safe_open(path, framework="pt")
    except Exception as exc:  # safetensors raises its own SafetensorError (and OSError) for a damaged file
        reason = str(exc).strip().removeprefix("Error while deserializing header:").strip()[:100]
        raise UserError(f"checkpoint {path}: not a readable safetensors file ({reason}); download it again") \
            from None


def read_checkpoint_config(directory: Path) -> dict:
    """The checkpoint's own config.json ({} when it has none), its quantization_config checked: the format
    its FP8 tensors are in, whatever config the model comes from."""
    path = directory / CONFIG_FILE
    if not os.path.lexists(path):
        return {}
    check_input_file("checkpoint", path)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"checkpoint {path}: not valid JSON ({_json_error(exc)}); expected the checkpoint's "
                        "config") from None
    except RecursionError:
        raise UserError(f"checkpoint {path}: JSON nested too deeply; expected the checkpoint's config") from None
    if not isinstance(data, dict):
        raise UserError(f"checkpoint {path}: expected a JSON object (the checkpoint's config)")
    check_quantization(data.get("quantization_config"), f"checkpoint {path}")
    return data


def _json_error(exc: ValueError) -> str:
    """A JSON decoding error in few words: its message and where."""
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg}, line {exc.lineno}"
    return str(exc)[:80]


def dequantize_fp8_blocks(weight: torch.Tensor, scale_inv: torch.Tensor, block: int = FP8_BLOCK,
                          name: str | None = None) -> torch.Tensor:
    """float8 weight [rows, cols] times its per-block scale [ceil(rows/block), ceil(cols/block)] -> float32.

    UserError (naming the tensor `name` where given) for a weight that is not 2-D, a scale that is not a
    floating-point tensor of one entry per block, or a scale that is not finite and positive."""
    check_fp8_blocks(weight, scale_inv, block, name)
    rows, cols = weight.shape
    scale = scale_inv.float().repeat_interleave(block, 0)[:rows].repeat_interleave(block, 1)[:, :cols]
    return weight.float() * scale


def check_fp8_blocks(weight: torch.Tensor, scale_inv: torch.Tensor, block: int = FP8_BLOCK,
                     name: str | None = None) -> None:
    """UserError (naming `name`) unless `weight` is 2-D and `scale_inv` holds one finite, positive
    floating-point scale per block of it."""
    label = f"checkpoint tensor {name!r}" if name else "FP8 weight"
    scale_label = f"checkpoint tensor {name + '_scale_inv'!r}" if name else "FP8 scale"
    if weight.dim() != 2:
        raise UserError(f"{label}: an FP8 weight of shape {tuple(weight.shape)}; FP8 weights are 2-D matrices")
    rows, cols = weight.shape
    expected = (math.ceil(rows / block), math.ceil(cols / block))
    if scale_inv.dtype not in FLOAT_TYPES:
        raise UserError(f"{scale_label}: {str(scale_inv.dtype).removeprefix('torch.')} values; FP8 block scales "
                        "are floating-point")
    if tuple(scale_inv.shape) != expected:
        raise UserError(f"{scale_label} of shape {tuple(scale_inv.shape)} does not match weight "
                        f"{tuple(weight.shape)}: expected {expected}, {block}x{block} blocks")
    if not bool(torch.isfinite(scale_inv).all()) or not bool((scale_inv > 0).all()):
        raise UserError(f"{scale_label} holds {_bad_values(scale_inv.float())}; scales must be finite and > 0")


class CheckpointReader:
    """Reads named tensors from a checkpoint directory, dequantizing FP8 on the way."""

    def __init__(self, directory: str | Path):
        self.directory = check_input_dir("checkpoint", directory, CHECKPOINT_HINT)
        self.config_json = read_checkpoint_config(self.directory)
        self.weight_map = _weight_map(self.directory)
        self._handles: dict[Path, object] = {}
        for path in sorted(set(self.weight_map.values())):  # every shard's header now: a damaged one fails first
            self._check_fp8_format(path)

    def _check_fp8_format(self, path: Path) -> None:
        """Refuse, from the shard's header, FP8 tensors in a format other than DeepSeek's: float8_e4m3fn with a
        `weight_scale_inv` per 128x128 block (float8_e5m2, or e4m3 without its scale, would be read as stored)."""
        handle = self._handle(path)
        for name in handle.keys():
            kind = handle.get_slice(name).get_dtype()
            if kind.startswith("F8") and kind != "F8_E4M3":
                raise UserError(f"checkpoint tensor {name!r} is {kind}, not DeepSeek's FP8 (E4M3, block scales): "
                                "convert the checkpoint to bfloat16")
            if kind == "F8_E4M3" and name + SCALE_SUFFIX not in self.weight_map:
                raise UserError(f"checkpoint tensor {name!r} is F8_E4M3 without DeepSeek's weight_scale_inv: convert "
                                "the checkpoint to bfloat16")

    def _handle(self, path: Path):
        if path not in self._handles:
            self._handles[path] = _open_shard(path, self.directory / INDEX_FILE)
        return self._handles[path]

    def has(self, name: str) -> bool:
        return name in self.weight_map

    def _get(self, name: str) -> torch.Tensor:
        path = self.weight_map[name]
        handle = self._handle(path)
        try:
            return handle.get_tensor(name)
        except Exception as exc:  # not in that file, or its bytes cannot be read
            raise UserError(f"checkpoint file {path}: tensor {name!r} cannot be read ({str(exc).strip()[:200]}); the "
                            f"index may name the wrong file, or the file is damaged") from None

    def read_fp8(self, name: str, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The tensor `name` as the checkpoint stores it when that is DeepSeek's FP8: (float8_e4m3fn [rows,
        cols], float32 scale per 128x128 block), checked like `read`; None when it is stored in another type."""
        if name not in self.weight_map or name + SCALE_SUFFIX not in self.weight_map:
            return None
        tensor = self._get(name)
        if tensor.dtype != torch.float8_e4m3fn:
            return None
        if tuple(tensor.shape) != tuple(shape):
            raise UserError(f"checkpoint {self.directory}: tensor {name!r} has shape {tuple(tensor.shape)}, "
                            f"expected {tuple(shape)} from config.json")
        scale = self._get(name + SCALE_SUFFIX)
        check_fp8_blocks(tensor, scale, name=name)
        if not bool(torch.isfinite(tensor.float()).all()):
            raise UserError(f"checkpoint tensor {name!r} holds {_bad_values(tensor.float())}; the checkpoint is "
                            "damaged: download it again")
        return tensor, scale.float()

    def read(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """The tensor `name` as float32 (dequantized if FP8), checked against `shape` and for NaN/inf."""
        if name not in self.weight_map:
            raise UserError(f"checkpoint {self.directory}: tensor {name!r} is missing; is this checkpoint for the "
                            "same model as its config.json?")
        tensor = self._get(name)
        if tensor.dtype == torch.float8_e4m3fn and name + SCALE_SUFFIX in self.weight_map:  # DeepSeek's FP8
            tensor = dequantize_fp8_blocks(tensor, self._get(name + SCALE_SUFFIX), name=name)
        elif tensor.dtype not in FLOAT_TYPES:
            raise UserError(f"checkpoint tensor {name!r} holds {str(tensor.dtype).removeprefix('torch.')} values; "
                            "weights are floating-point (float32, float16, bfloat16 or DeepSeek's FP8)")
        if tuple(tensor.shape) != tuple(shape):
            raise UserError(f"checkpoint {self.directory}: tensor {name!r} has shape {tuple(tensor.shape)}, "
                            f"expected {tuple(shape)} from config.json")
        tensor = tensor.float()
        if not bool(torch.isfinite(tensor).all()):
            raise UserError(f"checkpoint tensor {name!r} holds {_bad_values(tensor)}; the checkpoint is damaged: "
                            "download it again")
        return tensor


def _bad_values(tensor: torch.Tensor) -> str:
    """How many NaN, infinite and (for scales) non-positive values `tensor` holds, and where the first is."""
    nan, inf = int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum())
    bad = ~torch.isfinite(tensor) | (tensor <= 0) if not (nan or inf) else ~torch.isfinite(tensor)
    first = tuple(int(i) for i in bad.nonzero()[0]) if bool(bad.any()) else ()
    if nan or inf:
        kinds = " and ".join(text for count, text in ((nan, f"{nan} NaN"), (inf, f"{inf} infinite")) if count)
        return f"{kinds} value(s), first at {first}"
    return f"{int(bad.sum())} value(s) <= 0, first at {first}"


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
