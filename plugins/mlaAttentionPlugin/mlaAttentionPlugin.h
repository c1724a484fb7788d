/*
 * MlaAttention: TensorRT IPluginV3 plugin for absorbed Multi-head Latent Attention with an in-place
 * latent cache, and its IPluginCreatorV3One. Name `MlaAttention`, namespace `mla`, version `1`.
 *
 * Contract: mla_export/common/contract.py (mirrored in mlaContract.h); shapes and types: mlaShapes.h;
 * kernels: plugins/kernels/mlaKernels.h (AOT-compiled Triton). No CUDA syntax here: the plugin
 * calls the kernels' host API and the CUDA driver API only. Built on the skeleton of plugins/common
 * (pluginBase.h: the IPluginV3 methods, their checks and error reporting; pluginCreator.h: the creator):
 * this class holds what is MlaAttention's own (its attributes as fields, the hooks over mlaShapes.h,
 * the launch, the alias).
 *
 * The latent cache is updated in place the way TensorRT documents it: the build capability is
 * IPluginV3OneBuildV2 and getAliasedInput declares present_cache (output 1) an alias of past_cache
 * (input 4). TensorRT consults it when the builder config enables PreviewFeature::kALIASED_PLUGIN_IO_10_03
 * (TensorRT 10.3+); enqueue then gets one buffer for both and writes only the new rows. Handed two
 * buffers (an engine built without the feature), enqueue copies past to present first.
 *
 * Contract version 2 (attributes page_size, kv_cache_dtype; absent in version-1 files): a node with a paged pool
 * in T has 8 inputs and 2 outputs, one with the FP8 cache 10 and 4 (mlaCacheShapes.h); each object takes the
 * spec of its attributes (specFor), and every present plane aliases its past input.
 */
#pragma once

#include "NvInferRuntime.h"
#include "mlaContract.h"
#include "mlaCacheShapes.h"
#include "mlaKernels.h"
#include "mlaShapes.h"
#include "pluginBase.h"
#include "pluginCreator.h"

#include <array>
#include <string>

namespace mla
{
namespace plugin
{

class MlaAttentionPlugin final
    : public PluginBase<MlaAttentionPlugin, MlaAttributes, nvinfer1::IPluginV3OneBuildV2>
{
public:
    static constexpr OpSpec kSpec{contract::kPluginName, contract::kPluginVersion, contract::kPluginNamespace,
        contract::kNumInputs, contract::kNumOutputs, contract::kInputNames, contract::kOutputNames, contract::kQLatent,
        &plugin::outputDataTypes, &plugin::supportsFormat, &plugin::outputShapeSource, &kernels::mlaImageSet};
    //! Contract version 2: a paged pool in T (8 inputs, 2 outputs), the FP8 cache (10 inputs, 4 outputs).
    static constexpr OpSpec kPagedSpec{contract::kPluginName, contract::kPluginVersion, contract::kPluginNamespace,
        contract::kNumPagedInputs, contract::kNumOutputs, contract::kCacheInputNames, contract::kCacheOutputNames,
        contract::kQLatent, &plugin::cacheOutputDataTypes, &plugin::supportsCacheFormat,
        &plugin::cacheOutputShapeSource, &kernels::mlaImageSet};
    static constexpr OpSpec kFp8CacheSpec{contract::kPluginName, contract::kPluginVersion, contract::kPluginNamespace,
        contract::kNumFp8CacheInputs, contract::kNumFp8CacheOutputs, contract::kCacheInputNames,
        contract::kCacheOutputNames, contract::kQLatent, &plugin::cacheOutputDataTypes, &plugin::supportsCacheFormat,
        &plugin::cacheOutputShapeSource, &kernels::mlaImageSet};
    //! The attributes, as TensorRT's ONNX parser sends them: positive integers, a float > 0, and contract version
    //! 2's page_size and kv_cache_dtype (optional: a version-1 file has neither; validate checks their values).
    static constexpr std::array<AttributeField<MlaAttributes>, 6> kFields{{
        intAttribute(contract::kAttrNumHeads, &MlaAttributes::numHeads, 1),
        intAttribute(contract::kAttrKvLoraRank, &MlaAttributes::kvLoraRank, 1),
        intAttribute(contract::kAttrQkRopeHeadDim, &MlaAttributes::ropeDim, 1),
        floatAttribute(contract::kAttrSoftmaxScale, &MlaAttributes::softmaxScale, true),
        optionalIntAttribute(contract::kAttrPageSize, &MlaAttributes::pageSize, 0),
        optionalIntAttribute(contract::kAttrKvCacheDtype, &MlaAttributes::kvCacheDtype, 0),
    }};
    static std::string validate(MlaAttributes const& attrs) { return validateAttributes(attrs); }
    //! The spec of a node with these attributes: kSpec (version 1), kPagedSpec or kFp8CacheSpec.
    static OpSpec const& specFor(MlaAttributes const& attrs) noexcept;

    //! `attrs` must be valid (validateAttributes); the creator checks them.
    explicit MlaAttentionPlugin(MlaAttributes const& attrs);

    // IPluginV3OneBuildV2
    //! kPastCache for kPresentCache (the cache is updated in place), -1 for attn_latent; with the FP8 cache
    //! also kPastScale for kPresentScale and kPastRope for kPresentRope.
    int32_t getAliasedInput(int32_t outputIndex) noexcept override;

private:
    std::string validateInputDims(nvinfer1::Dims const* inputs, int32_t nbInputs) const override;
    bool kernelsSupport(
        nvinfer1::Dims const* inputs, int32_t nbInputs, kernels::DataType dtype, char const** why) const override;
    //! For the build device's SM count (queryNumSms).
    size_t workspaceSize(nvinfer1::Dims const* minDims, nvinfer1::Dims const* maxDims, int32_t nbInputs,
        kernels::DataType dtype) const override;
    //! Copies each past plane to its present first when they are two buffers, then launches the kernels.
    int32_t launch(EnqueueCall const& call) override;
    //! The kernels' view of a call (either contract version).
    kernels::Dims kernelDimsOf(nvinfer1::Dims const* inputs, kernels::DataType dtype) const;

    //! Number of SMs of the current device, or kFallbackNumSms when it cannot be queried.
    static int32_t queryNumSms() noexcept;
};

//! MlaAttention's creator: the fields of MlaAttentionPlugin::kFields, checked by validateAttributes.
using MlaAttentionPluginCreator = PluginCreator<MlaAttentionPlugin>;

} // namespace plugin
} // namespace mla
