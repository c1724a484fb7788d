/*
 * The BlockFp8MatMul op contract in C++: a mirror of the FP8_* names of mla_export/common/contract.py (the one
 * definition, with the FP8 block convention). tests/test_contract_mirror.py checks every constant here against
 * the Python module.
 */
#pragma once

#include <cstdint>

namespace mla
{
namespace fp8_contract
{

constexpr int32_t kContractVersion = 1;

// Plugin identity (ONNX node: op_type BlockFp8MatMul, domain "mla").
constexpr char const* kOpType = "BlockFp8MatMul";
constexpr char const* kOpDomain = "mla";
constexpr char const* kPluginName = "BlockFp8MatMul";
constexpr char const* kPluginNamespace = "mla";
constexpr char const* kPluginVersion = "1";

// Op inputs and outputs, in order: output = input @ dequantize(weight)^T (per G for a 3-D weight).
enum InputIndex : int32_t
{
    kInput = 0,          //!< [..., K] T (2-D weight, or 3-D with G = 1), or [G, M, K] T
    kWeight = 1,         //!< [N, K] or [G, N, K] float8e4m3fn
    kWeightScaleInv = 2, //!< [ceil(N/128), ceil(K/128)] or [G, ceil(N/128), ceil(K/128)] float32
    kNumInputs = 3
};
enum OutputIndex : int32_t
{
    kOutput = 0, //!< [..., N] T, or [G, M, N] T
    kNumOutputs = 1
};
constexpr char const* kInputNames[kNumInputs] = {"input", "weight", "weight_scale_inv"};
constexpr char const* kOutputNames[kNumOutputs] = {"output"};

// Attributes (ONNX INT arrive as kINT32 from TensorRT's ONNX parser).
constexpr char const* kAttrBlockSize = "block_size";

// The block convention: one float32 scale per kBlock x kBlock elements (the only block_size supported).
constexpr int32_t kBlock = 128;

} // namespace fp8_contract
} // namespace mla
