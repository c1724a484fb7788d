/*
 * The BlockFp8MatMul AOT kernels as libmla_plugin.so ships them (fp8Kernels.h), run on a GPU without TensorRT or
 * Triton, for the GPU tests (tests/test_fp8_kernels_aot.py compares the output with float64) and compute-sanitizer.
 *
 *   fp8_kernels_run IN OUT [--iters N]
 *
 * IN:  int64 header {groups, rows, n, k, dtype (DataType value)}, then input [G, M, K] T, weight [G, N, K] float8e4m3fn
 *      bytes, scale_inv [G, ceil(N/128), ceil(K/128)] float32, all little-endian and packed.
 * OUT: output [G, M, N] T. Prints one JSON line: the device arch, the image run (arch, PTX or cubin), workspace
 *      bytes and, with --iters, the median microseconds of N more launches (CUDA events).
 * Exits 77 when no CUDA driver or device is present, 1 on any failure (with one line saying which).
 * The driver is opened with dlopen (the kernels' own calls go through common/cudaDriver.cpp's forwarders).
 */
#include "fp8Kernels.h"
#include "mlaKernelsTables.h"

#include <cuda.h>
#include <dlfcn.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

namespace
{
namespace k = mla::kernels;

//! The driver calls this program makes itself, from libcuda.so.1.
struct Driver
{
    void* lib{dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL)};
    template <typename F>
    F get(char const* name) const
    {
        return lib != nullptr ? reinterpret_cast<F>(dlsym(lib, name)) : nullptr;
    }
    CUresult (*init)(unsigned){get<CUresult (*)(unsigned)>("cuInit")};
    CUresult (*deviceGet)(CUdevice*, int){get<CUresult (*)(CUdevice*, int)>("cuDeviceGet")};
    CUresult (*retain)(CUcontext*, CUdevice){get<CUresult (*)(CUcontext*, CUdevice)>("cuDevicePrimaryCtxRetain")};
    CUresult (*setCurrent)(CUcontext){get<CUresult (*)(CUcontext)>("cuCtxSetCurrent")};
    CUresult (*alloc)(CUdeviceptr*, size_t){get<CUresult (*)(CUdeviceptr*, size_t)>("cuMemAlloc_v2")};
    CUresult (*release)(CUdeviceptr){get<CUresult (*)(CUdeviceptr)>("cuMemFree_v2")};
    CUresult (*htod)(CUdeviceptr, void const*, size_t){get<CUresult (*)(CUdeviceptr, void const*, size_t)>(
        "cuMemcpyHtoD_v2")};
    CUresult (*dtoh)(void*, CUdeviceptr, size_t){get<CUresult (*)(void*, CUdeviceptr, size_t)>("cuMemcpyDtoH_v2")};
    CUresult (*sync)(){get<CUresult (*)()>("cuCtxSynchronize")};
    CUresult (*eventCreate)(CUevent*, unsigned){get<CUresult (*)(CUevent*, unsigned)>("cuEventCreate")};
    CUresult (*eventRecord)(CUevent, CUstream){get<CUresult (*)(CUevent, CUstream)>("cuEventRecord")};
    CUresult (*eventSync)(CUevent){get<CUresult (*)(CUevent)>("cuEventSynchronize")};
    CUresult (*elapsed)(float*, CUevent, CUevent){get<CUresult (*)(float*, CUevent, CUevent)>("cuEventElapsedTime")};

    bool complete() const
    {
        return lib != nullptr && init && deviceGet && retain && setCurrent && alloc && release && htod && dtoh && sync
            && eventCreate && eventRecord && eventSync && elapsed;
    }
};

//! A device allocation freed on scope exit (at least 256 bytes, so that no pointer is null).
struct Buffer
{
    Driver const& cu;
    CUdeviceptr ptr{0};
    Buffer(Driver const& d, size_t bytes)
        : cu(d)
    {
        if (cu.alloc(&ptr, std::max<size_t>(bytes, 256)) != CUDA_SUCCESS)
        {
            ptr = 0;
        }
    }
    ~Buffer()
    {
        if (ptr != 0)
        {
            cu.release(ptr);
        }
    }
    Buffer(Buffer const&) = delete;
    Buffer& operator=(Buffer const&) = delete;
    void* get() const { return reinterpret_cast<void*>(ptr); }
};

int fail(char const* what)
{
    std::fprintf(stderr, "fp8_kernels_run: %s\n", what);
    return 1;
}

int64_t cdiv(int64_t a, int64_t b)
{
    return (a + b - 1) / b;
}
} // namespace

int main(int argc, char** argv)
{
    if (argc != 3 && !(argc == 5 && std::string(argv[3]) == "--iters"))
    {
        std::fprintf(stderr, "usage: fp8_kernels_run IN OUT [--iters N]\n");
        return 2;
    }
    int32_t const iters = argc == 5 ? std::atoi(argv[4]) : 0;
    std::ifstream in(argv[1], std::ios::binary);
    int64_t header[5]{};
    if (!in.read(reinterpret_cast<char*>(header), sizeof(header)))
    {
        return fail("cannot read the header of IN");
    }
    k::fp8::Dims const dims{header[0], header[1], static_cast<int32_t>(header[2]), static_cast<int32_t>(header[3]),
        128, static_cast<k::DataType>(header[4])};
    char const* why = nullptr;
    if (!k::fp8::supported(dims, &why))
    {
        return fail(why);
    }
    size_t const elem = dims.dtype == k::DataType::kFLOAT32 ? 4 : 2;
    size_t const xBytes = size_t(dims.groups * dims.rows * dims.k) * elem;
    size_t const wBytes = size_t(dims.groups) * dims.n * dims.k;
    size_t const sBytes = size_t(dims.groups * cdiv(dims.n, 128) * cdiv(dims.k, 128)) * 4;
    size_t const yBytes = size_t(dims.groups * dims.rows * dims.n) * elem;
    std::vector<char> host(xBytes + wBytes + sBytes);
    if (!in.read(host.data(), static_cast<std::streamsize>(host.size())))
    {
        return fail("IN is shorter than its header says");
    }

    Driver cu;
    CUdevice device = 0;
    CUcontext context = nullptr;
    if (!cu.complete() || cu.init(0) != CUDA_SUCCESS || cu.deviceGet(&device, 0) != CUDA_SUCCESS)
    {
        std::fprintf(stderr, "fp8_kernels_run: no CUDA driver or device\n");
        return 77;
    }
    if (cu.retain(&context, device) != CUDA_SUCCESS || cu.setCurrent(context) != CUDA_SUCCESS)
    {
        return fail("cannot make a context current");
    }
    size_t const wsBytes = k::fp8::workspaceBytes(dims);
    Buffer x(cu, xBytes), w(cu, wBytes), s(cu, sBytes), y(cu, yBytes), ws(cu, wsBytes);
    if (!x.ptr || !w.ptr || !s.ptr || !y.ptr || !ws.ptr)
    {
        return fail("device allocation failed");
    }
    if (cu.htod(x.ptr, host.data(), xBytes) != CUDA_SUCCESS || cu.htod(w.ptr, host.data() + xBytes, wBytes)
        || cu.htod(s.ptr, host.data() + xBytes + wBytes, sBytes))
    {
        return fail("copy to the device failed");
    }
    k::Module module;
    if (module.load(k::fp8::imageSet()) != CUDA_SUCCESS)
    {
        return fail("loading the fp8 kernel module failed");
    }
    k::fp8::Tensors const t{x.get(), w.get(), static_cast<float const*>(s.get()), y.get()};
    if (k::fp8::launch(module, dims, t, ws.get(), nullptr) != CUDA_SUCCESS || cu.sync() != CUDA_SUCCESS)
    {
        module.unload();
        return fail("launch failed");
    }
    std::vector<char> out(yBytes);
    if (cu.dtoh(out.data(), y.ptr, yBytes) != CUDA_SUCCESS)
    {
        module.unload();
        return fail("copy from the device failed");
    }
    std::vector<float> times;
    CUevent start = nullptr, stop = nullptr;
    if (iters > 0 && cu.eventCreate(&start, 0) == CUDA_SUCCESS && cu.eventCreate(&stop, 0) == CUDA_SUCCESS)
    {
        for (int32_t i = 0; i < iters; ++i)
        {
            float ms = 0.0F;
            cu.eventRecord(start, nullptr);
            CUresult const r = k::fp8::launch(module, dims, t, ws.get(), nullptr);
            cu.eventRecord(stop, nullptr);
            if (r != CUDA_SUCCESS || cu.eventSync(stop) != CUDA_SUCCESS || cu.elapsed(&ms, start, stop))
            {
                module.unload();
                return fail("timed launch failed");
            }
            times.push_back(ms);
        }
        std::sort(times.begin(), times.end());
    }
    k::tables::ArchImage const* image = module.image();
    std::printf("{\"arch\": %d, \"image_arch\": %d, \"image_ptx\": %s, \"workspace_bytes\": %zu, \"median_us\": %.3f}\n",
        module.arch(), image->arch, image->isPtx ? "true" : "false", wsBytes,
        times.empty() ? 0.0 : 1000.0 * times[times.size() / 2]);
    module.unload();
    std::ofstream file(argv[2], std::ios::binary);
    if (!file.write(out.data(), static_cast<std::streamsize>(out.size())))
    {
        return fail("cannot write OUT");
    }
    return 0;
}
