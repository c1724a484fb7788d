/*
 * What the GPU checks of the shipped library (tests/testGpuEnqueue.cpp, tests/testMoeGpuEnqueue.cpp) share:
 * the CUDA driver opened with dlopen (so the programs build and link on machines without one), device 0's
 * primary context and a stream, device buffers filled from the input files, the plugin's creator found in
 * the library through getCreators as TensorRT finds it, and a captured step's graph nodes counted by type.
 * The checks exit 77 (skip) when no driver or device is present, 1 on a failure ("<program>: <what>" on
 * stderr), 0 when the outputs are written.
 */
#pragma once

#include "NvInferRuntime.h"

#include <cuda.h>

#include <functional>
#include <string>
#include <vector>

namespace gpu
{

class Driver
{
public:
    explicit Driver(char const* program) noexcept
        : mProgram(program)
    {
    }

    //! Opens the driver, makes device 0's primary context current and creates a stream: 0 when ready, 77
    //! (skip, after printing why) without a driver or a device, 1 when the set-up fails.
    int open();
    //! Prints "<program>: <what>" to stderr; returns 1, the exit status of a failed check.
    int fail(std::string const& what) const;

    CUstream stream() const noexcept { return mStream; }

    // Driver calls; each is true on success.
    bool alloc(CUdeviceptr& ptr, size_t bytes) const;
    bool upload(CUdeviceptr dst, void const* src, size_t bytes) const;
    bool download(void* dst, CUdeviceptr src, size_t bytes) const;
    bool fill(CUdeviceptr dst, unsigned char value, size_t bytes) const;
    bool copy(CUdeviceptr dst, CUdeviceptr src, size_t bytes) const;
    bool sync() const;
    bool instantiate(CUgraphExec& exec, CUgraph graph) const;
    bool launch(CUgraphExec exec) const;
    void destroy(CUgraphExec exec, CUgraph graph) const;

    //! Captures what `step` enqueues on the stream (capture mode `mode`) into `graph`, then counts the graph's
    //! nodes by type and prints "graph: K kernel, C memcpy, M memset, O other nodes"; "" or what failed
    //! (`stepFailed` when the capture ended badly or the step returned nonzero).
    std::string captureStep(
        CUstreamCaptureMode mode, std::function<int32_t()> const& step, char const* stepFailed, CUgraph& graph) const;

private:
    template <typename F>
    F get(char const* name) const;

    char const* mProgram;
    void* mLib{nullptr};
    CUstream mStream{};
};

//! A linear tensor of `shape` and `type`.
nvinfer1::PluginTensorDesc tensorDesc(std::vector<int64_t> const& shape, nvinfer1::DataType type);

//! The bytes of a linear tensor of float32, int32, float16, bfloat16 or float8e4m3fn.
size_t tensorBytes(nvinfer1::PluginTensorDesc const& desc);

//! A new device buffer holding the file `path`, which must hold `bytes` bytes; "" or what failed.
std::string uploadFile(Driver const& cu, std::string const& path, size_t bytes, CUdeviceptr& out);

//! Writes `bytes` bytes of `data` to the file `path`.
void writeFile(std::string const& path, void const* data, size_t bytes);

//! The creator named `name` of the library at `path`, loaded with dlopen; nullptr (and `why`) when none.
nvinfer1::IPluginCreatorV3One* findCreator(char const* path, char const* name, std::string& why);

//! Configures `built` through its build capability for one fixed shape (min = opt = max: the descriptors'
//! dims), as TensorRT builds an engine, and asks its workspace size; "" or what failed.
std::string configure(nvinfer1::IPluginV3* built, std::vector<nvinfer1::PluginTensorDesc> const& in,
    std::vector<nvinfer1::PluginTensorDesc> const& out, size_t& workspaceBytes);

//! A resource context without allocator or error recorder, as the checks attach the plugin to.
struct Context : nvinfer1::IPluginResourceContext
{
    nvinfer1::IGpuAllocator* getGpuAllocator() const noexcept override { return nullptr; }
    nvinfer1::IErrorRecorder* getErrorRecorder() const noexcept override { return nullptr; }
};

//! What TensorRT runs: a copy of `built` attached to `context` (in `attached`, the caller deletes it) with
//! its shapes set (onShapeChange); its runtime capability, or nullptr and `why`.
nvinfer1::IPluginV3OneRuntime* attach(nvinfer1::IPluginV3* built, Context& context,
    std::vector<nvinfer1::PluginTensorDesc> const& in, std::vector<nvinfer1::PluginTensorDesc> const& out,
    nvinfer1::IPluginV3*& attached, std::string& why);

//! Device addresses as enqueue takes them.
std::vector<void const*> addresses(std::vector<CUdeviceptr> const& buffers);

} // namespace gpu
