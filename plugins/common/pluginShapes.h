/*
 * What the shape and type rules of both plugins (mlaShapes, moeShapes) share: extents compared with
 * build-time unknowns, dims written for messages, and the activation types the AOT kernels take.
 */
#pragma once

#include "NvInferRuntime.h"
#include "mlaKernels.h"

#include <cstddef>
#include <cstdint>
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

//! Bytes per element of float32, int32, float16 and bfloat16; 0 for other types.
size_t elementSize(nvinfer1::DataType type) noexcept;

//! The activation type T of both ops: fp16 or bf16 (fp32 too, for testing; the AOT kernels refuse it).
bool isActivationType(nvinfer1::DataType type);

//! nvinfer1 type -> kernels type; false for types the kernels do not take.
bool toKernelType(nvinfer1::DataType type, kernels::DataType& out);

} // namespace plugin
} // namespace mla
