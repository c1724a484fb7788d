/*
 * The MlaAttention op contract in C++: a mirror of mla_export/common/contract.py (the one definition).
 * tests/test_contract_mirror.py checks every constant here against the Python module.
 */
#pragma once

#include <cstdint>

namespace mla
{
namespace contract
{

constexpr int32_t kContractVersion = 1;

// Plugin identity (ONNX node: op_type MlaAttention, domain "mla").
constexpr char const* kOpType = "MlaAttention";
constexpr char const* kOpDomain = "mla";
constexpr char const* kPluginName = "MlaAttention";
constexpr char const* kPluginNamespace = "mla";
constexpr char const* kPluginVersion = "1";

// Op inputs and outputs, in order.
enum InputIndex : int32_t
{
    kQLatent = 0,      //!< [B,S,H,Dc] T
    kQPe = 1,          //!< [B,S,H,Dr] T
    kKvLatent = 2,     //!< [B,S,Dc] T
    kKPe = 3,          //!< [B,S,Dr] T
    kPastCache = 4,    //!< [B,Smax,Dc+Dr] T
    kCacheSeqlensIn = 5, //!< [B] int32
    kRopeCosSin = 6,   //!< [Smax,Dr] float32
    kNumInputs = 7
};
enum OutputIndex : int32_t
{
    kAttnLatent = 0,   //!< [B,S,H,Dc] T
    kPresentCache = 1, //!< [B,Smax,Dc+Dr] T
    kNumOutputs = 2
};
constexpr char const* kInputNames[kNumInputs]
    = {"q_latent", "q_pe", "kv_latent", "k_pe", "past_cache", "cache_seqlens", "rope_cos_sin"};
constexpr char const* kOutputNames[kNumOutputs] = {"attn_latent", "present_cache"};

// Attributes (ONNX INT arrive as kINT32, FLOAT as kFLOAT32 from TensorRT's ONNX parser).
constexpr char const* kAttrNumHeads = "num_heads";
constexpr char const* kAttrKvLoraRank = "kv_lora_rank";
constexpr char const* kAttrQkRopeHeadDim = "qk_rope_head_dim";
constexpr char const* kAttrSoftmaxScale = "softmax_scale";

// Graph-level I/O names of an exported model.
constexpr char const* kCacheSeqlens = "cache_seqlens";
constexpr char const* kHiddenStatesIn = "hidden_states";
constexpr char const* kHiddenStatesOut = "output_hidden_states";
constexpr char const* kInputIds = "input_ids";
constexpr char const* kLogits = "logits";
constexpr char const* kPastCachePrefix = "past_latent_cache.";    //!< + layer index
constexpr char const* kPresentCachePrefix = "present_latent_cache."; //!< + layer index

} // namespace contract
} // namespace mla
