/*
 * Shape, type and workspace rules of BlockFp8MatMul (see fp8Shapes.h).
 */
#include "fp8Shapes.h"

#include <algorithm>
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
namespace c = fp8_contract;

// The ranks vary (input [..., K], weight 2-D or 3-D): validateFp8InputDims checks them itself; the checks
// object serves the axis rules and messages (its ranks, the smallest ones, are not used for counting).
constexpr int32_t kMinRanks[c::kNumInputs] = {2, 2, 2};
constexpr InputShapeChecks kChecks{c::kPluginName, c::kInputNames, kMinRanks, c::kNumInputs};

//! ceil(extent / 128), the scale blocks along an axis; -1 for an unknown extent.
int64_t scaleBlocks(int64_t extent)
{
    return extent < 0 ? -1 : (extent + c::kBlock - 1) / c::kBlock;
}

std::string rankMismatch(Dims const* in, int32_t input, char const* expected)
{
    std::ostringstream s;
    s << c::kPluginName << ": input " << input << " (" << c::kInputNames[input] << ") has shape "
      << dimsString(in[input]) << ", expected " << expected;
    return s.str();
}
} // namespace

std::string validateFp8Attributes(Fp8Attributes const& attrs)
{
    if (attrs.blockSize != c::kBlock)
    {
        std::ostringstream s;
        s << "attribute " << c::kAttrBlockSize << " = " << attrs.blockSize << ": expected " << c::kBlock
          << " (weights in 128x128 blocks: the FP8 kernels' only block size)";
        return s.str();
    }
    return {};
}

std::string validateFp8InputDims(Dims const* in, int32_t nbInputs)
{
    if (nbInputs != c::kNumInputs)
    {
        return std::string(c::kPluginName) + ": expected 3 inputs, got " + std::to_string(nbInputs);
    }
    Dims const& x = in[c::kInput];
    Dims const& w = in[c::kWeight];
    Dims const& s = in[c::kWeightScaleInv];
    if (w.nbDims != 2 && w.nbDims != 3)
    {
        return rankMismatch(in, c::kWeight, "rank 2 [N, K] or 3 [G, N, K]");
    }
    if (s.nbDims != w.nbDims)
    {
        return rankMismatch(in, c::kWeightScaleInv,
            w.nbDims == 2 ? "rank 2 [ceil(N/128), ceil(K/128)], as the weight"
                          : "rank 3 [G, ceil(N/128), ceil(K/128)], as the weight");
    }
    bool const grouped = w.nbDims == 3 && w.d[0] != 1; // G > 1 (or unknown): input [G, M, K]
    if (grouped ? x.nbDims != 3 : x.nbDims < 2)
    {
        return rankMismatch(in, c::kInput, grouped ? "rank 3 [G, M, K] for a weight [G, N, K] with G > 1"
                                                   : "rank 2 or more [..., K]");
    }
    int32_t const wn = w.nbDims - 2;
    int64_t const n = w.d[wn];
    int64_t const k = w.d[wn + 1];
    std::string why = kChecks.axes(in,
        {
            {c::kInput, x.nbDims - 1, k, "K: the weight's last axis"},
            {c::kWeightScaleInv, wn, scaleBlocks(n), "ceil(N/128): one scale per 128x128 block of the weight"},
            {c::kWeightScaleInv, wn + 1, scaleBlocks(k), "ceil(K/128): one scale per 128x128 block of the weight"},
        });
    if (why.empty() && w.nbDims == 3)
    {
        why = kChecks.axes(in, {{c::kWeightScaleInv, 0, w.d[0], "G: the weight's groups"}});
        if (why.empty() && grouped)
        {
            why = kChecks.axes(in, {{c::kInput, 0, w.d[0], "G: the weight's groups"}});
        }
    }
    // The input's leading axes may be 0 (no row: nothing to compute); N, K and the scales may not.
    return why.empty() ? kChecks.nonEmpty(in, c::kInput, x.nbDims - 1) : why;
}

Dims fp8OutputDims(int32_t /*outputIndex*/, Dims const* inputs)
{
    return fp8OutputShape(inputs);
}

nvinfer1::DimsExprs fp8OutputExprs(int32_t /*outputIndex*/, nvinfer1::DimsExprs const* inputs)
{
    return fp8OutputShape(inputs);
}

int32_t fp8OutputShapeSource(int32_t /*outputIndex*/)
{
    return c::kInput;
}

bool fp8SupportsFormat(int32_t pos, nvinfer1::PluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs)
{
    if (!linearAt(pos, inOut, nbInputs, nbOutputs, c::kNumInputs, c::kNumOutputs))
    {
        return false;
    }
    switch (pos)
    {
    case c::kWeight: return inOut[pos].type == DataType::kFP8;
    case c::kWeightScaleInv: return inOut[pos].type == DataType::kFLOAT;
    default: return activationAt(pos, inOut, c::kInput); // the input, or the output (the input's type)
    }
}

std::string fp8OutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs)
{
    if (outputTypes == nullptr || inputTypes == nullptr || nbOutputs != c::kNumOutputs || nbInputs != c::kNumInputs)
    {
        return "BlockFp8MatMul: expected 3 inputs and 1 output";
    }
    std::string const why = checkActivationTypes(c::kPluginName, c::kInputNames, inputTypes, c::kInput, {});
    if (!why.empty())
    {
        return why;
    }
    if (inputTypes[c::kWeight] != DataType::kFP8)
    {
        return "BlockFp8MatMul: input weight must be float8e4m3fn (kFP8)";
    }
    if (inputTypes[c::kWeightScaleInv] != DataType::kFLOAT)
    {
        return "BlockFp8MatMul: input weight_scale_inv must be float32 (one scale per 128x128 block)";
    }
    outputTypes[c::kOutput] = inputTypes[c::kInput];
    return {};
}

int64_t fp8Rows(Dims const* inputs)
{
    Dims const& x = inputs[c::kInput];
    Dims const& w = inputs[c::kWeight];
    if (w.nbDims == 3 && w.d[0] != 1)
    {
        return x.d[1];
    }
    int64_t rows = 1;
    for (int32_t a = 0; a + 1 < x.nbDims; ++a)
    {
        rows *= x.d[a];
    }
    return rows;
}

kernels::fp8::Dims fp8KernelDims(Fp8Attributes const& attrs, Dims const* inputs, kernels::DataType dtype)
{
    Dims const& w = inputs[c::kWeight];
    kernels::fp8::Dims d{};
    d.groups = w.nbDims == 3 ? w.d[0] : 1;
    d.rows = fp8Rows(inputs);
    d.n = static_cast<int32_t>(w.d[w.nbDims - 2]);
    d.k = static_cast<int32_t>(w.d[w.nbDims - 1]);
    d.blockSize = attrs.blockSize;
    d.dtype = dtype;
    return d;
}

size_t fp8WorkspaceSize(Fp8Attributes const& attrs, Dims const* minDims, Dims const* maxDims, kernels::DataType dtype)
{
    kernels::fp8::Dims d = fp8KernelDims(attrs, maxDims, dtype);
    size_t bytes = 0;
    for (int64_t rows : profileSamples(fp8Rows(minDims), d.rows))
    {
        d.rows = rows;
        bytes = std::max(bytes, kernels::fp8::workspaceBytes(d));
    }
    return bytes;
}

} // namespace plugin
} // namespace mla
