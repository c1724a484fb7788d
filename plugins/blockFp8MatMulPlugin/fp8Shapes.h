/*
 * Shape, type and workspace rules of BlockFp8MatMul as pure functions (no TensorRT objects but descriptors, no
 * CUDA calls), so that the plugin's build-time answers can be unit-tested on a CPU-only machine.
 *
 * Contract: mla_export/common/contract.py FP8_* (mirrored in fp8Contract.h).
 *   inputs  input [..., K] T (rank >= 2)   with weight [N, K] or [1, N, K]     (T in {fp16, bf16, fp32})
 *           input [G, M, K] T              with weight [G, N, K], G > 1
 *           weight float8e4m3fn, weight_scale_inv float32 [(G,) ceil(N/128), ceil(K/128)]
 *   output  [..., N] T: the input's shape with its last axis N
 */
#pragma once

#include "NvInferRuntime.h"
#include "fp8Contract.h"
#include "fp8Kernels.h"
#include "pluginShapes.h"

#include <cstddef>
#include <cstdint>
#include <string>

namespace mla
{
namespace plugin
{

//! The op's attributes (contract.FP8_ATTRIBUTES), as the creator parsed them.
struct Fp8Attributes
{
    int32_t blockSize{fp8_contract::kBlock}; //!< block_size: the scales' block edge; only 128 is supported
};

//! Empty when block_size is 128; otherwise the message naming it.
std::string validateFp8Attributes(Fp8Attributes const& attrs);

//! Checks the input shapes against each other and the block convention. Extents < 0 (unknown at build time)
//! are not compared. Empty when consistent; otherwise the first mismatch, named.
std::string validateFp8InputDims(nvinfer1::Dims const* inputs, int32_t nbInputs);

//! The output's shape: the input's, with its last axis the weight's N (axis -2). One rule for extents and
//! shape expressions (getOutputShapes only passes the inputs' expressions on). nbDims -1 when the ranks give
//! no shape (input rank < 1 or weight rank < 2).
template <typename DimsT>
DimsT fp8OutputShape(DimsT const* inputs)
{
    DimsT out = inputs[fp8_contract::kInput];
    DimsT const& weight = inputs[fp8_contract::kWeight];
    if (out.nbDims < 1 || weight.nbDims < 2)
    {
        out.nbDims = -1;
        return out;
    }
    out.d[out.nbDims - 1] = weight.d[weight.nbDims - 2];
    return out;
}

//! OpSpec's output rules: fp8OutputShape for the output's extents and expressions.
nvinfer1::Dims fp8OutputDims(int32_t outputIndex, nvinfer1::Dims const* inputs);
nvinfer1::DimsExprs fp8OutputExprs(int32_t outputIndex, nvinfer1::DimsExprs const* inputs);

//! The input whose type (and leading axes) the output has: input.
int32_t fp8OutputShapeSource(int32_t outputIndex);

//! supportsFormatCombination's rule for position `pos` (inputs then the output); looks only at positions
//! <= pos. Linear format; input T (fp16, bf16, or fp32); weight kFP8; weight_scale_inv float32; output T.
bool fp8SupportsFormat(int32_t pos, nvinfer1::PluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs);

//! Output type from input types; empty string when the inputs are acceptable.
std::string fp8OutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
    nvinfer1::DataType const* inputTypes, int32_t nbInputs);

//! The product's rows per group: M of [G, M, K] when G > 1, else the product of the input's leading axes.
int64_t fp8Rows(nvinfer1::Dims const* inputs);

//! The kernels' view of a call with these (fully known, valid) input dims and activation type.
kernels::fp8::Dims fp8KernelDims(Fp8Attributes const& attrs, nvinfer1::Dims const* inputs, kernels::DataType dtype);

//! Workspace bytes for every shape in [min, max] of the profile: the largest kernels::fp8::workspaceBytes over
//! the rows in {min, powers of two in between, max}.
size_t fp8WorkspaceSize(Fp8Attributes const& attrs, nvinfer1::Dims const* minDims, nvinfer1::Dims const* maxDims,
    kernels::DataType dtype);

} // namespace plugin
} // namespace mla
