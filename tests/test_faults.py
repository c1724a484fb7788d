"""Faults while the CLI works (issue 11): forced failures between the renames of export's and build's commits,
a full disk (a real one on a small tmpfs where the machine lets the test mount it), Ctrl-C, SIGTERM and SIGKILL
mid-export, a mismatched engine pair, an internal error; and the all-NaN model's report, and the CPU op's
attribute checks. Each failure: a non-zero exit code, one message and no traceback, the destination unchanged
(or, for a commit that succeeds, consistently replaced).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import torch

import mla_export.graph.export as export_module
from mla_export.ui.cli import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_TERMINATED
from mla_export.common.fileio import STAGING_PREFIX
from mla_export.trt.sidecar import Sidecar, bytes_sha256

from corpus import (ROOT, RTX_BUILD, SMAX, assert_one_message, assert_refused, copy_model, data_file_of,
                    error_lines, fake_engine, fill_initializers, rtx, run, snapshot)

def test_validate_fails_an_all_nan_model_and_says_so_in_the_report(corpus_files, tmp_path):
    model = copy_model(corpus_files.good, tmp_path)
    fill_initializers(model, float("nan"))
    result = run("validate", "--onnx", model, "--steps", 1, "--prefill-len", 2, "--batch", 1,
                 "--report", tmp_path / "r.json")
    assert result.exit_code == 1 and "FAIL" in result.output, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    output = report["steps"][0]["comparisons"][0]
    assert not report["passed"] and not output["passed"] and output["cosine"] == 0.0
    assert output["nonfinite_mismatches"] == 2 * 64  # batch 1, 2 tokens, hidden 64: every element


def _export_args(directory: Path, *extra):
    return ["export", "--preset", "tiny", "--layers", 1, "--max-seq-len", SMAX, *extra, "-o", directory / "m.onnx"]


def _failing_replace(fail_on: Callable[[str, str], bool]):
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if fail_on(str(src), str(dst)):
            raise OSError(errno.EIO, "Input/output error (forced by the test)", str(dst))
        return real(src, dst, *args, **kwargs)

    return replace


@pytest.mark.parametrize("which", ["data file", "onnx"])
def test_export_failure_between_the_renames_leaves_the_previous_export_whole(corpus_files, tmp_path, monkeypatch, which):
    """Weights past the threshold: the data file is renamed in, then the .onnx (the commit). A failure on either
    rename leaves the previous export (graph and data) as it was, and no new file."""
    copy_model(corpus_files.external, tmp_path)
    before = snapshot(tmp_path)
    monkeypatch.setattr(export_module, "EXTERNAL_DATA_THRESHOLD", 0)
    target = ".data" if which == "data file" else "m.onnx"
    monkeypatch.setattr(os, "replace", _failing_replace(lambda src, dst: dst.endswith(target)))
    result = run(*_export_args(tmp_path, "--seed", 5))
    assert_refused(result, "Input/output error (forced by the test)", before, tmp_path)
    monkeypatch.undo()
    assert run("validate", "--onnx", tmp_path / "m.onnx", "--steps", 1, "--prefill-len", 2).exit_code == 0


def test_export_commit_replaces_the_pair_consistently(corpus_files, tmp_path, monkeypatch):
    copy_model(corpus_files.external, tmp_path)
    old_data = data_file_of(tmp_path / "m.onnx").name
    monkeypatch.setattr(export_module, "EXTERNAL_DATA_THRESHOLD", 0)
    assert run(*_export_args(tmp_path, "--seed", 5)).exit_code == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 2 and old_data not in names and data_file_of(tmp_path / "m.onnx").name in names


def test_export_disk_full_mid_write(corpus_files, tmp_path, monkeypatch):
    """ENOSPC while writing the weights (here raised by the file system stand-in): one message, nothing left."""
    copy_model(corpus_files.good, tmp_path)
    before = snapshot(tmp_path)
    import mla_export.graph.weight_stream as weight_stream

    def full(path, *args, **kwargs):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(weight_stream, "write_weights", full)
    result = run(*_export_args(tmp_path))
    assert_refused(result, "No space left on device); free some space", before, tmp_path)


@contextlib.contextmanager
def small_file_system(directory: Path, size: str):
    """A tmpfs of `size` mounted at `directory` where this machine lets us (root, mount allowed); else None."""
    directory.mkdir()
    mounted = os.geteuid() == 0 and shutil.which("mount") is not None and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)], capture_output=True).returncode == 0
    try:
        yield directory if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(directory)], capture_output=True)


def _fill(directory: Path) -> None:
    """Fill `directory`'s file system to the last byte."""
    with open(directory / "filler", "wb", buffering=0) as handle:
        for chunk in (b"\0" * 4096, b"\0"):
            with contextlib.suppress(OSError):
                while handle.write(chunk):
                    pass


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_through_a_small_tmpfs(corpus_files, tmp_path, monkeypatch):
    """A real full disk where a tmpfs can be mounted (root): export refused up front with the estimate; with that
    check off, export fails mid-write with ENOSPC; validate --report and profile --json fail on their write. Each
    gives one message and leaves nothing behind. Where no tmpfs can be mounted, the writes raise ENOSPC instead."""
    with small_file_system(tmp_path / "fs", "256k") as fs:
        if fs is not None:
            assert fs.is_mount()
            _fill(fs)
            before = snapshot(fs)
            result = run("export", "--preset", "tiny", "--layers", 1, "--max-seq-len", SMAX, "-o", fs / "m.onnx")
            assert_refused(result, "of disk in", before, fs)
        else:  # the file system stand-in: every staged write and the weights' write run out of space
            import mla_export.common.fileio as fileio
            import mla_export.graph.weight_stream as weight_stream

            fs = tmp_path / "fs"
            monkeypatch.setattr(fileio, "write_staged", _no_space)
            monkeypatch.setattr(weight_stream, "write_weights", _no_space)
            before = snapshot(fs)
        with monkeypatch.context() as patch:
            patch.setattr(export_module, "check_free_disk", lambda *args: None)
            result = run("export", "--preset", "tiny", "--layers", 1, "--max-seq-len", SMAX, "-o", fs / "m.onnx")
        assert_refused(result, "No space left on device", before, fs)
        result = run("validate", "--onnx", corpus_files.good, "--steps", 1, "--prefill-len", 2, "--report", fs / "r.json")
        assert_refused(result, "No space left on device", before, fs)
        result = run("profile", "--onnx", corpus_files.good, "--batches", 1, "--contexts", 4, "--iters", 1, "--json",
                     fs / "p.json")
        assert_refused(result, "No space left on device", before, fs)


def test_build_failure_between_engine_and_sidecar_keeps_the_previous_pair(corpus_files, tmp_path, monkeypatch):
    """The engine is renamed in, then the sidecar (the commit). A failure on the sidecar's rename puts the old
    engine back; a failure on the engine's rename changes nothing. Either way the old pair is whole and readable."""
    rtx()
    model = copy_model(corpus_files.good, tmp_path)
    assert run("build", "--onnx", model, "-o", tmp_path / "m.engine", *RTX_BUILD).exit_code == 0
    old = Sidecar.read(tmp_path / "m.engine")
    before = snapshot(tmp_path)
    for target in ("m.engine.json", "m.engine"):
        with monkeypatch.context() as patch:
            patch.setattr(os, "replace", _failing_replace(lambda src, dst: dst.endswith("/" + target)))
            result = run("build", "--onnx", model, "-o", tmp_path / "m.engine", *RTX_BUILD, "--batch-range", "1:2:4")
        assert_refused(result, "Input/output error (forced by the test)", before, tmp_path)
        assert Sidecar.read(tmp_path / "m.engine") == old
    result = run("build", "--onnx", model, "-o", tmp_path / "m.engine", *RTX_BUILD, "--batch-range", "1:2:4")
    assert result.exit_code == 0, result.output
    new = Sidecar.read(tmp_path / "m.engine")  # consistently replaced: the new engine with its own sidecar
    assert new.profiles != old.profiles and new.engine_sha256 == bytes_sha256((tmp_path / "m.engine").read_bytes())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.engine", "m.engine.json", "m.onnx"]


def test_a_mismatched_engine_pair_is_refused_by_every_reader(corpus_files, tmp_path):
    """An engine with another build's sidecar (what a kill between the two renames leaves): validate and profile
    refuse it, with the same message, before any TensorRT work."""
    first = fake_engine(tmp_path, corpus_files.good, b"first build" * 10)
    sidecar = (tmp_path / "m.engine.json").read_text()
    fake_engine(tmp_path, corpus_files.good, b"second build" * 10)
    (tmp_path / "m.engine.json").write_text(sidecar)
    for args in (["validate", "--engine", first], ["profile", "--engine", first]):
        assert_one_message(run(*args), "are not from the same build")


def test_the_cpu_op_checks_its_attributes_against_the_shapes():
    """The custom op's CPU implementation refuses attributes that disagree with its inputs, as the CUDA one does."""
    import mla_export.model.ops  # noqa: F401  (registers the op)

    b, s, h, dc, dr, smax = 1, 2, 4, 32, 8, 16
    args = [torch.randn(b, s, h, dc), torch.randn(b, s, h, dr), torch.randn(b, s, dc), torch.randn(b, s, dr),
            torch.randn(b, smax, dc + dr), torch.zeros(b, dtype=torch.int32), torch.randn(smax, dr)]
    torch.ops.mla.mla_attention(*args, h, dc, dr, 0.1)
    for attributes, message in (((8, dc, dr, 0.1), "do not match the inputs' shapes"),
                                ((h, 16, dr, 0.1), "do not match the inputs' shapes"),
                                ((h, dc, dr, float("nan")), "softmax_scale=nan")):
        with pytest.raises(ValueError, match=message):
            torch.ops.mla.mla_attention(*args, *attributes)
    with pytest.raises(ValueError, match="widths"):
        torch.ops.mla.mla_attention(*args[:4], torch.randn(b, smax, dc), *args[5:], h, dc, dr, 0.1)


def test_internal_errors_are_one_line_and_the_traceback_is_behind_debug(monkeypatch, tmp_path):
    import mla_export.ui.info as info

    def broken(*args, **kwargs):
        raise TypeError("a bug\nwith a second line")

    monkeypatch.setattr(info, "render_info", broken)
    result = run("info", "--preset", "tiny")
    assert_one_message(result, "internal error (TypeError: a bug); this is a bug in mla-export", EXIT_INTERNAL)
    assert "--debug" in result.output and "issue tracker" in result.output
    result = run("--debug", "info", "--preset", "tiny")
    assert result.exit_code == EXIT_INTERNAL and "Traceback" in result.output and "raise TypeError" in result.output


@pytest.mark.parametrize("command", [["info", "--preset", "tiny"], ["validate", "--onnx", "GOOD", "--steps", 1]])
def test_sigterm_is_handled_like_ctrl_c_by_every_command(corpus_files, monkeypatch, command):
    """SIGTERM during a command (sent here by the command itself) unwinds it: exit 143, one message; the
    process's own SIGTERM handler is back afterwards."""
    import mla_export.ui.info as info
    import mla_export.run.validate as validate

    def terminate(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises here
        raise AssertionError("SIGTERM was not handled")

    monkeypatch.setattr(info, "render_info", terminate)
    monkeypatch.setattr(validate, "validate_runner", terminate)
    before = signal.getsignal(signal.SIGTERM)
    result = run(*[corpus_files.good if a == "GOOD" else a for a in command])
    assert_one_message(result, "terminated (SIGTERM)", EXIT_TERMINATED)
    assert signal.getsignal(signal.SIGTERM) is before


def test_ctrl_c_exits_130_after_cleaning_up(corpus_files, tmp_path, monkeypatch):
    import mla_export.graph.weight_stream as weight_stream

    copy_model(corpus_files.good, tmp_path)
    before = snapshot(tmp_path)

    def interrupted(path, *args, **kwargs):
        Path(path).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(weight_stream, "write_weights", interrupted)
    assert_refused(run(*_export_args(tmp_path)), "interrupted; partial output was removed", before, tmp_path,
                   EXIT_INTERRUPTED)


SLOW_EXPORT = """
import sys, time
import mla_export.graph.weight_stream as ws
original = ws.write_weights
def slow(path, *args, **kwargs):
    original(path, *args, **kwargs)
    print("WEIGHTS-WRITTEN", flush=True)
    time.sleep(120)
ws.write_weights = slow
from mla_export.ui.cli import main
sys.argv = ["mla-export"] + sys.argv[1:]
main()
"""


def _start_slow_export(directory: Path) -> subprocess.Popen:
    """An export (in a process of its own) that stops after writing its weights into the staging folder."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_EXPORT, *map(str, _export_args(directory, "--seed", 9))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    deadline = time.monotonic() + 120
    line = ""
    while "WEIGHTS-WRITTEN" not in line and time.monotonic() < deadline and proc.poll() is None:
        line = proc.stdout.readline()
    assert "WEIGHTS-WRITTEN" in line, proc.stderr.read() if proc.poll() is not None else "timed out"
    staging = [p for p in directory.iterdir() if p.name.startswith(f"{STAGING_PREFIX}{proc.pid}-")]
    assert len(staging) == 1 and any(staging[0].iterdir())  # mid-export: its staging folder holds the weights
    return proc


@pytest.mark.slow
def test_sigterm_mid_export_cleans_up_and_exits_143(corpus_files, tmp_path):
    copy_model(corpus_files.good, tmp_path)
    before = snapshot(tmp_path)
    proc = _start_slow_export(tmp_path)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_TERMINATED, err
    assert "Traceback" not in err and error_lines(err) == ["error: terminated (SIGTERM); partial output was removed"]
    assert snapshot(tmp_path) == before


@pytest.mark.slow
def test_sigkill_mid_export_leaves_a_staging_folder_the_next_run_removes(corpus_files, tmp_path):
    copy_model(corpus_files.good, tmp_path)
    old = (tmp_path / "m.onnx").read_bytes()
    proc = _start_slow_export(tmp_path)
    proc.kill()
    proc.communicate(timeout=60)
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(STAGING_PREFIX)]
    assert len(left) == 1 and (tmp_path / "m.onnx").read_bytes() == old  # the previous export is whole
    assert run("validate", "--onnx", tmp_path / "m.onnx", "--steps", 1, "--prefill-len", 2).exit_code == 0
    result = run(*_export_args(tmp_path, "--seed", 3))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # the stale staging folder is gone
