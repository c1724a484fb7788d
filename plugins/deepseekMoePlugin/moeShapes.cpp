/*
 * Shape, type and workspace rules of DeepseekMoE (see moeShapes.h).
 */
#include "moeShapes.h"


#include <algorithm>
#include <cmath>
#include <set>
#include <sstream>

namespace mla
{
namespace plugin
{
namespace
{
using nvinfer1::DataType;
using nvinfer1::Dims;
namespace c = moe_contract;

// Experts in T (the first 5 inputs) and FP8 experts (all 7).
constexpr InputShapeChecks kChecksT{c::kPluginName, c::kInputNames, kMoeInputRanks, c::kNumInputsTExperts};
constexpr InputShapeChecks kChecksFp8{c::kPluginName, c::kInputNames, kMoeInputRanks, c::kNumInputs};

//! ceil(extent / 128), the scale blocks along an axis; -1 for an unknown extent.
int64_t scaleBlocks(int64_t extent)
{
    return extent < 0 ? -1 : (extent + c::kFp8Block - 1) / c::kFp8Block;
}

std::string attribute(char const* name, int64_t value, char const* expected)
{
    std::ostringstream s;
    s << "attribute " << name << " = " << value << ": expected " << expected;
    return s.str();
}
} // namespace

std::string validateMoeAttributes(MoeAttributes const& a)
{
    if (a.numExperts < 1)
    {
        return attribute(c::kAttrNumExperts, a.numExperts, "a positive integer");
    }
    if (a.topK < 1 || a.topK > a.numExperts)
    {
        return attribute(c::kAttrTopK, a.topK, "an integer in [1, num_experts]");
    }
    if (a.nGroup < 1 || a.numExperts % a.nGroup != 0)
    {
        return attribute(c::kAttrNGroup, a.nGroup, "a positive divisor of num_experts");
    }
    if (a.topkGroup < 1 || a.topkGroup > a.nGroup)
    {
        return attribute(c::kAttrTopkGroup, a.topkGroup, "an integer in [1, n_group]");
    }
    int32_t const groupSize = a.numExperts / a.nGroup;
    if (int64_t{a.topK} > int64_t{a.topkGroup} * groupSize)
    {
        return attribute(c::kAttrTopK, a.topK, "at most the experts of the topk_group groups kept");
    }
    if (a.scoringFunc != c::kScoringSoftmax && a.scoringFunc != c::kScoringSigmoid)
    {
        return attribute(c::kAttrScoringFunc, a.scoringFunc, "0 (softmax) or 1 (sigmoid)");
    }
    if (a.groupScore != c::kGroupScoreMax && a.groupScore != c::kGroupScoreTop2Sum)
    {
        return attribute(c::kAttrGroupScore, a.groupScore, "0 (max) or 1 (sum of the top 2)");
    }
    if (a.groupScore == c::kGroupScoreTop2Sum && a.nGroup > 1 && groupSize < 2)
    {
        return attribute(c::kAttrGroupScore, a.groupScore, "0 when groups hold one expert (a top-2 sum needs 2)");
    }
    if (a.useBias != 0 && a.useBias != 1)
    {
        return attribute(c::kAttrUseBias, a.useBias, "0 or 1");
    }
    if (a.normalize != 0 && a.normalize != 1)
    {
        return attribute(c::kAttrNormalize, a.normalize, "0 or 1");
    }
    if (!std::isfinite(a.weightScale))
    {
        std::ostringstream s;
        s << "attribute " << c::kAttrWeightScale << " = " << a.weightScale << ": expected a finite value";
        return s.str();
    }
    if (a.firstExpert < 0 || a.firstExpert >= a.numExperts)
    {
        return attribute(c::kAttrFirstExpert, a.firstExpert, "an integer in [0, num_experts)");
    }
    return {};
}

std::string validateMoeInputDims(MoeAttributes const& attrs, Dims const* in, int32_t nbInputs)
{
    if (nbInputs != c::kNumInputsTExperts && nbInputs != c::kNumInputs)
    {
        return std::string(c::kPluginName) + ": expected 5 or 7 inputs, got " + std::to_string(nbInputs);
    }
    InputShapeChecks const& checks = moeFp8Experts(nbInputs) ? kChecksFp8 : kChecksT;
    std::string why = checks.countAndRanks(in, nbInputs);
    if (!why.empty())
    {
        return why;
    }
    int64_t const d = in[c::kHiddenStates].d[2];
    int64_t const experts = attrs.numExperts;
    int64_t const twoInter = in[c::kGateUpProj].d[1];
    if (twoInter >= 0 && twoInter % 2 != 0)
    {
        return checks.mismatch(in, c::kGateUpProj, 1, twoInter + 1, "2I: gate rows then up rows");
    }
    int64_t const inter = twoInter >= 0 ? twoInter / 2 : -1;
    int64_t const held = in[c::kGateUpProj].d[0]; // E_local (contract version 3): E on one device
    if (held >= 0 && (held < 1 || attrs.firstExpert + held > experts))
    {
        return checks.mismatch(in, c::kGateUpProj, 0, std::max<int64_t>(1, experts - attrs.firstExpert),
            "E_local: the experts from first_expert, at most num_experts - first_expert");
    }
    why = checks.axes(in,
        {
            {c::kRouterWeight, 0, experts, "num_experts"},
            {c::kRouterWeight, 1, d, "d of hidden_states"},
            {c::kScoreBias, 0, experts, "num_experts"},
            {c::kGateUpProj, 2, d, "d of hidden_states"},
            {c::kDownProj, 0, held, "E_local of gate_up_proj"},
            {c::kDownProj, 1, d, "d of hidden_states"},
            {c::kDownProj, 2, inter, "I: half of gate_up_proj's axis 1"},
        });
    if (why.empty() && moeFp8Experts(nbInputs))
    {
        why = checks.axes(in,
            {
                {c::kGateUpScale, 0, held, "E_local of gate_up_proj"},
                {c::kGateUpScale, 1, scaleBlocks(twoInter), "ceil(2I/128): one scale per 128x128 block"},
                {c::kGateUpScale, 2, scaleBlocks(d), "ceil(d/128): one scale per 128x128 block"},
                {c::kDownScale, 0, held, "E_local of gate_up_proj"},
                {c::kDownScale, 1, scaleBlocks(d), "ceil(d/128): one scale per 128x128 block"},
                {c::kDownScale, 2, scaleBlocks(inter), "ceil(I/128): one scale per 128x128 block"},
            });
    }
    // B and S of hidden_states may be 0: nothing to compute.
    return why.empty() ? checks.nonEmpty(in, c::kHiddenStates, 2) : why;
}

Dims moeOutputDims(Dims const* inputs)
{
    return inputs[moeOutputShapeSource(c::kRoutedOutput)];
}

int32_t moeOutputShapeSource(int32_t /*outputIndex*/)
{
    return c::kHiddenStates;
}

bool moeSupportsFormat(int32_t pos, nvinfer1::PluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs)
{
    bool const fp8 = moeFp8Experts(nbInputs);
    if (!linearAt(pos, inOut, nbInputs, nbOutputs, fp8 ? c::kNumInputs : c::kNumInputsTExperts, c::kNumOutputs))
    {
        return false;
    }
    if (pos == c::kRouterWeight || pos == c::kScoreBias || (fp8 && (pos == c::kGateUpScale || pos == c::kDownScale)))
    {
        return inOut[pos].type == DataType::kFLOAT;
    }
    if (fp8 && (pos == c::kGateUpProj || pos == c::kDownProj))
    {
        return inOut[pos].type == DataType::kFP8;
    }
    return activationAt(pos, inOut, c::kHiddenStates);
}

std::string moeOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs)
{
    if (outputTypes == nullptr || inputTypes == nullptr || nbOutputs != c::kNumOutputs
        || (nbInputs != c::kNumInputsTExperts && nbInputs != c::kNumInputs))
    {
        return "DeepseekMoE: expected 5 or 7 inputs and 1 output";
    }
    bool const fp8 = moeFp8Experts(nbInputs);
    std::string const why = fp8
        ? checkActivationTypes(c::kPluginName, c::kInputNames, inputTypes, c::kHiddenStates, {})
        : checkActivationTypes(
            c::kPluginName, c::kInputNames, inputTypes, c::kHiddenStates, {c::kGateUpProj, c::kDownProj});
    if (!why.empty())
    {
        return why;
    }
    for (int32_t i : {c::kRouterWeight, c::kScoreBias})
    {
        if (inputTypes[i] != DataType::kFLOAT)
        {
            return std::string("DeepseekMoE: input ") + c::kInputNames[i] + " must be float32 (routing runs in float32)";
        }
    }
    for (int32_t i = c::kGateUpProj; fp8 && i <= c::kDownScale; ++i)
    {
        bool const scale = i == c::kGateUpScale || i == c::kDownScale;
        if (inputTypes[i] != (scale ? DataType::kFLOAT : DataType::kFP8))
        {
            return std::string("DeepseekMoE: input ") + c::kInputNames[i]
                + (scale ? " must be float32 (the FP8 experts' block scales)"
                         : " must be float8e4m3fn (kFP8) in a 7-input node (FP8 experts)");
        }
    }
    outputTypes[c::kRoutedOutput] = inputTypes[c::kHiddenStates];
    return {};
}

kernels::moe::Dims moeKernelDims(MoeAttributes const& a, Dims const* inputs, int32_t nbInputs, kernels::DataType dtype)
{
    kernels::moe::Dims d{};
    d.tokens = inputs[c::kHiddenStates].d[0] * inputs[c::kHiddenStates].d[1];
    d.hidden = static_cast<int32_t>(inputs[c::kHiddenStates].d[2]);
    d.inter = static_cast<int32_t>(inputs[c::kDownProj].d[2]);
    d.numExperts = a.numExperts;
    d.topK = a.topK;
    d.nGroup = a.nGroup;
    d.topkGroup = a.topkGroup;
    d.scoringFunc = a.scoringFunc;
    d.groupScore = a.groupScore;
    d.useBias = a.useBias;
    d.normalize = a.normalize;
    d.weightScale = a.weightScale;
    d.dtype = dtype;
    d.fp8Experts = moeFp8Experts(nbInputs) ? 1 : 0;
    d.localExperts = static_cast<int32_t>(inputs[c::kGateUpProj].d[0]);
    d.firstExpert = a.firstExpert;
    return d;
}

size_t moeWorkspaceSize(
    MoeAttributes const& attrs, Dims const* minDims, Dims const* maxDims, int32_t nbInputs, kernels::DataType dtype)
{
    kernels::moe::Dims d = moeKernelDims(attrs, maxDims, nbInputs, dtype);
    int64_t const lo = std::max<int64_t>(1, minDims[c::kHiddenStates].d[0] * minDims[c::kHiddenStates].d[1]);
    int64_t const hi = std::max<int64_t>(lo, d.tokens);
    std::set<int64_t> tokenCounts = profileSamples(lo, hi);
    int64_t const chunk = kernels::moe::chunkTokens();
    if (chunk > lo && chunk < hi)
    {
        tokenCounts.insert(chunk);
    }
    size_t bytes = 0;
    for (int64_t tokens : tokenCounts)
    {
        d.tokens = tokens;
        bytes = std::max(bytes, kernels::moe::workspaceBytes(d));
    }
    return bytes;
}

} // namespace plugin
} // namespace mla
