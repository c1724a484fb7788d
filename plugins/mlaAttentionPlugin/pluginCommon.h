/*
 * What both plugins (MlaAttention, DeepseekMoE) share: shape helpers for their messages, and reading one
 * attribute of a PluginFieldCollection, as both creators need it:
 * TensorRT's ONNX parser sends ONNX INT as kINT32 and FLOAT as kFLOAT32; programmatic users may send
 * kINT64 / kFLOAT64. Each reader checks the field's type, length and value and returns an empty string,
 * or the reason naming the field.
 */
#pragma once

#include "NvInferRuntime.h"

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

//! The name of a PluginFieldType, for messages ("kINT32", ...).
char const* fieldTypeName(nvinfer1::PluginFieldType type) noexcept;

//! One integer (kINT32 or kINT64, length 1) in [minimum, INT32_MAX] into `out`; "" or why not.
std::string readIntField(nvinfer1::PluginField const& field, int32_t& out, int64_t minimum);

//! One float (kFLOAT32 or kFLOAT64, length 1), finite and within float32, and > 0 when `positive`; "" or why not.
std::string readFloatField(nvinfer1::PluginField const& field, float& out, bool positive);

} // namespace plugin
} // namespace mla
