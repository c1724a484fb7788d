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


def fold_attention(attn: MlaAttention, dtype: torch.dtype) -> FoldedMlaAttention:
    """A `FoldedMlaAttention` computing what `attn` computes, with weights in `dtype`."""
    c = attn.config
    q_up = attn.q_b_proj.weight if c.q_lora_rank is not None else attn.q_proj.weight
    weights = fold_attention_weights(c, q_up, attn.kv_b_proj.weight, attn.o_proj.weight, dtype)
    folded = FoldedMlaAttention(c).to(dtype)
    with torch.no_grad():
        folded.q_compression.load_state_dict(attn.q_compression.state_dict())
        folded.kv_a_proj_with_mqa.weight.copy_(attn.kv_a_proj_with_mqa.weight)
        folded.kv_a_layernorm.weight.copy_(attn.kv_a_layernorm.weight)
        folded.q_latent_proj.weight.copy_(weights.q_latent_proj)
        folded.q_pe_proj.weight.copy_(weights.q_pe_proj)
        folded.out_proj.weight.copy_(weights.out_proj)
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
