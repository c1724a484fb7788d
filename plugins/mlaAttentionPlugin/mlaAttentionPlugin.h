/*
 * MlaAttention: TensorRT IPluginV3 plugin for absorbed Multi-head Latent Attention with an in-place
 * latent cache, and its IPluginCreatorV3One. Name `MlaAttention`, namespace `mla`, version `1`.
 *
 * Contract: mla_export/common/contract.py (mirrored in mlaContract.h); shapes and types: mlaShapes.h;
 * kernels: plugins/kernels/mlaKernels.h (AOT-compiled Triton). No CUDA syntax here: the plugin
 * calls the kernels' host API and the CUDA driver API only.
 *
 * The latent cache is updated in place the way TensorRT documents it: the build capability is
 * IPluginV3OneBuildV2 and getAliasedInput declares present_cache (output 1) an alias of past_cache
 * (input 4). TensorRT consults it when the builder config enables PreviewFeature::kALIASED_PLUGIN_IO_10_03
 * (TensorRT 10.3+); enqueue then gets one buffer for both and writes only the new rows. Handed two
 * buffers (an engine built without the feature), enqueue copies past to present first.
 */
#pragma once

#include "NvInferRuntime.h"
#include "mlaKernels.h"
#include "mlaShapes.h"

#include <cuda.h>

#include <string>
#include <vector>

namespace mla
{
namespace plugin
{

class MlaAttentionPlugin : public nvinfer1::IPluginV3,
                           public nvinfer1::IPluginV3OneCore,
                           public nvinfer1::IPluginV3OneBuildV2,
                           public nvinfer1::IPluginV3OneRuntime
{
public:
    //! `attrs` must be valid (validateAttributes); the creator checks them.
    explicit MlaAttentionPlugin(MlaAttributes const& attrs);
    MlaAttentionPlugin(MlaAttentionPlugin const& other);
    MlaAttentionPlugin& operator=(MlaAttentionPlugin const&) = delete;
    ~MlaAttentionPlugin() override; //!< unloads the kernel module of its context, if loaded

    MlaAttributes const& attributes() const noexcept { return mAttrs; }

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild (through IPluginV3OneBuildV2)
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t getNbOutputs() const noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

    // IPluginV3OneBuildV2
    //! kPastCache for kPresentCache (the cache is updated in place), -1 for every other output.
    int32_t getAliasedInput(int32_t outputIndex) noexcept override;

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    //! Checks a CUDA driver result; reports a failure naming `what`. True when `result` is success.
    bool checkCuda(CUresult result, char const* what) const noexcept;
    //! Loads the kernel module for the current context once; true when loaded.
    bool ensureModuleLoaded() noexcept;
    //! Number of SMs of the current device, or kFallbackNumSms when it cannot be queried.
    static int32_t queryNumSms() noexcept;

    MlaAttributes mAttrs;
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFieldCollection{};
    nvinfer1::IErrorRecorder* mErrorRecorder{nullptr};
    kernels::Module mModule;
    bool mModuleFailed{false};
};

class MlaAttentionPluginCreator : public nvinfer1::IPluginCreatorV3One
{
public:
    MlaAttentionPluginCreator();
    ~MlaAttentionPluginCreator() override = default;

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    //! Parses and validates `fc`; returns nullptr (after logging why) when a field is missing or invalid.
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;

    //! The parsing alone: fills `attrs` or returns a message naming the offending field.
    static std::string parseFields(nvinfer1::PluginFieldCollection const* fc, MlaAttributes& attrs);

private:
    std::vector<nvinfer1::PluginField> mFieldNames;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

} // namespace plugin
} // namespace mla
