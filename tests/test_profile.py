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
