import csv
import json

import pytest
from click.testing import CliRunner

from mla_export.ui.cli import main
from mla_export.model.hf_config import load_preset
from mla_export.graph.export import export_onnx
from mla_export.model.spec import ModelSpec


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("profile") / "tiny.onnx"
    export_onnx(ModelSpec(load_preset("tiny").with_layers(1), max_seq_len=80), path)
    return path


def test_profile_onnx_writes_table_json_csv_png(tiny_onnx, tmp_path):
    out = {k: tmp_path / f"p.{k}" for k in ("json", "csv", "png")}
    result = run("profile", "--onnx", tiny_onnx, "--batches", "1,3", "--contexts", "8,32", "--iters", 3,
                 "--json", out["json"], "--csv", out["csv"], "--plot", out["png"])
    assert result.exit_code == 0, result.output
    assert "p50 ms" in result.output and "copy bandwidth" in result.output
    data = json.loads(out["json"].read_text())
    assert len(data["rows"]) == 2 * 2 * 2 and data["copy_gb_s"] > 0
    decode = [r for r in data["rows"] if r["phase"] == "decode"]
    assert all(r["new_tokens"] == 1 and r["cache_gb_s"] > 0 for r in decode)
    # The decode bytes model: every layer's cache rows the step reads (context + 1 new), float32.
    c = load_preset("tiny").with_layers(1)
    for r in decode:
        cache_bytes = r["batch"] * (r["context"] + 1) * c.cache_width * 4 * c.num_hidden_layers
        assert r["cache_gb_s"] == pytest.approx(cache_bytes / (r["median_ms"] * 1e-3) / 1e9)
        assert r["percent_of_copy"] == pytest.approx(100 * r["cache_gb_s"] / data["copy_gb_s"])
    prefill = next(r for r in data["rows"] if r["phase"] == "prefill" and r["batch"] == 3 and r["context"] == 32)
    assert prefill["tokens_per_s"] == pytest.approx(3 * 32 / (prefill["median_ms"] * 1e-3))
    rows = list(csv.DictReader(out["csv"].open()))
    assert len(rows) == 8 and rows[0]["phase"] == "prefill"
    png = out["png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


@pytest.mark.parametrize("absorb", ["prefolded", "runtime"])
def test_profile_eager(tmp_path, absorb):
    result = run("profile", "--eager", "--preset", "tiny", "--absorb", absorb, "--batches", "2", "--contexts", "16",
                 "--iters", 2, "--phase", "decode", "--json", tmp_path / "e.json")
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "e.json").read_text())["rows"]
    assert [(r["target"], r["phase"], r["batch"], r["context"]) for r in rows] == [("eager", "decode", 2, 16)]


def test_profile_refusals(tiny_onnx):
    assert "exactly one of" in run("profile", "--onnx", tiny_onnx, "--eager").output
    result = run("profile", "--onnx", tiny_onnx, "--contexts", "80")
    assert result.exit_code == 1 and "cache holds 80 rows" in result.output
    result = run("profile", "--onnx", tiny_onnx, "--batches", "0")
    assert result.exit_code == 1 and "positive integers" in result.output


@pytest.mark.gpu
def test_profile_eager_and_kernels_on_a_gpu(tmp_path):
    """GPU only: the eager model on CUDA (its attention is the Triton kernels) and the kernels alone."""
    for target, absorb in (("--eager", "prefolded"), ("--eager", "runtime"), ("--kernels", "prefolded")):
        out = tmp_path / f"{target[2:]}-{absorb}.json"
        result = run("profile", target, "--preset", "deepseek-v2-lite", "--layers", 1, "--absorb", absorb,
                     "--batches", "1,8", "--contexts", "1024,4096", "--iters", 5, "--json", out)
        assert result.exit_code == 0, result.output
        data = json.loads(out.read_text())
        assert data["device"] != "cpu" and data["copy_gb_s"] > 100
        assert all(r["median_ms"] > 0 for r in data["rows"])


# ---- --eager over a paged and/or FP8 latent cache (MlaAttention contract version 2) ---------------------------

@pytest.mark.parametrize("preset, layout, op", [
    ("tiny", ["--cache", "paged", "--page-size", 16], "mla_attention_paged_reference"),
    ("tiny-moe", ["--cache", "paged", "--page-size", 8, "--kv-cache-dtype", "fp8"],
     "mla_attention_fp8_cache_reference"),
    ("tiny", ["--kv-cache-dtype", "fp8"], "mla_attention_fp8_cache_reference"),
])
def test_profile_eager_times_the_contract_2_cache(preset, layout, op, tmp_path, monkeypatch):
    """The timed calls run the layout's own op (counted), the report names the layout, and the FP8 cache's
    decode bytes are its own per token (codes, one float32 scale per 128 values, k_pe in the dtype)."""
    import mla_export.model.cache_ops as cache_ops

    calls = []
    reference = getattr(cache_ops, op)
    monkeypatch.setattr(cache_ops, op, lambda *a, **k: calls.append(1) or reference(*a, **k))
    out = tmp_path / "p.json"
    result = run("profile", "--eager", "--preset", preset, "--layers", 2, *layout, "--batches", "1,2",
                 "--contexts", "8,20", "--warmup", 1, "--iters", 2, "--json", out, "-q")
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    paged = "paged" in layout
    fp8 = "fp8" in layout
    assert (data["cache"], data["kv_cache_dtype"]) == ("paged" if paged else "contiguous", "fp8" if fp8 else "model")
    assert data["page_size"] == (layout[layout.index("--page-size") + 1] if paged else None)
    assert len(data["rows"]) == 2 * 2 * 2
    assert len(calls) == 2 * len(data["rows"]) * (1 + 2)  # every layer's attention, warmup and timed calls
    c = load_preset(preset).with_layers(2)
    per_token = c.kv_lora_rank + 4 * -(-c.kv_lora_rank // 128) + 4 * c.qk_rope_head_dim if fp8 else 4 * c.cache_width
    for r in (r for r in data["rows"] if r["phase"] == "decode"):
        cache_bytes = r["batch"] * (r["context"] + 1) * per_token * 2
        assert r["cache_gb_s"] == pytest.approx(cache_bytes / (r["median_ms"] * 1e-3) / 1e9)
    table = run("profile", "--eager", "--preset", preset, "--layers", 1, *layout, "--batches", 1, "--contexts", 8,
                "--iters", 1, "--phase", "decode", "-q")
    assert table.exit_code == 0, table.output
    header = " ".join(table.output.split())
    assert (f"paged cache ({data['page_size']}-row pages)" if paged else "contiguous cache") in header, header
    assert ("fp8 c_kv" in header) == fp8, header


def test_profile_eager_paged_model_computes_what_the_contiguous_one_does():
    """The eager target's paged FP8-free model, fed the pools `layout_feeds` makes, answers as the contiguous
    model does on the same contiguous inputs (the timed work is the real step)."""
    import torch

    from mla_export.run.profile import EagerTarget, layout_feeds

    config = load_preset("tiny").with_layers(2)
    plain = EagerTarget(ModelSpec(config, max_seq_len=40))
    paged = EagerTarget(ModelSpec(config, max_seq_len=40, cache="paged", page_size=8))
    for context, new_tokens in ((0, 12), (21, 1)):
        feeds = list(plain.inputs(2, context, new_tokens).values())
        with torch.no_grad():
            want = plain.model(*feeds)[0]
            got = paged.model(*layout_feeds(paged.spec, feeds))[0]
        assert torch.allclose(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("args, message", [
    (["--eager", "--preset", "tiny", "--page-size", 16], "--page-size 16 sizes the pages of --cache paged"),
    (["--eager", "--preset", "tiny", "--cache", "paged", "--page-size", 12], "--page-size 12: expected a power of two"),
    (["--onnx", "{onnx}", "--cache", "paged"], "the cache of an ONNX file is its export's"),
    (["--onnx", "{onnx}", "--kv-cache-dtype", "fp8"], "the cache of an ONNX file is its export's"),
])
def test_profile_refuses_cache_options_that_make_no_sense(args, message, tiny_onnx):
    from corpus import assert_one_message

    assert_one_message(run("profile", *[str(a).replace("{onnx}", str(tiny_onnx)) for a in args]), message)


@pytest.mark.gpu
@pytest.mark.parametrize("layout", [["--cache", "paged", "--page-size", 64], ["--kv-cache-dtype", "fp8"],
                                    ["--cache", "paged", "--page-size", 64, "--kv-cache-dtype", "fp8"]])
def test_profile_eager_and_kernels_on_a_gpu_over_contract_2_caches(layout, tmp_path):
    """GPU only: the eager model (its attention the Triton kernels' contract-2 path) and the kernels alone."""
    for target in ("--eager", "--kernels"):
        out = tmp_path / f"{target[2:]}.json"
        result = run("profile", target, "--preset", "deepseek-v2-lite", "--layers", 1, *layout, "--batches", "1,8",
                     "--contexts", "1024,4096", "--iters", 5, "--json", out)
        assert result.exit_code == 0, result.output
        data = json.loads(out.read_text())
        assert data["device"] != "cpu" and all(r["median_ms"] > 0 for r in data["rows"])
        assert (data["cache"] == "paged") == ("paged" in layout)


def test_profile_kernels_pools_answer_as_the_contiguous_cache(monkeypatch):
    """--kernels over a contract-2 cache, on the CPU under the Triton interpreter (`.cuda()` a no-op): the pools
    and block table `prepare` makes hold the contiguous cache's rows, so the kernels' attention over them is the
    contiguous call's (paged vs contiguous; paged FP8 vs contiguous FP8), decode and prefill."""
    import torch

    from mla_export.kernels.attention.api import mla_attention_triton
    from mla_export.run.profile import KernelsTarget

    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    config = load_preset("tiny").with_layers(1)

    def attention(batch, context, new_tokens, **layout):
        target = object.__new__(KernelsTarget)  # __init__ refuses a machine without a GPU
        target.spec, got = ModelSpec(config, max_seq_len=48, **layout), {}
        target.op = lambda *args, **keywords: got.update(keywords) or mla_attention_triton(*args, **keywords)
        target.prepare(batch, context, new_tokens)()
        assert ("block_table" in got and got["page_size"] == 16) == ("cache" in layout)
        assert got.get("kv_cache_dtype", 0) == (1 if "kv_cache_dtype" in layout else 0)
        return got["out"]  # [B, S, H, Dc]

    for batch, context, new_tokens in ((2, 20, 1), (3, 9, 9)):
        for fp8 in ({}, {"kv_cache_dtype": "fp8"}):
            want = attention(batch, context, new_tokens, **fp8)
            got = attention(batch, context, new_tokens, cache="paged", page_size=16, **fp8)
            assert torch.isfinite(got).all() and torch.allclose(got, want, atol=1e-5, rtol=1e-4)
