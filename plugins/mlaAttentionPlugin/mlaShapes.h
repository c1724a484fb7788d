/*
 * Shape, type and workspace rules of MlaAttention as pure functions (no TensorRT objects, no CUDA
 * calls), so that the plugin's build-time answers can be unit-tested on a CPU-only machine.
 *
 * Contract: mla_export/common/contract.py (mirrored in mlaContract.h). Shapes (T in {fp16, bf16, fp32}):
 *   inputs  q_latent [B,S,H,Dc] T, q_pe [B,S,H,Dr] T, kv_latent [B,S,Dc] T, k_pe [B,S,Dr] T,
 *           past_cache [B,Smax,Dc+Dr] T, cache_seqlens [B] int32, rope_cos_sin [Smax,Dr] float32
 *   outputs attn_latent [B,S,H,Dc] T (shape of q_latent), present_cache [B,Smax,Dc+Dr] T (shape of past_cache)
 */
#pragma once

#include "NvInferRuntime.h"
#include "mlaContract.h"
#include "mlaKernels.h"
#include "pluginShapes.h"

#include <cstddef>
#include <cstdint>
#include <string>

namespace mla
{
namespace plugin
{

//! The op's attributes (contract.OP_ATTRIBUTES), as the creator parsed them.
struct MlaAttributes
{
    int32_t numHeads{0};   //!< num_heads, H
    int32_t kvLoraRank{0}; //!< kv_lora_rank, Dc
    int32_t ropeDim{0};    //!< qk_rope_head_dim, Dr (even: RoPE rotates pairs)
    float softmaxScale{0.F}; //!< softmax_scale (finite, > 0)
    // Contract version 2 (absent from version-1 files: 0, 0). The rules of a node with either set: mlaCacheShapes.h.
    int32_t pageSize{0};     //!< page_size: 0 (contiguous) or a power of two <= contract::kMaxPageSize
    int32_t kvCacheDtype{0}; //!< kv_cache_dtype: contract::kKvCacheDtypeModel or kKvCacheDtypeFp8
};

//! Empty when `attrs` are valid; otherwise a message naming the attribute, its value and what is expected.
std::string validateAttributes(MlaAttributes const& attrs);

//! Rank of each input and output, indexed by contract::InputIndex / contract::OutputIndex.
constexpr int32_t kInputRanks[contract::kNumInputs] = {4, 4, 3, 3, 3, 1, 2};
constexpr int32_t kOutputRanks[contract::kNumOutputs] = {4, 3};

//! Checks the input shapes against each other and the attributes. Extents < 0 (unknown at build
//! time) are not compared. Empty when consistent; otherwise the first mismatch, named.
std::string validateInputDims(MlaAttributes const& attrs, nvinfer1::Dims const* inputs, int32_t nbInputs);

//! The axes both contract versions share: inputs 0-3, cache_seqlens and rope_cos_sin's width against q_latent
//! and the attributes (through `checks`, the op's names and ranks). Empty when they agree.
std::string checkTokenAxes(InputShapeChecks const& checks, MlaAttributes const& attrs, nvinfer1::Dims const* inputs);

//! Output index -> the input whose shape it has (attn_latent: q_latent, present_cache: past_cache).
int32_t outputShapeSource(int32_t outputIndex);

//! Output index -> the input it aliases (IPluginV3OneBuildV2::getAliasedInput): present_cache aliases
//! past_cache (the cache is updated in place); -1 for attn_latent and for indices out of range. An
//! aliased output has the shape, type and format of its input (outputShapeSource, supportsFormat).
int32_t aliasedInput(int32_t outputIndex);

//! Output dims from input dims (the same rule getOutputShapes applies to shape expressions).
nvinfer1::Dims outputDims(int32_t outputIndex, nvinfer1::Dims const* inputs);

//! supportsFormatCombination's rule for position `pos` of `inOut` (inputs then outputs); looks only
//! at positions <= pos, as TensorRT requires. Linear format only; present_cache takes exactly
//! past_cache's type and format (the pair is aliased).
bool supportsFormat(int32_t pos, nvinfer1::PluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs);

//! Output types from input types; empty string when the inputs are acceptable.
std::string outputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs, nvinfer1::DataType const* inputTypes,
    int32_t nbInputs);

//! The kernels' view of a call with these (fully known) input dims and activation type.
kernels::Dims kernelDims(MlaAttributes const& attrs, nvinfer1::Dims const* inputs, kernels::DataType dtype);

//! Workspace bytes for every shape in [min, max] of the profile: the largest kernels::workspaceBytes
//! over every (B, S, Smax) of the profile when there are at most kExhaustiveWorkspaceShapes of them,
//! else over B, S and Smax each in {min, powers of two in between, max} (the split plan depends on
//! the shape, not necessarily monotonically). `minDims`/`maxDims` hold the 7 inputs' bounds.
size_t workspaceSize(MlaAttributes const& attrs, nvinfer1::Dims const* minDims, nvinfer1::Dims const* maxDims,
    kernels::DataType dtype, int32_t numSms);

//! The largest kernels::workspaceBytes of `base` over B and S in [qMin, qMax] (q_latent's bounds, axes 0 and 1)
//! and Smax in [smaxLo, smaxHi], by workspaceSize's sampling rule (shared by both contract versions).
size_t workspaceOverProfile(kernels::Dims base, nvinfer1::Dims const& qMin, nvinfer1::Dims const& qMax, int64_t smaxLo,
    int64_t smaxHi, int32_t numSms);

//! Profiles with at most this many (B, S, Smax) shapes are searched exhaustively for the workspace.
constexpr int64_t kExhaustiveWorkspaceShapes = int64_t{1} << 18;

//! Number of SMs assumed for the workspace when the device cannot be queried at build time.
constexpr int32_t kFallbackNumSms = 256;

} // namespace plugin
} // namespace mla
