/*
 * MlaAttentionPluginCreator (see mlaAttentionPlugin.h): the attributes from a PluginFieldCollection,
 * as TensorRT's ONNX parser sends them (INT as kINT32, FLOAT as kFLOAT32) or as kINT64 / kFLOAT64 for
 * programmatic use; every field's type, length and value checked, failures logged with the field's name.
 */
#include "mlaAttentionPlugin.h"

#include "mlaContract.h"
#include "pluginLog.h"
#include "pluginFields.h"

#include <cmath>
#include <cstring>
#include <exception>
#include <iomanip>
#include <limits>
#include <sstream>

namespace mla
{
namespace plugin
{
namespace
{
namespace c = contract;
using nvinfer1::PluginField;
using nvinfer1::PluginFieldType;
using Severity = nvinfer1::ILogger::Severity;

} // namespace

// ---------------------------------------------------------------------------------------------
// MlaAttentionPluginCreator

MlaAttentionPluginCreator::MlaAttentionPluginCreator()
{
    // Declared as the ONNX parser sends them (INT -> kINT32, FLOAT -> kFLOAT32); only declared
    // names reach createPlugin.
    mFieldNames.emplace_back(c::kAttrNumHeads, nullptr, PluginFieldType::kINT32, 1);
    mFieldNames.emplace_back(c::kAttrKvLoraRank, nullptr, PluginFieldType::kINT32, 1);
    mFieldNames.emplace_back(c::kAttrQkRopeHeadDim, nullptr, PluginFieldType::kINT32, 1);
    mFieldNames.emplace_back(c::kAttrSoftmaxScale, nullptr, PluginFieldType::kFLOAT32, 1);
    mFieldCollection.nbFields = static_cast<int32_t>(mFieldNames.size());
    mFieldCollection.fields = mFieldNames.data();
}

char const* MlaAttentionPluginCreator::getPluginName() const noexcept
{
    return c::kPluginName;
}

char const* MlaAttentionPluginCreator::getPluginVersion() const noexcept
{
    return c::kPluginVersion;
}

char const* MlaAttentionPluginCreator::getPluginNamespace() const noexcept
{
    return c::kPluginNamespace;
}

nvinfer1::PluginFieldCollection const* MlaAttentionPluginCreator::getFieldNames() noexcept
{
    return &mFieldCollection;
}

std::string MlaAttentionPluginCreator::parseFields(nvinfer1::PluginFieldCollection const* fc, MlaAttributes& attrs)
{
    if (fc == nullptr || (fc->nbFields > 0 && fc->fields == nullptr) || fc->nbFields < 0)
    {
        return "no attributes given (null or malformed PluginFieldCollection)";
    }
    bool seen[4] = {false, false, false, false};
    char const* const names[4] = {c::kAttrNumHeads, c::kAttrKvLoraRank, c::kAttrQkRopeHeadDim, c::kAttrSoftmaxScale};
    for (int32_t i = 0; i < fc->nbFields; ++i)
    {
        PluginField const& f = fc->fields[i];
        if (f.name == nullptr)
        {
            return "attribute " + std::to_string(i) + " has no name";
        }
        int32_t which = -1;
        for (int32_t k = 0; k < 4; ++k)
        {
            if (std::strcmp(f.name, names[k]) == 0)
            {
                which = k;
            }
        }
        if (which < 0)
        {
            log(Severity::kWARNING, std::string("MlaAttention: ignoring unknown attribute ") + f.name);
            continue;
        }
        if (seen[which])
        {
            return std::string("attribute ") + f.name + " given twice";
        }
        seen[which] = true;
        log(Severity::kVERBOSE, std::string("MlaAttention: field ") + f.name + " arrived as " + fieldTypeName(f.type)
                + ", length " + std::to_string(f.length));
        std::string why;
        switch (which)
        {
        case 0: why = readIntField(f, attrs.numHeads, 1); break;
        case 1: why = readIntField(f, attrs.kvLoraRank, 1); break;
        case 2: why = readIntField(f, attrs.ropeDim, 1); break;
        default: why = readFloatField(f, attrs.softmaxScale, true); break;
        }
        if (!why.empty())
        {
            return why;
        }
    }
    for (int32_t k = 0; k < 4; ++k)
    {
        if (!seen[k])
        {
            return std::string("attribute ") + names[k] + " is missing";
        }
    }
    return validateAttributes(attrs);
}

nvinfer1::IPluginV3* MlaAttentionPluginCreator::createPlugin(
    char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept
{
    try
    {
        MlaAttributes attrs;
        std::string const why = parseFields(fc, attrs);
        if (!why.empty())
        {
            log(Severity::kERROR,
                std::string("MlaAttention: cannot create plugin") + (name != nullptr ? std::string(" ") + name : "")
                    + ": " + why);
            return nullptr;
        }
        std::ostringstream s;
        s << "MlaAttention: " << c::kAttrNumHeads << "=" << attrs.numHeads << " " << c::kAttrKvLoraRank << "="
          << attrs.kvLoraRank << " " << c::kAttrQkRopeHeadDim << "=" << attrs.ropeDim << " " << c::kAttrSoftmaxScale
          << "=" << std::setprecision(9) << attrs.softmaxScale << " (" << (phase == nvinfer1::TensorRTPhase::kBUILD ? "build" : "runtime")
          << " phase, layer " << (name != nullptr ? name : "?") << ")";
        log(Severity::kINFO, s.str());
        return new MlaAttentionPlugin(attrs);
    }
    catch (std::exception const& e)
    {
        log(Severity::kERROR, std::string("MlaAttention: cannot create plugin: ") + e.what());
    }
    catch (...)
    {
        log(Severity::kERROR, "MlaAttention: cannot create plugin: unknown exception");
    }
    return nullptr;
}

} // namespace plugin
} // namespace mla
