/*
 * The creators' attribute readers (pluginFields.h).
 */
#include "pluginFields.h"

#include <cmath>
#include <limits>
#include <sstream>

namespace mla
{
namespace plugin
{
using nvinfer1::PluginField;
using nvinfer1::PluginFieldType;

char const* fieldTypeName(PluginFieldType type) noexcept
{
    switch (type)
    {
    case PluginFieldType::kINT32: return "kINT32";
    case PluginFieldType::kINT64: return "kINT64";
    case PluginFieldType::kFLOAT32: return "kFLOAT32";
    case PluginFieldType::kFLOAT64: return "kFLOAT64";
    case PluginFieldType::kCHAR: return "kCHAR";
    default: return "another type";
    }
}

std::string readIntField(PluginField const& f, int32_t& out, int64_t minimum)
{
    std::ostringstream s;
    if (f.data == nullptr || f.length != 1)
    {
        s << "attribute " << f.name << ": expected one integer, got length " << f.length;
        return s.str();
    }
    int64_t value = 0;
    if (f.type == PluginFieldType::kINT32)
    {
        value = *static_cast<int32_t const*>(f.data);
    }
    else if (f.type == PluginFieldType::kINT64)
    {
        value = *static_cast<int64_t const*>(f.data);
    }
    else
    {
        s << "attribute " << f.name << ": expected kINT32 or kINT64, got " << fieldTypeName(f.type);
        return s.str();
    }
    if (value < minimum || value > std::numeric_limits<int32_t>::max())
    {
        s << "attribute " << f.name << " = " << value << ": expected a "
          << (minimum >= 1 ? "positive" : "non-negative") << " 32-bit integer";
        return s.str();
    }
    out = static_cast<int32_t>(value);
    return {};
}

std::string readFloatField(PluginField const& f, float& out, bool positive)
{
    std::ostringstream s;
    if (f.data == nullptr || f.length != 1)
    {
        s << "attribute " << f.name << ": expected one float, got length " << f.length;
        return s.str();
    }
    double value = 0;
    if (f.type == PluginFieldType::kFLOAT32)
    {
        value = *static_cast<float const*>(f.data);
    }
    else if (f.type == PluginFieldType::kFLOAT64)
    {
        value = *static_cast<double const*>(f.data);
    }
    else
    {
        s << "attribute " << f.name << ": expected kFLOAT32 or kFLOAT64, got " << fieldTypeName(f.type);
        return s.str();
    }
    bool const ok = std::isfinite(value) && std::fabs(value) <= std::numeric_limits<float>::max()
        && (!positive || value > 0);
    if (!ok)
    {
        s << "attribute " << f.name << " = " << value << ": expected "
          << (positive ? "a finite value > 0" : "a finite float32 value");
        return s.str();
    }
    out = static_cast<float>(value);
    return {};
}

} // namespace plugin
} // namespace mla
