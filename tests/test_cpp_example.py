"""examples/cpp: the runtime library and demo compile against TensorRT's headers, and the unit test
of the parts that need no TensorRT runtime passes. (Linking needs TensorRT's libnvinfer.)"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mla_export.trt.sidecar import SIDECAR_VERSION

from helpers import CUDA_INCLUDE

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory):
    if shutil.which("cmake") is None or not (CUDA_INCLUDE / "cuda_runtime_api.h").exists():
        pytest.skip("cmake or the CUDA toolkit headers are missing")
    build = tmp_path_factory.mktemp("cpp")
    configure = subprocess.run(["cmake", "-S", ROOT / "examples" / "cpp", "-B", build,
                                f"-DPython3_EXECUTABLE={sys.executable}"], capture_output=True, text=True)
    assert configure.returncode == 0, configure.stdout + configure.stderr
    compiled = subprocess.run(["cmake", "--build", build, "-j2"], capture_output=True, text=True)
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
    return build


def test_library_and_demo_objects_compile(build_dir):
    objects = {p.name for p in build_dir.rglob("*.o")}
    assert {"mlaRuntime.cpp.o", "mla_decode_demo.cpp.o", "mla_generate.cpp.o"} <= objects
    if shutil.which("nvcc"):  # the token loop's device argmax, compiled where CMake finds nvcc
        assert "argmaxKernel.cu.o" in objects


def test_generate_unit_test_passes(build_dir):
    """mla_generate's command line, sidecar EOS ids and the token loop over a fake step (no TensorRT)."""
    result = subprocess.run([build_dir / "test_mla_generate"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    assert result.stdout.strip().endswith(" 0 failed")
    assert int(result.stdout.strip().splitlines()[-1].split()[0]) >= 25


def test_export_records_the_eos_ids_the_token_loop_reads(tmp_path):
    """The metadata key mla_generate reads from the sidecar (its copy of the ONNX metadata) is the one export
    writes, from the checkpoint's generation_config.json (else config.json)."""
    from mla_export.common import contract
    from mla_export.graph.export import checkpoint_eos_ids

    source = (ROOT / "examples" / "cpp" / "mlaGenerate.h").read_text()
    assert f'"{contract.META_EOS_TOKEN_IDS}"' in source
    (tmp_path / "config.json").write_text('{"eos_token_id": 1}')
    assert checkpoint_eos_ids(str(tmp_path)) == "1"
    (tmp_path / "generation_config.json").write_text('{"eos_token_id": [7, 2]}')
    assert checkpoint_eos_ids(str(tmp_path)) == "7,2"
    assert checkpoint_eos_ids(None) == ""


def test_runtime_unit_test_passes(build_dir):
    result = subprocess.run([build_dir / "test_mla_runtime"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    assert result.stdout.strip().endswith(" 0 failed")
    passed = int(result.stdout.strip().splitlines()[-1].split()[0])
    assert passed >= 20


def test_the_example_reads_the_sidecar_format_build_writes():
    """mlaRuntime.h's kSidecarFormatVersion is the format `mla-export build` writes (format 2 renamed a key the
    example does not read; a mismatch would make it refuse every engine)."""
    header = (ROOT / "examples" / "cpp" / "mlaRuntime.h").read_text()
    assert int(re.search(r"constexpr int64_t kSidecarFormatVersion = (\d+);", header).group(1)) == SIDECAR_VERSION


def test_nccl_unit_test_passes(build_dir):
    """mlaNccl.h without NCCL: the id-file exchange between two ranks over a fake NCCL, its refusals, the hex
    form, loadNccl through dlopen (a missing library, a stand-in one), the --tp flags and the sidecar's rank."""
    result = subprocess.run([build_dir / "test_mla_nccl"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout
    assert result.stdout.strip().endswith(" 0 failed")
    assert int(result.stdout.strip().splitlines()[-1].split()[0]) >= 30


def test_nccl_smoke_skips_without_a_gpu_or_nccl(build_dir):
    """`make gpu-check`'s NCCL smoke (world size 1) exits 77, a skip, where it cannot run: no CUDA device, or
    (on a GPU machine) no libnccl.so.2 where it is told to look."""
    result = subprocess.run([build_dir / "mla_nccl_smoke", "--nccl-library", "libnccl_not_here.so.2"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 77, result.stdout + result.stderr
    assert result.stdout.startswith("skip: ")
    assert "no CUDA device" in result.stdout or "cannot load libnccl_not_here.so.2" in result.stdout


def test_page_allocator_unit_test_passes(build_dir):
    """mlaPages.h, a paged cache's pages in C++: allocate on prefill, one more at a page edge, free on finish and
    reuse, the block table's unused slots, and each refusal (pool exhausted, a row too short, unknown or
    duplicate sequences) leaving the pool as it was."""
    result = subprocess.run([build_dir / "test_mla_pages"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout
    assert result.stdout.strip().endswith(" 0 failed")
    assert int(result.stdout.strip().splitlines()[-1].split()[0]) >= 20
