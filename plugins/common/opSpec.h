/*
 * An op as the plugin skeleton sees it (PluginCore, PluginBase, PluginCreator), filled from the op's
 * contract header (mlaContract.h, moeContract.h, fp8Contract.h) and shape rules (mlaShapes.h, moeShapes.h,
 * fp8Shapes.h): TensorRT's plugin name, version and namespace, the op's inputs and outputs by index and name
 * (an op may also take only its first `fewerInputs` inputs), and the rules that depend on the tensors'
 * descriptors only (the attribute-dependent ones are PluginCore's hooks). The skeleton's messages start
 * with `name`.
 */
#pragma once

#include "NvInferRuntime.h"
#include "mlaKernels.h"

#include <cstdint>
#include <string>

namespace mla
{
namespace plugin
{

//! The most inputs plus outputs a plugin built on the skeleton may have (its per-call arrays live on the stack).
constexpr int32_t kMaxTensors = 16;

struct OpSpec
{
    char const* name;       //!< plugin name (= ONNX op type)
    char const* version;    //!< plugin version
    char const* nameSpace;  //!< plugin namespace (= ONNX domain)
    int32_t numInputs;  //!< the most inputs (the length of inputNames)
    int32_t numOutputs;
    char const* const* inputNames;  //!< [numInputs]
    char const* const* outputNames; //!< [numOutputs]
    int32_t activationInput;        //!< the input whose type is the op's T (the kernels' type)

    //! Output types from input types; empty when the input types are acceptable.
    std::string (*outputDataTypes)(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs);
    //! supportsFormatCombination's rule for position `pos`, looking at positions <= pos only.
    bool (*supportsFormat)(int32_t pos, nvinfer1::PluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs);
    //! The input whose shape (and type) output `outputIndex` has.
    int32_t (*outputShapeSource)(int32_t outputIndex);
    //! The kernels' images, loaded into a plugin object's module on its first enqueue.
    kernels::ImageSet (*imageSet)();

    //! Another input count the op accepts (its first `fewerInputs` inputs alone), or 0: numInputs only.
    int32_t fewerInputs{0};
    //! Output `o`'s extents from the inputs' (fully known at enqueue); null: those of outputShapeSource(o).
    nvinfer1::Dims (*outputDims)(int32_t o, nvinfer1::Dims const* inputs){nullptr};
    //! Output `o`'s shape expressions from the inputs' (getOutputShapes); null: outputShapeSource(o)'s. The
    //! same rule as outputDims (one template over Dims and DimsExprs), built from the inputs' expressions only.
    nvinfer1::DimsExprs (*outputExprs)(int32_t o, nvinfer1::DimsExprs const* inputs){nullptr};

    //! True when an op call may have `n` inputs.
    constexpr bool acceptsInputCount(int32_t n) const noexcept
    {
        return n == numInputs || (fewerInputs > 0 && n == fewerInputs);
    }
};

} // namespace plugin
} // namespace mla
