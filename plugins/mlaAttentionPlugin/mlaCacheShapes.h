/*
 * Shape, type and workspace rules of MlaAttention contract version 2 (a paged and/or FP8 latent cache) as pure
 * functions, like mlaShapes.h for version 1. The plugin object picks its rules by its attributes page_size and
 * kv_cache_dtype (cacheSpecFor): (0, 0) is contract version 1 (mlaShapes.h), anything else these.
 *
 * Contract: mla_export/common/contract.py (mirrored in mlaContract.h). Inputs 0-3 and 5-6 as in version 1, then
 *   4 past_cache  [P,page,Dc+Dr] T (kv_cache_dtype 0)  or  [P,page,Dc] fp8 (kv_cache_dtype 1, c_kv's codes);
 *                 contiguous (page_size 0, FP8 only): P = B, page = Smax
 *   7 block_table [B,max_pages] int32 (contiguous: [B,n], not read)
 *   8 past_scale  fp8 only: [P,page,ceil(Dc/128)] float32
 *   9 past_rope   fp8 only: [P,page,Dr] T
 * outputs attn_latent [B,S,H,Dc] T, present_cache (input 4), fp8: present_scale (input 8), present_rope (input 9),
 * each aliasing its input (updated in place).
 */
#pragma once

#include "NvInferRuntime.h"
#include "mlaContract.h"
#include "mlaKernels.h"
#include "mlaShapes.h"

#include <cstddef>
#include <cstdint>
#include <string>

namespace mla
{
namespace plugin
{

//! True when `attrs` select a contract-2 cache (a page size, or the FP8 cache).
inline bool usesCacheV2(MlaAttributes const& attrs) noexcept
{
    return attrs.pageSize != 0 || attrs.kvCacheDtype != contract::kKvCacheDtypeModel;
}

//! Inputs and outputs of a node with these attributes: 7 and 2 (version 1), 8 and 2 (a paged pool in T), 10 and 4
//! (the FP8 cache).
int32_t numInputsFor(MlaAttributes const& attrs) noexcept;
int32_t numOutputsFor(MlaAttributes const& attrs) noexcept;

//! Ranks of the ten inputs and four outputs of contract version 2, in contract order.
constexpr int32_t kCacheInputRanks[contract::kNumFp8CacheInputs] = {4, 4, 3, 3, 3, 1, 2, 2, 3, 3};

//! Empty when the version-2 inputs (8 or 10 of them) agree with each other and `attrs` (< 0: unknown extents).
std::string validateCacheInputDims(MlaAttributes const& attrs, nvinfer1::Dims const* inputs, int32_t nbInputs);

//! Output index -> the input whose shape and type it has, and which it aliases (getAliasedInput): q_latent for
//! attn_latent (not aliased), past_cache, past_scale, past_rope for the presents.
int32_t cacheOutputShapeSource(int32_t outputIndex);
//! getAliasedInput of version 2: the present planes alias their past inputs; -1 for attn_latent and out of range.
int32_t cacheAliasedInput(int32_t outputIndex);

//! supportsFormatCombination of version 2 at `pos`: linear only; block_table and cache_seqlens int32, rope_cos_sin
//! and past_scale float32, past_cache fp8 in a 10-input node (else T), every other input T, each present the
//! type and format of the input it aliases.
bool supportsCacheFormat(int32_t pos, nvinfer1::PluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs);

//! Output types of version 2 (8 inputs and 2 outputs, or 10 and 4); empty when the input types are acceptable.
std::string cacheOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
    nvinfer1::DataType const* inputTypes, int32_t nbInputs);

//! The kernels' view of a version-2 call: Smax = max_pages * page_size (paged) or past_cache's rows, the pool's
//! pages, the block table's columns and the rope table's rows.
kernels::Dims cacheKernelDims(MlaAttributes const& attrs, nvinfer1::Dims const* inputs, kernels::DataType dtype);

//! Workspace bytes for every shape of [min, max] (as workspaceSize, over B, S and the call's Smax).
size_t cacheWorkspaceSize(MlaAttributes const& attrs, nvinfer1::Dims const* minDims, nvinfer1::Dims const* maxDims,
    kernels::DataType dtype, int32_t numSms);

} // namespace plugin
} // namespace mla
