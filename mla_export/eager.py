"""The eager model a `ModelSpec` describes, with its weights: read from a HF checkpoint directory,
or random from the spec's seed.

Export builds it once and folds it; validate and profile build it again from what export recorded
in the ONNX metadata, so all three hold the same weights.
"""

from __future__ import annotations

import torch

from .checkpoint import load_checkpoint_weights
from .config import MlaConfig
from .errors import UserError
from .model import MlaModel, init_random_weights
from .spec import ModelSpec


def check_supported_layers(config: MlaConfig) -> None:
    """Refuse configs whose selected layers include an MoE MLP."""
    moe = [i for i in range(config.num_hidden_layers) if config.is_moe_layer(i)]
    if moe:
        raise UserError(
            f"{config.name}: layer {moe[0]} uses a mixture-of-experts MLP (n_routed_experts={config.n_routed_experts}, "
            f"first_k_dense_replace={config.first_k_dense_replace}); MoE is not supported yet: "
            f"pass --layers {config.first_k_dense_replace} or fewer to take the dense layers")


def eager_model(spec: ModelSpec, dtype: torch.dtype = torch.float32) -> MlaModel:
    """The unfolded eager model of `spec` in `dtype`, in eval mode (float32 by default: export folds
    from it into the spec's dtype; validate asks for float64).

    Weights come from `spec.checkpoint` if set, else random from `spec.seed`; with `spec.io == "tokens"`
    the model has embeddings, final norm and LM head.
    """
    check_supported_layers(spec.config)
    model = MlaModel(spec.config, spec.max_seq_len, with_embeddings=spec.io == "tokens")
    model = model.to(dtype)
    if spec.checkpoint is not None:
        load_checkpoint_weights(model, spec.checkpoint)
    else:
        init_random_weights(model, spec.seed)
    return model.eval()
