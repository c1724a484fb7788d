/*
 * PluginBase: the IPluginV3 skeleton of this library's plugins. A plugin derives from
 *
 *   PluginBase<Plugin, Attributes, BuildInterface>     BuildInterface: IPluginV3OneBuild (default), or
 *                                                      IPluginV3OneBuildV2 for a plugin with aliased I/O
 *
 * and gets IPluginV3 (capabilities: core, build, runtime; clone), IPluginV3OneCore (name, version,
 * namespace of Plugin::kSpec), the build and runtime methods (forwarded to PluginCore's steps,
 * pluginCore.h), attachToContext (a copy reporting to the context's error recorder) and
 * getFieldsToSerialize (Plugin::kFields with the plugin's attributes, pluginFields.h). The plugin supplies:
 *
 *   static constexpr OpSpec kSpec;                               its contract's names, its descriptors' rules
 *   static constexpr std::array<AttributeField<Attributes>, N> kFields;   in getFieldNames order
 *   static std::string validate(Attributes const&);              the creator's check of parsed attributes
 *   the PluginCore hooks                                         its op's rules, kernels and launch
 *
 * and PluginCreator<Plugin> (pluginCreator.h) is its creator. A copy (clone, attachToContext) keeps the
 * attributes and the error recorder, and loads its own kernel module.
 */
#pragma once

#include "NvInferRuntime.h"
#include "pluginCore.h"
#include "pluginFields.h"

namespace mla
{
namespace plugin
{

template <typename Plugin, typename Attrs, typename BuildInterface = nvinfer1::IPluginV3OneBuild>
class PluginBase : public nvinfer1::IPluginV3,
                   public nvinfer1::IPluginV3OneCore,
                   public BuildInterface,
                   public nvinfer1::IPluginV3OneRuntime,
                   protected PluginCore
{
public:
    using Attributes = Attrs;

    Attributes const& attributes() const noexcept { return mAttrs; }

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override
    {
        switch (type)
        {
        case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<BuildInterface*>(this);
        case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
        case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
        }
        return nullptr;
    }

    nvinfer1::IPluginV3* clone() noexcept override
    {
        try
        {
            return new Plugin(static_cast<Plugin const&>(*this));
        }
        catch (...)
        {
            reportException("clone");
        }
        return nullptr;
    }

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override { return Plugin::kSpec.name; }
    char const* getPluginVersion() const noexcept override { return Plugin::kSpec.version; }
    char const* getPluginNamespace() const noexcept override { return Plugin::kSpec.nameSpace; }

    // IPluginV3OneBuild
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override
    {
        return configureProfile(in, nbInputs, out, nbOutputs);
    }
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override
    {
        return outputTypesFor(outputTypes, nbOutputs, inputTypes, nbInputs);
    }
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
        nvinfer1::DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, nvinfer1::DimsExprs* outputs,
        int32_t nbOutputs, nvinfer1::IExprBuilder& /*exprBuilder*/) noexcept override
    {
        return outputShapesFor(inputs, nbInputs, outputs, nbOutputs);
    }
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override
    {
        return formatSupported(pos, inOut, nbInputs, nbOutputs);
    }
    int32_t getNbOutputs() const noexcept override { return this->spec().numOutputs; }
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept override
    {
        return workspaceFor(inputs, nbInputs);
    }

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override
    {
        return shapesChanged(in, nbInputs, out, nbOutputs);
    }
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override
    {
        return enqueueChecked(inputDesc, outputDesc, inputs, outputs, workspace, stream);
    }
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override
    {
        try
        {
            auto* attached = new Plugin(static_cast<Plugin const&>(*this));
            attached->setErrorRecorder(context != nullptr ? context->getErrorRecorder() : nullptr);
            return attached;
        }
        catch (...)
        {
            reportException("attachToContext");
        }
        return nullptr;
    }
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override
    {
        try
        {
            return mSerialized.write(Plugin::kFields, &mAttrs);
        }
        catch (...)
        {
            reportException("getFieldsToSerialize");
        }
        return nullptr;
    }

protected:
    //! `attrs` must be valid (Plugin::validate); the creator checks them.
    explicit PluginBase(Attributes const& attrs)
        : PluginBase(attrs, Plugin::kSpec)
    {
    }
    //! An op whose tensor counts depend on its attributes passes the spec of these attributes (same name,
    //! version and namespace as Plugin::kSpec).
    PluginBase(Attributes const& attrs, OpSpec const& spec)
        : PluginCore(spec)
        , mAttrs(attrs)
    {
    }
    PluginBase(PluginBase const& other)
        : PluginCore(other)
        , mAttrs(other.mAttrs)
    {
    }

    Attributes mAttrs;

private:
    FieldWriter mSerialized; //!< getFieldsToSerialize's fields, pointing at mAttrs
};

} // namespace plugin
} // namespace mla
