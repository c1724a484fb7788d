"""The export forms' weight transforms (pure functions) against the unfolded eager model."""

import pytest
import torch

from mla_export.model.folding import absorb_attention_weights, fold_attention_weights, fold_model
from mla_export.model.model import FoldedMlaAttention, MlaAttention, MlaModel, RuntimeAbsorbedMlaAttention
from mla_export.weights.weights import init_random_weights

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


def test_absorbed_weights_reproduce_the_unfolded_projections():
    """The run-time absorbed layout: W_UQ(nope), W_QR, W_UK [H, Dn, Dc], W_UV^T [H, Dc, Dv] and W_O give the
    unfolded model's q_nope, q_pe, q_latent and output, and are copies (never views) in the asked dtype."""
    for config in (tiny(), tiny_no_q_lora()):
        attn = MlaAttention(config).double()
        init_random_weights(attn, 5)
        q_up = attn.query_up_weight().reshape(-1, attn.query_up_weight().shape[-1])  # [H*(dh+dr), q_in]
        w = absorb_attention_weights(config, q_up, attn.kv_b_proj.weight, attn.o_proj.weight)
        heads, dh, dr, dv, dc = (config.num_attention_heads, config.qk_nope_head_dim, config.qk_rope_head_dim,
                                 config.v_head_dim, config.kv_lora_rank)
        q_in = q_up.shape[-1]
        assert (w.q_nope_proj.shape, w.q_pe_proj.shape) == ((heads * dh, q_in), (heads * dr, q_in))
        assert (w.w_uk.shape, w.w_uv.shape, w.o_proj.shape) == ((heads, dh, dc), (heads, dc, dv),
                                                                 (config.hidden_size, heads * dv))
        # Exact: the layout is a copy (no arithmetic), so its rows are the unfolded weight's own bits.
        per_head = q_up.view(heads, dh + dr, q_in)  # [H, dh+dr, q_in]
        assert torch.equal(w.q_nope_proj.view(heads, dh, q_in), per_head[:, :dh])
        assert torch.equal(w.q_pe_proj.view(heads, dr, q_in), per_head[:, dh:])
        c_q = torch.randn(5, q_in, dtype=torch.float64)
        q = (c_q @ q_up.T).view(5, heads, -1)  # [5, H, dh+dr]
        w_uk, w_uv = attn.kv_up_weights()  # [H, dh, Dc], [H, dv, Dc]
        q_nope = (c_q @ w.q_nope_proj.T).view(5, heads, dh)  # [5, H, dh]
        # two different products (their operands' shapes differ, so BLAS may order the sums differently):
        # equal to float64 rounding, not bit for bit
        torch.testing.assert_close(q_nope, q[..., :dh], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close((c_q @ w.q_pe_proj.T).view(5, heads, dr), q[..., dh:], rtol=1e-12, atol=1e-12)
        q_latent = torch.einsum("thd,hdc->thc", q[..., :dh], w_uk)  # [5, H, Dc]
        assert torch.allclose(torch.matmul(q_nope.transpose(0, 1), w.w_uk).transpose(0, 1), q_latent, atol=1e-12)
        o_latent = torch.randn(5, heads, dc, dtype=torch.float64)
        out = attn.o_proj(torch.einsum("thc,hvc->thv", o_latent, w_uv).reshape(5, -1))  # [5, d]
        o = torch.matmul(o_latent.transpose(0, 1), w.w_uv).transpose(0, 1)  # [5, H, dv]
        assert torch.allclose(o.reshape(5, -1) @ w.o_proj.T, out, atol=1e-12)
        inputs = {t.untyped_storage().data_ptr() for t in (q_up, attn.kv_b_proj.weight, attn.o_proj.weight)}
        assert not inputs & {t.untyped_storage().data_ptr() for t in vars(w).values()}
        half = absorb_attention_weights(config, q_up, attn.kv_b_proj.weight, attn.o_proj.weight, torch.float16)
        assert all(t.dtype == torch.float16 and t.is_contiguous() for t in vars(half).values())
        assert torch.equal(half.w_uv, w.w_uv.half())  # exact: the same values rearranged, then rounded once


def test_fold_model_builds_either_form_and_refuses_a_bad_one():
    model = MlaModel(tiny(), 32).double()
    init_random_weights(model, 1)
    assert isinstance(fold_model(model, torch.float32).layers[0].self_attn, FoldedMlaAttention)
    runtime = fold_model(model, torch.float32, "runtime")
    assert isinstance(runtime.layers[0].self_attn, RuntimeAbsorbedMlaAttention) and runtime.absorb == "runtime"
    assert runtime.layers[1].self_attn.w_uk.dtype == torch.float32
    with pytest.raises(ValueError, match="absorb 'both'"):
        fold_model(model, torch.float32, "both")
