import torch

from mla_export.folding import fold_attention_weights
from mla_export.model import MlaAttention
from mla_export.weights import init_random_weights

from helpers import tiny, tiny_no_q_lora


def test_folded_matrices_equal_unfolded_products():
    for config in (tiny(), tiny_no_q_lora()):
        attn = MlaAttention(config).double()
        init_random_weights(attn, 4)
        w = fold_attention_weights(config, attn.query_up_weight().reshape(-1, attn.query_up_weight().shape[-1]),
                                   attn.kv_b_proj.weight, attn.o_proj.weight)
        heads, dh, dc = config.num_attention_heads, config.qk_nope_head_dim, config.kv_lora_rank
        q_in = attn.query_up_weight().shape[-1]
        c_q = torch.randn(5, q_in, dtype=torch.float64)
        q = (c_q @ attn.query_up_weight().reshape(-1, q_in).T).view(5, heads, -1)  # [5, H, dh+dr]
        w_uk, w_uv = attn.kv_up_weights()
        q_latent = torch.einsum("thd,hdc->thc", q[..., :dh], w_uk)  # [5, H, Dc]
        assert torch.allclose((c_q @ w.q_latent_proj.T).view(5, heads, dc), q_latent, atol=1e-12)
        assert torch.allclose((c_q @ w.q_pe_proj.T).view(5, heads, -1), q[..., dh:], atol=1e-12)
        o_latent = torch.randn(5, heads, dc, dtype=torch.float64)
        out = attn.o_proj(torch.einsum("thc,hvc->thv", o_latent, w_uv).reshape(5, -1))
        assert torch.allclose(o_latent.reshape(5, -1) @ w.out_proj.T, out, atol=1e-12)
        assert w.q_latent_proj.dtype == torch.float64
