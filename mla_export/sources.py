"""Where a model's weights come from: a seed (random weights) or a HF checkpoint directory.

`source_model` is used by export and again by validate, which rebuilds the same eager model from
what export recorded in the ONNX metadata.
"""

from __future__ import annotations

import torch

from .checkpoint import load_checkpoint_weights
from .config import MlaConfig
from .errors import UserError
from .model import MlaModel, init_random_weights


def check_supported_layers(config: MlaConfig) -> None:
    """Refuse configs whose selected layers include an MoE MLP."""
    moe = [i for i in range(config.num_hidden_layers) if config.is_moe_layer(i)]
    if moe:
        raise UserError(
            f"{config.name}: layer {moe[0]} uses a mixture-of-experts MLP (n_routed_experts={config.n_routed_experts}, "
            f"first_k_dense_replace={config.first_k_dense_replace}); MoE is not supported yet: "
            f"pass --layers {config.first_k_dense_replace} or fewer to take the dense layers")


def source_model(config: MlaConfig, max_seq_len: int, *, seed: int = 0, checkpoint: str | None = None,
                 with_embeddings: bool = False, dtype: torch.dtype = torch.float32) -> MlaModel:
    """The unfolded eager model in `dtype`: weights from `checkpoint` if given, else random from `seed`."""
    check_supported_layers(config)
    if max_seq_len <= 0:
        raise UserError(f"--max-seq-len {max_seq_len}: expected a positive number of cache rows")
    if max_seq_len > config.max_position_embeddings:
        raise UserError(f"--max-seq-len {max_seq_len} exceeds the model's max_position_embeddings "
                        f"({config.max_position_embeddings})")
    model = MlaModel(config, max_seq_len, with_embeddings=with_embeddings).to(dtype)
    if checkpoint is not None:
        load_checkpoint_weights(model, checkpoint)
    else:
        init_random_weights(model, seed)
    return model.eval()
