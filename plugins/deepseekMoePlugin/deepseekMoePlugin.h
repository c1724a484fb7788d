/*
 * DeepseekMoE: TensorRT IPluginV3 plugin for the routed experts of a DeepSeek MoE MLP (router included), and
 * its IPluginCreatorV3One. Name `DeepseekMoE`, namespace `mla`, version `1`; shipped in libmla_plugin.so
 * beside MlaAttention.
 *
 * Contract: mla_export/common/contract.py MOE_* (mirrored in moeContract.h); routing semantics: mla_export/model/moe.py;
 * shapes and types: moeShapes.h; kernels: plugins/kernels/moeKernels.h (AOT-compiled Triton). No CUDA syntax
 * here: the plugin calls the kernels' host API and the CUDA driver API only. The routing and alignment buffers
 * live in the workspace TensorRT hands enqueue (getWorkspaceSize): no allocation, no host sync, CUDA-graph safe.
 */
#pragma once

#include "NvInferRuntime.h"
#include "mlaKernels.h"
#include "moeShapes.h"

#include <cuda.h>

#include <string>
#include <vector>

namespace mla
{
namespace plugin
{

class DeepseekMoePlugin : public nvinfer1::IPluginV3,
                          public nvinfer1::IPluginV3OneCore,
                          public nvinfer1::IPluginV3OneBuild,
                          public nvinfer1::IPluginV3OneRuntime
{
public:
    //! `attrs` must be valid (validateMoeAttributes); the creator checks them.
    explicit DeepseekMoePlugin(MoeAttributes const& attrs);
    DeepseekMoePlugin(DeepseekMoePlugin const& other);
    DeepseekMoePlugin& operator=(DeepseekMoePlugin const&) = delete;
    ~DeepseekMoePlugin() override; //!< unloads the kernel module of its context, if loaded

    MoeAttributes const& attributes() const noexcept { return mAttrs; }

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild
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

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    bool checkCuda(CUresult result, char const* what) const noexcept;
    bool ensureModuleLoaded() noexcept;

    MoeAttributes mAttrs;
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFieldCollection{};
    nvinfer1::IErrorRecorder* mErrorRecorder{nullptr};
    kernels::Module mModule;
    bool mModuleFailed{false};
};

class DeepseekMoePluginCreator : public nvinfer1::IPluginCreatorV3One
{
public:
    DeepseekMoePluginCreator();
    ~DeepseekMoePluginCreator() override = default;

    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    //! Parses and validates `fc`; returns nullptr (after logging why) when a field is missing or invalid.
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;

    //! The parsing alone: fills `attrs` or returns a message naming the offending field.
    static std::string parseFields(nvinfer1::PluginFieldCollection const* fc, MoeAttributes& attrs);

private:
    std::vector<nvinfer1::PluginField> mFieldNames;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

} // namespace plugin
} // namespace mla
