/*
 * The DeepseekMoE op contract in C++: a mirror of the MOE_* names of mla_export/common/contract.py (the one
 * definition; the routing rule is documented in mla_export/model/moe.py). tests/test_contract_mirror.py checks
 * every constant here against the Python module.
 */
#pragma once

#include <cstdint>

namespace mla
{
namespace moe_contract
{

constexpr int32_t kContractVersion = 3;

// Plugin identity (ONNX node: op_type DeepseekMoE, domain "mla").
constexpr char const* kOpType = "DeepseekMoE";
constexpr char const* kOpDomain = "mla";
constexpr char const* kPluginName = "DeepseekMoE";
constexpr char const* kPluginNamespace = "mla";
constexpr char const* kPluginVersion = "1";

// Op inputs and outputs, in order. A node has the first 5 inputs (experts in T) or all 7 (experts in FP8,
// float8e4m3fn, with float32 scales per 128x128 block: contract.py's FP8 block convention). Version 3: the
// expert stacks 3-6 hold E_local <= E experts, global ids first_expert + j (a --tp rank's slice; E_local = E
// and first_expert = 0 on one device); routing stays over all E, the other experts contribute 0.
enum InputIndex : int32_t
{
    kHiddenStates = 0, //!< [B,S,d] T
    kRouterWeight = 1, //!< [E,d] float32
    kScoreBias = 2,    //!< [E] float32
    kGateUpProj = 3,   //!< [E_local,2I,d] T, or float8e4m3fn
    kDownProj = 4,     //!< [E_local,d,I] T, or float8e4m3fn
    kGateUpScale = 5,  //!< [E_local,ceil(2I/128),ceil(d/128)] float32 (FP8 experts only)
    kDownScale = 6,    //!< [E_local,ceil(d/128),ceil(I/128)] float32 (FP8 experts only)
    kNumInputs = 7,          //!< with FP8 experts (contract.MOE_FP8_INPUTS)
    kNumInputsTExperts = 5   //!< with experts in T (contract.MOE_INPUTS)
};
enum OutputIndex : int32_t
{
    kRoutedOutput = 0, //!< [B,S,d] T
    kNumOutputs = 1
};
constexpr char const* kInputNames[kNumInputs]
    = {"hidden_states", "router_weight", "score_bias", "gate_up_proj", "down_proj", "gate_up_scale", "down_scale"};
constexpr char const* kOutputNames[kNumOutputs] = {"routed_output"};

// Attributes (ONNX INT arrive as kINT32, FLOAT as kFLOAT32 from TensorRT's ONNX parser).
constexpr char const* kAttrNumExperts = "num_experts";
constexpr char const* kAttrTopK = "top_k";
constexpr char const* kAttrNGroup = "n_group";
constexpr char const* kAttrTopkGroup = "topk_group";
constexpr char const* kAttrScoringFunc = "scoring_func";
constexpr char const* kAttrGroupScore = "group_score";
constexpr char const* kAttrUseBias = "use_bias";
constexpr char const* kAttrNormalize = "normalize";
constexpr char const* kAttrWeightScale = "weight_scale";
constexpr char const* kAttrFirstExpert = "first_expert"; //!< version 3 (contract.MOE_SLICE_ATTRIBUTES)

// FP8 experts' block (contract.FP8_BLOCK): one scale per kFp8Block x kFp8Block elements of an expert matrix.
constexpr int32_t kFp8Block = 128;

// Values of scoring_func and group_score.
constexpr int32_t kScoringSoftmax = 0;
constexpr int32_t kScoringSigmoid = 1;
constexpr int32_t kGroupScoreMax = 0;
constexpr int32_t kGroupScoreTop2Sum = 1;

} // namespace moe_contract
} // namespace mla
