"""Where a model's weights come from, by their names in DeepSeek's HF checkpoints, and how the eager
model's parameters map onto those names.

A weight source answers `read(name, shape) -> float32 tensor` for a checkpoint name such as
`model.layers.3.mlp.experts.17.up_proj.weight`: `CheckpointWeights` reads a HF checkpoint directory
(FP8 dequantized, RoPE rows permuted to pairs where the config says halves), `RandomWeights` makes
deterministic random values from (seed, name) alone. Because each tensor depends only on its own
name, export can produce one layer, or one expert, at a time and get exactly the values of the whole
eager model that validate builds.

The eager model's parameters are checkpoint names without the leading `model.` (and with the query
compression under `q_compression`), except the routed experts, which the model stacks:
`layers.{i}.mlp.experts.gate_up_proj [E, 2I, d]` is, per expert j, `experts.{j}.gate_proj.weight`
then `experts.{j}.up_proj.weight`; `layers.{i}.mlp.experts.down_proj [E, d, I]` is
`experts.{j}.down_proj.weight`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterator, Protocol

import torch

from ..model.config import MlaConfig
from .tensor_names import EXPERT_STACK, checkpoint_name, is_expert_stack  # noqa: F401  (names live there)



class WeightSource(Protocol):
    """Tensors by checkpoint name, as float32, checked against `shape`."""

    def read(self, name: str, shape: tuple[int, ...]) -> torch.Tensor: ...


class RandomWeights:
    """Deterministic random weights, each a function of (seed, name) only, scaled so activations stay O(1):
    norms 1 + 0.1 N(0,1), embeddings N(0,1), e_score_correction_bias 0.1 N(0,1), every other matrix
    N(0,1)/sqrt(fan_in). Values are float32 whatever the model's dtype, so a float64 twin holds exactly
    the weights a float32 export stores."""

    def __init__(self, seed: int):
        self.seed = seed

    def read(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        digest = hashlib.blake2b(f"{self.seed}/{name}".encode(), digest_size=8).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))
        values = torch.randn(shape, generator=gen, dtype=torch.float32)
        if name.endswith("norm.weight"):
            return 1.0 + 0.1 * values
        if name.endswith("embed_tokens.weight"):
            return values
        if name.endswith("e_score_correction_bias"):
            return 0.1 * values
        return values / shape[-1] ** 0.5


class CheckpointWeights:
    """A HF checkpoint directory as a weight source: FP8 blocks dequantized; with `config.rope_interleave`
    false, the rows producing q_pe and k_pe permuted from halves to DeepSeek's pairs. A router without
    e_score_correction_bias (V2) reads as zeros."""

    def __init__(self, directory: str | Path, config: MlaConfig):
        """Opens the checkpoint (index, shard headers) and refuses tensors `config`'s model has no place for;
        `skipped` lists the known extras it holds (DeepSeek's multi-token-prediction layers)."""
        from .checkpoint import CheckpointReader
        from .tensor_names import check_tensor_names

        self.reader = CheckpointReader(directory)
        self.config = config
        self.skipped = check_tensor_names(self.reader.weight_map, config, self.reader.config_json,
                                          f"checkpoint {self.reader.directory}")

    def read(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        from .checkpoint import rope_rows_to_pairs

        if name.endswith("mlp.gate.e_score_correction_bias") and not self.reader.has(name):
            return torch.zeros(shape)
        tensor = self.reader.read(name, shape)
        return tensor if self.config.rope_interleave else rope_rows_to_pairs(name, tensor, self.config)

    def read_fp8(self, name: str, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The checkpoint's own FP8 bytes and block scales of `name` (rows moved as `read` moves them), or
        None when it is not stored as DeepSeek's FP8, or when the RoPE permutation would move rows across
        a 128-row block (then its float value is quantized instead)."""
        from .checkpoint import FP8_BLOCK, rope_rows_to_pairs

        pair = self.reader.read_fp8(name, shape)
        if pair is None or self.config.rope_interleave:
            return pair
        q, scale = pair
        rows = torch.arange(q.shape[0], dtype=torch.float64)[:, None]  # [R, 1]: each row's index
        moved = rope_rows_to_pairs(name, rows.expand(-1, 1), self.config)[:, 0].long()  # [R]
        if bool((moved // FP8_BLOCK != torch.arange(q.shape[0]) // FP8_BLOCK).any()):
            return None
        return q.view(torch.uint8)[moved].view(torch.float8_e4m3fn), scale


def expert_chunks(source: WeightSource, param: str, shape: tuple[int, ...], experts: range | None = None
                  ) -> Iterator[torch.Tensor]:
    """The stacked expert parameter `param` (shape [E, ...]) one expert at a time, float32: every expert, or
    those of `experts` (a rank's share)."""
    match = EXPERT_STACK.match(param)
    prefix = checkpoint_name(match["prefix"])
    rows, cols = shape[1], shape[2]
    for j in (range(shape[0]) if experts is None else experts):
        if match["kind"] == "gate_up_proj":
            half = (rows // 2, cols)
            yield torch.cat([source.read(f"{prefix}.{j}.gate_proj.weight", half),
                             source.read(f"{prefix}.{j}.up_proj.weight", half)])  # [2I, d]
        else:
            yield source.read(f"{prefix}.{j}.down_proj.weight", (rows, cols))  # [d, I]


def parameter_value(source: WeightSource, param: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The float32 value of the eager parameter `param` (stacked experts assembled)."""
    if is_expert_stack(param):
        return torch.stack(list(expert_chunks(source, param, shape)))
    return source.read(checkpoint_name(param), shape)


def load_weights(model: torch.nn.Module, source: WeightSource) -> None:
    """Fill every parameter of an unfolded eager model (or one of its modules) from `source`."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(parameter_value(source, name, tuple(param.shape)).to(param.dtype))


def init_random_weights(model: torch.nn.Module, seed: int) -> None:
    """`load_weights(model, RandomWeights(seed))`."""
    load_weights(model, RandomWeights(seed))
