/*
 * What both plugins' shape rules share (pluginShapes.h).
 */
#include "pluginShapes.h"

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

} // namespace plugin
} // namespace mla
