/*
 * Reading one attribute of a PluginFieldCollection, as both creators (MlaAttention, DeepseekMoE) need it:
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

//! The name of a PluginFieldType, for messages ("kINT32", ...).
char const* fieldTypeName(nvinfer1::PluginFieldType type) noexcept;

//! One integer (kINT32 or kINT64, length 1) in [minimum, INT32_MAX] into `out`; "" or why not.
std::string readIntField(nvinfer1::PluginField const& field, int32_t& out, int64_t minimum);

//! One float (kFLOAT32 or kFLOAT64, length 1), finite and within float32, and > 0 when `positive`; "" or why not.
std::string readFloatField(nvinfer1::PluginField const& field, float& out, bool positive);

} // namespace plugin
} // namespace mla
