/*
 * The AOT kernels as libmla_plugin.so ships them, driven without TensorRT or Triton: a short driver for
 * compute-sanitizer and a benchmark (both run by `make gpu-check`, benchmarks/gpu_check.py).
 *
 *   mla_kernels_bench --check        a few decode and prefill calls (float16 and bfloat16, with and without
 *                                    splits, ragged cache lengths) on device buffers; checks every output is
 *                                    finite and every cache row outside the new ones is unchanged; then a few
 *                                    DeepseekMoE calls (V2 and V3 routing, decode and prefill sizes, several
 *                                    chunks): outputs finite and two runs bit-identical; exit 0/1
 *   mla_kernels_bench --bench        bfloat16, DeepSeek dims (Dc 512, Dr 64): decode with H in {128, 16},
 *                                    B in {1, 8, 64}, context in {4096, 65536}, and prefill of S = 4096 from an
 *                                    empty cache; one JSON object per line: phase, heads, batch, context,
 *                                    new_tokens, median_us, cache_bytes (decode) or flops (prefill)
 *
 * Exits 77 when no CUDA driver or device is present. The driver is opened with dlopen (the kernels' own
 * calls go through the plugin's forwarders, common/cudaDriver.cpp), so the program builds everywhere.
 */
#include "mlaKernels.h"
#include "moeKernels.h"

#include <cuda.h>
#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <cstdint>
#include <cstdio>
#include <cstring>
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
};

//! float -> float16 / bfloat16 bits (round to nearest even; the inputs are finite and moderate).
uint16_t toBits(float value, k::DataType dtype)
{
    uint32_t bits = 0;
    std::memcpy(&bits, &value, 4);
    if (dtype == k::DataType::kBFLOAT16)
    {
        return static_cast<uint16_t>((bits + 0x7FFFU + ((bits >> 16) & 1U)) >> 16);
    }
    uint32_t const sign = (bits >> 16) & 0x8000U;
    int32_t const exponent = static_cast<int32_t>((bits >> 23) & 0xFFU) - 127 + 15;
    uint32_t const mantissa = bits & 0x7FFFFFU;
    if (exponent <= 0)
    {
        return static_cast<uint16_t>(sign);
    }
    return static_cast<uint16_t>(sign | (static_cast<uint32_t>(exponent) << 10) | (mantissa >> 13));
}

float fromBits(uint16_t bits, k::DataType dtype)
{
    uint32_t out = 0;
    if (dtype == k::DataType::kBFLOAT16)
    {
        out = static_cast<uint32_t>(bits) << 16;
    }
    else
    {
        uint32_t const sign = (bits & 0x8000U) << 16;
        uint32_t const exponent = (bits >> 10) & 0x1FU;
        uint32_t const mantissa = bits & 0x3FFU;
        out = exponent == 0 ? sign : exponent == 31 ? (sign | 0x7F800000U | (mantissa << 13))
                                                    : (sign | ((exponent - 15 + 127) << 23) | (mantissa << 13));
    }
    float value = 0.0F;
    std::memcpy(&value, &out, 4);
    return value;
}

struct Buffer
{
    Driver const* cu{nullptr};
    CUdeviceptr ptr{0};
    size_t bytes{0};
    Buffer(Driver const& d, size_t n)
        : cu(&d)
        , bytes(std::max<size_t>(n, 256))
    {
        if (cu->alloc(&ptr, bytes) != CUDA_SUCCESS)
        {
            ptr = 0;
        }
    }
    ~Buffer()
    {
        if (ptr != 0)
        {
            cu->release(ptr);
        }
    }
    Buffer(Buffer const&) = delete;
    Buffer& operator=(Buffer const&) = delete;
    void* get() const { return reinterpret_cast<void*>(ptr); }
};

//! One call's device buffers, filled with deterministic values; `context` cache rows already valid.
struct Call
{
    k::Dims dims;
    std::vector<uint16_t> cacheHost;   //!< the cache as filled, to find rows the call changed
    std::vector<int32_t> seqlensHost;  //!< each sequence's valid rows before the call
    Buffer qLatent, qPe, kvLatent, kPe, cache, seqlens, rope, out, workspace;

    Call(Driver const& cu, k::Dims d, int32_t context, int32_t numSms)
        : dims(d)
        , qLatent(cu, size_t(d.batch) * d.newTokens * d.numHeads * d.kvLoraRank * 2)
        , qPe(cu, size_t(d.batch) * d.newTokens * d.numHeads * d.ropeDim * 2)
        , kvLatent(cu, size_t(d.batch) * d.newTokens * d.kvLoraRank * 2)
        , kPe(cu, size_t(d.batch) * d.newTokens * d.ropeDim * 2)
        , cache(cu, size_t(d.batch) * d.maxSeqLen * (d.kvLoraRank + d.ropeDim) * 2)
        , seqlens(cu, size_t(d.batch) * 4)
        , rope(cu, size_t(d.maxSeqLen) * d.ropeDim * 4)
        , out(cu, size_t(d.batch) * d.newTokens * d.numHeads * d.kvLoraRank * 2)
        , workspace(cu, k::workspaceBytes(d, numSms))
    {
        uint32_t state = 12345U;
        auto next = [&state]() {
            state = state * 1664525U + 1013904223U;
            return static_cast<float>((state >> 8) & 0xFFFFU) / 32768.0F - 1.0F;
        };
        // Up to 16 MiB of random values; a larger buffer repeats them (the benchmark's caches reach GBs).
        auto fill = [&](Buffer const& b, std::vector<uint16_t>* keep) {
            size_t const block = std::min<size_t>(b.bytes, size_t(16) << 20);
            std::vector<uint16_t> host(block / 2);
            for (auto& v : host)
            {
                v = toBits(next(), d.dtype);
            }
            for (size_t at = 0; at < b.bytes; at += block)
            {
                cu.htod(b.ptr + at, host.data(), std::min(block, b.bytes - at));
            }
            if (keep != nullptr && block == b.bytes)
            {
                *keep = std::move(host);
            }
        };
        for (Buffer const* b : {&qLatent, &qPe, &kvLatent, &kPe})
        {
            fill(*b, nullptr);
        }
        fill(cache, &cacheHost);
        std::vector<int32_t> lengths(size_t(d.batch));
        for (int32_t b = 0; b < d.batch; ++b)
        {
            lengths[size_t(b)] = std::max(0, std::min(context - 37 * b, d.maxSeqLen - d.newTokens)); // ragged
        }
        cu.htod(seqlens.ptr, lengths.data(), lengths.size() * 4);
        std::vector<float> table(size_t(d.maxSeqLen) * d.ropeDim);
        for (int32_t p = 0; p < d.maxSeqLen; ++p)
        {
            for (int32_t i = 0; i < d.ropeDim / 2; ++i)
            {
                double const angle = p * std::pow(10000.0, -2.0 * i / d.ropeDim);
                table[size_t(p) * d.ropeDim + i] = static_cast<float>(std::cos(angle));
                table[size_t(p) * d.ropeDim + d.ropeDim / 2 + i] = static_cast<float>(std::sin(angle));
            }
        }
        cu.htod(rope.ptr, table.data(), table.size() * 4);
        seqlensHost = lengths;
    }

    bool ready() const
    {
        for (Buffer const* b : {&qLatent, &qPe, &kvLatent, &kPe, &cache, &seqlens, &rope, &out, &workspace})
        {
            if (b->ptr == 0)
            {
                return false;
            }
        }
        return true;
    }

    CUresult launch(k::Module const& module) const
    {
        k::Tensors t{qLatent.get(), qPe.get(), kvLatent.get(), kPe.get(), cache.get(),
            static_cast<int32_t const*>(seqlens.get()), static_cast<float const*>(rope.get()), out.get()};
        return k::launch(module, dims, t, workspace.get(), nullptr);
    }
};

//! --check: outputs finite, cache rows outside [len, len + S) unchanged, per call.
int check(Driver const& cu, k::Module const& module)
{
    struct Case
    {
        int32_t batch, newTokens, heads, dc, dr, smax, context;
        k::DataType dtype;
    };
    Case const cases[] = {{3, 1, 16, 512, 64, 320, 300, k::DataType::kBFLOAT16},
        {2, 1, 128, 512, 64, 4097, 4000, k::DataType::kFLOAT16}, {1, 7, 16, 32, 8, 80, 60, k::DataType::kBFLOAT16},
        {2, 64, 16, 512, 64, 256, 100, k::DataType::kBFLOAT16}, {1, 1, 128, 512, 64, 65, 64, k::DataType::kFLOAT16}};
    int failures = 0;
    for (Case const& c : cases)
    {
        k::Dims d{c.batch, c.newTokens, c.heads, c.dc, c.dr, c.smax, c.dtype, 0.07F};
        Call call(cu, d, c.context, module.numSms());
        if (!call.ready() || call.launch(module) != CUDA_SUCCESS || cu.sync() != CUDA_SUCCESS)
        {
            std::printf("check B=%d S=%d H=%d Dc=%d: launch failed\n", c.batch, c.newTokens, c.heads, c.dc);
            ++failures;
            continue;
        }
        std::vector<uint16_t> out(call.out.bytes / 2), cache(call.cache.bytes / 2);
        cu.dtoh(out.data(), call.out.ptr, call.out.bytes);
        cu.dtoh(cache.data(), call.cache.ptr, call.cache.bytes);
        size_t const outCount = size_t(c.batch) * c.newTokens * c.heads * c.dc;
        bool finite = true;
        for (size_t i = 0; i < outCount; ++i)
        {
            finite = finite && std::isfinite(fromBits(out[i], c.dtype));
        }
        size_t changed = 0;
        size_t const width = size_t(c.dc + c.dr);
        for (int32_t b = 0; b < c.batch; ++b)
        {
            for (int32_t row = 0; row < c.smax; ++row)
            {
                int32_t const len = call.seqlensHost[size_t(b)];
                if (row >= len && row < len + c.newTokens)
                {
                    continue;
                }
                size_t const at = (size_t(b) * c.smax + row) * width;
                changed += std::memcmp(&cache[at], &call.cacheHost[at], width * 2) != 0;
            }
        }
        std::printf("check B=%d S=%d H=%d Dc=%d: outputs %s, %zu untouched cache rows changed\n", c.batch,
            c.newTokens, c.heads, c.dc, finite ? "finite" : "NOT FINITE", changed);
        failures += (!finite || changed != 0) ? 1 : 0;
    }
    std::printf("%s: %d of %zu calls failed\n", failures == 0 ? "PASS" : "FAIL", failures, sizeof(cases) / sizeof(cases[0]));
    return failures == 0 ? 0 : 1;
}

//! --check, DeepseekMoE part: outputs finite, two runs of a call bit-identical (no atomics in the sums).
int checkMoe(Driver const& cu, k::Module const& module)
{
    namespace m = k::moe;
    struct Case
    {
        int64_t tokens;
        int32_t hidden, inter, experts, topK, nGroup, topkGroup, scoring, groupScore, useBias, normalize;
        float scale;
        k::DataType dtype;
    };
    Case const cases[] = {{1, 64, 32, 8, 2, 4, 2, 1, 1, 1, 1, 2.5F, k::DataType::kBFLOAT16},   // tiny-moe, decode
        {37, 64, 32, 8, 2, 4, 2, 1, 1, 1, 1, 2.5F, k::DataType::kFLOAT16},                    // tiny-moe, prefill
        {9, 2048, 1408, 64, 6, 1, 1, 0, 0, 0, 0, 1.0F, k::DataType::kBFLOAT16},              // V2-Lite greedy
        {m::chunkTokens() + 5, 256, 128, 16, 4, 4, 2, 1, 1, 1, 1, 2.5F, k::DataType::kBFLOAT16}}; // two chunks
    int failures = 0;
    uint32_t state = 777U;
    auto next = [&state]() {
        state = state * 1664525U + 1013904223U;
        return static_cast<float>((state >> 8) & 0xFFFFU) / 32768.0F - 1.0F;
    };
    for (Case const& c : cases)
    {
        m::Dims d{c.tokens, c.hidden, c.inter, c.experts, c.topK, c.nGroup, c.topkGroup, c.scoring, c.groupScore,
            c.useBias, c.normalize, c.scale, c.dtype, /*fp8Experts=*/0, /*localExperts: all*/ 0, /*firstExpert=*/0};
        char const* why = nullptr;
        if (!m::supported(d, &why))
        {
            std::printf("check-moe T=%lld d=%d: not supported (%s)\n", static_cast<long long>(c.tokens), c.hidden, why);
            ++failures;
            continue;
        }
        auto filled = [&](size_t count, bool halves, float scale) {
            std::vector<uint16_t> h(halves ? count : 0);
            std::vector<float> f(halves ? 0 : count);
            for (size_t i = 0; i < count; ++i)
            {
                if (halves)
                    h[i] = toBits(next() * scale, c.dtype);
                else
                    f[i] = next() * scale;
            }
            auto buffer = std::make_unique<Buffer>(cu, count * (halves ? 2 : 4));
            cu.htod(buffer->ptr, halves ? static_cast<void const*>(h.data()) : f.data(), count * (halves ? 2 : 4));
            return buffer;
        };
        size_t const t = static_cast<size_t>(c.tokens), e = size_t(c.experts), hid = size_t(c.hidden),
                     in = size_t(c.inter);
        auto hidden = filled(t * hid, true, 1.0F);
        auto router = filled(e * hid, false, 0.1F);
        auto bias = filled(e, false, 0.1F);
        auto gateUp = filled(e * 2 * in * hid, true, 0.05F);
        auto down = filled(e * hid * in, true, 0.05F);
        Buffer out(cu, t * hid * 2), workspace(cu, m::workspaceBytes(d));
        m::Tensors tensors{hidden->get(), static_cast<float const*>(router->get()),
            static_cast<float const*>(bias->get()), gateUp->get(), down->get(), out.get(), nullptr, nullptr};
        std::vector<uint16_t> first(t * hid), second(t * hid);
        bool ok = m::launch(module, d, tensors, workspace.get(), nullptr) == CUDA_SUCCESS && cu.sync() == CUDA_SUCCESS
            && cu.dtoh(first.data(), out.ptr, t * hid * 2) == CUDA_SUCCESS
            && m::launch(module, d, tensors, workspace.get(), nullptr) == CUDA_SUCCESS && cu.sync() == CUDA_SUCCESS
            && cu.dtoh(second.data(), out.ptr, t * hid * 2) == CUDA_SUCCESS;
        bool finite = ok;
        for (size_t i = 0; ok && i < first.size(); ++i)
        {
            finite = finite && std::isfinite(fromBits(first[i], c.dtype));
        }
        bool const same = ok && first == second;
        std::printf("check-moe T=%lld d=%d E=%d top_k=%d: %s, outputs %s, two runs %s\n",
            static_cast<long long>(c.tokens), c.hidden, c.experts, c.topK, ok ? "launched" : "LAUNCH FAILED",
            finite ? "finite" : "NOT FINITE", same ? "bit-identical" : "DIFFERENT");
        failures += (!ok || !finite || !same) ? 1 : 0;
    }
    std::printf("%s: %d of %zu DeepseekMoE calls failed\n", failures == 0 ? "PASS" : "FAIL", failures,
        sizeof(cases) / sizeof(cases[0]));
    return failures == 0 ? 0 : 1;
}

//! --bench: median microseconds of each call, one JSON object per line.
int bench(Driver const& cu, k::Module const& module)
{
    CUevent start{}, stop{};
    cu.eventCreate(&start, 0);
    cu.eventCreate(&stop, 0);
    auto time = [&](Call const& call) {
        for (int i = 0; i < 3; ++i)
        {
            call.launch(module);
        }
        std::vector<float> samples;
        for (int i = 0; i < 20; ++i)
        {
            cu.eventRecord(start, nullptr);
            call.launch(module);
            cu.eventRecord(stop, nullptr);
            cu.eventSync(stop);
            float ms = 0.0F;
            cu.elapsed(&ms, start, stop);
            samples.push_back(ms * 1000.0F);
        }
        std::sort(samples.begin(), samples.end());
        return samples[samples.size() / 2];
    };
    int const dc = 512, dr = 64;
    for (int heads : {128, 16})
    {
        for (int context : {4096, 65536})
        {
            for (int batch : {1, 8, 64})
            {
                k::Dims d{batch, 1, heads, dc, dr, context + 1, k::DataType::kBFLOAT16, 0.07F};
                Call call(cu, d, context, module.numSms());
                if (!call.ready())
                {
                    std::printf("{\"phase\": \"decode\", \"heads\": %d, \"batch\": %d, \"context\": %d, "
                                "\"skipped\": \"out of device memory\"}\n", heads, batch, context);
                    continue;
                }
                double const bytes = double(batch) * (context + 1) * (dc + dr) * 2;
                std::printf("{\"phase\": \"decode\", \"heads\": %d, \"batch\": %d, \"context\": %d, \"new_tokens\": 1, "
                            "\"median_us\": %.2f, \"cache_bytes\": %.0f}\n", heads, batch, context, time(call), bytes);
                std::fflush(stdout);
            }
        }
        int const tokens = 4096;
        k::Dims d{1, tokens, heads, dc, dr, tokens, k::DataType::kBFLOAT16, 0.07F};
        Call call(cu, d, 0, module.numSms());
        double const flops = 2.0 * heads * tokens * (tokens + 1) / 2.0 * (dc + dr + dc);
        std::printf("{\"phase\": \"prefill\", \"heads\": %d, \"batch\": 1, \"context\": 0, \"new_tokens\": %d, "
                    "\"median_us\": %.2f, \"flops\": %.0f}\n", heads, tokens, time(call), flops);
        std::fflush(stdout);
    }
    return 0;
}
} // namespace

int main(int argc, char** argv)
{
    std::string const mode = argc > 1 ? argv[1] : "";
    if (mode != "--check" && mode != "--bench")
    {
        std::fprintf(stderr, "usage: mla_kernels_bench --check | --bench\n");
        return 2;
    }
    Driver cu;
    CUdevice device{};
    CUcontext ctx{};
    if (cu.init == nullptr || cu.init(0) != CUDA_SUCCESS || cu.deviceGet(&device, 0) != CUDA_SUCCESS
        || cu.retain(&ctx, device) != CUDA_SUCCESS || cu.setCurrent(ctx) != CUDA_SUCCESS)
    {
        std::fprintf(stderr, "mla_kernels_bench: no CUDA driver or device\n");
        return 77;
    }
    k::Module module;
    if (CUresult r = module.load(); r != CUDA_SUCCESS)
    {
        std::fprintf(stderr, "mla_kernels_bench: loading the kernels failed (CUresult %d)\n", static_cast<int>(r));
        return 1;
    }
    std::printf("# sm_%d, %d SMs\n", module.arch(), module.numSms());
    int rc = mode == "--check" ? check(cu, module) : bench(cu, module);
    module.unload();
    if (mode == "--check")
    {
        k::Module moeModule;
        if (CUresult r = moeModule.load(k::moe::imageSet()); r != CUDA_SUCCESS)
        {
            std::fprintf(stderr, "mla_kernels_bench: loading the DeepseekMoE kernels failed (CUresult %d)\n",
                static_cast<int>(r));
            return 1;
        }
        rc = checkMoe(cu, moeModule) != 0 ? 1 : rc;
        moeModule.unload();
    }
    return rc;
}
