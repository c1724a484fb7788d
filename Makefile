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

.PHONY: setup test test-fast kernels plugins cpp-example bench clean

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

clean:
	rm -rf $(BUILD)
