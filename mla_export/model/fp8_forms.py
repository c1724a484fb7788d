"""The FP8 export forms (`--quant fp8`): a folded `MlaModel` with every large projection a `BlockFp8Linear`.

What becomes FP8 (each a weight in DeepSeek's block format, `fp8.py`): the query compression (q_a_proj),
kv_a_proj_with_mqa, the pre-folded q_latent_proj / q_pe_proj / out_proj or the run-time form's fused
q_up_proj [H*(Dn+Dr), q_in] (W_UQ with the RoPE rows, as q_b_proj stores it), W_UK^T per head
[H, Dc, Dn], W_UV per head [H, Dv, Dc] and o_proj; the dense MLP and the shared experts; the routed experts
(gate_up_proj / down_proj with their scales). Embedding, norms, router, lm_head and the cache stay in the
model's dtype.

The run-time form differs from the float one in layout only: q_up_proj is q_b_proj whole (its rows split
into nope and RoPE parts after the product) and W_UK is stored transposed per head, so that every FP8 weight
is a checkpoint's weight, or whole 128-row blocks of one, where the dims allow (`weights.fp8_values`).
"""

from __future__ import annotations

import torch
from torch import nn

from .cache_ops import attention_core
from .config import MlaConfig
from .fp8 import FP8_DTYPE, BlockFp8Linear, KeepTypes, block_grid
from .model import FoldedMlaAttention, MlaModel, MoeMlp, QueryCompression, SwiGluMlp, latent_kv, latent_norm


def _fp8(linear: nn.Linear) -> BlockFp8Linear:
    return BlockFp8Linear(linear.in_features, linear.out_features)


class Fp8FoldedMlaAttention(FoldedMlaAttention):
    """`FoldedMlaAttention` with FP8 projections (same forward)."""

    def __init__(self, config: MlaConfig):
        super().__init__(config)
        _quantize_query_compression(self.q_compression)
        for name in ("q_latent_proj", "q_pe_proj", "kv_a_proj_with_mqa", "out_proj"):
            setattr(self, name, _fp8(getattr(self, name)))


class Fp8RuntimeAbsorbedMlaAttention(nn.Module):
    """Run-time absorbed MLA with FP8 weights: q_up_proj [H*(Dn+Dr), q_in], w_uk [H, Dc, Dn] (W_UK^T per
    head), w_uv [H, Dv, Dc], o_proj [d, H*Dv], kv_a_proj_with_mqa, q_a_proj: each a `BlockFp8Linear`."""

    fp8_cache_check: dict = {}  # validate's FP8-cache reference (`ops.mla_attention_reference`'s keywords)

    def __init__(self, config: MlaConfig):
        super().__init__()
        c = self.config = config
        heads, d_h, d_c = c.num_attention_heads, c.qk_nope_head_dim, c.kv_lora_rank
        q_in = c.q_lora_rank if c.q_lora_rank is not None else c.hidden_size
        self.q_compression = QueryCompression(c)
        _quantize_query_compression(self.q_compression)
        self.q_up_proj = BlockFp8Linear(q_in, heads * c.qk_head_dim)
        self.kv_a_proj_with_mqa = BlockFp8Linear(c.hidden_size, c.cache_width)
        self.kv_a_layernorm = latent_norm(c, d_c)
        self.w_uk = BlockFp8Linear(d_h, d_c, groups=heads)  # [H, Dc, Dn]
        self.w_uv = BlockFp8Linear(d_c, c.v_head_dim, groups=heads)  # [H, Dv, Dc]
        self.o_proj = BlockFp8Linear(heads * c.v_head_dim, c.hidden_size)

    def forward(self, hidden: torch.Tensor, cache: torch.Tensor, cache_seqlens: torch.Tensor,
                cos_sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Same signature and result as `RuntimeAbsorbedMlaAttention.forward`."""
        c = self.config
        batch, new_tokens, _ = hidden.shape
        heads, d_h, d_c = c.num_attention_heads, c.qk_nope_head_dim, c.kv_lora_rank
        c_q = self.q_compression(hidden)  # [B, S, q_in]
        q = self.q_up_proj(c_q).reshape(batch * new_tokens, heads, c.qk_head_dim)  # [B*S, H, Dn + Dr]
        q_nope = q[..., :d_h].transpose(0, 1)  # [H, B*S, Dn]
        q_latent = self.w_uk(q_nope).transpose(0, 1).reshape(batch, new_tokens, heads, d_c)  # [B, S, H, Dc]
        q_pe = q[..., d_h:].reshape(batch, new_tokens, heads, c.qk_rope_head_dim)  # [B, S, H, Dr]
        c_kv, k_pe = latent_kv(self, hidden, d_c)  # [B, S, Dc], [B, S, Dr]
        attn, present = attention_core(
            q_latent, q_pe, c_kv, k_pe, cache, cache_seqlens, cos_sin,
            heads, d_c, c.qk_rope_head_dim, c.softmax_scale, **self.fp8_cache_check)  # [B, S, H, Dc]
        attn = attn.reshape(batch * new_tokens, heads, d_c).transpose(0, 1)  # [H, B*S, Dc]
        o = self.w_uv(attn).transpose(0, 1).reshape(batch, new_tokens, heads * c.v_head_dim)  # [B, S, H*Dv]
        return self.o_proj(o), present


class Fp8RoutedExperts(KeepTypes):
    """`mlp.experts` in FP8: gate_up_proj [E, 2I, d] and down_proj [E, d, I] float8_e4m3fn, with
    gate_up_scale [E, ceil(2I/128), ceil(d/128)] and down_scale [E, ceil(d/128), ceil(I/128)] float32."""

    def __init__(self, config: MlaConfig, experts: int | None = None):
        super().__init__()
        inter, d = config.moe_intermediate_size, config.hidden_size
        experts = config.n_routed_experts if experts is None else experts  # a rank's share under --tp

        def fixed(shape, dtype):
            return nn.Parameter(torch.zeros(shape, dtype=dtype), requires_grad=False)

        self.gate_up_proj = fixed((experts, 2 * inter, d), FP8_DTYPE)
        self.gate_up_scale = fixed(block_grid((experts, 2 * inter, d)), torch.float32)
        self.down_proj = fixed((experts, d, inter), FP8_DTYPE)
        self.down_scale = fixed(block_grid((experts, d, inter)), torch.float32)

    def op_weights(self) -> dict[str, torch.Tensor]:
        """The `DeepseekMoE` op's expert arguments (contract version 2)."""
        return {"gate_up_proj": self.gate_up_proj, "down_proj": self.down_proj,
                "gate_up_scale": self.gate_up_scale, "down_scale": self.down_scale}


def _quantize_query_compression(module: QueryCompression) -> None:
    if module.enabled:
        module.q_a_proj = _fp8(module.q_a_proj)


def _quantize_mlp(mlp: SwiGluMlp) -> None:
    for name in ("gate_proj", "up_proj", "down_proj"):
        setattr(mlp, name, _fp8(getattr(mlp, name)))


FP8_ATTENTION = {"prefolded": Fp8FoldedMlaAttention, "runtime": Fp8RuntimeAbsorbedMlaAttention}


def to_fp8_form(model: MlaModel) -> MlaModel:
    """Turn a folded `model` into its FP8 export form, in place: new (zero) FP8 modules where the large
    projections were; every other module (norms, router, embeddings, head) kept. Returns `model`."""
    if not model.folded:
        raise ValueError("to_fp8_form: expected a folded model (the export form)")
    device = model.layers[0].input_layernorm.weight.device
    with torch.device(device):
        for layer in model.layers:
            layer.self_attn = FP8_ATTENTION[model.absorb](model.attention_config)
            if isinstance(layer.mlp, MoeMlp):
                layer.mlp.experts = Fp8RoutedExperts(model.config, layer.mlp.experts.gate_up_proj.shape[0])
                if layer.mlp.shared_experts is not None:
                    _quantize_mlp(layer.mlp.shared_experts)
            else:
                _quantize_mlp(layer.mlp)
    dtype = model.layers[0].input_layernorm.weight.dtype
    for layer in model.layers:  # the new norms (kv_a_layernorm, q_a_layernorm) in the model's dtype
        layer.to(dtype)
    model.quant = "fp8"
    return model
