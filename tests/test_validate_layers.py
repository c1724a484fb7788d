"""`validate` per layer and its whole-tensor verdict: correct exports pass in both forms and both --absorb
forms (with an rms_norm_eps far from the latent norms'), and each planted bug fails, per layer naming the
layer it is in."""

from __future__ import annotations

import json
import shutil

import pytest

import planted
from corpus import run
from mla_export.common.console import sci
from mla_export.model.config import PRESET_DIR
from mla_export.model.hf_config import load_config_file
from mla_export.model.spec import ModelSpec
from mla_export.run.layerwise import validate_per_layer
from mla_export.run.validate import Scenario, validate_onnx, validate_runner

SCENARIO = Scenario(batch=2, prefill_len=6, steps=2)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """(preset, absorb, dtype, io) -> an export with Smax 64, made once."""
    made = {}

    def get(preset, absorb="prefolded", dtype="float32", io="hidden"):
        key = (preset, absorb, dtype, io)
        if key not in made:
            path = tmp_path_factory.mktemp("exports") / f"{preset}-{absorb}-{dtype}-{io}.onnx"
            result = run("export", "--preset", preset, "--absorb", absorb, "--dtype", dtype, "--io", io,
                         "--max-seq-len", 64, "-q", "-o", path)
            assert result.exit_code == 0, result.output
            made[key] = path
        return made[key]
    return get


def _failing_parts(report) -> list[str]:
    return [p.label for p in report.parts if not p.passed]


@pytest.mark.parametrize("absorb", ["prefolded", "runtime"])
def test_per_layer_passes_a_correct_moe_export_part_by_part(exports, absorb):
    report = validate_per_layer(exports("tiny-moe", absorb, io="tokens"), SCENARIO)
    assert [p.label for p in report.parts] == ["embedding", "layer 0", "layer 1", "layer 2", "head", "end to end"]
    assert report.passed, _failing_parts(report)
    for part in report.parts:
        assert len(part.steps) == SCENARIO.steps + 1
    layer_steps = report.parts[1].steps
    assert [c.name for c in layer_steps[0].comparisons] == ["output", "present_latent_cache.0"]
    assert [c.name for c in report.parts[-1].steps[-1].comparisons] == [
        "logits", "present_latent_cache.0", "present_latent_cache.1", "present_latent_cache.2"]
    # the whole-model run of the same export sees the same inputs: its logits agree with the chained parts'
    whole = validate_onnx(exports("tiny-moe", absorb, io="tokens"), SCENARIO, per_layer=False)
    assert whole.passed
    for chained, step in zip(report.parts[-1].steps, whole.steps):
        assert chained.comparisons[0].rel_rms == pytest.approx(step.comparisons[0].rel_rms, rel=0.5, abs=1e-7)


@pytest.mark.parametrize("absorb", ["prefolded", "runtime"])
def test_an_rms_norm_eps_unlike_the_latent_norms_validates_in_both_forms(tmp_path, absorb):
    config = json.loads((PRESET_DIR / "tiny.json").read_text())
    config["rms_norm_eps"] = 1e-2
    (tmp_path / "config.json").write_text(json.dumps(config))
    out = tmp_path / "m.onnx"
    assert run("export", "--config", tmp_path / "config.json", "--absorb", absorb, "--max-seq-len", 64, "-q",
               "-o", out).exit_code == 0
    for mode in ("--whole", "--per-layer"):
        result = run("validate", "--onnx", out, "--steps", 2, "--prefill-len", 6, "-q", mode)
        assert result.exit_code == 0, result.output
        assert "PASS" in result.output


PLANTS = {
    "weight x1.01": lambda path: planted.scale_weight(path, "layers.1.mlp.down_proj.weight.T", 1.01),
    "rope shifted": planted.shift_rope_table,
    "cache row late": lambda path: planted.misplace_cache_rows(path, 1),
}


@pytest.mark.parametrize("bug", list(PLANTS))
def test_each_planted_bug_fails_whole_and_per_layer(exports, tmp_path, bug):
    """float16, where the element-wise rule alone passes a weight off by 1% (err/tol < 1): the relative RMS
    bound fails it. Per layer, a bug in layer 1 fails layer 1 and not layer 0."""
    path = tmp_path / "planted.onnx"
    shutil.copy(exports("tiny", dtype="float16"), path)
    PLANTS[bug](path)
    whole = validate_onnx(path, SCENARIO, per_layer=False)
    assert not whole.passed
    per_layer = validate_per_layer(path, SCENARIO)
    failing = _failing_parts(per_layer)
    assert "layer 1" in failing and "end to end" in failing, failing
    if bug != "rope shifted":  # the table is every layer's
        assert "layer 0" not in failing, failing
    if bug == "weight x1.01":
        comparisons = [c for s in whole.steps for c in s.comparisons]
        assert all(c.tolerance_used <= 1 for c in comparisons)  # within every element's tolerance...
        assert any(c.rel_rms_failed for c in comparisons)  # ...yet 1% off as a whole


def test_a_correct_float16_export_passes_with_margin(exports):
    report = validate_onnx(exports("tiny", dtype="float16"), SCENARIO, per_layer=False)
    assert report.passed
    worst = max(c.rel_rms / c.max_rel_rms for s in report.steps for c in s.comparisons)
    assert worst < 0.5, worst


def test_a_wrong_bfloat16_model_with_small_outputs_fails(tmp_path):
    """Logits 100x smaller than normal sit inside bfloat16's absolute tolerance whatever they are: a head
    swapped for another as small passes element by element, and fails on relative RMS error and cosine;
    the right model passes."""
    checkpoint = tmp_path / "small"
    planted.small_logits_checkpoint(checkpoint)
    spec = ModelSpec(load_config_file(checkpoint), dtype="bfloat16", max_seq_len=64, io="tokens",
                     checkpoint=str(checkpoint))
    right = validate_runner(planted.TorchRunner(spec), spec, SCENARIO)
    assert right.passed
    wrong = validate_runner(planted.TorchRunner(spec, wrong_head=True), spec, SCENARIO)
    assert not wrong.passed
    logits = [s.comparisons[0] for s in wrong.steps]
    assert all(c.tolerance_used <= 1 and c.rel_rms_failed and c.cosine_failed for c in logits)
    assert all(c.passed for s in wrong.steps for c in s.comparisons[1:])  # the caches are right


def test_the_report_shows_rel_rms_and_cosine_in_the_table_and_the_json(exports, tmp_path):
    out = tmp_path / "r.json"
    result = run("validate", "--onnx", exports("tiny"), "--per-layer", "--steps", 1, "--prefill-len", 4,
                 "--json", out)
    assert result.exit_code == 0, result.output
    header = next(line for line in result.output.splitlines() if "tensor" in line)
    assert "rel RMS" in header and "1 - cos" in header
    data = json.loads(out.read_text())
    assert data["mode"] == "per-layer" and data["passed"] is True
    layer = next(p for p in data["parts"] if p["part"] == "layer 1")
    comparison = layer["steps"][0]["comparisons"][0]
    assert comparison["rel_rms"] < comparison["max_rel_rms"] and comparison["cosine"] > comparison["min_cosine"]
    worst = max((s["comparisons"][0] for s in layer["steps"]), key=lambda c: c["tolerance_used"])  # the row's
    row = next(line for line in result.output.splitlines() if line.startswith("layer 1 ") and "output" in line)
    assert sci(worst["rel_rms"], 1) in row.split() and sci(1 - worst["cosine"], 1) in row.split(), row


def test_per_layer_refuses_an_engine_with_onnx(exports):
    result = run("validate", "--engine", "x.engine", "--onnx", exports("tiny"), "--per-layer")
    assert result.exit_code == 1
    assert "--per-layer with --engine" in result.output


@pytest.mark.parametrize("links", [True, False])
def test_per_layer_reads_an_external_data_file_linked_or_copied(tmp_path, monkeypatch, links):
    """ONNX Runtime reads a part's weights from inside its own directory: a hard link to the export's data
    file beside the export, or (no hard links there) a copy of the part's own weights in the system's
    temporary directory. Either way nothing is left behind."""
    import os

    import mla_export.graph.export as export_module
    from mla_export.graph.export import export_onnx
    from mla_export.model.hf_config import load_preset

    monkeypatch.setattr(export_module, "EXTERNAL_DATA_THRESHOLD", 0)
    path = export_onnx(ModelSpec(load_preset("tiny"), max_seq_len=64), tmp_path / "m.onnx")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert any(name.endswith(".data") for name in before)
    if not links:
        def no_links(*args):
            raise OSError(18, "Invalid cross-device link")
        monkeypatch.setattr(os, "link", no_links)
    report = validate_per_layer(path, SCENARIO)
    assert report.passed, _failing_parts(report)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_token_at_a_routing_tie_is_fragile_and_a_clear_one_is_not():
    """tiny-moe (8 experts in 4 groups, 2 groups kept, top-2): expert 0 wins clearly; for the second slot
    experts 2 and 4 (other groups) score alike in the tied token, 3 apart in the clear one."""
    import torch

    from mla_export.model.hf_config import load_preset
    from mla_export.model.model import MoeMlp
    from mla_export.run.routing_ties import fragile_tokens

    config = load_preset("tiny-moe")
    mlp = MoeMlp(config)
    direction = torch.zeros(config.hidden_size)
    direction[0] = 1.0
    with torch.no_grad():
        mlp.gate.e_score_correction_bias.zero_()
        for tied, (second, third) in ((True, (3.0, 3.0)), (False, (3.0, 0.0))):
            scale = torch.tensor([6.0, -6.0, second, -6.0, third, -6.0, -6.0, -6.0])
            mlp.gate.weight.copy_(scale[:, None] * direction[None, :])
            hidden = direction.double().expand(1, 1, -1)  # [B, S, d]
            for dtype in ("float32", "float16", "bfloat16"):
                assert bool(fragile_tokens(hidden, mlp, dtype)[0, 0]) is tied, (tied, dtype)


# ---- a paged and/or FP8 latent cache (MlaAttention contract version 2) -------------------------------------------

V2_LAYOUTS = {"paged": ("tiny", "hidden", ("--cache", "paged", "--page-size", 16)),
              "paged fp8 moe": ("tiny-moe", "tokens", ("--cache", "paged", "--page-size", 8, "--kv-cache-dtype", "fp8")),
              "fp8": ("tiny", "hidden", ("--kv-cache-dtype", "fp8"))}


@pytest.fixture(scope="module")
def v2_exports(tmp_path_factory):
    """A V2_LAYOUTS name -> its export (Smax 64), made once."""
    made = {}

    def get(name):
        if name not in made:
            preset, io, layout = V2_LAYOUTS[name]
            path = tmp_path_factory.mktemp("v2") / f"{name.replace(' ', '-')}.onnx"
            result = run("export", "--preset", preset, "--io", io, *layout, "--max-seq-len", 64, "-q", "-o", path)
            assert result.exit_code == 0, result.output
            made[name] = path
        return made[name]
    return get


@pytest.mark.parametrize("name", list(V2_LAYOUTS))
def test_per_layer_passes_a_contract_2_export_and_agrees_with_whole(v2_exports, name):
    """Each layer served from its own shuffled pools: every part passes, the caches are compared as whole
    validation compares them (an FP8 cache's c_kv within half an FP8 step, its k_pe under the normal rule),
    and the chained output's error and the FP8 cache's own error match the whole-graph run's."""
    path = v2_exports(name)
    report = validate_per_layer(path, SCENARIO)
    whole = validate_onnx(path, SCENARIO, per_layer=False)
    assert report.passed, _failing_parts(report)
    assert whole.passed
    preset, io, layout = V2_LAYOUTS[name]
    layers = 3 if preset == "tiny-moe" else 2
    assert [p.label for p in report.parts if p.label.startswith("layer")] == [f"layer {i}" for i in range(layers)]
    fp8 = "fp8" in layout
    cache_names = ["present_latent_cache.0 c_kv", "present_latent_cache.0 k_pe"] if fp8 else ["present_latent_cache.0"]
    assert [c.name for c in report.parts[1 if io == "tokens" else 0].steps[0].comparisons] == ["output", *cache_names]
    assert [c.name for c in report.parts[-1].steps[-1].comparisons][1:3] == cache_names + (
        ["present_latent_cache.1"] if not fp8 else [])
    for chained, step in zip(report.parts[-1].steps, whole.steps):
        assert chained.comparisons[0].rel_rms == pytest.approx(step.comparisons[0].rel_rms, rel=0.5, abs=1e-7)
    assert len(report.quantization_error) == (SCENARIO.steps + 1 if fp8 else 0)
    for (step, rms, cosine), (whole_step, whole_rms, whole_cosine) in zip(report.quantization_error,
                                                                           whole.quantization_error):
        assert step == whole_step and rms == pytest.approx(whole_rms, rel=1e-3) and cosine == pytest.approx(
            whole_cosine, abs=1e-6)
    if name == "paged":  # the command too
        result = run("validate", "--onnx", path, "--per-layer", "--steps", 2, "--prefill-len", 6, "--batch", 2, "-q")
        assert result.exit_code == 0 and "PASS" in result.output, result.output


V2_PLANTS = {  # a late row would make the FP8 export's layer 1 read an unowned slot of its 8-row pages: refused
    "paged": ("cache row late", lambda path: planted.misplace_cache_rows(path, 1)),
    "paged fp8 moe": ("c_kv and k_pe x1.01", lambda path: planted.scale_weight(
        path, "layers.1.self_attn.kv_a_proj_with_mqa.weight.T", 1.01)),
}


@pytest.mark.parametrize("name", list(V2_PLANTS))
def test_a_bug_in_one_layer_of_a_contract_2_export_fails_that_layer(v2_exports, tmp_path, name):
    """A bug planted in layer 1: whole and per layer fail it, and per layer names layer 1, not layer 0."""
    path = tmp_path / "planted.onnx"
    shutil.copy(v2_exports(name), path)
    V2_PLANTS[name][1](path)
    assert not validate_onnx(path, SCENARIO, per_layer=False).passed
    failing = _failing_parts(validate_per_layer(path, SCENARIO))
    assert "layer 1" in failing and "end to end" in failing and "layer 0" not in failing, failing


def test_validate_goes_per_layer_by_itself_for_a_contract_2_export_short_of_memory(v2_exports, monkeypatch):
    """Memory for one layer but not the whole model: validate chooses per layer, paged FP8 cache and all."""
    from mla_export.graph.onnx_reader import read_exported_model
    from mla_export.model import footprint
    from mla_export.run.layerwise import LayerwiseReport
    from mla_export.run.validate import whole_peak_bytes

    path = v2_exports("paged fp8 moe")
    spec = read_exported_model(path).spec
    one_layer = (footprint.per_layer_validate_peak_bytes(spec.config, spec.element_bytes, True, True)
                 + SCENARIO.peak_bytes(spec, layers=1))
    whole = whole_peak_bytes(read_exported_model(path), SCENARIO)
    assert one_layer < whole
    monkeypatch.setattr(footprint, "available_memory", lambda: (one_layer + whole) // 2)
    report = validate_onnx(path, SCENARIO)
    assert isinstance(report, LayerwiseReport) and report.passed, _failing_parts(report)
