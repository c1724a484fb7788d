/*
 * Shape, type and workspace rules of MlaAttention contract version 2 (see mlaCacheShapes.h).
 */
#include "mlaCacheShapes.h"

#include <algorithm>
#include <limits>

namespace mla
{
namespace plugin
{
namespace
{
using nvinfer1::DataType;
using nvinfer1::Dims;
namespace c = contract;

constexpr InputShapeChecks kPagedChecks{c::kPluginName, c::kCacheInputNames, kCacheInputRanks, c::kNumPagedInputs};
constexpr InputShapeChecks kFp8Checks{c::kPluginName, c::kCacheInputNames, kCacheInputRanks, c::kNumFp8CacheInputs};

bool isFp8(MlaAttributes const& attrs) noexcept
{
    return attrs.kvCacheDtype == c::kKvCacheDtypeFp8;
}

//! a * b clamped to int32 (an unknown extent, < 0, stays -1).
int64_t rowsOf(int64_t pages, int64_t pageSize) noexcept
{
    if (pages < 0 || pageSize < 0)
    {
        return -1;
    }
    return std::min<int64_t>(pages * pageSize, std::numeric_limits<int32_t>::max());
}

//! The call's Smax: max_pages * page_size when paged, else past_cache's rows.
int64_t callSmax(MlaAttributes const& attrs, Dims const* in)
{
    return attrs.pageSize > 0 ? rowsOf(in[c::kBlockTable].d[1], attrs.pageSize) : in[c::kPastCache].d[1];
}
} // namespace

int32_t numInputsFor(MlaAttributes const& attrs) noexcept
{
    if (!usesCacheV2(attrs))
    {
        return c::kNumInputs;
    }
    return isFp8(attrs) ? c::kNumFp8CacheInputs : c::kNumPagedInputs;
}

int32_t numOutputsFor(MlaAttributes const& attrs) noexcept
{
    return isFp8(attrs) ? c::kNumFp8CacheOutputs : c::kNumOutputs;
}

std::string validateCacheInputDims(MlaAttributes const& attrs, Dims const* in, int32_t nbInputs)
{
    bool const fp8 = isFp8(attrs);
    InputShapeChecks const& checks = fp8 ? kFp8Checks : kPagedChecks;
    std::string why = checks.countAndRanks(in, nbInputs);
    if (!why.empty())
    {
        return why;
    }
    int64_t const batch = in[c::kQLatent].d[0];
    int64_t const tokens = in[c::kQLatent].d[1];
    int64_t const dc = attrs.kvLoraRank;
    int64_t const dr = attrs.ropeDim;
    bool const paged = attrs.pageSize > 0;
    why = checkTokenAxes(checks, attrs, in);
    if (why.empty())
    {
        why = checks.axes(in,
            {
                {c::kPastCache, 2, fp8 ? dc : dc + dr,
                    fp8 ? "kv_lora_rank (the FP8 cache's codes)" : "kv_lora_rank + qk_rope_head_dim"},
                {c::kPastCache, paged ? 1 : 0, paged ? attrs.pageSize : batch,
                    paged ? "the page_size attribute" : "B of q_latent (a contiguous cache: one page per sequence)"},
                {c::kBlockTable, 0, batch, "B of q_latent"},
            });
    }
    if (why.empty() && fp8)
    {
        int64_t const pages = in[c::kPastCache].d[0];
        int64_t const rows = in[c::kPastCache].d[1];
        why = checks.axes(in,
            {
                {c::kPastScale, 0, pages, "pages of past_cache"},
                {c::kPastScale, 1, rows, "rows per page of past_cache"},
                {c::kPastScale, 2, (dc + c::kFp8CacheTile - 1) / c::kFp8CacheTile, "ceil(kv_lora_rank / 128)"},
                {c::kPastRope, 0, pages, "pages of past_cache"},
                {c::kPastRope, 1, rows, "rows per page of past_cache"},
                {c::kPastRope, 2, dr, "qk_rope_head_dim"},
            });
    }
    if (!why.empty())
    {
        return why;
    }
    int64_t const smax = callSmax(attrs, in);
    int64_t const ropeRows = in[c::kRopeCosSin].d[0];
    if (!paged && ropeRows >= 0 && smax >= 0 && ropeRows < smax)
    {
        return checks.mismatch(in, c::kRopeCosSin, 0, smax, "at least Smax rows, Smax of past_cache");
    }
    if (tokens >= 0 && smax >= 0 && tokens > smax)
    {
        return checks.mismatch(in, c::kQLatent, 1, smax,
            paged ? "at most max_pages * page_size new tokens (block_table's columns)"
                  : "at most Smax new tokens, Smax of past_cache");
    }
    return checks.nonEmpty(in);
}

int32_t cacheOutputShapeSource(int32_t outputIndex)
{
    switch (outputIndex)
    {
    case c::kAttnLatent: return c::kQLatent;
    case c::kPresentCache: return c::kPastCache;
    case c::kPresentScale: return c::kPastScale;
    case c::kPresentRope: return c::kPastRope;
    default: return -1;
    }
}

int32_t cacheAliasedInput(int32_t outputIndex)
{
    return outputIndex == c::kAttnLatent ? -1 : cacheOutputShapeSource(outputIndex);
}

bool supportsCacheFormat(int32_t pos, nvinfer1::PluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs)
{
    bool const fp8 = nbInputs == c::kNumFp8CacheInputs;
    int32_t const numOutputs = fp8 ? c::kNumFp8CacheOutputs : c::kNumOutputs;
    if ((nbInputs != c::kNumPagedInputs && !fp8) || !linearAt(pos, inOut, nbInputs, nbOutputs, nbInputs, numOutputs))
    {
        return false;
    }
    nvinfer1::PluginTensorDesc const& desc = inOut[pos];
    if (pos >= nbInputs)
    {
        // attn_latent holds T; each present plane is its aliased input's buffer: the same type and format.
        int32_t const source = cacheAliasedInput(pos - nbInputs);
        return source < 0 ? activationAt(pos, inOut, c::kQLatent)
                          : desc.type == inOut[source].type && desc.format == inOut[source].format;
    }
    switch (pos)
    {
    case c::kCacheSeqlensIn:
    case c::kBlockTable: return desc.type == DataType::kINT32;
    case c::kRopeCosSin:
    case c::kPastScale: return desc.type == DataType::kFLOAT;
    case c::kPastCache: return fp8 ? desc.type == DataType::kFP8 : activationAt(pos, inOut, c::kQLatent);
    default: return activationAt(pos, inOut, c::kQLatent);
    }
}

std::string cacheOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs)
{
    bool const fp8 = nbInputs == c::kNumFp8CacheInputs;
    if (outputTypes == nullptr || inputTypes == nullptr || (nbInputs != c::kNumPagedInputs && !fp8)
        || nbOutputs != (fp8 ? c::kNumFp8CacheOutputs : c::kNumOutputs))
    {
        return "MlaAttention: expected 8 inputs and 2 outputs (a paged cache in T) or 10 inputs and 4 outputs (the "
               "FP8 cache)";
    }
    std::string why = fp8
        ? checkActivationTypes(c::kPluginName, c::kCacheInputNames, inputTypes, c::kQLatent,
            {c::kQPe, c::kKvLatent, c::kKPe, c::kPastRope})
        : checkActivationTypes(c::kPluginName, c::kCacheInputNames, inputTypes, c::kQLatent,
            {c::kQPe, c::kKvLatent, c::kKPe, c::kPastCache});
    if (!why.empty())
    {
        return why;
    }
    if (inputTypes[c::kCacheSeqlensIn] != DataType::kINT32 || inputTypes[c::kBlockTable] != DataType::kINT32)
    {
        return "MlaAttention: cache_seqlens and block_table must be int32";
    }
    if (inputTypes[c::kRopeCosSin] != DataType::kFLOAT)
    {
        return "MlaAttention: rope_cos_sin must be float32";
    }
    if (fp8 && (inputTypes[c::kPastCache] != DataType::kFP8 || inputTypes[c::kPastScale] != DataType::kFLOAT))
    {
        return "MlaAttention: with kv_cache_dtype=1 (FP8), past_cache must be fp8 (e4m3) and past_scale float32";
    }
    DataType const t = inputTypes[c::kQLatent];
    outputTypes[c::kAttnLatent] = t;
    outputTypes[c::kPresentCache] = inputTypes[c::kPastCache];
    if (fp8)
    {
        outputTypes[c::kPresentScale] = DataType::kFLOAT;
        outputTypes[c::kPresentRope] = t;
    }
    return {};
}

kernels::Dims cacheKernelDims(MlaAttributes const& attrs, Dims const* inputs, kernels::DataType dtype)
{
    kernels::Dims d = kernelDims(attrs, inputs, dtype);
    d.pageSize = attrs.pageSize;
    d.kvCacheDtype = attrs.kvCacheDtype;
    d.numPages = static_cast<int32_t>(inputs[c::kPastCache].d[0]);
    d.maxPages = attrs.pageSize > 0 ? static_cast<int32_t>(inputs[c::kBlockTable].d[1]) : 0;
    d.maxSeqLen = static_cast<int32_t>(callSmax(attrs, inputs));
    d.ropeRows = static_cast<int32_t>(inputs[c::kRopeCosSin].d[0]);
    return d;
}

size_t cacheWorkspaceSize(MlaAttributes const& attrs, Dims const* minDims, Dims const* maxDims,
    kernels::DataType dtype, int32_t numSms)
{
    return workspaceOverProfile(cacheKernelDims(attrs, maxDims, dtype), minDims[c::kQLatent], maxDims[c::kQLatent],
        callSmax(attrs, minDims), callSmax(attrs, maxDims), numSms);
}

} // namespace plugin
} // namespace mla
