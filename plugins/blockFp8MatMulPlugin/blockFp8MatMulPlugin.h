/*
 * BlockFp8MatMul: TensorRT IPluginV3 plugin for a product with a weight in DeepSeek's FP8 block form
 * (float8e4m3fn values, one float32 scale per 128x128 block), and its IPluginCreatorV3One. Name
 * `BlockFp8MatMul`, namespace `mla`, version `1`; shipped in libmla_plugin.so beside MlaAttention and
 * DeepseekMoE.
 *
 * Contract: mla_export/common/contract.py FP8_* (mirrored in fp8Contract.h): output = input @ dequantize(weight)^T
 * per group, float32 accumulation, rounded once to T. Shapes and types: fp8Shapes.h; kernels:
 * plugins/kernels/fp8Kernels.h (AOT-compiled Triton). No CUDA syntax here: the plugin calls the kernels' host
 * API only; whatever scratch they need (the quantized activations of the native FP8 path) lives in the
 * workspace TensorRT hands enqueue. Built on the skeleton of plugins/common (pluginBase.h, pluginCreator.h):
 * this class holds what is BlockFp8MatMul's own (its attribute, the hooks over fp8Shapes.h, the launch).
 */
#pragma once

#include "NvInferRuntime.h"
#include "fp8Contract.h"
#include "fp8Kernels.h"
#include "fp8Shapes.h"
#include "pluginBase.h"
#include "pluginCreator.h"

#include <array>
#include <cstdint>
#include <limits>
#include <string>

namespace mla
{
namespace plugin
{

class BlockFp8MatMulPlugin final : public PluginBase<BlockFp8MatMulPlugin, Fp8Attributes>
{
public:
    static constexpr OpSpec kSpec{fp8_contract::kPluginName, fp8_contract::kPluginVersion,
        fp8_contract::kPluginNamespace, fp8_contract::kNumInputs, fp8_contract::kNumOutputs, fp8_contract::kInputNames,
        fp8_contract::kOutputNames, fp8_contract::kInput, &fp8OutputDataTypes, &fp8SupportsFormat,
        &fp8OutputShapeSource, &kernels::fp8::imageSet, /*fewerInputs=*/0, &fp8OutputDims, &fp8OutputExprs};
    //! block_size, as TensorRT's ONNX parser sends it: any 32-bit integer reaches validateFp8Attributes, which
    //! takes 128 only (one message for every other value).
    static constexpr std::array<AttributeField<Fp8Attributes>, 1> kFields{{
        intAttribute(fp8_contract::kAttrBlockSize, &Fp8Attributes::blockSize, std::numeric_limits<int32_t>::min()),
    }};
    static std::string validate(Fp8Attributes const& attrs) { return validateFp8Attributes(attrs); }

    //! `attrs` must be valid (validateFp8Attributes); the creator checks them.
    explicit BlockFp8MatMulPlugin(Fp8Attributes const& attrs);

private:
    std::string validateInputDims(nvinfer1::Dims const* inputs, int32_t nbInputs) const override;
    bool kernelsSupport(
        nvinfer1::Dims const* inputs, int32_t nbInputs, kernels::DataType dtype, char const** why) const override;
    size_t workspaceSize(nvinfer1::Dims const* minDims, nvinfer1::Dims const* maxDims, int32_t nbInputs,
        kernels::DataType dtype) const override;
    //! No row (a leading axis of the input is 0): nothing to compute or write.
    bool nothingToCompute(nvinfer1::Dims const* inputs) const override;
    int32_t launch(EnqueueCall const& call) override;
};

//! BlockFp8MatMul's creator: the field of BlockFp8MatMulPlugin::kFields, checked by validateFp8Attributes.
using BlockFp8MatMulPluginCreator = PluginCreator<BlockFp8MatMulPlugin>;

} // namespace plugin
} // namespace mla
