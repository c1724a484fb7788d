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

std::string mismatch(int32_t input, int32_t axis, Dims const& dims, int64_t want, char const* what)
{
    std::ostringstream s;
    s << "DeepseekMoE: input " << input << " (" << c::kInputNames[input] << ") has shape " << dimsString(dims)
      << ": axis " << axis << " is " << dims.d[axis] << ", expected " << want << " (" << what << ")";
    return s.str();
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
    return {};
}

std::string validateMoeInputDims(MoeAttributes const& attrs, Dims const* in, int32_t nbInputs)
{
    if (nbInputs != c::kNumInputs)
    {
        return "DeepseekMoE: expected " + std::to_string(c::kNumInputs) + " inputs, got " + std::to_string(nbInputs);
    }
    for (int32_t i = 0; i < c::kNumInputs; ++i)
    {
        if (in[i].nbDims != kMoeInputRanks[i])
        {
            return std::string("DeepseekMoE: input ") + std::to_string(i) + " (" + c::kInputNames[i] + ") has rank "
                + std::to_string(in[i].nbDims) + ", expected " + std::to_string(kMoeInputRanks[i]);
        }
    }
    int64_t const d = in[c::kHiddenStates].d[2];
    int64_t const experts = attrs.numExperts;
    int64_t const twoInter = in[c::kGateUpProj].d[1];
    if (twoInter >= 0 && twoInter % 2 != 0)
    {
        return mismatch(c::kGateUpProj, 1, in[c::kGateUpProj], twoInter + 1, "2I: gate rows then up rows");
    }
    int64_t const inter = twoInter >= 0 ? twoInter / 2 : -1;
    struct Rule
    {
        int32_t input;
        int32_t axis;
        int64_t want;
        char const* what;
    };
    Rule const rules[] = {
        {c::kRouterWeight, 0, experts, "num_experts"},
        {c::kRouterWeight, 1, d, "d of hidden_states"},
        {c::kScoreBias, 0, experts, "num_experts"},
        {c::kGateUpProj, 0, experts, "num_experts"},
        {c::kGateUpProj, 2, d, "d of hidden_states"},
        {c::kDownProj, 0, experts, "num_experts"},
        {c::kDownProj, 1, d, "d of hidden_states"},
        {c::kDownProj, 2, inter, "I: half of gate_up_proj's axis 1"},
    };
    for (Rule const& r : rules)
    {
        if (!dimsAgree(in[r.input].d[r.axis], r.want))
        {
            return mismatch(r.input, r.axis, in[r.input], r.want, r.what);
        }
    }
    for (int32_t i = 0; i < c::kNumInputs; ++i)
    {
        for (int32_t a = 0; a < in[i].nbDims; ++a)
        {
            bool const tokenAxis = i == c::kHiddenStates && a < 2; // B and S may be 0: nothing to compute
            if (in[i].d[a] == 0 && !tokenAxis)
            {
                return mismatch(i, a, in[i], 1, "a non-empty extent");
            }
        }
    }
    return {};
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
    if (inOut == nullptr || nbInputs != c::kNumInputs || nbOutputs != c::kNumOutputs || pos < 0
        || pos >= nbInputs + nbOutputs)
    {
        return false;
    }
    nvinfer1::PluginTensorDesc const& desc = inOut[pos];
    if (desc.format != nvinfer1::TensorFormat::kLINEAR)
    {
        return false;
    }
    if (pos == c::kRouterWeight || pos == c::kScoreBias)
    {
        return desc.type == DataType::kFLOAT;
    }
    return isActivationType(desc.type) && (pos == c::kHiddenStates || desc.type == inOut[c::kHiddenStates].type);
}

std::string moeOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs)
{
    if (outputTypes == nullptr || inputTypes == nullptr || nbOutputs != c::kNumOutputs || nbInputs != c::kNumInputs)
    {
        return "DeepseekMoE: expected 5 inputs and 1 output";
    }
    DataType const t = inputTypes[c::kHiddenStates];
    if (!isActivationType(t))
    {
        return "DeepseekMoE: hidden_states must be float16, bfloat16 or float32";
    }
    for (int32_t i : {c::kGateUpProj, c::kDownProj})
    {
        if (inputTypes[i] != t)
        {
            return std::string("DeepseekMoE: input ") + c::kInputNames[i] + " must have the type of hidden_states";
        }
    }
    for (int32_t i : {c::kRouterWeight, c::kScoreBias})
    {
        if (inputTypes[i] != DataType::kFLOAT)
        {
            return std::string("DeepseekMoE: input ") + c::kInputNames[i] + " must be float32 (routing runs in float32)";
        }
    }
    outputTypes[c::kRoutedOutput] = t;
    return {};
}

kernels::moe::Dims moeKernelDims(MoeAttributes const& a, Dims const* inputs, kernels::DataType dtype)
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
    return d;
}

size_t moeWorkspaceSize(MoeAttributes const& attrs, Dims const* minDims, Dims const* maxDims, kernels::DataType dtype)
{
    kernels::moe::Dims d = moeKernelDims(attrs, maxDims, dtype);
    int64_t const lo = std::max<int64_t>(1, minDims[c::kHiddenStates].d[0] * minDims[c::kHiddenStates].d[1]);
    int64_t const hi = std::max<int64_t>(lo, d.tokens);
    std::set<int64_t> tokenCounts{lo, hi};
    for (int64_t p = 1; p < hi; p *= 2)
    {
        if (p > lo)
        {
            tokenCounts.insert(p);
        }
    }
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
