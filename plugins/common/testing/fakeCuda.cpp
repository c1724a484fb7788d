/*
 * Recording stand-in for the CUDA driver (see fakeCuda.h). Defines the driver entry points the
 * plugin and the kernels' host code call, with cuda.h's signatures (and its _v2 renamings).
 */
#include "fakeCuda.h"

#include <algorithm>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <set>

namespace fake
{
namespace
{
struct State
{
    std::vector<Event> events;
    std::map<std::string, std::vector<std::pair<int32_t, CUresult>>> failures; // entry point -> (countdown, result)
    std::map<std::string, std::vector<uint32_t>> signatures;
    std::deque<std::string> functionNames; // CUfunction handles point at these
    std::set<CUmodule> live;
    int32_t arch{90};
    int32_t numSms{132};
    bool noContext{false};
    uintptr_t nextModule{0x1000};
};

State& state()
{
    static State s;
    return s;
}

// The result the next call of `entry` must return (CUDA_SUCCESS unless a failure is armed).
CUresult injected(char const* entry)
{
    auto it = state().failures.find(entry);
    if (it == state().failures.end())
    {
        return CUDA_SUCCESS;
    }
    CUresult result = CUDA_SUCCESS;
    for (auto& armed : it->second)
    {
        if (armed.first == 0 && result == CUDA_SUCCESS)
        {
            result = armed.second;
        }
        --armed.first;
    }
    return result;
}

std::string functionName(CUfunction f)
{
    return f != nullptr ? *reinterpret_cast<std::string const*>(f) : std::string("<null>");
}
} // namespace

std::vector<Event> const& events()
{
    return state().events;
}

std::vector<Event> eventsOf(Kind kind)
{
    std::vector<Event> out;
    for (Event const& e : state().events)
    {
        if (e.kind == kind)
        {
            out.push_back(e);
        }
    }
    return out;
}

std::vector<Event> eventsSince(size_t first)
{
    auto const& all = state().events;
    return std::vector<Event>(all.begin() + static_cast<long>(std::min(first, all.size())), all.end());
}

void reset()
{
    State& s = state();
    s.events.clear();
    s.failures.clear();
    s.live.clear();
    s.arch = 90;
    s.numSms = 132;
    s.noContext = false;
}

void setDevice(int32_t arch, int32_t numSms)
{
    state().arch = arch;
    state().numSms = numSms;
}

void failCall(std::string const& entryPoint, CUresult result, int32_t nth)
{
    state().failures[entryPoint].emplace_back(nth, result);
}

void setNoContext(bool noContext)
{
    state().noContext = noContext;
}

void setSignature(std::string const& name, std::vector<uint32_t> const& argSizes)
{
    state().signatures[name] = argSizes;
}

int32_t liveModules()
{
    return static_cast<int32_t>(state().live.size());
}

} // namespace fake

using fake::Event;
using fake::Kind;
using fake::state;

extern "C"
{

CUresult CUDAAPI cuInit(unsigned int /*flags*/)
{
    return fake::injected("cuInit");
}

CUresult CUDAAPI cuDriverGetVersion(int* version)
{
    *version = 13000;
    return fake::injected("cuDriverGetVersion");
}

CUresult CUDAAPI cuCtxGetCurrent(CUcontext* ctx)
{
    *ctx = state().noContext ? nullptr : reinterpret_cast<CUcontext>(0xC0);
    return fake::injected("cuCtxGetCurrent");
}

CUresult CUDAAPI cuCtxGetDevice(CUdevice* device)
{
    if (state().noContext)
    {
        return CUDA_ERROR_INVALID_CONTEXT;
    }
    *device = 0;
    return fake::injected("cuCtxGetDevice");
}

CUresult CUDAAPI cuDeviceGet(CUdevice* device, int /*ordinal*/)
{
    *device = 0;
    return fake::injected("cuDeviceGet");
}

CUresult CUDAAPI cuDeviceGetAttribute(int* value, CUdevice_attribute attrib, CUdevice /*dev*/)
{
    switch (attrib)
    {
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: *value = state().arch / 10; break;
    case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: *value = state().arch % 10; break;
    case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: *value = state().numSms; break;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: *value = 227 * 1024; break;
    case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK: *value = 48 * 1024; break;
    default: *value = 0; break;
    }
    return fake::injected("cuDeviceGetAttribute");
}

CUresult CUDAAPI cuModuleLoadData(CUmodule* module, void const* image)
{
    CUresult const r = fake::injected("cuModuleLoadData");
    Event e{Kind::kModuleLoad};
    e.image = image;
    if (r == CUDA_SUCCESS)
    {
        *module = reinterpret_cast<CUmodule>(state().nextModule++);
        e.module = *module;
        state().live.insert(*module);
    }
    state().events.push_back(e);
    return r;
}

CUresult CUDAAPI cuModuleLoadDataEx(
    CUmodule* module, void const* image, unsigned int /*n*/, CUjit_option* /*options*/, void** /*values*/)
{
    return cuModuleLoadData(module, image);
}

CUresult CUDAAPI cuModuleGetFunction(CUfunction* hfunc, CUmodule hmod, char const* name)
{
    CUresult const r = fake::injected("cuModuleGetFunction");
    Event e{Kind::kGetFunction};
    e.name = name;
    e.module = hmod;
    state().events.push_back(e);
    if (r == CUDA_SUCCESS)
    {
        state().functionNames.emplace_back(name);
        *hfunc = reinterpret_cast<CUfunction>(&state().functionNames.back());
    }
    return r;
}

CUresult CUDAAPI cuModuleUnload(CUmodule hmod)
{
    Event e{Kind::kModuleUnload};
    e.module = hmod;
    state().events.push_back(e);
    if (state().live.erase(hmod) == 0)
    {
        return CUDA_ERROR_INVALID_HANDLE;
    }
    return fake::injected("cuModuleUnload");
}

CUresult CUDAAPI cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
    unsigned int by, unsigned int bz, unsigned int shared, CUstream stream, void** params, void** /*extra*/)
{
    Event e{Kind::kLaunch};
    e.name = fake::functionName(f);
    e.grid[0] = gx;
    e.grid[1] = gy;
    e.grid[2] = gz;
    e.block[0] = bx;
    e.block[1] = by;
    e.block[2] = bz;
    e.sharedMem = shared;
    e.stream = stream;
    auto sig = state().signatures.find(e.name);
    if (sig != state().signatures.end() && params != nullptr)
    {
        for (size_t i = 0; i < sig->second.size(); ++i)
        {
            auto const* bytes = static_cast<uint8_t const*>(params[i]);
            e.args.emplace_back(bytes, bytes + sig->second[i]);
        }
    }
    state().events.push_back(e);
    return fake::injected("cuLaunchKernel");
}

CUresult CUDAAPI cuLaunchKernelEx(CUlaunchConfig const* config, CUfunction f, void** params, void** extra)
{
    return cuLaunchKernel(f, config->gridDimX, config->gridDimY, config->gridDimZ, config->blockDimX,
        config->blockDimY, config->blockDimZ, config->sharedMemBytes, config->hStream, params, extra);
}

CUresult CUDAAPI cuFuncSetAttribute(CUfunction f, CUfunction_attribute attrib, int value)
{
    Event e{Kind::kFuncSetAttribute};
    e.name = fake::functionName(f);
    e.bytes = static_cast<uint64_t>(value);
    e.src = static_cast<uint64_t>(attrib);
    state().events.push_back(e);
    return fake::injected("cuFuncSetAttribute");
}

CUresult CUDAAPI cuFuncGetAttribute(int* value, CUfunction_attribute /*attrib*/, CUfunction /*f*/)
{
    *value = 0;
    return fake::injected("cuFuncGetAttribute");
}

CUresult CUDAAPI cuFuncSetCacheConfig(CUfunction /*f*/, CUfunc_cache /*config*/)
{
    return fake::injected("cuFuncSetCacheConfig");
}

CUresult CUDAAPI cuMemcpyDtoDAsync(CUdeviceptr dst, CUdeviceptr src, size_t bytes, CUstream stream)
{
    Event e{Kind::kMemcpy};
    e.dst = dst;
    e.src = src;
    e.bytes = bytes;
    e.stream = stream;
    state().events.push_back(e);
    return fake::injected("cuMemcpyDtoDAsync");
}

CUresult CUDAAPI cuMemsetD8Async(CUdeviceptr dst, unsigned char /*value*/, size_t n, CUstream stream)
{
    Event e{Kind::kMemset};
    e.dst = dst;
    e.bytes = n;
    e.stream = stream;
    state().events.push_back(e);
    return fake::injected("cuMemsetD8Async");
}

CUresult CUDAAPI cuMemsetD32Async(CUdeviceptr dst, unsigned int /*value*/, size_t n, CUstream stream)
{
    Event e{Kind::kMemset};
    e.dst = dst;
    e.bytes = 4 * n;
    e.stream = stream;
    state().events.push_back(e);
    return fake::injected("cuMemsetD32Async");
}

CUresult CUDAAPI cuStreamGetCtx(CUstream /*stream*/, CUcontext* ctx)
{
    *ctx = reinterpret_cast<CUcontext>(0xC0);
    return fake::injected("cuStreamGetCtx");
}

CUresult CUDAAPI cuOccupancyMaxActiveBlocksPerMultiprocessor(
    int* numBlocks, CUfunction /*f*/, int /*blockSize*/, size_t /*smem*/)
{
    *numBlocks = 1;
    return fake::injected("cuOccupancyMaxActiveBlocksPerMultiprocessor");
}

CUresult CUDAAPI cuDeviceGetCount(int* count)
{
    *count = 1;
    return fake::injected("cuDeviceGetCount");
}

CUresult CUDAAPI cuCtxPushCurrent(CUcontext /*ctx*/)
{
    return fake::injected("cuCtxPushCurrent");
}

CUresult CUDAAPI cuCtxPopCurrent(CUcontext* ctx)
{
    if (ctx != nullptr)
    {
        *ctx = reinterpret_cast<CUcontext>(0xC0);
    }
    return fake::injected("cuCtxPopCurrent");
}

CUresult CUDAAPI cuModuleGetGlobal(CUdeviceptr* dptr, size_t* bytes, CUmodule /*hmod*/, char const* /*name*/)
{
    if (dptr != nullptr)
    {
        *dptr = 0xD000;
    }
    if (bytes != nullptr)
    {
        *bytes = 0;
    }
    return fake::injected("cuModuleGetGlobal");
}

CUresult CUDAAPI cuLaunchCooperativeKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
    unsigned int bx, unsigned int by, unsigned int bz, unsigned int shared, CUstream stream, void** params)
{
    return cuLaunchKernel(f, gx, gy, gz, bx, by, bz, shared, stream, params, nullptr);
}

CUresult CUDAAPI cuGetErrorName(CUresult error, char const** str)
{
    static std::map<int, std::string> names;
    std::string& name = names[static_cast<int>(error)];
    name = "FAKE_CUDA_ERROR_" + std::to_string(static_cast<int>(error));
    *str = name.c_str();
    return CUDA_SUCCESS;
}

CUresult CUDAAPI cuGetErrorString(CUresult error, char const** str)
{
    return cuGetErrorName(error, str);
}

} // extern "C"
