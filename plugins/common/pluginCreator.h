/*
 * PluginCreator<Plugin>: the IPluginCreatorV3One of a plugin built on PluginBase (pluginBase.h). Its
 * identity is Plugin::kSpec; it declares Plugin::kFields as the ONNX parser sends them (INT -> kINT32,
 * FLOAT -> kFLOAT32; only declared names reach createPlugin); createPlugin parses and checks them
 * (readFields, then Plugin::validate) and returns nullptr, after logging why, when a field is missing or
 * invalid. A created plugin's attributes are logged at INFO: "<op>: name=value ... (build phase, layer L)".
 */
#pragma once

#include "NvInferRuntime.h"
#include "pluginFields.h"

#include <string>

namespace mla
{
namespace plugin
{

//! Logs createPlugin's refusal: "<op>: cannot create plugin <layer>: <why>".
void logCreateRefused(char const* op, char const* layer, std::string const& why) noexcept;
//! Logs a created plugin: "<op>:<description> (<phase> phase, layer <layer>)".
void logCreated(char const* op, std::string const& description, char const* layer, nvinfer1::TensorRTPhase phase) noexcept;
//! Logs the exception being handled, escaped from createPlugin; call only inside a catch block.
void logCreateException(char const* op) noexcept;

template <typename Plugin>
class PluginCreator : public nvinfer1::IPluginCreatorV3One
{
public:
    using Attributes = typename Plugin::Attributes;

    PluginCreator() { mDeclared.write(Plugin::kFields, static_cast<Attributes const*>(nullptr)); }

    char const* getPluginName() const noexcept override { return Plugin::kSpec.name; }
    char const* getPluginVersion() const noexcept override { return Plugin::kSpec.version; }
    char const* getPluginNamespace() const noexcept override { return Plugin::kSpec.nameSpace; }
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override { return mDeclared.collection(); }

    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override
    {
        try
        {
            Attributes attrs;
            std::string const why = parseFields(fc, attrs);
            if (!why.empty())
            {
                logCreateRefused(Plugin::kSpec.name, name, why);
                return nullptr;
            }
            logCreated(Plugin::kSpec.name, describeFields(Plugin::kFields, attrs), name, phase);
            return new Plugin(attrs);
        }
        catch (...)
        {
            logCreateException(Plugin::kSpec.name);
        }
        return nullptr;
    }

    //! The parsing alone: fills `attrs` or returns a message naming the offending field.
    static std::string parseFields(nvinfer1::PluginFieldCollection const* fc, Attributes& attrs)
    {
        std::string const why = readFields(Plugin::kSpec.name, fc, Plugin::kFields, attrs);
        return why.empty() ? Plugin::validate(attrs) : why;
    }

private:
    FieldWriter mDeclared; //!< getFieldNames: the fields, without data
};

} // namespace plugin
} // namespace mla
