# mla-export: set-up, tests, kernels, plugin. `make setup && make test` on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch is enough for export, validation and the kernel interpreter tests;
# on a GPU machine install the CUDA build of torch first (pip picks it up as already satisfied).
TORCH_SPEC ?= torch==2.13.0
BUILD ?= build
# A TensorRT installation (headers and libraries) for the plugin and the C++ example, if any.
export TENSORRT_ROOT

.PHONY: setup test test-fast kernels plugins cpp-example bench gpu-check clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test,rtx,headers]"
	touch $@

test: setup
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not slow"

kernels: setup
	$(PY) -m mla_export.kernels.aot --out-dir $(BUILD)/kernels

plugins: kernels
	cmake -S plugins -B $(BUILD)/plugins -DCMAKE_BUILD_TYPE=Release -DPython3_EXECUTABLE=$(abspath $(PY)) \
		-DMLA_KERNELS_DIR=$(abspath $(BUILD)/kernels)
	cmake --build $(BUILD)/plugins -j2
	ctest --test-dir $(BUILD)/plugins --output-on-failure

# The C++ runtime helper, mla_decode_demo and their unit test. Without TensorRT's libraries the
# library and demo are compiled, not linked; the unit test runs.
cpp-example: setup
	cmake -S examples/cpp -B $(BUILD)/cpp -DCMAKE_BUILD_TYPE=Release -DPython3_EXECUTABLE=$(abspath $(PY))
	cmake --build $(BUILD)/cpp -j2
	ctest --test-dir $(BUILD)/cpp --output-on-failure

bench: setup
	$(PY) benchmarks/bench_export.py

# On a GPU machine, one command: the GPU-marked tests, then the GPU benchmarks, results under $(BUILD)/gpu-check/.
# Needs no registry: it runs the Python that has torch+CUDA (GPU_PY), and the AOT kernels of `make kernels`
# when $(BUILD)/kernels is carried along (else the plugin's GPU test builds them there).
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),python3)
GPU_CHECK_ENV = PYTHONPATH=$(CURDIR) $(if $(wildcard $(BUILD)/kernels/manifest.json),MLA_KERNELS_DIR=$(abspath $(BUILD)/kernels))
# Every step runs; the target fails when one did.
gpu-check:
	mkdir -p $(BUILD)/gpu-check
	status=0; \
	$(GPU_CHECK_ENV) $(GPU_PY) -m pytest -m gpu -q -rs > $(BUILD)/gpu-check/pytest.txt 2>&1 || status=1; \
	cat $(BUILD)/gpu-check/pytest.txt; \
	$(GPU_CHECK_ENV) $(GPU_PY) benchmarks/bench_kernels.py --json $(BUILD)/gpu-check/bench_kernels.json || status=1; \
	$(GPU_CHECK_ENV) $(GPU_PY) benchmarks/bench_moe.py --json $(BUILD)/gpu-check/bench_moe.json || status=1; \
	exit $$status

clean:
	rm -rf $(BUILD)
