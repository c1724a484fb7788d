/*
 * What the shape and type rules of both plugins (mlaShapes, moeShapes) share: extents compared with
 * build-time unknowns, dims written for messages, and the activation types the AOT kernels take.
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

//! Two extents equal, or one of them unknown (-1 at build time).
inline bool dimsAgree(int64_t a, int64_t b) noexcept
{
    return a < 0 || b < 0 || a == b;
}

//! Dims as "[2,-1,576]", for messages.
std::string dimsString(nvinfer1::Dims const& dims);

//! The activation type T of both ops: fp16 or bf16 (fp32 too, for testing; the AOT kernels refuse it).
bool isActivationType(nvinfer1::DataType type);

//! nvinfer1 type -> kernels type; false for types the kernels do not take.
bool toKernelType(nvinfer1::DataType type, kernels::DataType& out);

} // namespace plugin
} // namespace mla
