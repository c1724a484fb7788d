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
    kNumInputs = 7,
    // Contract version 2 (a paged and/or FP8 latent cache): inputs 0-6 keep their meaning, then these.
    kBlockTable = 7,        //!< [B,max_pages] int32 (contiguous: [B,1], never read)
    kPastScale = 8,         //!< fp8: [P,page,ceil(Dc/128)] float32
    kPastRope = 9,          //!< fp8: [P,page,Dr] T
    kNumPagedInputs = 8,    //!< a node whose pool holds rows in T
    kNumFp8CacheInputs = 10 //!< a node with the FP8 cache (paged or contiguous)
};
enum OutputIndex : int32_t
{
    kAttnLatent = 0,   //!< [B,S,H,Dc] T
    kPresentCache = 1, //!< [B,Smax,Dc+Dr] T
    kNumOutputs = 2,
    kPresentScale = 2,      //!< contract version 2, fp8: aliases kPastScale
    kPresentRope = 3,       //!< contract version 2, fp8: aliases kPastRope
    kNumFp8CacheOutputs = 4
};
constexpr char const* kInputNames[kNumInputs]
    = {"q_latent", "q_pe", "kv_latent", "k_pe", "past_cache", "cache_seqlens", "rope_cos_sin"};
constexpr char const* kOutputNames[kNumOutputs] = {"attn_latent", "present_cache"};

// Attributes (ONNX INT arrive as kINT32, FLOAT as kFLOAT32 from TensorRT's ONNX parser).
constexpr char const* kAttrNumHeads = "num_heads";
constexpr char const* kAttrKvLoraRank = "kv_lora_rank";
constexpr char const* kAttrQkRopeHeadDim = "qk_rope_head_dim";
constexpr char const* kAttrSoftmaxScale = "softmax_scale";

// Contract version 2 (a paged and/or FP8 latent cache; contract.py): the node's names and attributes.
constexpr int32_t kCacheContractVersion = 2;
constexpr char const* kCacheInputNames[kNumFp8CacheInputs] = {"q_latent", "q_pe", "kv_latent", "k_pe", "past_cache",
    "cache_seqlens", "rope_cos_sin", "block_table", "past_scale", "past_rope"};
constexpr char const* kCacheOutputNames[kNumFp8CacheOutputs]
    = {"attn_latent", "present_cache", "present_scale", "present_rope"};
constexpr char const* kAttrPageSize = "page_size";         //!< 0: contiguous, else a power of two
constexpr char const* kAttrKvCacheDtype = "kv_cache_dtype"; //!< kKvCacheDtypeModel or kKvCacheDtypeFp8
constexpr int32_t kKvCacheDtypeModel = 0;
constexpr int32_t kKvCacheDtypeFp8 = 1;
constexpr int32_t kMaxPageSize = 4096;
constexpr int32_t kFp8CacheTile = 128; //!< c_kv values per float32 scale
constexpr char const* kMetaCache = "mla_export.cache";               //!< ONNX metadata: "contiguous" or "paged"
constexpr char const* kMetaKvCacheDtype = "mla_export.kv_cache_dtype"; //!< ONNX metadata: "model" or "fp8"

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
