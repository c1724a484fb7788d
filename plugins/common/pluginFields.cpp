/*
 * The creators' attribute readers (pluginFields.h).
 */
#include "pluginFields.h"

#include "pluginLog.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <sstream>

namespace mla
{
namespace plugin
{
using nvinfer1::PluginField;
using nvinfer1::PluginFieldType;
using Severity = nvinfer1::ILogger::Severity;

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
          << (minimum >= 1 ? "positive " : (minimum >= 0 ? "non-negative " : "")) << "32-bit integer";
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

std::string readBoundFields(
    char const* op, nvinfer1::PluginFieldCollection const* fc, BoundField const* fields, size_t count)
{
    if (fc == nullptr || (fc->nbFields > 0 && fc->fields == nullptr) || fc->nbFields < 0)
    {
        return "no attributes given (null or malformed PluginFieldCollection)";
    }
    std::vector<bool> seen(count, false);
    for (int32_t i = 0; i < fc->nbFields; ++i)
    {
        PluginField const& f = fc->fields[i];
        if (f.name == nullptr)
        {
            return "attribute " + std::to_string(i) + " has no name";
        }
        size_t which = count;
        for (size_t k = 0; k < count && which == count; ++k)
        {
            which = std::strcmp(f.name, fields[k].name) == 0 ? k : count;
        }
        if (which == count)
        {
            log(Severity::kWARNING, std::string(op) + ": ignoring unknown attribute " + f.name);
            continue;
        }
        if (seen[which])
        {
            return std::string("attribute ") + f.name + " given twice";
        }
        seen[which] = true;
        log(Severity::kVERBOSE, std::string(op) + ": field " + f.name + " arrived as " + fieldTypeName(f.type)
                + ", length " + std::to_string(f.length));
        BoundField const& target = fields[which];
        std::string const why = target.intValue != nullptr ? readIntField(f, *target.intValue, target.minimum)
                                                           : readFloatField(f, *target.floatValue, target.positive);
        if (!why.empty())
        {
            return why;
        }
    }
    for (size_t k = 0; k < count; ++k)
    {
        if (!seen[k] && !fields[k].optional)
        {
            return std::string("attribute ") + fields[k].name + " is missing";
        }
    }
    return {};
}

} // namespace plugin
} // namespace mla
