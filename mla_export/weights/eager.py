"""The eager model a `ModelSpec` describes, with its weights: read from a HF checkpoint directory,
or random from the spec's seed.

Export builds it once and folds it; validate and profile build it again from what export recorded
in the ONNX metadata, so all three hold the same weights.
"""

from __future__ import annotations

import torch

from ..model.model import MlaModel
from ..model.spec import ModelSpec
from .weights import CheckpointWeights, RandomWeights, WeightSource, load_weights


def eager_model(spec: ModelSpec, dtype: torch.dtype = torch.float32) -> MlaModel:
    """The unfolded eager model of `spec` in `dtype`, in eval mode (float32 by default: export folds
    from it into the spec's dtype; validate asks for float64).

    Weights come from `spec.checkpoint` if set, else random from `spec.seed`; with `spec.io == "tokens"`
    the model has embeddings, final norm and LM head.
    """
    model = MlaModel(spec.config, spec.max_seq_len, with_embeddings=spec.io == "tokens")
    model = model.to(dtype)
    load_weights(model, weight_source(spec))
    return model.eval()


def weight_source(spec: ModelSpec) -> WeightSource:
    """The spec's weights: its checkpoint directory, else random from its seed."""
    if spec.checkpoint is not None:
        return CheckpointWeights(spec.checkpoint, spec.config)
    return RandomWeights(spec.seed)
