"""What the commands print: tables that fit 80 columns with every number whole, JSON on stdout with --json,
progress on stderr (silenced by -q), the final line naming what was written, and plots (issue 16)."""

import json
import re

import numpy as np
import pytest
from click.testing import CliRunner
from rich.console import Console

from mla_export.ui.cli import main
from mla_export.run.compare import compare, verdict_for
from mla_export.common.console import ratio, sci, sig
from mla_export.graph.export import export_onnx
from mla_export.model.hf_config import load_preset
from mla_export.ui.info import count_text, info_dict, render_info
from mla_export.run.profile_report import ProfileReport, ProfileRow, plot_profile, print_profile
from mla_export.common.progress import ProgressReporter
from mla_export.model.spec import ModelSpec
from mla_export.run.validate import Scenario, StepResult, ValidationReport
from mla_export.run.validate_report import print_report

ELLIPSIS = ("…", "...")


def run(*args, columns=80):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False, env={"COLUMNS": str(columns)})


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("output") / "tiny.onnx"
    export_onnx(ModelSpec(load_preset("tiny"), max_seq_len=80), path)
    return path


def assert_fits(text: str, width: int = 80):
    """No line past `width` and no cut (an ellipsis) anywhere; the line naming what was written holds the
    user's paths whole, however long."""
    lines = [line for line in text.splitlines() if not line.startswith("wrote ")]
    assert lines and max(len(line) for line in lines) <= width, "\n".join(l for l in lines if len(l) > width)
    assert not any(mark in text for mark in ELLIPSIS), text


def row_with(text: str, *cells: str) -> str:
    """The one line holding all of `cells` as whole, space-separated words."""
    pattern = [re.compile(rf"(^|\s){re.escape(c)}(\s|$)") for c in cells]
    found = [line for line in text.splitlines() if all(p.search(line) for p in pattern)]
    assert found, f"no line holds {cells}:\n{text}"
    return found[0]


# ------------------------------------------------------------------- 80 columns, every number whole


@pytest.mark.parametrize("preset", ["tiny", "tiny-moe", "deepseek-v3", "kimi-k2"])
def test_info_fits_80_columns_piped_with_every_number_whole(preset):
    result = run("info", "--preset", preset, "--context", 131072)
    assert result.exit_code == 0, result.output
    assert_fits(result.stdout)
    data = info_dict(load_preset(preset), "bfloat16", 131072)
    row_with(result.stdout, "parameters", *count_text(data["parameters"]["total"]).split())
    for row in data["cache_per_token_per_layer"]:
        row_with(result.stdout, row["scheme"].split()[0], f"{row['values']:,}", f"{row['bytes']:,}",
                 f"{row['vs_mla']:.2f}x")
    runtime = data["projections_per_token_per_layer"]["runtime"]["multiply_adds"]
    row_with(result.stdout, "runtime", f"{runtime:,}", "1.00x")


def test_info_shows_only_meaningful_cache_rows():
    """tiny has 4 heads: GQA with 8 groups would be more groups than heads, so no GQA row."""
    schemes = [r["scheme"] for r in info_dict(load_preset("tiny"))["cache_per_token_per_layer"]]
    assert schemes == ["MHA", "MHA (decoupled RoPE keys)", "MQA", "MLA"]
    v3 = [r["scheme"] for r in info_dict(load_preset("deepseek-v3"))["cache_per_token_per_layer"]]
    assert "GQA (8 groups)" in v3
    text = run("info", "--preset", "tiny").stdout
    assert "GQA" not in text and "0.000 B" not in text and "0.0 GiB" not in text  # tiny sizes in small units


def test_validate_fits_80_columns_piped_with_every_number_whole(tiny_onnx, tmp_path):
    result = run("validate", "--onnx", tiny_onnx, "--steps", 2, "--prefill-len", 4, "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    assert_fits(result.stdout)
    data = json.loads((tmp_path / "r.json").read_text())
    for step in data["steps"]:
        out = step["comparisons"][0]
        row_with(result.stdout, step["step"].split()[-1], out["name"], sci(out["max_rel_err"], 1),
                 sci(out["rel_rms"], 1), sci(max(0.0, 1.0 - out["cosine"]), 1), ratio(out["tolerance_used"]), "yes")
    verdict = verdict_for("float32").through(2)  # tiny: two layers
    assert f"tol = {verdict.atol:.3g} + {verdict.rtol:.3g} x |ref| per element (float32)" in " ".join(
        result.stdout.split())
    assert "one layer's bounds grown as sqrt(2 layers)" in " ".join(result.stdout.split())
    assert result.stdout.splitlines()[-1].startswith(f"wrote {tmp_path / 'r.json'} (")


def test_profile_fits_80_columns_piped_with_every_number_whole(tiny_onnx, tmp_path):
    result = run("profile", "--onnx", tiny_onnx, "--batches", "1,64", "--contexts", "8,64", "--iters", 2,
                 "--json", tmp_path / "p.json")
    assert result.exit_code == 0, result.output
    assert_fits(result.stdout)
    assert "prefill: all context tokens new" in result.stdout and "decode: one new token" in result.stdout
    for r in json.loads((tmp_path / "p.json").read_text())["rows"]:
        cells = [str(r["batch"]), str(r["context"]), sig(r["median_ms"]), sig(r["p90_ms"]), sig(r["p99_ms"]),
                 f"{r['tokens_per_s']:,.0f}"]
        if r["phase"] == "decode":
            cells += [sig(r["cache_gb_s"], 3), f"{r['percent_of_copy']:.1f}"]
        row_with(result.stdout, *cells)


def _extreme_profile() -> ProfileReport:
    """Numbers as wide as they get: a slow CPU prefill of 131072 tokens, a fast GPU decode at batch 1024."""
    rows = [ProfileRow("onnxruntime", "prefill", 1024, 131072, 131072, 123456.789, 234567.891, 345678.912, 1.1e8),
            ProfileRow("onnxruntime", "decode", 1024, 131072, 1, 0.001234, 0.002345, 0.003456, 83e6, 12345.678,
                       99.9)]
    return ProfileReport("NVIDIA H100 80GB HBM3", 3020.5, rows, "deepseek-v3, 61 layers", "bfloat16")


def _extreme_validation() -> ValidationReport:
    ref = np.array([[1.0, -2.0, 1e-9, 3.0]])
    near_zero = compare("output_hidden_states", ref + np.array([[1e-5, 0, 1e-5, 0]]), ref, 2e-4, 2e-3)
    caches = [compare(f"present_latent_cache.{i}", ref * 1e30 + 1e28, ref * 1e30, 2e-4, 2e-3) for i in range(61)]
    cross = compare("present_latent_cache.60 vs onnxruntime", ref + np.nan, ref, 2e-4, 2e-3)
    steps = [StepResult(f"decode {i}" if i else "prefill", 1, [near_zero, *caches, cross]) for i in range(12)]
    return ValidationReport("tensorrt-rtx", "bfloat16", Scenario(batch=1024, prefill_len=4096, steps=11), steps)


def _renderings():
    """(render into a console, numbers it must show whole) for the widest numbers each table meets."""
    validation = _extreme_validation()
    cache = validation.steps[0].comparisons[1]
    return [
        (lambda c: print_profile(_extreme_profile(), c),
         ["123,457", "345,679", "110,000,000", "0.001234", "83,000,000", "12,346", "99.9", "1,024", "131,072"]),
        (lambda c: print_report(validation, c),
         [sci(cache.rel_rms, 1), sci(cache.max_rel_err, 1), ratio(cache.tolerance_used), "1.0e+04", "0.050"]),
        (lambda c: render_info(load_preset("kimi-k2"), "float32", 10**7, c, absorb="runtime"),
         [count_text(info_dict(load_preset("kimi-k2"))["parameters"]["total"]).split()[0], "10,000,000"]),
    ]


def _render(render, width: int) -> str:
    console = Console(width=width, record=True, force_terminal=True, color_system="truecolor")
    render(console)
    return console.export_text()


@pytest.mark.parametrize("width", [80, 50])
def test_tables_on_a_terminal_never_cut_a_number(width):
    """On a terminal (colour, the terminal's width) at 80 columns everything fits with every number whole;
    narrower, cells fold onto the next line but lose nothing: the same digits as on a 200-column terminal."""
    from collections import Counter

    for render, numbers in _renderings():
        text = _render(render, width)
        assert not any(mark in text for mark in ELLIPSIS), text
        if width == 80:
            assert_fits(text)
            for number in numbers:
                assert re.search(rf"(^|\s){re.escape(number)}(\s|$)", text, re.M), (number, text)
        wide = _render(render, 200)
        assert Counter(ch for ch in text if ch.isdigit()) == Counter(ch for ch in wide if ch.isdigit()), text


def test_validate_shows_what_decides_a_pass_and_a_failure():
    """A large relative error on a near-zero element passes (err/tol small); the failure says where and why."""
    console = Console(width=80, record=True)
    print_report(_extreme_validation(), console)
    text = console.export_text()
    line = row_with(text, "prefill", "output_hidden_states")
    assert "1.0e+04" in line and "0.050" in line and line.endswith("yes")  # max rel 1e4 yet 5% of its tolerance
    assert "NO" in row_with(text, "prefill", "cache 60 vs")
    assert "cache 0 (worst of 61)" in text
    prose = " ".join(text.split())
    used = _extreme_validation().steps[0].comparisons[1].tolerance_used
    assert f"FAIL prefill, present_latent_cache.0: at index (0, 2) the error is {used:.3g}x the tolerance" in prose
    assert "FAIL prefill, present_latent_cache.60 vs onnxruntime: 4 NaN/inf where the other side is finite" in prose
    assert "and 738 more failing tensors (every one: --json)" in prose
    assert text.splitlines()[-1].startswith("FAIL: 744 of 756 tensors over 12 steps")


def test_compare_reports_the_share_of_tolerance_the_worst_element_uses():
    ref = np.array([1e-9, 1.0, -4.0])
    c = compare("x", ref + np.array([1e-4, 1e-3, -4e-3]), ref, atol=1e-3, rtol=1e-3)
    assert c.passed and c.max_rel_err == pytest.approx(1e5)  # the near-zero element: huge relative error
    assert c.tolerance_used == pytest.approx(0.8) and c.tolerance_index == (2,)  # |-4e-3| / (1e-3 + 4e-3)
    off = compare("x", ref + np.array([0, 3e-3, 0]), ref, atol=1e-3, rtol=1e-3)
    assert not off.passed and off.tolerance_used == pytest.approx(1.5) and off.tolerance_index == (1,)
    assert compare("x", ref + 1, ref, 0.0, 0.0).to_dict()["tolerance_used"] is None  # inf -> JSON null


# ---------------------------------------------------------------------- --json, stdout and stderr


def test_json_goes_to_stdout_in_place_of_the_tables(tiny_onnx, tmp_path):
    info = run("info", "--preset", "tiny", "--json")
    assert info.exit_code == 0 and json.loads(info.stdout)["cache_per_token_per_layer"][-1]["values"] == 40
    result = run("validate", "--onnx", tiny_onnx, "--steps", 1, "--prefill-len", 2, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["passed"] and data["steps"][1]["comparisons"][0]["tolerance_used"] < 1
    assert "validate: step 1/2: prefill" in result.stderr and "validate: step 2/2: decode 1" in result.stderr
    result = run("profile", "--onnx", tiny_onnx, "--batches", 1, "--contexts", 8, "--iters", 1, "--json",
                 "--csv", tmp_path / "p.csv")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)  # the whole of stdout: the line naming the CSV went to stderr
    assert data["model"] == "tiny, 2 layers" and data["dtype"] == "float32" and len(data["rows"]) == 2
    assert result.stderr.splitlines()[-1].startswith(f"wrote {tmp_path / 'p.csv'} (")
    assert "profile: case 1/2: prefill, batch 1, context 8" in result.stderr


def test_json_path_writes_a_file_and_the_last_line_says_so(tiny_onnx, tmp_path):
    result = run("info", "--onnx", tiny_onnx, "--json", tmp_path / "i.json")
    assert result.exit_code == 0 and json.loads((tmp_path / "i.json").read_text())["absorb"] == "prefolded"
    last = result.stdout.splitlines()[-1]
    assert re.fullmatch(rf"wrote {re.escape(str(tmp_path / 'i.json'))} \(\d+\.\d\d KB\)", last), last
    result = run("validate", "--onnx", tiny_onnx, "--steps", 1, "--json", tmp_path / "v.json", "--report",
                 tmp_path / "r.json")
    assert result.exit_code == 1 and "--report is --json PATH under its old name" in result.output


def test_quiet_silences_progress_and_only_progress(tiny_onnx, tmp_path):
    loud = run("validate", "--onnx", tiny_onnx, "--steps", 1, "--prefill-len", 2)
    quiet = run("validate", "--onnx", tiny_onnx, "--steps", 1, "--prefill-len", 2, "-q")
    assert loud.exit_code == quiet.exit_code == 0
    assert "validate: building the eager float64 model" in loud.stderr and quiet.stderr == ""
    assert loud.stdout == quiet.stdout and "PASS" in quiet.stdout
    result = run("export", "--preset", "tiny", "--layers", 1, "--max-seq-len", 16, "-o", tmp_path / "q.onnx", "-q")
    assert result.exit_code == 0 and result.stderr == ""
    last = result.stdout.splitlines()[-1]
    assert re.match(rf"wrote {re.escape(str(tmp_path / 'q.onnx'))} \(\d+\.\d\d KB\) in ", last), last
    assert max(len(line) for line in result.stdout.splitlines()[:-1]) <= 80  # the --absorb advice, wrapped


def test_plain_progress_lines_are_throttled_per_stage(capsys):
    """Off a terminal: a line when a stage starts, then at most every min_interval seconds; a stage is `what`
    with its numbers aside, so steps 2..9 of the decode are one stage."""
    with ProgressReporter("validate", unit="steps", min_interval=3600) as progress:
        progress.terminal = False
        steps = ["step 1/4: prefill", "step 2/4: decode 1", "step 3/4: decode 2", "step 4/4: decode 3"]
        for i, what in enumerate(steps):
            progress(what, i, 4)
        progress("writing weights (layer 1)", 10, 100)
        progress("writing weights (layer 2)", 20, 100)
    assert capsys.readouterr().err.splitlines() == ["validate: step 1/4: prefill", "validate: step 2/4: decode 1",
                                                    "validate: writing weights (layer 1)"]
    with ProgressReporter("x", quiet=True) as progress:
        progress("anything", 1, 2)
    assert capsys.readouterr().err == ""


def test_build_progress_monitor_reports_nested_phases():
    """TensorRT's IProgressMonitor calls, told to the reporter as 'outermost > innermost' with steps."""
    from mla_export.trt.build import _Progress

    class StandIn:
        class IProgressMonitor:
            def __init__(self):
                pass

    calls = []
    monitor = _Progress(StandIn, lambda what, done, total: calls.append((what, done, total))).monitor
    monitor.phase_start("Building engine", None, 3)
    monitor.step_complete("Building engine", 0)
    monitor.phase_start("Optimizing graph", "Building engine", 5)
    monitor.phase_start("Timing graph nodes", "Optimizing graph", 0)
    assert monitor.step_complete("Timing graph nodes", 0) is True  # True: go on building
    monitor.phase_finish("Timing graph nodes")
    monitor.phase_finish("Optimizing graph")
    monitor.phase_finish("Building engine")
    assert calls == [("Building engine", 0, 3), ("Building engine", 1, 3),
                     ("Building engine > Optimizing graph", 0, 5), ("Building engine > Timing graph nodes", 0, 1),
                     ("Building engine > Timing graph nodes", 1, 1), ("Building engine > Optimizing graph", 0, 5),
                     ("Building engine", 1, 3)]


# -------------------------------------------------------------------------------------------- plots


@pytest.mark.parametrize("suffix", [".svg", ".pdf", ".png"])
def test_plot_format_follows_the_extension(tmp_path, suffix):
    report = _sweep()
    path = tmp_path / f"p{suffix}"
    plot_profile(report, path)
    data = path.read_bytes()
    assert data.startswith({".svg": b"<?xml", ".pdf": b"%PDF", ".png": b"\x89PNG"}[suffix])


def _sweep() -> ProfileReport:
    rows = []
    for phase in ("prefill", "decode"):
        for batch in (1, 8):
            for context in (64, 256, 1024, 4096):
                ms = (context * batch / 1000 if phase == "prefill" else 0.1 + context * batch / 1e5)
                rows.append(ProfileRow("tensorrt", phase, batch, context, context if phase == "prefill" else 1,
                                       ms, ms * 1.1, ms * 1.3, 1.0))
    return ProfileReport("NVIDIA H100", 3000.0, rows, "deepseek-v2-lite, 1 layer", "bfloat16")


def test_plot_has_plain_ticks_a_band_and_a_title_naming_what_was_timed(tmp_path):
    path = tmp_path / "p.svg"
    plot_profile(_sweep(), path)
    svg = path.read_text()
    assert "deepseek-v2-lite, 1 layer, bfloat16, contiguous cache - tensorrt on NVIDIA H100" in svg
    for tick in ("64", "256", "1024", "4096"):
        assert f">{tick}<" in svg, tick
    assert "2^" not in svg and "10^" not in svg and "mathdefault" not in svg
    assert "p90-p99 (lines: p50)" in svg and "batch 8" in svg
    with pytest.raises(Exception, match="expected one of .png, .svg, .pdf"):
        plot_profile(_sweep(), tmp_path / "p.jpg")
    assert not (tmp_path / "p.jpg").exists()
