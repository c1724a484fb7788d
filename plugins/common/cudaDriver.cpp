/*
 * The CUDA driver entry points libmla_plugin.so uses (itself and the generated kernels source),
 * resolved at first use from libcuda.so.1 with dlopen/dlsym instead of linking -lcuda.
 *
 * Why: the library then loads on machines without an NVIDIA driver (TensorRT-RTX's ONNX parser
 * creates the plugin on CPU-only CI machines), and on a GPU machine it binds to the driver the
 * process already has loaded. These symbols are local to the library (exports.map), so they never
 * interpose on the application's own libcuda calls. A function missing here is a link error of
 * libmla_plugin.so (-Wl,--no-undefined): add it below with the signature from cuda.h.
 */
#include <cuda.h>

#include <dlfcn.h>

namespace
{
void* driverLibrary() noexcept
{
    static void* const handle = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    return handle;
}

void* driverSymbol(char const* name) noexcept
{
    void* const handle = driverLibrary();
    return handle != nullptr ? dlsym(handle, name) : nullptr;
}
} // namespace

#define MLA_STR2(x) #x
#define MLA_STR(x) MLA_STR2(x)
// Defines `name` (after cuda.h's renaming, e.g. cuMemcpyDtoDAsync -> cuMemcpyDtoDAsync_v2) as a
// forwarder to the driver's symbol of that name; CUDA_ERROR_NOT_INITIALIZED without a driver.
#define MLA_FORWARD(name, params, args)                                                                                \
    extern "C" CUresult CUDAAPI name params                                                                            \
    {                                                                                                                  \
        using Fn = CUresult(CUDAAPI*) params;                                                                          \
        static Fn const fn = reinterpret_cast<Fn>(driverSymbol(MLA_STR(name)));                                        \
        return fn != nullptr ? fn args : CUDA_ERROR_NOT_INITIALIZED;                                                   \
    }

MLA_FORWARD(cuInit, (unsigned int flags), (flags))
MLA_FORWARD(cuDriverGetVersion, (int* version), (version))
MLA_FORWARD(cuCtxGetCurrent, (CUcontext * ctx), (ctx))
MLA_FORWARD(cuCtxGetDevice, (CUdevice * device), (device))
MLA_FORWARD(cuDeviceGet, (CUdevice * device, int ordinal), (device, ordinal))
MLA_FORWARD(cuDeviceGetAttribute, (int* value, CUdevice_attribute attrib, CUdevice dev), (value, attrib, dev))
MLA_FORWARD(cuModuleLoadData, (CUmodule * module, void const* image), (module, image))
MLA_FORWARD(cuModuleLoadDataEx,
    (CUmodule * module, void const* image, unsigned int numOptions, CUjit_option* options, void** optionValues),
    (module, image, numOptions, options, optionValues))
MLA_FORWARD(cuModuleGetFunction, (CUfunction * hfunc, CUmodule hmod, char const* name), (hfunc, hmod, name))
MLA_FORWARD(cuModuleUnload, (CUmodule hmod), (hmod))
MLA_FORWARD(cuLaunchKernel,
    (CUfunction f, unsigned int gridX, unsigned int gridY, unsigned int gridZ, unsigned int blockX, unsigned int blockY,
        unsigned int blockZ, unsigned int sharedMemBytes, CUstream stream, void** params, void** extra),
    (f, gridX, gridY, gridZ, blockX, blockY, blockZ, sharedMemBytes, stream, params, extra))
MLA_FORWARD(cuLaunchKernelEx, (CUlaunchConfig const* config, CUfunction f, void** params, void** extra),
    (config, f, params, extra))
MLA_FORWARD(cuFuncSetAttribute, (CUfunction f, CUfunction_attribute attrib, int value), (f, attrib, value))
MLA_FORWARD(cuFuncGetAttribute, (int* value, CUfunction_attribute attrib, CUfunction f), (value, attrib, f))
MLA_FORWARD(cuFuncSetCacheConfig, (CUfunction f, CUfunc_cache config), (f, config))
MLA_FORWARD(cuMemcpyDtoDAsync, (CUdeviceptr dst, CUdeviceptr src, size_t bytes, CUstream stream),
    (dst, src, bytes, stream))
MLA_FORWARD(cuMemsetD8Async, (CUdeviceptr dst, unsigned char value, size_t n, CUstream stream), (dst, value, n, stream))
MLA_FORWARD(
    cuMemsetD32Async, (CUdeviceptr dst, unsigned int value, size_t n, CUstream stream), (dst, value, n, stream))
MLA_FORWARD(cuStreamGetCtx, (CUstream stream, CUcontext* ctx), (stream, ctx))
MLA_FORWARD(cuOccupancyMaxActiveBlocksPerMultiprocessor,
    (int* numBlocks, CUfunction f, int blockSize, size_t dynamicSmem), (numBlocks, f, blockSize, dynamicSmem))
MLA_FORWARD(cuDeviceGetCount, (int* count), (count))
MLA_FORWARD(cuCtxPushCurrent, (CUcontext ctx), (ctx))
MLA_FORWARD(cuCtxPopCurrent, (CUcontext * ctx), (ctx))
MLA_FORWARD(cuModuleGetGlobal, (CUdeviceptr * dptr, size_t* bytes, CUmodule hmod, char const* name),
    (dptr, bytes, hmod, name))
MLA_FORWARD(cuLaunchCooperativeKernel,
    (CUfunction f, unsigned int gridX, unsigned int gridY, unsigned int gridZ, unsigned int blockX, unsigned int blockY,
        unsigned int blockZ, unsigned int sharedMemBytes, CUstream stream, void** params),
    (f, gridX, gridY, gridZ, blockX, blockY, blockZ, sharedMemBytes, stream, params))
MLA_FORWARD(cuGetErrorString, (CUresult error, char const** str), (error, str))

// Also answers without a driver, so that error messages can say why.
extern "C" CUresult CUDAAPI cuGetErrorName(CUresult error, char const** str)
{
    using Fn = CUresult(CUDAAPI*)(CUresult, char const**);
    static Fn const fn = reinterpret_cast<Fn>(driverSymbol("cuGetErrorName"));
    if (fn != nullptr)
    {
        return fn(error, str);
    }
    if (str != nullptr)
    {
        *str = "CUDA driver library libcuda.so.1 not found";
    }
    return CUDA_SUCCESS;
}
