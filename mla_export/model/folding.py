"""The export forms' weights, from DeepSeek's (pure functions, tested against the unfolded model).

Pre-folded (`--absorb prefolded`): W_UK into the query path and W_UV into the output projection,
multiplied once, in float64:

    q_latent_h = W_UK_h^T (W_UQ_h c_q)  ->  q_latent_proj[h] = W_UK_h^T W_UQ_h         [Dc, q_in]
    out       = sum_h W_O_h (W_UV_h o_latent_h) ->  out_proj[:, h] = W_O_h W_UV_h       [d, Dc]

Run-time absorbed (`--absorb runtime`): no products, the same weights laid out for per-head
batched matmuls: W_UQ(nope) [H*Dn, q_in], W_UK [H, Dn, Dc], W_UV^T [H, Dc, Dv], W_O [d, H*Dv].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .config import MlaConfig
from .model import FoldedMlaAttention, MlaAttention, MlaModel, RuntimeAbsorbedMlaAttention


@dataclass(frozen=True)
class FoldedWeights:
    """The matrices export stores for one layer.

    q_latent_proj [H*Dc, q_in]; q_pe_proj [H*Dr, q_in]; out_proj [d, H*Dc].
    """

    q_latent_proj: torch.Tensor
    q_pe_proj: torch.Tensor
    out_proj: torch.Tensor


@dataclass(frozen=True)
class AbsorbedWeights:
    """The matrices a run-time absorbed export stores for one layer (each a weight as given, recast).

    q_nope_proj [H*Dn, q_in]; q_pe_proj [H*Dr, q_in]; w_uk [H, Dn, Dc]; w_uv [H, Dc, Dv]; o_proj [d, H*Dv].
    """

    q_nope_proj: torch.Tensor
    q_pe_proj: torch.Tensor
    w_uk: torch.Tensor
    w_uv: torch.Tensor
    o_proj: torch.Tensor


def _per_head(config: MlaConfig, q_up: torch.Tensor,
              kv_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Views (W_UQ [H, Dn, q_in], W_QR [H, Dr, q_in], W_UK [H, Dn, Dc], W_UV [H, Dv, Dc]) of
    q_up [H*(Dn+Dr), q_in] and kv_b [H*(Dn+Dv), Dc]."""
    c = config
    heads, d_h, d_v = c.num_attention_heads, c.qk_nope_head_dim, c.v_head_dim
    q_up = q_up.view(heads, d_h + c.qk_rope_head_dim, -1)  # [H, Dn + Dr, q_in]
    kv_b = kv_b.view(heads, d_h + d_v, c.kv_lora_rank)  # [H, Dn + Dv, Dc]
    return q_up[:, :d_h], q_up[:, d_h:], kv_b[:, :d_h], kv_b[:, d_h:]


def absorb_attention_weights(config: MlaConfig, q_up: torch.Tensor, kv_b: torch.Tensor, o_proj: torch.Tensor,
                             dtype: torch.dtype = torch.float64) -> AbsorbedWeights:
    """Lay one layer's weights out for run-time absorption (pure function, no arithmetic), in `dtype`.

    q_up: q_b_proj (or q_proj) weight [H*(Dn+Dr), q_in]; kv_b: kv_b_proj weight [H*(Dn+Dv), Dc];
    o_proj: o_proj weight [d, H*Dv]. W_UV is transposed per head so both batched matmuls take
    tokens as rows: q_latent_h = q_nope_h W_UK_h, o_h = o_latent_h W_UV_h^T.
    """
    def own(t: torch.Tensor) -> torch.Tensor:  # a contiguous copy in `dtype`, never a view of the input
        return t.contiguous().to(dtype, copy=True)

    heads = config.num_attention_heads
    w_uq, w_qr, w_uk, w_uv = _per_head(config, q_up, kv_b)  # [H,Dn,q_in], [H,Dr,q_in], [H,Dn,Dc], [H,Dv,Dc]
    return AbsorbedWeights(q_nope_proj=own(w_uq.reshape(heads * config.qk_nope_head_dim, -1)),  # [H*Dn, q_in]
                           q_pe_proj=own(w_qr.reshape(heads * config.qk_rope_head_dim, -1)),  # [H*Dr, q_in]
                           w_uk=own(w_uk),  # [H, Dn, Dc]
                           w_uv=own(w_uv.transpose(1, 2)),  # [H, Dc, Dv]
                           o_proj=own(o_proj))  # [d, H*Dv]


def fold_attention_weights(config: MlaConfig, q_up: torch.Tensor, kv_b: torch.Tensor, o_proj: torch.Tensor,
                           dtype: torch.dtype = torch.float64) -> FoldedWeights:
    """Fold one layer's weights (pure function): products computed in float64, stored in `dtype`.

    q_up: q_b_proj (or q_proj) weight [H*(d_h+d_r), q_in]; kv_b: kv_b_proj weight [H*(d_h+d_v), Dc];
    o_proj: o_proj weight [d, H*d_v]. The output projection is folded in row chunks so that a
    DeepSeek-V3 layer (7168 x 65536) never holds a whole float64 copy.
    """
    c = config
    heads, d_r, d_v, d_c = c.num_attention_heads, c.qk_rope_head_dim, c.v_head_dim, c.kv_lora_rank
    w_uq, w_qr, w_uk, w_uv = _per_head(c, q_up.to(torch.float64), kv_b.to(torch.float64))
    # [H, d_h, q_in], [H, d_r, q_in], [H, d_h, Dc], [H, d_v, Dc]
    q_latent = torch.einsum("hdc,hdi->hci", w_uk, w_uq)  # [H, Dc, q_in]
    w_o = o_proj.view(-1, heads, d_v)  # [d, H, d_v]
    out = torch.empty(w_o.shape[0], heads, d_c, dtype=dtype)  # [d, H, Dc]
    for start in range(0, w_o.shape[0], 1024):
        rows = w_o[start:start + 1024].to(torch.float64)  # [<=1024, H, d_v]
        out[start:start + 1024] = torch.einsum("ehv,hvc->ehc", rows, w_uv).to(dtype)
    return FoldedWeights(q_latent.reshape(heads * d_c, -1).to(dtype), w_qr.reshape(heads * d_r, -1).to(dtype),
                         out.reshape(out.shape[0], heads * d_c))


_KEPT = ("q_compression.q_a_proj.weight", "q_compression.q_a_layernorm.weight", "kv_a_proj_with_mqa.weight",
         "kv_a_layernorm.weight")  # the same parameter in every form


def _q_up(config: MlaConfig, state: dict[str, torch.Tensor]) -> torch.Tensor:
    return state["q_b_proj.weight" if config.q_lora_rank is not None else "q_proj.weight"]


def fold_attention_state(config: MlaConfig, state: dict[str, torch.Tensor],
                         dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The parameters of a `FoldedMlaAttention` (its names) from those of an unfolded `MlaAttention` (its
    names, e.g. `q_b_proj.weight`), folded in float64 and stored in `dtype` (pure function)."""
    weights = fold_attention_weights(config, _q_up(config, state), state["kv_b_proj.weight"], state["o_proj.weight"],
                                     dtype)
    out = {name: state[name].to(dtype) for name in _KEPT if name in state}
    out.update({"q_latent_proj.weight": weights.q_latent_proj, "q_pe_proj.weight": weights.q_pe_proj,
                "out_proj.weight": weights.out_proj})
    return out


def absorb_attention_state(config: MlaConfig, state: dict[str, torch.Tensor],
                           dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The parameters of a `RuntimeAbsorbedMlaAttention` (its names) from those of an unfolded `MlaAttention`,
    laid out per head and stored in `dtype` (pure function, no arithmetic)."""
    weights = absorb_attention_weights(config, _q_up(config, state), state["kv_b_proj.weight"],
                                       state["o_proj.weight"], dtype)
    out = {name: state[name].to(dtype) for name in _KEPT if name in state}
    out.update({"q_nope_proj.weight": weights.q_nope_proj, "q_pe_proj.weight": weights.q_pe_proj,
                "w_uk": weights.w_uk, "w_uv": weights.w_uv, "o_proj.weight": weights.o_proj})
    return out


# How each export form (`ModelSpec.absorb`) is made from an unfolded attention: its module and parameters.
ATTENTION_FORMS = {"prefolded": (FoldedMlaAttention, fold_attention_state),
                   "runtime": (RuntimeAbsorbedMlaAttention, absorb_attention_state)}


def export_attention_state(config: MlaConfig, state: dict[str, torch.Tensor], dtype: torch.dtype,
                           absorb: str) -> dict[str, torch.Tensor]:
    """The export form `absorb`'s attention parameters from an unfolded attention's (pure function)."""
    return ATTENTION_FORMS[absorb][1](config, state, dtype)


def export_attention(attn: MlaAttention, dtype: torch.dtype, absorb: str = "prefolded") -> nn.Module:
    """The export form `absorb` of `attn` (`FoldedMlaAttention` or `RuntimeAbsorbedMlaAttention`), computing
    what `attn` computes, with weights in `dtype`."""
    module = ATTENTION_FORMS[absorb][0](attn.config).to(dtype)
    with torch.no_grad():
        state = {name: p.detach() for name, p in attn.named_parameters()}
        module.load_state_dict(export_attention_state(attn.config, state, dtype, absorb))
    return module


def fold_attention(attn: MlaAttention, dtype: torch.dtype) -> FoldedMlaAttention:
    """A `FoldedMlaAttention` computing what `attn` computes, with weights in `dtype`."""
    return export_attention(attn, dtype, "prefolded")


def absorb_attention(attn: MlaAttention, dtype: torch.dtype) -> RuntimeAbsorbedMlaAttention:
    """A `RuntimeAbsorbedMlaAttention` computing what `attn` computes, with weights in `dtype`."""
    return export_attention(attn, dtype, "runtime")


def fold_model(model: MlaModel, dtype: torch.dtype, absorb: str = "prefolded", **cache) -> MlaModel:
    """The export twin of an unfolded `model`, every weight cast to `dtype`: pre-folded, or with W_UK
    and W_UV kept per head (`absorb="runtime"`). `cache`: MlaModel's `cache`, `kv_cache_dtype` and
    `page_size` (default: a contiguous cache in `dtype`)."""
    if model.folded:
        raise ValueError("model is already folded")
    if absorb not in ATTENTION_FORMS:
        raise ValueError(f"absorb {absorb!r}: expected one of {tuple(ATTENTION_FORMS)}")
    folded = MlaModel(model.config, model.max_seq_len, folded=True, absorb=absorb,
                      with_embeddings=model.with_embeddings, **cache)
    folded = folded.to(dtype)
    with torch.no_grad():
        for src, dst in zip(model.layers, folded.layers, strict=True):
            for name in ("input_layernorm", "post_attention_layernorm", "mlp"):
                getattr(dst, name).load_state_dict(getattr(src, name).state_dict())
            dst.self_attn = export_attention(src.self_attn, dtype, absorb)
        if model.with_embeddings:
            for name in ("embed_tokens", "norm", "lm_head"):
                getattr(folded, name).load_state_dict(getattr(model, name).state_dict())
    return folded
