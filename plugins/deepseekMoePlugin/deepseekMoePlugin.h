/*
 * DeepseekMoE: TensorRT IPluginV3 plugin for the routed experts of a DeepSeek MoE MLP (router included), and
 * its IPluginCreatorV3One. Name `DeepseekMoE`, namespace `mla`, version `1`; shipped in libmla_plugin.so
 * beside MlaAttention and BlockFp8MatMul. A node has 5 inputs (experts in T) or 7 (FP8 experts and their
 * 128x128 block scales, contract version 2): the layer's input count decides which kernels run.
 *
 * Contract: mla_export/common/contract.py MOE_* (mirrored in moeContract.h); routing semantics: mla_export/model/moe.py;
 * shapes and types: moeShapes.h; kernels: plugins/kernels/moeKernels.h (AOT-compiled Triton). No CUDA syntax
 * here: the plugin calls the kernels' host API and the CUDA driver API only. The routing and alignment buffers
 * live in the workspace TensorRT hands enqueue (getWorkspaceSize): no allocation, no host sync, CUDA-graph safe.
 * Built on the skeleton of plugins/common (pluginBase.h: the IPluginV3 methods, their checks and error
 * reporting; pluginCreator.h: the creator): this class holds what is DeepseekMoE's own (its attributes as
 * fields, the hooks over moeShapes.h, the launch).
 */
#pragma once

#include "NvInferRuntime.h"
#include "moeContract.h"
#include "moeKernels.h"
#include "moeShapes.h"
#include "pluginBase.h"
#include "pluginCreator.h"

#include <array>
#include <string>

namespace mla
{
namespace plugin
{

class DeepseekMoePlugin final : public PluginBase<DeepseekMoePlugin, MoeAttributes>
{
public:
    static constexpr OpSpec kSpec{moe_contract::kPluginName, moe_contract::kPluginVersion,
        moe_contract::kPluginNamespace, moe_contract::kNumInputs, moe_contract::kNumOutputs, moe_contract::kInputNames,
        moe_contract::kOutputNames, moe_contract::kHiddenStates, &moeOutputDataTypes, &moeSupportsFormat,
        &moeOutputShapeSource, &kernels::moe::imageSet, moe_contract::kNumInputsTExperts};
    //! The attributes, as TensorRT's ONNX parser sends them: non-negative integers (validateMoeAttributes checks
    //! the rule), a finite float.
    //! first_expert (contract version 3) is optional: files of versions 1-2 lack it (every expert: 0).
    static constexpr std::array<AttributeField<MoeAttributes>, 10> kFields{{
        intAttribute(moe_contract::kAttrNumExperts, &MoeAttributes::numExperts, 0),
        intAttribute(moe_contract::kAttrTopK, &MoeAttributes::topK, 0),
        intAttribute(moe_contract::kAttrNGroup, &MoeAttributes::nGroup, 0),
        intAttribute(moe_contract::kAttrTopkGroup, &MoeAttributes::topkGroup, 0),
        intAttribute(moe_contract::kAttrScoringFunc, &MoeAttributes::scoringFunc, 0),
        intAttribute(moe_contract::kAttrGroupScore, &MoeAttributes::groupScore, 0),
        intAttribute(moe_contract::kAttrUseBias, &MoeAttributes::useBias, 0),
        intAttribute(moe_contract::kAttrNormalize, &MoeAttributes::normalize, 0),
        floatAttribute(moe_contract::kAttrWeightScale, &MoeAttributes::weightScale, false),
        optionalIntAttribute(moe_contract::kAttrFirstExpert, &MoeAttributes::firstExpert, 0),
    }};
    static std::string validate(MoeAttributes const& attrs) { return validateMoeAttributes(attrs); }

    //! `attrs` must be valid (validateMoeAttributes); the creator checks them.
    explicit DeepseekMoePlugin(MoeAttributes const& attrs);

private:
    std::string validateInputDims(nvinfer1::Dims const* inputs, int32_t nbInputs) const override;
    bool kernelsSupport(
        nvinfer1::Dims const* inputs, int32_t nbInputs, kernels::DataType dtype, char const** why) const override;
    size_t workspaceSize(nvinfer1::Dims const* minDims, nvinfer1::Dims const* maxDims, int32_t nbInputs,
        kernels::DataType dtype) const override;
    //! No token (B or S is 0): nothing to compute or write.
    bool nothingToCompute(nvinfer1::Dims const* inputs) const override;
    int32_t launch(EnqueueCall const& call) override;
};

//! DeepseekMoE's creator: the fields of DeepseekMoePlugin::kFields, checked by validateMoeAttributes.
using DeepseekMoePluginCreator = PluginCreator<DeepseekMoePlugin>;

} // namespace plugin
} // namespace mla
