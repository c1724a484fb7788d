/*
 * Shape, type and workspace rules of DeepseekMoE as pure functions (no TensorRT objects, no CUDA calls), so
 * that the plugin's build-time answers can be unit-tested on a CPU-only machine.
 *
 * Contract: mla_export/common/contract.py MOE_* (mirrored in moeContract.h); routing semantics: mla_export/model/moe.py.
 *   inputs  hidden_states [B,S,d] T, router_weight [E,d] float32, score_bias [E] float32,
 *           gate_up_proj [E,2I,d] T, down_proj [E,d,I] T          (T in {fp16, bf16, fp32})
 *   or, with FP8 experts (7 inputs): gate_up_proj [E,2I,d] and down_proj [E,d,I] float8e4m3fn, then
 *           gate_up_scale [E,ceil(2I/128),ceil(d/128)] and down_scale [E,ceil(d/128),ceil(I/128)] float32
 *   (version 3: the expert stacks' E is E_local, a rank's experts first_expert .. first_expert + E_local - 1,
 *   with first_expert + E_local <= num_experts; router_weight and score_bias keep num_experts)
 *   output  routed_output [B,S,d] T (the shape of hidden_states)
 */
#pragma once

#include "NvInferRuntime.h"
#include "moeContract.h"
#include "moeKernels.h"
#include "pluginShapes.h"

#include <cstddef>
#include <cstdint>
#include <string>

namespace mla
{
namespace plugin
{

//! The op's attributes (contract.MOE_ATTRIBUTES), as the creator parsed them.
struct MoeAttributes
{
    int32_t numExperts{0};  //!< num_experts, E
    int32_t topK{0};        //!< top_k
    int32_t nGroup{1};      //!< n_group (divides E)
    int32_t topkGroup{1};   //!< topk_group
    int32_t scoringFunc{0}; //!< scoring_func: 0 softmax, 1 sigmoid
    int32_t groupScore{0};  //!< group_score: 0 max, 1 sum of the top 2
    int32_t useBias{0};     //!< use_bias: 0 or 1
    int32_t normalize{0};   //!< normalize: 0 or 1
    float weightScale{1.F}; //!< weight_scale (finite)
    int32_t firstExpert{0}; //!< first_expert (contract version 3): global id of the stacks' expert 0; 0 when absent
};

//! Empty when `attrs` form a routing rule (the checks of mla_export.model.moe.RoutingRule); otherwise a message
//! naming the attribute, its value and what is expected.
std::string validateMoeAttributes(MoeAttributes const& attrs);

//! Rank of each input and of the output, indexed by moe_contract::InputIndex / OutputIndex.
constexpr int32_t kMoeInputRanks[moe_contract::kNumInputs] = {3, 2, 1, 3, 3, 3, 3};
constexpr int32_t kMoeOutputRank = 3;

//! A layer of `nbInputs` inputs has FP8 experts (7 inputs: the experts' block scales follow them).
constexpr bool moeFp8Experts(int32_t nbInputs) noexcept
{
    return nbInputs == moe_contract::kNumInputs;
}

//! Checks the input shapes (5 or 7 inputs) against each other and the attributes. Extents < 0 (unknown at
//! build time) are not compared. Empty when consistent; otherwise the first mismatch, named.
std::string validateMoeInputDims(MoeAttributes const& attrs, nvinfer1::Dims const* inputs, int32_t nbInputs);

//! routed_output's dims: those of hidden_states.
nvinfer1::Dims moeOutputDims(nvinfer1::Dims const* inputs);

//! The input whose shape routed_output has: hidden_states.
int32_t moeOutputShapeSource(int32_t outputIndex);

//! supportsFormatCombination's rule for position `pos` (inputs then the output); looks only at positions
//! <= pos. Linear format; router_weight and score_bias float32; with 7 inputs gate_up_proj and down_proj
//! kFP8 and their scales float32; every other position T, decided by hidden_states (fp16, bf16, or fp32 for
//! testing).
bool moeSupportsFormat(int32_t pos, nvinfer1::PluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs);

//! Output type from input types (5 or 7 inputs); empty string when the inputs are acceptable.
std::string moeOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
    nvinfer1::DataType const* inputTypes, int32_t nbInputs);

//! The kernels' view of a call with these (fully known) input dims (nbInputs of them: 7 for FP8 experts) and
//! activation type.
kernels::moe::Dims moeKernelDims(
    MoeAttributes const& attrs, nvinfer1::Dims const* inputs, int32_t nbInputs, kernels::DataType dtype);

//! Workspace bytes for every shape in [min, max] of the profile: the largest kernels::moe::workspaceBytes over
//! the token counts B*S in {min, powers of two in between, the kernels' chunk size, max}.
size_t moeWorkspaceSize(MoeAttributes const& attrs, nvinfer1::Dims const* minDims, nvinfer1::Dims const* maxDims,
    int32_t nbInputs, kernels::DataType dtype);

} // namespace plugin
} // namespace mla
