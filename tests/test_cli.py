"""The command line, bad input included: one clear message, exit code 1, nothing half-written."""

import json

import pytest
from click.testing import CliRunner

from mla_export.ui.cli import main


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result


def test_help_of_every_command():
    """-h and --help everywhere; the top-level help names every command; every help ends with the exit codes."""
    top = run("-h")
    assert top.exit_code == 0 and top.output == run("--help").output
    commands = top.output.split("Commands:")[1]
    assert sorted(main.commands) == ["build", "export", "generate", "info", "profile", "validate"]
    for command in main.commands:
        assert f"  {command} " in commands
        result = run(command, "-h")
        assert result.exit_code == 0 and "Usage" in result.output and result.output == run(command, "--help").output
        assert "…" not in result.output and "..." not in commands
        text = " ".join(result.output.split())
        for code in ("0 success", "1 bad input", "2 a bad command line", "70 an internal error", "130 interrupted",
                     "143 terminated"):
            assert code in text and code in " ".join(top.output.split()), (command, code)


def test_options_have_one_meaning_across_commands():
    """--batch is a count (validate), ranges are --batch-range/--prefill-range (build), lists are --batches and
    --contexts (profile), --json [PATH] is JSON in info, validate and profile alike."""
    def options(command):
        return {name: param for param in main.commands[command].params for name in param.opts}

    assert options("validate")["--batch"].type.name == "integer"
    assert "--batch" not in options("build") and "--batch" not in options("profile")
    assert {"--batch-range", "--prefill-range"} <= set(options("build"))
    assert {"--batches", "--contexts"} <= set(options("profile"))
    assert options("info")["--context"].type.name == "integer range" and "--context" not in options("profile")
    for command in ("info", "validate", "profile"):
        json = options(command)["--json"]
        assert not json.is_flag and json.flag_value == "-" and json.metavar == "[PATH]"
    for command in ("export", "validate", "build", "profile"):
        assert {"-q", "--quiet"} <= set(options(command))


def test_info_prints_576_cached_values_for_deepseek_v3():
    result = run("info", "--preset", "deepseek-v3")
    assert result.exit_code == 0, result.output
    mla_row = next(line for line in result.output.splitlines() if line.startswith("MLA "))
    assert " 576 " in mla_row and " 1,152 " in mla_row  # values and bf16 bytes
    assert "32,768" in result.output  # MHA: 2 * 128 * 128
    assert "GQA (8 groups)" in result.output
    assert "prefolded" in result.output and "3.20x" in result.output
    advice = " ".join(result.output.split())  # rich wraps the sentence
    assert "--absorb runtime is smaller and faster for deepseek-v3: 356.9 MiB" in advice
    assert "q_lora_rank (1536) < Dn*Dc/(Dc-Dn) = 170.7" in advice


def test_export_then_validate_tiny(tmp_path):
    out = tmp_path / "t.onnx"
    result = run("export", "--preset", "tiny", "--max-seq-len", 64, "-o", out)
    assert result.exit_code == 0, result.output
    assert out.is_file() and [p.name for p in tmp_path.iterdir()] == ["t.onnx"]
    report = tmp_path / "report.json"
    result = run("validate", "--onnx", out, "--steps", 3, "--prefill-len", 4, "--report", report)
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output and "decode 3" in result.output
    data = json.loads(report.read_text())
    assert data["passed"] and len(data["steps"]) == 4


def test_export_runtime_absorbed_then_info_and_validate(tmp_path):
    out = tmp_path / "r.onnx"
    result = run("export", "--preset", "tiny", "--layers", 1, "--max-seq-len", 32, "--absorb", "runtime", "-o", out)
    assert result.exit_code == 0, result.output
    assert ", --absorb runtime\n" in result.output and "--absorb runtime is smaller and faster for tiny" in result.output
    result = run("info", "--onnx", out)
    assert result.exit_code == 0, result.output
    assert "absorb: runtime (recorded in the file's metadata)" in result.output
    assert "runtime (this file)" in result.output
    result = run("validate", "--onnx", out, "--steps", 2, "--prefill-len", 3, "--batch", 2)
    assert result.exit_code == 0 and "PASS" in result.output, result.output
    result = run("info", "--onnx", out, "--preset", "tiny")
    assert result.exit_code == 1 and "--onnx takes its config from the file" in result.output
    result = run("export", "--preset", "tiny", "--absorb", "both", "-o", tmp_path / "x.onnx")
    assert result.exit_code == 2 and "'both' is not one of 'prefolded', 'runtime'" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.onnx"]


def test_export_tokens_io_validates(tmp_path):
    out = tmp_path / "lm.onnx"
    assert run("export", "--preset", "tiny", "--layers", 1, "--io", "tokens", "--max-seq-len", 32, "-o", out).exit_code == 0
    result = run("validate", "--onnx", out, "--steps", 2, "--prefill-len", 3, "--batch", 2)
    assert result.exit_code == 0, result.output
    assert "logits" in result.output


@pytest.mark.parametrize("args, message", [
    (("--preset", "nope"), "unknown preset 'nope'"),
    ((), "exactly one of --preset"),
    (("--preset", "tiny", "--layers", 5), "only 2 layers"),
    (("--preset", "deepseek-v3"), "GiB of disk"),  # 671B parameters in float32: refused before any work
    (("--preset", "tiny", "--max-seq-len", 0), "--max-seq-len 0"),
    (("--preset", "tiny", "--max-seq-len", 99999), "max_position_embeddings"),
])
def test_export_bad_options(tmp_path, args, message):
    result = run("export", *args, "-o", tmp_path / "x.onnx")
    assert result.exit_code == 1
    assert message in result.output
    assert list(tmp_path.iterdir()) == []


def test_export_bad_config_file(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text('{"hidden_size": 64')
    result = run("export", "--config", bad, "-o", tmp_path / "x.onnx")
    assert result.exit_code == 1 and "not valid JSON" in result.output
    bad.write_text(json.dumps({"hidden_size": 64}))
    result = run("export", "--config", bad, "-o", tmp_path / "x.onnx")
    assert result.exit_code == 1 and "missing field" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_validate_refuses_foreign_files_and_short_caches(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    foreign = tmp_path / "foreign.onnx"
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), str(foreign))
    result = run("validate", "--onnx", foreign)
    assert result.exit_code == 1 and "not written by mla-export" in result.output

    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01not a protobuf at all" * 10)
    result = run("validate", "--onnx", garbage)
    assert result.exit_code == 1 and "garbage.onnx" in result.output

    assert run("validate", "--onnx", tmp_path / "absent.onnx").exit_code == 1

    small = tmp_path / "small.onnx"
    assert run("export", "--preset", "tiny", "--layers", 1, "--max-seq-len", 16, "-o", small).exit_code == 0
    result = run("validate", "--onnx", small, "--prefill-len", 12, "--steps", 8)
    assert result.exit_code == 1 and "cache holds 16 rows" in result.output
    assert not (tmp_path / "report.json").exists()


def test_export_refuses_bad_output_path(tmp_path):
    result = run("export", "--preset", "tiny", "-o", tmp_path / "missing-dir" / "x.onnx")
    assert result.exit_code == 1 and "does not exist" in result.output
    result = run("export", "--preset", "tiny", "-o", tmp_path / "x.txt")
    assert result.exit_code == 1 and ".onnx" in result.output


@pytest.mark.parametrize("args", [
    ["export", "--preset", "nope", "-o", "x.onnx"], ["export", "--preset", "tiny", "--layers", "9", "-o", "x.onnx"],
    ["build", "--onnx", "nope.onnx", "-o", "x.engine"], ["validate", "--onnx", "nope.onnx"],
    ["validate", "--onnx", "nope.onnx", "--steps", "-1"], ["profile", "--onnx", "nope.onnx"],
    ["profile", "--onnx", "nope.onnx", "--plot", "x.jpg"], ["info", "--preset", "nope"]])
def test_bad_options_are_refused_before_torch_is_imported(args, tmp_path):
    """A wrong option or file costs no torch import (seconds): the message comes at once."""
    import subprocess
    import sys

    code = ("import sys\nfrom mla_export.ui.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    print('exit', e.code, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.stdout.strip().splitlines()[-1] in ("exit 1 False", "exit 2 False"), proc.stdout + proc.stderr
