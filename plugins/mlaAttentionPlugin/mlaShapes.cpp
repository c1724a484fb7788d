/*
 * Shape, type and workspace rules of MlaAttention (see mlaShapes.h).
 */
#include "mlaShapes.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <sstream>

namespace mla
{
namespace plugin
{
namespace
{
using nvinfer1::DataType;
using nvinfer1::Dims;
namespace c = contract;

constexpr InputShapeChecks kChecks{c::kPluginName, c::kInputNames, kInputRanks, c::kNumInputs};
} // namespace

std::string validateAttributes(MlaAttributes const& attrs)
{
    std::ostringstream s;
    if (attrs.numHeads <= 0)
    {
        s << "attribute " << c::kAttrNumHeads << " = " << attrs.numHeads << ": expected a positive integer";
    }
    else if (attrs.kvLoraRank <= 0)
    {
        s << "attribute " << c::kAttrKvLoraRank << " = " << attrs.kvLoraRank << ": expected a positive integer";
    }
    else if (attrs.ropeDim <= 0 || attrs.ropeDim % 2 != 0)
    {
        s << "attribute " << c::kAttrQkRopeHeadDim << " = " << attrs.ropeDim
          << ": expected a positive even integer (RoPE rotates pairs)";
    }
    else if (!std::isfinite(attrs.softmaxScale) || attrs.softmaxScale <= 0.F)
    {
        s << "attribute " << c::kAttrSoftmaxScale << " = " << attrs.softmaxScale << ": expected a finite value > 0";
    }
    else if (attrs.pageSize < 0 || attrs.pageSize > c::kMaxPageSize || (attrs.pageSize & (attrs.pageSize - 1)) != 0)
    {
        s << "attribute " << c::kAttrPageSize << " = " << attrs.pageSize
          << ": expected 0 (contiguous) or a power of two up to " << c::kMaxPageSize;
    }
    else if (attrs.kvCacheDtype != c::kKvCacheDtypeModel && attrs.kvCacheDtype != c::kKvCacheDtypeFp8)
    {
        s << "attribute " << c::kAttrKvCacheDtype << " = " << attrs.kvCacheDtype << ": expected "
          << c::kKvCacheDtypeModel << " (the model's dtype) or " << c::kKvCacheDtypeFp8 << " (FP8)";
    }
    return s.str();
}

std::string checkTokenAxes(InputShapeChecks const& checks, MlaAttributes const& attrs, Dims const* in)
{
    int64_t const batch = in[c::kQLatent].d[0];
    int64_t const tokens = in[c::kQLatent].d[1];
    int64_t const heads = attrs.numHeads;
    int64_t const dc = attrs.kvLoraRank;
    int64_t const dr = attrs.ropeDim;
    return checks.axes(in,
        {
            {c::kQLatent, 2, heads, "num_heads"},
            {c::kQLatent, 3, dc, "kv_lora_rank"},
            {c::kQPe, 0, batch, "B of q_latent"},
            {c::kQPe, 1, tokens, "S of q_latent"},
            {c::kQPe, 2, heads, "num_heads"},
            {c::kQPe, 3, dr, "qk_rope_head_dim"},
            {c::kKvLatent, 0, batch, "B of q_latent"},
            {c::kKvLatent, 1, tokens, "S of q_latent"},
            {c::kKvLatent, 2, dc, "kv_lora_rank"},
            {c::kKPe, 0, batch, "B of q_latent"},
            {c::kKPe, 1, tokens, "S of q_latent"},
            {c::kKPe, 2, dr, "qk_rope_head_dim"},
            {c::kCacheSeqlensIn, 0, batch, "B of q_latent"},
            {c::kRopeCosSin, 1, dr, "qk_rope_head_dim"},
        });
}

std::string validateInputDims(MlaAttributes const& attrs, Dims const* in, int32_t nbInputs)
{
    std::string why = kChecks.countAndRanks(in, nbInputs);
    if (!why.empty())
    {
        return why;
    }
    int64_t const batch = in[c::kQLatent].d[0];
    int64_t const tokens = in[c::kQLatent].d[1];
    int64_t const smax = in[c::kPastCache].d[1];
    why = checkTokenAxes(kChecks, attrs, in);
    if (why.empty())
    {
        why = kChecks.axes(in,
            {
                {c::kPastCache, 0, batch, "B of q_latent"},
                {c::kPastCache, 2, int64_t{attrs.kvLoraRank} + attrs.ropeDim, "kv_lora_rank + qk_rope_head_dim"},
            });
    }
    if (!why.empty())
    {
        return why;
    }
    // RoPE rows are read at positions < Smax; a longer table is fine.
    int64_t const ropeRows = in[c::kRopeCosSin].d[0];
    if (ropeRows >= 0 && smax >= 0 && ropeRows < smax)
    {
        return kChecks.mismatch(in, c::kRopeCosSin, 0, smax, "at least Smax rows, Smax of past_cache");
    }
    if (tokens >= 0 && smax >= 0 && tokens > smax)
    {
        return kChecks.mismatch(in, c::kQLatent, 1, smax, "at most Smax new tokens, Smax of past_cache");
    }
    return kChecks.nonEmpty(in);
}

int32_t outputShapeSource(int32_t outputIndex)
{
    return outputIndex == c::kAttnLatent ? static_cast<int32_t>(c::kQLatent) : static_cast<int32_t>(c::kPastCache);
}

int32_t aliasedInput(int32_t outputIndex)
{
    return outputIndex == c::kPresentCache ? static_cast<int32_t>(c::kPastCache) : -1;
}

Dims outputDims(int32_t outputIndex, Dims const* inputs)
{
    return inputs[outputShapeSource(outputIndex)];
}

bool supportsFormat(int32_t pos, nvinfer1::PluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs)
{
    if (!linearAt(pos, inOut, nbInputs, nbOutputs, c::kNumInputs, c::kNumOutputs))
    {
        return false;
    }
    nvinfer1::PluginTensorDesc const& desc = inOut[pos];
    if (pos == c::kCacheSeqlensIn)
    {
        return desc.type == DataType::kINT32;
    }
    if (pos == c::kRopeCosSin)
    {
        return desc.type == DataType::kFLOAT;
    }
    // An aliased output is its input's buffer: the same type and format.
    int32_t const source = pos >= nbInputs ? aliasedInput(pos - nbInputs) : -1;
    if (source >= 0)
    {
        return isActivationType(desc.type) && desc.type == inOut[source].type && desc.format == inOut[source].format;
    }
    // Every other position holds T: the first one decides it, the rest follow.
    return activationAt(pos, inOut, c::kQLatent);
}

std::string outputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs)
{
    if (outputTypes == nullptr || inputTypes == nullptr || nbOutputs != c::kNumOutputs || nbInputs != c::kNumInputs)
    {
        return "MlaAttention: expected 7 inputs and 2 outputs";
    }
    std::string const why = checkActivationTypes(
        c::kPluginName, c::kInputNames, inputTypes, c::kQLatent, {c::kQPe, c::kKvLatent, c::kKPe, c::kPastCache});
    if (!why.empty())
    {
        return why;
    }
    DataType const t = inputTypes[c::kQLatent];
    if (inputTypes[c::kCacheSeqlensIn] != DataType::kINT32)
    {
        return "MlaAttention: cache_seqlens must be int32";
    }
    if (inputTypes[c::kRopeCosSin] != DataType::kFLOAT)
    {
        return "MlaAttention: rope_cos_sin must be float32";
    }
    outputTypes[c::kAttnLatent] = t;
    outputTypes[c::kPresentCache] = t;
    return {};
}

kernels::Dims kernelDims(MlaAttributes const& attrs, Dims const* inputs, kernels::DataType dtype)
{
    kernels::Dims d{};
    d.batch = static_cast<int32_t>(inputs[c::kQLatent].d[0]);
    d.newTokens = static_cast<int32_t>(inputs[c::kQLatent].d[1]);
    d.numHeads = attrs.numHeads;
    d.kvLoraRank = attrs.kvLoraRank;
    d.ropeDim = attrs.ropeDim;
    d.maxSeqLen = static_cast<int32_t>(inputs[c::kPastCache].d[1]);
    d.dtype = dtype;
    d.softmaxScale = attrs.softmaxScale;
    return d;
}

namespace
{
int64_t span(int64_t lo, int64_t hi)
{
    lo = std::max<int64_t>(lo, 1);
    return std::max<int64_t>(hi, lo) - lo + 1;
}

// Every value of [lo, hi] (lo clamped to >= 1).
std::set<int64_t> every(int64_t lo, int64_t hi)
{
    std::set<int64_t> values;
    for (int64_t v = std::max<int64_t>(lo, 1); v <= std::max<int64_t>(hi, lo); ++v)
    {
        values.insert(v);
    }
    return values;
}

} // namespace

size_t workspaceOverProfile(kernels::Dims d, Dims const& qMin, Dims const& qMax, int64_t smaxLo, int64_t smaxHi,
    int32_t numSms)
{
    size_t bytes = 0;
    double const shapes = static_cast<double>(span(qMin.d[0], qMax.d[0]))
        * static_cast<double>(span(qMin.d[1], qMax.d[1])) * static_cast<double>(span(smaxLo, smaxHi));
    bool const exhaustive = shapes <= static_cast<double>(kExhaustiveWorkspaceShapes);
    for (int64_t batch : exhaustive ? every(qMin.d[0], qMax.d[0]) : profileSamples(qMin.d[0], qMax.d[0]))
    {
        for (int64_t tokens : exhaustive ? every(qMin.d[1], qMax.d[1]) : profileSamples(qMin.d[1], qMax.d[1]))
        {
            for (int64_t rows : exhaustive ? every(smaxLo, smaxHi) : profileSamples(smaxLo, smaxHi))
            {
                d.batch = static_cast<int32_t>(batch);
                d.newTokens = static_cast<int32_t>(tokens);
                d.maxSeqLen = static_cast<int32_t>(rows);
                bytes = std::max(bytes, kernels::workspaceBytes(d, numSms));
            }
        }
    }
    return bytes;
}

size_t workspaceSize(MlaAttributes const& attrs, Dims const* minDims, Dims const* maxDims, kernels::DataType dtype,
    int32_t numSms)
{
    return workspaceOverProfile(kernelDims(attrs, maxDims, dtype), minDims[c::kQLatent], maxDims[c::kQLatent],
        minDims[c::kPastCache].d[1], maxDims[c::kPastCache].d[1], numSms);
}

} // namespace plugin
} // namespace mla
