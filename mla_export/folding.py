"""Weight folding: W_UK into the query path and W_UV into the output projection, once, in float64.

    q_latent_h = W_UK_h^T (W_UQ_h c_q)  ->  q_latent_proj[h] = W_UK_h^T W_UQ_h         [Dc, q_in]
    out       = sum_h W_O_h (W_UV_h o_latent_h) ->  out_proj[:, h] = W_O_h W_UV_h       [d, Dc]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import MlaConfig
from .model import FoldedMlaAttention, MlaAttention, MlaModel


@dataclass(frozen=True)
class FoldedWeights:
    """The matrices export stores for one layer.

    q_latent_proj [H*Dc, q_in]; q_pe_proj [H*Dr, q_in]; out_proj [d, H*Dc].
    """

    q_latent_proj: torch.Tensor
    q_pe_proj: torch.Tensor
    out_proj: torch.Tensor


def fold_attention_weights(config: MlaConfig, q_up: torch.Tensor, kv_b: torch.Tensor, o_proj: torch.Tensor,
                           dtype: torch.dtype = torch.float64) -> FoldedWeights:
    """Fold one layer's weights (pure function): products computed in float64, stored in `dtype`.

    q_up: q_b_proj (or q_proj) weight [H*(d_h+d_r), q_in]; kv_b: kv_b_proj weight [H*(d_h+d_v), Dc];
    o_proj: o_proj weight [d, H*d_v]. The output projection is folded in row chunks so that a
    DeepSeek-V3 layer (7168 x 65536) never holds a whole float64 copy.
    """
    c = config
    heads, d_h, d_r, d_v, d_c = (c.num_attention_heads, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim,
                                 c.kv_lora_rank)
    q_up = q_up.to(torch.float64).view(heads, d_h + d_r, -1)  # [H, d_h + d_r, q_in]
    kv_b = kv_b.to(torch.float64).view(heads, d_h + d_v, d_c)  # [H, d_h + d_v, Dc]
    w_uq, w_qr = q_up[:, :d_h], q_up[:, d_h:]  # [H, d_h, q_in], [H, d_r, q_in]
    w_uk, w_uv = kv_b[:, :d_h], kv_b[:, d_h:]  # [H, d_h, Dc], [H, d_v, Dc]
    q_latent = torch.einsum("hdc,hdi->hci", w_uk, w_uq)  # [H, Dc, q_in]
    w_o = o_proj.view(-1, heads, d_v)  # [d, H, d_v]
    out = torch.empty(w_o.shape[0], heads, d_c, dtype=dtype)  # [d, H, Dc]
    for start in range(0, w_o.shape[0], 1024):
        rows = w_o[start:start + 1024].to(torch.float64)  # [<=1024, H, d_v]
        out[start:start + 1024] = torch.einsum("ehv,hvc->ehc", rows, w_uv).to(dtype)
    return FoldedWeights(q_latent.reshape(heads * d_c, -1).to(dtype), w_qr.reshape(heads * d_r, -1).to(dtype),
                         out.reshape(out.shape[0], heads * d_c))


def fold_attention_state(config: MlaConfig, state: dict[str, torch.Tensor],
                         dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The parameters of a `FoldedMlaAttention` (its names) from those of an unfolded `MlaAttention` (its
    names, e.g. `q_b_proj.weight`), folded in float64 and stored in `dtype` (pure function)."""
    q_up = state["q_b_proj.weight" if config.q_lora_rank is not None else "q_proj.weight"]
    weights = fold_attention_weights(config, q_up, state["kv_b_proj.weight"], state["o_proj.weight"], dtype)
    kept = ("q_compression.q_a_proj.weight", "q_compression.q_a_layernorm.weight", "kv_a_proj_with_mqa.weight",
            "kv_a_layernorm.weight")
    out = {name: state[name].to(dtype) for name in kept if name in state}
    out.update({"q_latent_proj.weight": weights.q_latent_proj, "q_pe_proj.weight": weights.q_pe_proj,
                "out_proj.weight": weights.out_proj})
    return out


def fold_attention(attn: MlaAttention, dtype: torch.dtype) -> FoldedMlaAttention:
    """A `FoldedMlaAttention` computing what `attn` computes, with weights in `dtype`."""
    folded = FoldedMlaAttention(attn.config).to(dtype)
    with torch.no_grad():
        state = {name: p.detach() for name, p in attn.named_parameters()}
        folded.load_state_dict(fold_attention_state(attn.config, state, dtype))
    return folded


def fold_model(model: MlaModel, dtype: torch.dtype) -> MlaModel:
    """The pre-folded twin of an unfolded `model`, every weight cast to `dtype`."""
    if model.folded:
        raise ValueError("model is already folded")
    folded = MlaModel(model.config, model.max_seq_len, folded=True, with_embeddings=model.with_embeddings)
    folded = folded.to(dtype)
    with torch.no_grad():
        for src, dst in zip(model.layers, folded.layers, strict=True):
            for name in ("input_layernorm", "post_attention_layernorm", "mlp"):
                getattr(dst, name).load_state_dict(getattr(src, name).state_dict())
            dst.self_attn = fold_attention(src.self_attn, dtype)
        if model.with_embeddings:
            for name in ("embed_tokens", "norm", "lm_head"):
                getattr(folded, name).load_state_dict(getattr(model, name).state_dict())
    return folded
