"""The eager model in float64: the naive and absorbed paths and both export forms, prefill+decode, YaRN
far from 0, RoPE conventions."""

import pytest
import torch

from mla_export.model.folding import fold_model
from mla_export.model.model import MlaModel
from mla_export.weights.weights import init_random_weights
from mla_export.model.ops import mla_attention_reference
from mla_export.model.rope import (interleaved_to_halves, inverse_frequencies, rope_cos_sin, rotate_half_reference,
                             rotate_interleaved)

from helpers import history_cache, tiny, tiny_coarse_eps, tiny_no_q_lora, tiny_plain_rope

SMAX = 160  # past tiny's original_max_position_embeddings (32) under YaRN


def models(config, seed=0, with_embeddings=False):
    model = MlaModel(config, SMAX, with_embeddings=with_embeddings).double()
    init_random_weights(model, seed)
    return model, fold_model(model, torch.float64)


def run_all_paths(model, folded, x, seqlens, caches):
    outputs = {}
    for path in ("naive", "absorbed"):
        model.set_attention_path(path)
        outputs[path] = model(x, seqlens, *caches)
    outputs["prefolded"] = folded(x, seqlens, *caches)
    outputs["runtime"] = fold_model(model, torch.float64, "runtime")(x, seqlens, *caches)
    return outputs


@pytest.mark.parametrize("config", [tiny(), tiny_no_q_lora(), tiny_plain_rope(), tiny_coarse_eps()],
                         ids=lambda c: c.name)
@pytest.mark.parametrize("new_tokens", [1, 5])
def test_all_paths_and_forms_agree_in_float64(config, new_tokens):
    model, folded = models(config)
    histories = [0, 7, 100]  # ragged; rows past them are NaN and must not be read
    caches = history_cache(config, histories, SMAX)
    x = torch.randn(3, new_tokens, config.hidden_size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    seqlens = torch.tensor(histories, dtype=torch.int32)
    out = run_all_paths(model, folded, x, seqlens, caches)
    ref = out["naive"]
    assert torch.isfinite(ref[0]).all()
    for path in ("absorbed", "prefolded", "runtime"):
        assert (out[path][0] - ref[0]).abs().max() < 1e-10, path
        for got, want in zip(out[path][1:], ref[1:]):
            torch.testing.assert_close(got, want, atol=1e-12, rtol=0, equal_nan=True)
    # Written rows: exactly rows histories[b] .. histories[b]+S-1; the rest unchanged (NaN stays NaN).
    for before, after in zip(caches, ref[1:]):
        for b, rows in enumerate(histories):
            assert torch.isfinite(after[b, : rows + new_tokens]).all()
            assert torch.isnan(after[b, rows + new_tokens:]).all()
            assert torch.equal(after[b, :rows], before[b, :rows])  # exact: rows a step must not touch


def test_prefill_then_decode_equals_one_forward():
    config = tiny()
    model, folded = models(config, seed=3, with_embeddings=True)
    tokens = torch.randint(0, config.vocab_size, (2, 50), generator=torch.Generator().manual_seed(2))
    for m in (model, folded, fold_model(model, torch.float64, "runtime")):
        full_cache = m.new_cache(2, fill=float("nan"))
        full = m.step(tokens, full_cache)  # [2, 50, vocab]
        cache = m.new_cache(2, fill=float("nan"))
        pieces = [m.step(tokens[:, :40], cache)]
        pieces += [m.step(tokens[:, i:i + 1], cache) for i in range(40, 50)]
        assert (torch.cat(pieces, dim=1) - full).abs().max() < 1e-10
        assert cache.seqlens.tolist() == [50, 50]
        for a, b in zip(cache.layers, full_cache.layers):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=0, equal_nan=True)


def test_yarn_far_past_original_context_matches_direct_rotation():
    """At positions past original_max_position_embeddings with YaRN on, the op's rotation and
    attention equal a direct float64 computation from the YaRN frequencies."""
    config = tiny()
    assert config.rope_scaling is not None and config.rope_scaling.original_max_position_embeddings == 32
    table = rope_cos_sin(config, SMAX, torch.float64)
    theta = inverse_frequencies(config)
    p = 150
    assert torch.allclose(table[p, :4], torch.cos(p * theta), atol=1e-15)
    # YaRN interpolates the low frequencies by `factor` and keeps the highest one.
    base = 1.0 / config.rope_theta ** (torch.arange(0, 8, 2, dtype=torch.float64) / 8)
    assert theta[0] == base[0] and torch.isclose(theta[-1], base[-1] / config.rope_scaling.factor)

    gen = torch.Generator().manual_seed(5)
    heads, dc, dr = 4, 32, 8
    q_lat = torch.randn(1, 1, heads, dc, dtype=torch.float64, generator=gen)
    q_pe = torch.randn(1, 1, heads, dr, dtype=torch.float64, generator=gen)
    kv = torch.randn(1, 1, dc, dtype=torch.float64, generator=gen)
    k_pe = torch.randn(1, 1, dr, dtype=torch.float64, generator=gen)
    cache = torch.randn(1, SMAX, dc + dr, dtype=torch.float64, generator=gen)
    attn, present = mla_attention_reference(q_lat, q_pe, kv, k_pe, cache, torch.tensor([p], dtype=torch.int32),
                                            table, config.softmax_scale)

    def rotate(x, pos):  # complex multiplication of pairs, written independently
        pairs = torch.view_as_complex(x.reshape(*x.shape[:-1], dr // 2, 2).contiguous())
        return torch.view_as_real(pairs * torch.polar(torch.ones_like(theta), pos * theta)).flatten(-2)

    assert torch.allclose(present[0, p, dc:], rotate(k_pe[0, 0], p), atol=1e-13)
    keys = present[0, : p + 1]  # [p+1, Dc+Dr]
    q = torch.cat([q_lat[0, 0], rotate(q_pe[0, 0], p)], dim=-1)  # [H, Dc+Dr]
    probs = torch.softmax(q @ keys.T * config.softmax_scale, dim=-1)
    assert torch.allclose(attn[0, 0], probs @ keys[:, :dc], atol=1e-12)


def test_interleaved_rope_equals_hf_rotate_half_on_permuted_weights():
    config = tiny()
    table = rope_cos_sin(config, SMAX, torch.float64)
    x = torch.randn(6, 8, dtype=torch.float64)
    positions = torch.tensor([0, 1, 31, 32, 100, 159])
    ours = rotate_interleaved(x, table[positions])
    hf = rotate_half_reference(interleaved_to_halves(x), table[positions])
    assert torch.allclose(interleaved_to_halves(ours), hf, atol=1e-14)


def test_step_refuses_a_cache_too_short():
    config = tiny()
    model, _ = models(config)
    cache = model.new_cache(1)
    cache.seqlens = torch.tensor([SMAX - 2], dtype=torch.int32)
    with pytest.raises(ValueError, match="cache too short"):
        model.step(torch.zeros(1, 3, config.hidden_size, dtype=torch.float64), cache)


@pytest.mark.gpu
@pytest.mark.parametrize("absorb", ["prefolded", "runtime"])
def test_folded_model_on_cuda_runs_the_kernels_and_matches_float64(absorb):
    """`.cuda()` on either export form: its attention core is the Triton kernels (the custom op's CUDA
    implementation), the rope table follows the model, and prefill + decode match the float64 model."""
    from mla_export.run.compare import compare, tolerance_for

    config = tiny()
    model, folded64 = models(config, seed=4, with_embeddings=True)
    gpu = fold_model(model, torch.float16, absorb).cuda()
    tokens = torch.randint(0, config.vocab_size, (2, 20), generator=torch.Generator().manual_seed(5))
    cache64, cache16 = folded64.new_cache(2, fill=float("nan")), gpu.new_cache(2, fill=float("nan"))
    assert cache16.layers[0].is_cuda and cache16.seqlens.is_cuda
    for piece in (tokens[:, :16], *tokens[:, 16:].split(1, dim=1)):
        want = folded64.step(piece, cache64)
        got = gpu.step(piece.cuda(), cache16)
        result = compare("logits", got.cpu(), want, *tolerance_for("float16"))
        assert result.passed, result
    assert gpu.rope_cos_sin.is_cuda
