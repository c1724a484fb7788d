/*
 * What the shape and type rules of the plugins (mlaShapes, moeShapes, fp8Shapes) share: extents compared with
 * build-time unknowns, the checks of input shapes against each other (InputShapeChecks, with messages
 * naming the op, the input and the axis), the activation types the AOT kernels take and the type and
 * format rules built on them, and the shapes a profile's workspace is sampled at. No TensorRT objects
 * but descriptors, no CUDA calls: unit-tested on a CPU-only machine.
 */
#pragma once

#include "NvInferRuntime.h"
#include "mlaKernels.h"

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <set>
#include <string>

namespace mla
{
namespace plugin
{

//! Two extents equal, or one of them unknown (-1 at build time).
inline bool dimsAgree(int64_t a, int64_t b) noexcept
{
    return a < 0 || b < 0 || a == b;
}

//! Dims as "[2,-1,576]", for messages.
std::string dimsString(nvinfer1::Dims const& dims);

//! The same rank and extents.
bool sameDims(nvinfer1::Dims const& a, nvinfer1::Dims const& b) noexcept;

//! The number of elements (the product of the extents).
int64_t volume(nvinfer1::Dims const& dims) noexcept;

//! Bytes per element of float32, int32, float16, bfloat16 and fp8; 0 for other types.
size_t elementSize(nvinfer1::DataType type) noexcept;

//! The activation type T of both ops: fp16 or bf16 (fp32 too, for testing; the AOT kernels refuse it).
bool isActivationType(nvinfer1::DataType type);

//! nvinfer1 type -> kernels type; false for types the kernels do not take.
bool toKernelType(nvinfer1::DataType type, kernels::DataType& out);

//! One expected extent: axis `axis` of input `input` is `want` (< 0: unknown, not compared); `what` says why.
struct AxisRule
{
    int32_t input;
    int32_t axis;
    int64_t want;
    char const* what;
};

//! Checks of one op's input shapes; every message names the op and the input, e.g.
//! "MlaAttention: input 2 (kv_latent) has shape [2,2,32]: axis 1 is 2, expected 3 (S of q_latent)".
class InputShapeChecks
{
public:
    //! `names` and `ranks` hold `numInputs` entries (the op's contract order) and must outlive the checks.
    constexpr InputShapeChecks(char const* op, char const* const* names, int32_t const* ranks, int32_t numInputs) noexcept
        : mOp(op)
        , mNames(names)
        , mRanks(ranks)
        , mNumInputs(numInputs)
    {
    }

    //! "" when there are numInputs inputs, each of its rank.
    std::string countAndRanks(nvinfer1::Dims const* inputs, int32_t nbInputs) const;
    //! "" when every rule's extent agrees (dimsAgree); else the first mismatch.
    std::string axes(nvinfer1::Dims const* inputs, std::initializer_list<AxisRule> rules) const;
    //! "" when no extent is 0, except the first `emptyAxes` axes of input `emptyInput` (-1: none).
    std::string nonEmpty(nvinfer1::Dims const* inputs, int32_t emptyInput = -1, int32_t emptyAxes = 0) const;
    //! The message for axis `axis` of input `input` not being `want` (`what` says why).
    std::string mismatch(
        nvinfer1::Dims const* inputs, int32_t input, int32_t axis, int64_t want, char const* what) const;

private:
    char const* mOp;
    char const* const* mNames;
    int32_t const* mRanks;
    int32_t mNumInputs;
};

//! "" when input `source` holds an activation type T and every input of `followers` has T; else names the
//! first that does not ("<op>: <source> must be float16, bfloat16 or float32", "<op>: input <name> must have
//! the type of <source>").
std::string checkActivationTypes(char const* op, char const* const* names, nvinfer1::DataType const* types,
    int32_t source, std::initializer_list<int32_t> followers);

//! supportsFormatCombination's common ground: position `pos` of `inOut` exists for an op of numInputs inputs
//! and numOutputs outputs and is linear (the only format our kernels take).
bool linearAt(int32_t pos, nvinfer1::PluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs,
    int32_t numInputs, int32_t numOutputs);

//! A T position: an activation type, and the type of position `source` (which decides T) unless pos is it.
bool activationAt(int32_t pos, nvinfer1::PluginTensorDesc const* inOut, int32_t source);

//! The extents a profile's workspace is evaluated at: {lo, every power of two strictly between, hi}, with lo
//! clamped to >= 1 and hi to >= lo.
std::set<int64_t> profileSamples(int64_t lo, int64_t hi);

} // namespace plugin
} // namespace mla
