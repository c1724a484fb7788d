/*
 * DeepseekMoePluginCreator (see deepseekMoePlugin.h): the attributes from a PluginFieldCollection, as TensorRT's
 * ONNX parser sends them (INT as kINT32, FLOAT as kFLOAT32) or as kINT64 / kFLOAT64 for programmatic use; every
 * field's type, length and value checked, failures logged with the field's name.
 */
#include "deepseekMoePlugin.h"

#include "pluginLog.h"
#include "pluginFields.h"
#include "moeContract.h"

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
namespace c = moe_contract;
using nvinfer1::PluginField;
using nvinfer1::PluginFieldType;
using Severity = nvinfer1::ILogger::Severity;

constexpr int32_t kNumFields = 9;
char const* const kFieldNames[kNumFields] = {c::kAttrNumExperts, c::kAttrTopK, c::kAttrNGroup, c::kAttrTopkGroup,
    c::kAttrScoringFunc, c::kAttrGroupScore, c::kAttrUseBias, c::kAttrNormalize, c::kAttrWeightScale};
constexpr int32_t kWeightScaleField = 8;

int32_t* intField(MoeAttributes& a, int32_t which)
{
    int32_t* const fields[] = {&a.numExperts, &a.topK, &a.nGroup, &a.topkGroup, &a.scoringFunc, &a.groupScore,
        &a.useBias, &a.normalize};
    return fields[which];
}

} // namespace

DeepseekMoePluginCreator::DeepseekMoePluginCreator()
{
    // Declared as the ONNX parser sends them (INT -> kINT32, FLOAT -> kFLOAT32); only declared names reach
    // createPlugin.
    for (int32_t k = 0; k < kNumFields; ++k)
    {
        mFieldNames.emplace_back(kFieldNames[k], nullptr,
            k == kWeightScaleField ? PluginFieldType::kFLOAT32 : PluginFieldType::kINT32, 1);
    }
    mFieldCollection.nbFields = static_cast<int32_t>(mFieldNames.size());
    mFieldCollection.fields = mFieldNames.data();
}

char const* DeepseekMoePluginCreator::getPluginName() const noexcept
{
    return c::kPluginName;
}

char const* DeepseekMoePluginCreator::getPluginVersion() const noexcept
{
    return c::kPluginVersion;
}

char const* DeepseekMoePluginCreator::getPluginNamespace() const noexcept
{
    return c::kPluginNamespace;
}

nvinfer1::PluginFieldCollection const* DeepseekMoePluginCreator::getFieldNames() noexcept
{
    return &mFieldCollection;
}

std::string DeepseekMoePluginCreator::parseFields(nvinfer1::PluginFieldCollection const* fc, MoeAttributes& attrs)
{
    if (fc == nullptr || (fc->nbFields > 0 && fc->fields == nullptr) || fc->nbFields < 0)
    {
        return "no attributes given (null or malformed PluginFieldCollection)";
    }
    bool seen[kNumFields] = {};
    for (int32_t i = 0; i < fc->nbFields; ++i)
    {
        PluginField const& f = fc->fields[i];
        if (f.name == nullptr)
        {
            return "attribute " + std::to_string(i) + " has no name";
        }
        int32_t which = -1;
        for (int32_t k = 0; k < kNumFields; ++k)
        {
            if (std::strcmp(f.name, kFieldNames[k]) == 0)
            {
                which = k;
            }
        }
        if (which < 0)
        {
            log(Severity::kWARNING, std::string("DeepseekMoE: ignoring unknown attribute ") + f.name);
            continue;
        }
        if (seen[which])
        {
            return std::string("attribute ") + f.name + " given twice";
        }
        seen[which] = true;
        log(Severity::kVERBOSE, std::string("DeepseekMoE: field ") + f.name + " arrived as " + fieldTypeName(f.type)
                + ", length " + std::to_string(f.length));
        std::string const why
            = which == kWeightScaleField ? readFloatField(f, attrs.weightScale, false)
                                         : readIntField(f, *intField(attrs, which), 0);
        if (!why.empty())
        {
            return why;
        }
    }
    for (int32_t k = 0; k < kNumFields; ++k)
    {
        if (!seen[k])
        {
            return std::string("attribute ") + kFieldNames[k] + " is missing";
        }
    }
    return validateMoeAttributes(attrs);
}

nvinfer1::IPluginV3* DeepseekMoePluginCreator::createPlugin(
    char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept
{
    try
    {
        MoeAttributes attrs;
        std::string const why = parseFields(fc, attrs);
        if (!why.empty())
        {
            log(Severity::kERROR,
                std::string("DeepseekMoE: cannot create plugin") + (name != nullptr ? std::string(" ") + name : "")
                    + ": " + why);
            return nullptr;
        }
        std::ostringstream s;
        s << "DeepseekMoE:";
        for (int32_t k = 0; k < kWeightScaleField; ++k)
        {
            s << " " << kFieldNames[k] << "=" << *intField(attrs, k);
        }
        s << " " << c::kAttrWeightScale << "=" << std::setprecision(9) << attrs.weightScale << " ("
          << (phase == nvinfer1::TensorRTPhase::kBUILD ? "build" : "runtime") << " phase, layer "
          << (name != nullptr ? name : "?") << ")";
        log(Severity::kINFO, s.str());
        return new DeepseekMoePlugin(attrs);
    }
    catch (std::exception const& e)
    {
        log(Severity::kERROR, std::string("DeepseekMoE: cannot create plugin: ") + e.what());
    }
    catch (...)
    {
        log(Severity::kERROR, "DeepseekMoE: cannot create plugin: unknown exception");
    }
    return nullptr;
}

} // namespace plugin
} // namespace mla
