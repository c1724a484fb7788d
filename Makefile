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

.PHONY: setup test test-fast test-threads kernels plugins cpp-example bench wheel-check gpu-bundle gpu-check clean

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

# The tests that compare float results with a reference, once per thread count in THREADS: torch and its
# BLAS may split and order sums differently with the thread count, and every tolerance must hold either way.
FLOAT_TESTS := tests/test_folding.py tests/test_model.py tests/test_moe.py tests/test_checkpoint.py \
	tests/test_export.py tests/test_export_moe.py tests/test_transformers.py tests/test_transformers_moe.py \
	tests/test_kernels.py tests/test_moe_kernels.py tests/test_output.py tests/test_polygraphy.py \
	tests/test_validate_layers.py
THREADS ?= 1 2

test-threads: setup
	@for n in $(THREADS); do echo "test-threads: OMP_NUM_THREADS=$$n"; \
		OMP_NUM_THREADS=$$n $(PY) -m pytest -q $(FLOAT_TESTS) || exit 1; done

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

# The package as a user installs it: a wheel (not editable) in a fresh venv, run from outside the source tree.
wheel-check: setup
	rm -rf $(BUILD)/wheel $(BUILD)/wheel-venv
	$(PY) -m pip wheel --quiet --no-deps -w $(BUILD)/wheel .
	$(PYTHON) -m venv $(BUILD)/wheel-venv
	$(BUILD)/wheel-venv/bin/python -m pip install --quiet "$(TORCH_SPEC)" $(BUILD)/wheel/mla_export-*.whl
	cd $(BUILD)/wheel-venv && ./bin/mla-export export --preset tiny -q -o tiny.onnx && \
		./bin/mla-export validate --onnx tiny.onnx --steps 2 > validate.txt && tail -1 validate.txt

# The one-command GPU check (benchmarks/gpu_check.py). On a CPU machine, `make gpu-bundle` builds what a
# GPU machine needs and cannot build without a network (AOT kernels, libmla_plugin.so, the GPU programs,
# mla_nccl_smoke: the C++ runtime's NCCL set-up at world size 1, skipped where libnccl.so.2 is absent)
# into $(GPU_BUNDLE), under 48 MiB; on the GPU machine (CUDA toolkit, torch, triton; no network, no
# TensorRT), `make gpu-check OUT=dir` installs the package without dependencies and runs every owed GPU
# test, compute-sanitizer run and benchmark into OUT/gpu-check.json and OUT/gpu-check.md. Without a GPU
# it stops at once with one line.
GPU_BUNDLE ?= $(BUILD)/gpu-bundle
GPU_PYTHON ?= python3
OUT ?= gpu-check-out

gpu-bundle: plugins cpp-example
	$(PY) benchmarks/gpu_check.py --build $(BUILD) --bundle $(GPU_BUNDLE)

gpu-check:
	@$(GPU_PYTHON) benchmarks/gpu_check.py --probe
	@$(GPU_PYTHON) -m pip install --quiet --no-deps --no-build-isolation -e . || \
		echo "gpu-check: pip install -e . failed; the steps run with PYTHONPATH=$(CURDIR)"
	$(GPU_PYTHON) benchmarks/gpu_check.py --out $(OUT) --bundle $(GPU_BUNDLE)

clean:
	rm -rf $(BUILD)
