/*
 * The AOT kernels as libmla_plugin.so ships them, driven without TensorRT or Triton: a short driver for
 * compute-sanitizer and a benchmark (both run by `make gpu-check`, benchmarks/gpu_check.py).
 *
 *   mla_kernels_bench --check        a few decode and prefill calls (float16 and bfloat16, with and without
 *                                    splits, ragged cache lengths) on device buffers; checks every output is
 *                                    finite and every cache row outside the new ones is unchanged, and paged and
 *                                    FP8 calls (contract 2) give finite outputs; then a few
 *                                    DeepseekMoE calls (V2 and V3 routing, decode and prefill sizes, several
 *                                    chunks): outputs finite and two runs bit-identical; exit 0/1
 *   mla_kernels_bench --bench        bfloat16, DeepSeek dims (Dc 512, Dr 64): decode with H in {128, 16},
 *                                    B in {1, 8, 64}, context in {4096, 65536} (H 128, B 8 and 64 also with
 *                                    contract 2's caches: 64-row pages shuffled, FP8 paged and contiguous), and
 *                                    prefill of S = 4096 from an empty cache; one JSON object per line: phase,
 *                                    layout, heads, batch, context, new_tokens, median_us, cache_bytes (the
 *                                    layout's bytes as stored, decode) or flops (prefill)
 *
 * Exits 77 when no CUDA driver or device is present. The driver is opened with dlopen (the kernels' own
 * calls go through the plugin's forwarders, common/cudaDriver.cpp), so the program builds everywhere.
 */
#include "benchCall.h"
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
using namespace benchtool;

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
    // Contract version 2 (shuffled 64- and 16-row pages, the FP8 cache paged and contiguous): outputs finite; the
    // sanitizer runs of gpu-check watch every access of these kernels too.
    Layout const layouts[] = {{"paged64", 64, false}, {"paged16-fp8", 16, true}, {"contiguous-fp8", 0, true}};
    size_t calls = sizeof(cases) / sizeof(cases[0]);
    for (Layout const& layout : layouts)
    {
        for (Case const& c : {cases[0], cases[3]})
        {
            k::Dims const d
                = withLayout(k::Dims{c.batch, c.newTokens, c.heads, c.dc, c.dr, c.smax, c.dtype, 0.07F}, layout);
            Call call(cu, d, c.context, module.numSms());
            bool ok = call.ready() && call.launch(module) == CUDA_SUCCESS && cu.sync() == CUDA_SUCCESS;
            std::vector<uint16_t> out(call.out.bytes / 2);
            cu.dtoh(out.data(), call.out.ptr, call.out.bytes);
            for (size_t i = 0; ok && i < size_t(c.batch) * c.newTokens * c.heads * c.dc; ++i)
            {
                ok = std::isfinite(fromBits(out[i], c.dtype));
            }
            std::printf("check %s B=%d S=%d H=%d Dc=%d: %s\n", layout.name, c.batch, c.newTokens, c.heads, c.dc,
                ok ? "outputs finite" : "FAILED (launch or outputs)");
            failures += ok ? 0 : 1;
            ++calls;
        }
    }
    std::printf("%s: %d of %zu calls failed\n", failures == 0 ? "PASS" : "FAIL", failures, calls);
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
    // Contract version 2's layouts (64-row pages shuffled across sequences, the FP8 cache) at V3's heads.
    Layout const layouts[]
        = {kContiguous, {"paged64", 64, false}, {"paged64-fp8", 64, true}, {"contiguous-fp8", 0, true}};
    for (int heads : {128, 16})
    {
        for (int context : {4096, 65536})
        {
            for (int batch : {1, 8, 64})
            {
                for (Layout const& layout : layouts)
                {
                    if (&layout != &layouts[0] && (heads != 128 || batch == 1))
                    {
                        continue;
                    }
                    k::Dims const d = withLayout(
                        k::Dims{batch, 1, heads, dc, dr, context + 1, k::DataType::kBFLOAT16, 0.07F}, layout);
                    Call call(cu, d, context, module.numSms());
                    if (!call.ready())
                    {
                        std::printf("{\"phase\": \"decode\", \"layout\": \"%s\", \"heads\": %d, \"batch\": %d, "
                                    "\"context\": %d, \"skipped\": \"out of device memory\"}\n", layout.name, heads,
                            batch, context);
                        continue;
                    }
                    double const bytes = double(batch) * (context + 1) * double(rowBytes(d));
                    std::printf("{\"phase\": \"decode\", \"layout\": \"%s\", \"heads\": %d, \"batch\": %d, "
                                "\"context\": %d, \"new_tokens\": 1, \"median_us\": %.2f, \"cache_bytes\": %.0f}\n",
                        layout.name, heads, batch, context, time(call), bytes);
                    std::fflush(stdout);
                }
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
