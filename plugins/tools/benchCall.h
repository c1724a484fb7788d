/*
 * The device buffers of mla_kernels_bench (mlaKernelsBench.cpp): the driver calls the program makes itself, a
 * device buffer, float16/bfloat16 bits, a call's cache layout (contiguous, paged, FP8: contract version 2) and one
 * call's tensors filled with deterministic values. Header-only, for that one program.
 */
#pragma once

#include "mlaKernels.h"

#include <cuda.h>
#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace benchtool
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
inline uint16_t toBits(float value, k::DataType dtype)
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

inline float fromBits(uint16_t bits, k::DataType dtype)
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

//! The cache layout of a benchmark call (contract version 2 when paged or FP8).
struct Layout
{
    char const* name;
    int32_t pageSize; //!< 0: contiguous
    bool fp8;
};
constexpr Layout kContiguous{"contiguous", 0, false};

//! `d` with the cache layout: a paged pool of B * ceil(Smax / page) pages (Smax rounded up to whole pages).
inline k::Dims withLayout(k::Dims d, Layout const& layout)
{
    d.pageSize = layout.pageSize;
    d.kvCacheDtype = layout.fp8 ? 1 : 0;
    if (layout.pageSize > 0)
    {
        d.maxPages = (d.maxSeqLen + layout.pageSize - 1) / layout.pageSize;
        d.maxSeqLen = d.maxPages * layout.pageSize;
        d.numPages = d.batch * d.maxPages;
    }
    else
    {
        d.numPages = d.batch;
    }
    d.ropeRows = d.maxSeqLen;
    return d;
}

//! Bytes of one token's cache row in the layout: Dc+Dr values in T, or FP8 codes, float32 scales and rope in T.
inline size_t rowBytes(k::Dims const& d)
{
    size_t const tiles = (size_t(d.kvLoraRank) + 127) / 128;
    return d.kvCacheDtype ? size_t(d.kvLoraRank) + 4 * tiles + 2 * size_t(d.ropeDim)
                          : 2 * size_t(d.kvLoraRank + d.ropeDim);
}

//! One call's device buffers, filled with deterministic values; `context` cache rows already valid.
struct Call
{
    k::Dims dims;
    std::vector<uint16_t> cacheHost;   //!< the cache as filled, to find rows the call changed
    std::vector<int32_t> seqlensHost;  //!< each sequence's valid rows before the call
    Buffer qLatent, qPe, kvLatent, kPe, cache, seqlens, rope, out, workspace;
    Buffer blockTable, scales, ropePlane; //!< contract version 2: the table, the FP8 scales and rope planes

    Call(Driver const& cu, k::Dims d, int32_t context, int32_t numSms)
        : dims(d)
        , qLatent(cu, size_t(d.batch) * d.newTokens * d.numHeads * d.kvLoraRank * 2)
        , qPe(cu, size_t(d.batch) * d.newTokens * d.numHeads * d.ropeDim * 2)
        , kvLatent(cu, size_t(d.batch) * d.newTokens * d.kvLoraRank * 2)
        , kPe(cu, size_t(d.batch) * d.newTokens * d.ropeDim * 2)
        , cache(cu, size_t(d.batch) * d.maxSeqLen * (d.kvCacheDtype ? d.kvLoraRank : 2 * (d.kvLoraRank + d.ropeDim)))
        , seqlens(cu, size_t(d.batch) * 4)
        , rope(cu, size_t(d.maxSeqLen) * d.ropeDim * 4)
        , out(cu, size_t(d.batch) * d.newTokens * d.numHeads * d.kvLoraRank * 2)
        , workspace(cu, k::workspaceBytes(d, numSms))
        , blockTable(cu, size_t(d.batch) * std::max(d.maxPages, 1) * 4)
        , scales(cu, d.kvCacheDtype ? size_t(d.batch) * d.maxSeqLen * ((d.kvLoraRank + 127) / 128) * 4 : 0)
        , ropePlane(cu, d.kvCacheDtype ? size_t(d.batch) * d.maxSeqLen * d.ropeDim * 2 : 0)
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
        if (d.kvCacheDtype)
        {
            // FP8 codes of moderate values (never the e4m3 NaN), scales 1, rope rows in T.
            std::vector<uint8_t> codes(std::min<size_t>(cache.bytes, size_t(16) << 20));
            for (auto& v : codes)
            {
                v = static_cast<uint8_t>(static_cast<uint32_t>((next() + 1.0F) * 64.0F) & 0x77U);
            }
            for (size_t at = 0; at < cache.bytes; at += codes.size())
            {
                cu.htod(cache.ptr + at, codes.data(), std::min(codes.size(), cache.bytes - at));
            }
            std::vector<float> ones(scales.bytes / 4, 1.0F);
            cu.htod(scales.ptr, ones.data(), scales.bytes);
            fill(ropePlane, nullptr);
        }
        else
        {
            fill(cache, &cacheHost);
        }
        // A paged pool's pages handed to the sequences in a shuffled order (sequences interleaved).
        std::vector<int32_t> pages(size_t(d.batch) * std::max(d.maxPages, 1));
        for (size_t i = 0; i < pages.size(); ++i)
        {
            pages[i] = static_cast<int32_t>(i);
        }
        for (size_t i = pages.size(); i > 1; --i)
        {
            std::swap(pages[i - 1], pages[static_cast<size_t>((next() + 1.0F) * 0.5F * float(i - 1))]);
        }
        cu.htod(blockTable.ptr, pages.data(), pages.size() * 4);
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
        for (Buffer const* b : {&qLatent, &qPe, &kvLatent, &kPe, &cache, &seqlens, &rope, &out, &workspace,
                 &blockTable, &scales, &ropePlane})
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
        t.blockTable = static_cast<int32_t const*>(blockTable.get());
        t.cacheScale = static_cast<float*>(scales.get());
        t.cacheRope = ropePlane.get();
        return k::launch(module, dims, t, workspace.get(), nullptr);
    }
};

} // namespace benchtool
