# Sets TENSORRT_INCLUDE_DIR to a directory holding NvInfer.h, from (in order):
#   -DTENSORRT_ROOT=... or $TENSORRT_ROOT (an installation: <root>/include),
#   the system (/usr/include/x86_64-linux-gnu, /usr/include),
#   the build-time fallback: TensorRT's public headers shipped by the `kernel-lens` Python package
#   (pip install kernel-lens==2.0.1), found through Python3_EXECUTABLE (or python3 on PATH).
# Headers are never copied into the repository.
if(TENSORRT_INCLUDE_DIR AND EXISTS "${TENSORRT_INCLUDE_DIR}/NvInfer.h")
    return()
endif()
if(NOT TENSORRT_ROOT AND DEFINED ENV{TENSORRT_ROOT})
    set(TENSORRT_ROOT $ENV{TENSORRT_ROOT})
endif()
find_path(TENSORRT_INCLUDE_DIR NvInfer.h
    HINTS ${TENSORRT_ROOT}/include
    PATHS /usr/include/x86_64-linux-gnu /usr/include /usr/local/include)
if(NOT TENSORRT_INCLUDE_DIR)
    if(NOT Python3_EXECUTABLE)
        find_program(Python3_EXECUTABLE NAMES python3 python)
    endif()
    execute_process(
        COMMAND ${Python3_EXECUTABLE} -c
            "import kernel_lens, pathlib; print(pathlib.Path(kernel_lens.__file__).parent / 'include' / 'tensorrt')"
        OUTPUT_VARIABLE _kl_dir OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET RESULT_VARIABLE _kl_rc)
    if(_kl_rc EQUAL 0 AND EXISTS "${_kl_dir}/NvInfer.h")
        set(TENSORRT_INCLUDE_DIR "${_kl_dir}" CACHE PATH "TensorRT headers (kernel-lens fallback)" FORCE)
        message(STATUS "TensorRT headers: kernel-lens fallback at ${_kl_dir}")
    endif()
endif()
if(NOT TENSORRT_INCLUDE_DIR)
    message(FATAL_ERROR "TensorRT headers (NvInfer.h) not found: set TENSORRT_ROOT, install TensorRT, or "
        "`pip install kernel-lens==2.0.1` and pass -DPython3_EXECUTABLE=<that python>")
endif()
