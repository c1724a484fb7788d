/*
 * An op's identity and tensors as the plugin skeleton needs them, filled from the op's contract header
 * (mlaContract.h, moeContract.h): TensorRT's plugin name, version and namespace, and the op's inputs and
 * outputs by index and name. Messages of the skeleton start with `name`.
 */
#pragma once

#include <cstdint>

namespace mla
{
namespace plugin
{

//! The most inputs plus outputs a plugin built on the skeleton may have (its per-call arrays live on the stack).
constexpr int32_t kMaxTensors = 16;

struct OpIdentity
{
    char const* name;       //!< plugin name (= ONNX op type)
    char const* version;    //!< plugin version
    char const* nameSpace;  //!< plugin namespace (= ONNX domain)
    int32_t numInputs;
    int32_t numOutputs;
    char const* const* inputNames;  //!< [numInputs]
    char const* const* outputNames; //!< [numOutputs]
    int32_t activationInput;        //!< the input whose type is the op's T (the kernels' type)
};

} // namespace plugin
} // namespace mla
