/*
 * What the plugins' shape rules share (pluginShapes.h).
 */
#include "pluginShapes.h"

#include <algorithm>
#include <sstream>

namespace mla
{
namespace plugin
{

std::string dimsString(nvinfer1::Dims const& d)
{
    std::ostringstream s;
    s << "[";
    for (int32_t i = 0; i < d.nbDims; ++i)
    {
        s << (i ? "," : "") << d.d[i];
    }
    s << "]";
    return s.str();
}

bool sameDims(nvinfer1::Dims const& a, nvinfer1::Dims const& b) noexcept
{
    if (a.nbDims != b.nbDims)
    {
        return false;
    }
    for (int32_t i = 0; i < a.nbDims; ++i)
    {
        if (a.d[i] != b.d[i])
        {
            return false;
        }
    }
    return true;
}

int64_t volume(nvinfer1::Dims const& d) noexcept
{
    int64_t v = 1;
    for (int32_t i = 0; i < d.nbDims; ++i)
    {
        v *= d.d[i];
    }
    return v;
}

size_t elementSize(nvinfer1::DataType type) noexcept
{
    using nvinfer1::DataType;
    switch (type)
    {
    case DataType::kFLOAT:
    case DataType::kINT32: return 4;
    case DataType::kHALF:
    case DataType::kBF16: return 2;
    case DataType::kFP8: return 1;
    default: return 0;
    }
}

bool isActivationType(nvinfer1::DataType type)
{
    using nvinfer1::DataType;
    return type == DataType::kHALF || type == DataType::kBF16 || type == DataType::kFLOAT;
}

bool toKernelType(nvinfer1::DataType type, kernels::DataType& out)
{
    using nvinfer1::DataType;
    switch (type)
    {
    case DataType::kFLOAT: out = kernels::DataType::kFLOAT32; return true;
    case DataType::kHALF: out = kernels::DataType::kFLOAT16; return true;
    case DataType::kBF16: out = kernels::DataType::kBFLOAT16; return true;
    default: return false;
    }
}

std::string InputShapeChecks::countAndRanks(nvinfer1::Dims const* in, int32_t nbInputs) const
{
    if (nbInputs != mNumInputs)
    {
        return std::string(mOp) + ": expected " + std::to_string(mNumInputs) + " inputs, got " + std::to_string(nbInputs);
    }
    for (int32_t i = 0; i < mNumInputs; ++i)
    {
        if (in[i].nbDims != mRanks[i])
        {
            return std::string(mOp) + ": input " + std::to_string(i) + " (" + mNames[i] + ") has rank "
                + std::to_string(in[i].nbDims) + ", expected " + std::to_string(mRanks[i]);
        }
    }
    return {};
}

std::string InputShapeChecks::axes(nvinfer1::Dims const* in, std::initializer_list<AxisRule> rules) const
{
    for (AxisRule const& r : rules)
    {
        if (!dimsAgree(in[r.input].d[r.axis], r.want))
        {
            return mismatch(in, r.input, r.axis, r.want, r.what);
        }
    }
    return {};
}

std::string InputShapeChecks::nonEmpty(nvinfer1::Dims const* in, int32_t emptyInput, int32_t emptyAxes) const
{
    for (int32_t i = 0; i < mNumInputs; ++i)
    {
        for (int32_t a = 0; a < in[i].nbDims; ++a)
        {
            if (in[i].d[a] == 0 && !(i == emptyInput && a < emptyAxes))
            {
                return mismatch(in, i, a, 1, "a non-empty extent");
            }
        }
    }
    return {};
}

std::string InputShapeChecks::mismatch(
    nvinfer1::Dims const* in, int32_t input, int32_t axis, int64_t want, char const* what) const
{
    std::ostringstream s;
    s << mOp << ": input " << input << " (" << mNames[input] << ") has shape " << dimsString(in[input]) << ": axis "
      << axis << " is " << in[input].d[axis] << ", expected " << want << " (" << what << ")";
    return s.str();
}

std::string checkActivationTypes(char const* op, char const* const* names, nvinfer1::DataType const* types,
    int32_t source, std::initializer_list<int32_t> followers)
{
    if (!isActivationType(types[source]))
    {
        return std::string(op) + ": " + names[source] + " must be float16, bfloat16 or float32";
    }
    for (int32_t i : followers)
    {
        if (types[i] != types[source])
        {
            return std::string(op) + ": input " + names[i] + " must have the type of " + names[source];
        }
    }
    return {};
}

bool linearAt(int32_t pos, nvinfer1::PluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs,
    int32_t numInputs, int32_t numOutputs)
{
    return inOut != nullptr && nbInputs == numInputs && nbOutputs == numOutputs && pos >= 0
        && pos < nbInputs + nbOutputs && inOut[pos].format == nvinfer1::TensorFormat::kLINEAR;
}

bool activationAt(int32_t pos, nvinfer1::PluginTensorDesc const* inOut, int32_t source)
{
    return isActivationType(inOut[pos].type) && (pos == source || inOut[pos].type == inOut[source].type);
}

std::set<int64_t> profileSamples(int64_t lo, int64_t hi)
{
    lo = std::max<int64_t>(lo, 1);
    hi = std::max<int64_t>(hi, lo);
    std::set<int64_t> values{lo, hi};
    for (int64_t p = 1; p < hi; p *= 2)
    {
        if (p > lo)
        {
            values.insert(p);
        }
    }
    return values;
}

} // namespace plugin
} // namespace mla
