import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# Without a GPU the Triton kernels run their own source on CPU tensors under the interpreter
# (tests/test_kernels.py). Set here, before any test module can import triton, so the order in which
# modules are collected does not matter; the AOT build runs in a subprocess without it.
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
# What an $MLA_KERNELS_DIR must hold. Not the images' source: the GPU bundle leaves it out (its images travel
# inside the built library and tools), and the tests that read it (test_kernels_aot.py) say so if it is missing.
AOT_OUTPUTS = ("mla_kernels_tables.h", "manifest.json")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def aot_kernels(tmp_path_factory) -> Path:
    """The AOT kernel build (`python -m mla_export.kernels.aot`) for every arch, made once per test session.

    $MLA_KERNELS_DIR names an existing build to use instead (e.g. `make kernels`' build/kernels); otherwise
    the build runs here, fresh, so the tests never read a stale output of older kernel sources.
    """
    given = os.environ.get("MLA_KERNELS_DIR")
    if given:
        out = Path(given)
        missing = [name for name in AOT_OUTPUTS if not (out / name).is_file()]
        assert not missing, f"MLA_KERNELS_DIR={given} lacks {missing}: run `make kernels` or unset it"
        return out
    out = tmp_path_factory.mktemp("kernels")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mla_export.kernels.aot", "--out-dir", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    print(f"\nAOT build: {time.perf_counter() - start:.1f} s\n{proc.stdout}")
    return out


@pytest.fixture(scope="session")
def plugin_build(tmp_path_factory, aot_kernels) -> Path:
    """One fresh CMake build of plugins/ (libmla_plugin.so with MlaAttention, DeepseekMoE and BlockFp8MatMul, the C++ tests) with
    the session's generated kernels, and both launch tests' expectations: the launches the Python APIs plan
    (tests/plugin_helpers.py). Shared by test_plugin.py and test_moe_plugin.py. $MLA_PLUGIN_BUILD names a build
    made elsewhere instead (the GPU bundle of `make gpu-bundle`: the shipped library and the GPU programs, in the
    build's layout)."""
    import shutil

    from plugin_helpers import CUDA_HEADER, LIBRARY, build_plugins

    given = os.environ.get("MLA_PLUGIN_BUILD")
    if given:
        built = Path(given)
        assert (built / "mlaAttentionPlugin" / LIBRARY).is_file(), f"MLA_PLUGIN_BUILD={given} has no {LIBRARY}"
        return built
    if shutil.which("cmake") is None:
        pytest.skip("cmake is missing")
    if not CUDA_HEADER.exists():
        pytest.skip(f"the CUDA toolkit's cuda.h is missing ({CUDA_HEADER})")
    return build_plugins(tmp_path_factory.mktemp("plugins"), aot_kernels)


@pytest.fixture(scope="session")
def plugin_library(plugin_build) -> Path:
    from plugin_helpers import LIBRARY

    library = plugin_build / "mlaAttentionPlugin" / LIBRARY
    assert library.is_file()
    return library


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """With MLA_EXPORT_NO_SKIPS=1 (set by .ci/run) a skipped test that is not GPU-marked fails: on the CI
    machine every CPU test must run, so a missing tool cannot pass silently."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("MLA_EXPORT_NO_SKIPS") == "1" and "gpu" not in item.keywords:
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped on CI, where every CPU test must run: {reason}"


@pytest.fixture(scope="session")
def corpus_files(tmp_path_factory):
    """The good inputs that test_bad_inputs.py and test_faults.py damage (corpus.make_files), made once."""
    from corpus import make_files

    return make_files(tmp_path_factory.mktemp("corpus"))
