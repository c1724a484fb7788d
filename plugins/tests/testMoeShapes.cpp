/*
 * moeShapes and the DeepseekMoE plugin's build-time answers, for nodes of 5 inputs (experts in T) and of 7 (FP8
 * experts with their 128x128 block scales), a rank's slice of the experts included: input-shape validation, output shape and type, the format/type
 * support matrix, configurePlugin's refusals, and the workspace over a profile.
 */
#include "deepseekMoePlugin.h"
#include "moeContract.h"
#include "moeShapes.h"
#include "testPlugin.h"
#include "testUtil.h"

#include <algorithm>
#include <vector>

using namespace mla;
using nvinfer1::DataType;
using nvinfer1::Dims;
namespace c = mla::moe_contract;

namespace
{
using testutil::dims;
using testutil::sameDims;
testutil::CapturingLogger gLogger;

plugin::MoeAttributes tinyMoe()
{
    return plugin::MoeAttributes{8, 2, 4, 2, 1, 1, 1, 1, 2.5F}; // the tiny-moe preset's rule
}

// The 5 input shapes of a call: hidden [B,S,d], router [E,d], bias [E], gate_up [E,2I,d], down [E,d,I].
std::vector<Dims> inputs(int64_t b, int64_t s, int64_t d, int64_t e, int64_t inter)
{
    return {dims({b, s, d}), dims({e, d}), dims({e}), dims({e, 2 * inter, d}), dims({e, d, inter})};
}

int64_t blocks(int64_t extent)
{
    return (extent + 127) / 128;
}

// The 7 input shapes of a call with FP8 experts: the 5 above, then gate_up_scale [E, ceil(2I/128), ceil(d/128)]
// and down_scale [E, ceil(d/128), ceil(I/128)].
std::vector<Dims> fp8Inputs(int64_t b, int64_t s, int64_t d, int64_t e, int64_t inter)
{
    std::vector<Dims> v = inputs(b, s, d, e, inter);
    v.push_back(dims({e, blocks(2 * inter), blocks(d)}));
    v.push_back(dims({e, blocks(d), blocks(inter)}));
    return v;
}

void testInputDims()
{
    auto const a = tinyMoe();
    auto in = inputs(2, 3, 64, 8, 32);
    CHECK(plugin::validateMoeInputDims(a, in.data(), 5).empty());
    CHECK(!plugin::validateMoeInputDims(a, in.data(), 4).empty());
    auto dyn = inputs(-1, -1, 64, 8, 32);
    CHECK(plugin::validateMoeInputDims(a, dyn.data(), 5).empty());
    auto none = inputs(0, 3, 64, 8, 32); // no token: valid, nothing to compute
    CHECK(plugin::validateMoeInputDims(a, none.data(), 5).empty());
    struct Case
    {
        int32_t input;
        Dims shape;
        char const* mention;
    };
    std::vector<Case> const bad = {
        {c::kHiddenStates, dims({6, 64}), "rank 2, expected 3"},
        {c::kRouterWeight, dims({16, 64}), "num_experts"},
        {c::kRouterWeight, dims({8, 32}), "d of hidden_states"},
        {c::kScoreBias, dims({7}), "num_experts"},
        {c::kGateUpProj, dims({8, 63, 64}), "2I: gate rows then up rows"},
        {c::kGateUpProj, dims({8, 64, 48}), "d of hidden_states"},
        {c::kGateUpProj, dims({9, 64, 64}), "E_local: the experts from first_expert, at most"},
        {c::kGateUpProj, dims({0, 64, 64}), "E_local"},
        {c::kDownProj, dims({4, 64, 32}), "expected 8 (E_local of gate_up_proj)"},
        {c::kDownProj, dims({8, 64, 16}), "I: half of gate_up_proj's axis 1"},
        {c::kDownProj, dims({8, 32, 32}), "d of hidden_states"},
        {c::kDownProj, dims({8, 64}), "rank 2, expected 3"},
        {c::kDownProj, dims({8, 64, 0}), "I: half"},
    };
    for (Case const& k : bad)
    {
        auto v = inputs(2, 3, 64, 8, 32);
        v[k.input] = k.shape;
        std::string const why = plugin::validateMoeInputDims(a, v.data(), 5);
        CHECK_MSG(why.find(k.mention) != std::string::npos && why.find(c::kInputNames[k.input]) != std::string::npos,
            "got: " + why);
    }
    auto empty = inputs(2, 3, 64, 8, 0);
    CHECK(plugin::validateMoeInputDims(a, empty.data(), 5).find("non-empty") != std::string::npos);
}

void testFp8InputDims()
{
    auto const a = tinyMoe();
    plugin::MoeAttributes const v3{256, 8, 8, 4, 1, 1, 1, 1, 2.5F};
    auto tiny = fp8Inputs(2, 3, 64, 8, 32); // ragged: one block per scale axis
    CHECK(sameDims(tiny[c::kGateUpScale], dims({8, 1, 1})) && sameDims(tiny[c::kDownScale], dims({8, 1, 1})));
    CHECK(plugin::validateMoeInputDims(a, tiny.data(), 7).empty());
    auto big = fp8Inputs(1, 1, 7168, 256, 2048); // V3: [256, 32, 56] and [256, 56, 16]
    CHECK(sameDims(big[c::kGateUpScale], dims({256, 32, 56})) && sameDims(big[c::kDownScale], dims({256, 56, 16})));
    CHECK(plugin::validateMoeInputDims(v3, big.data(), 7).empty());
    auto ragged = fp8Inputs(1, 4, 200, 8, 136); // 2I = 272: 3 blocks; d = 200: 2; I = 136: 2
    CHECK(sameDims(ragged[c::kGateUpScale], dims({8, 3, 2})) && sameDims(ragged[c::kDownScale], dims({8, 2, 2})));
    CHECK(plugin::validateMoeInputDims(a, ragged.data(), 7).empty());
    auto dyn = fp8Inputs(-1, -1, 64, 8, 32);
    CHECK(plugin::validateMoeInputDims(a, dyn.data(), 7).empty());
    CHECK(plugin::validateMoeInputDims(a, tiny.data(), 6).find("DeepseekMoE: expected 5 or 7 inputs, got 6") != std::string::npos);
    struct Case
    {
        int32_t input;
        Dims shape;
        char const* mention;
    };
    std::vector<Case> const bad = {
        {c::kGateUpScale, dims({8, 1}), "rank 2, expected 3"},
        {c::kGateUpScale, dims({4, 1, 1}), "expected 8 (E_local of gate_up_proj)"},
        {c::kGateUpScale, dims({8, 2, 2}), "axis 1 is 2, expected 3 (ceil(2I/128)"},
        {c::kGateUpScale, dims({8, 3, 1}), "axis 2 is 1, expected 2 (ceil(d/128)"},
        {c::kGateUpScale, dims({8, 272, 200}), "one scale per 128x128 block"},
        {c::kDownScale, dims({8, 1, 2}), "axis 1 is 1, expected 2 (ceil(d/128)"},
        {c::kDownScale, dims({8, 2, 3}), "axis 2 is 3, expected 2 (ceil(I/128)"},
        {c::kDownScale, dims({7, 2, 2}), "expected 8 (E_local of gate_up_proj)"},
    };
    for (Case const& k : bad)
    {
        auto v = fp8Inputs(1, 4, 200, 8, 136);
        v[k.input] = k.shape;
        std::string const why = plugin::validateMoeInputDims(a, v.data(), 7);
        CHECK_MSG(why.find(k.mention) != std::string::npos && why.find(c::kInputNames[k.input]) != std::string::npos,
            "got: " + why);
    }
    // The experts' own rules hold with FP8 experts too.
    auto v = fp8Inputs(2, 3, 64, 8, 32);
    v[c::kDownProj] = dims({8, 64, 16});
    CHECK(plugin::validateMoeInputDims(a, v.data(), 7).find("I: half of gate_up_proj's axis 1") != std::string::npos);
}

// A rank's slice (contract version 3): stacks of E_local experts from first_expert, router and bias whole.
void testSliceInputDims()
{
    auto a = tinyMoe();
    a.firstExpert = 4; // rank 1 of 2: experts 4 .. 7
    auto half = inputs(2, 3, 64, 8, 32);
    half[c::kGateUpProj] = dims({4, 64, 64});
    half[c::kDownProj] = dims({4, 64, 32});
    CHECK(plugin::validateMoeInputDims(a, half.data(), 5).empty());
    kernels::moe::Dims const k = plugin::moeKernelDims(a, half.data(), 5, kernels::DataType::kFLOAT16);
    CHECK(k.numExperts == 8 && k.localExperts == 4 && k.firstExpert == 4 && kernels::moe::supported(k, nullptr));
    auto past = half; // experts 4 .. 8: one past the last
    past[c::kGateUpProj] = dims({5, 64, 64});
    past[c::kDownProj] = dims({5, 64, 32});
    std::string const why = plugin::validateMoeInputDims(a, past.data(), 5);
    CHECK_MSG(why.find("gate_up_proj") != std::string::npos && why.find("expected 4 (E_local") != std::string::npos,
        "got: " + why);
    auto whole = inputs(2, 3, 64, 8, 32); // every expert from first_expert 4: too many
    CHECK(!plugin::validateMoeInputDims(a, whole.data(), 5).empty());
    auto router = half;
    router[c::kRouterWeight] = dims({4, 64}); // the router stays whole
    CHECK(plugin::validateMoeInputDims(a, router.data(), 5).find("num_experts") != std::string::npos);
    plugin::MoeAttributes v3{256, 8, 8, 4, 1, 1, 1, 1, 2.5F};
    v3.firstExpert = 224; // --tp 8, rank 7: experts 224 .. 255, FP8
    auto fp8 = fp8Inputs(1, 1, 7168, 32, 2048);
    fp8[c::kRouterWeight] = dims({256, 7168});
    fp8[c::kScoreBias] = dims({256});
    CHECK(plugin::validateMoeInputDims(v3, fp8.data(), 7).empty());
    fp8[c::kDownScale] = dims({256, 56, 16});
    CHECK(plugin::validateMoeInputDims(v3, fp8.data(), 7).find("E_local of gate_up_proj") != std::string::npos);
    // The kernels refuse a slice past num_experts whatever reaches them.
    kernels::moe::Dims bad = k;
    bad.firstExpert = 5;
    char const* reason = nullptr;
    CHECK(!kernels::moe::supported(bad, &reason) && reason != nullptr && std::string(reason).find("slice") == 0);
}

void testOutputShapeAndTypes()
{
    auto in = inputs(2, 3, 64, 8, 32);
    CHECK(sameDims(plugin::moeOutputDims(in.data()), dims({2, 3, 64})));
    plugin::DeepseekMoePlugin p(tinyMoe());
    testutil::ShapeExprs exprs(in);
    nvinfer1::DimsExprs out[1];
    CHECK(p.getOutputShapes(exprs.data(), 5, nullptr, 0, out, 1, exprs.builder()) == 0);
    CHECK(out[0].nbDims == 3 && out[0].d[0] == exprs[0].d[0] && out[0].d[2] == exprs[0].d[2]);
    CHECK(p.getOutputShapes(exprs.data(), 4, nullptr, 0, out, 1, exprs.builder()) != 0);
    CHECK(p.getNbOutputs() == 1);

    for (DataType t : {DataType::kHALF, DataType::kBF16, DataType::kFLOAT})
    {
        DataType types[5] = {t, DataType::kFLOAT, DataType::kFLOAT, t, t};
        DataType o = DataType::kINT8;
        CHECK(p.getOutputDataTypes(&o, 1, types, 5) == 0 && o == t);
    }
    DataType o{};
    DataType const h = DataType::kHALF;
    DataType halfRouter[5] = {h, h, DataType::kFLOAT, h, h};
    gLogger.messages.clear();
    CHECK(p.getOutputDataTypes(&o, 1, halfRouter, 5) != 0);
    CHECK(gLogger.contains("router_weight must be float32", nvinfer1::ILogger::Severity::kERROR));
    DataType mixed[5] = {h, DataType::kFLOAT, DataType::kFLOAT, DataType::kBF16, h};
    CHECK(p.getOutputDataTypes(&o, 1, mixed, 5) != 0);
    CHECK(gLogger.contains("gate_up_proj must have the type of hidden_states", nvinfer1::ILogger::Severity::kERROR));
    DataType int8[5] = {DataType::kINT8, DataType::kFLOAT, DataType::kFLOAT, DataType::kINT8, DataType::kINT8};
    CHECK(p.getOutputDataTypes(&o, 1, int8, 5) != 0);

    // 7 inputs: FP8 experts, float32 scales.
    DataType const f = DataType::kFLOAT;
    DataType const q = DataType::kFP8;
    for (DataType t : {DataType::kHALF, DataType::kBF16, DataType::kFLOAT})
    {
        DataType types[7] = {t, f, f, q, q, f, f};
        DataType out = DataType::kINT8;
        CHECK(p.getOutputDataTypes(&out, 1, types, 7) == 0 && out == t);
    }
    struct Bad
    {
        DataType types[7];
        char const* mention;
    };
    std::vector<Bad> const bad = {
        {{h, f, f, h, q, f, f}, "input gate_up_proj must be float8e4m3fn (kFP8) in a 7-input node"},
        {{h, f, f, q, h, f, f}, "input down_proj must be float8e4m3fn (kFP8) in a 7-input node"},
        {{h, f, f, q, q, h, f}, "input gate_up_scale must be float32"},
        {{h, f, f, q, q, f, q}, "input down_scale must be float32"},
        {{h, h, f, q, q, f, f}, "router_weight must be float32"},
        {{q, f, f, q, q, f, f}, "hidden_states must be float16, bfloat16 or float32"},
    };
    for (Bad const& b : bad)
    {
        gLogger.messages.clear();
        CHECK(p.getOutputDataTypes(&o, 1, b.types, 7) != 0);
        CHECK_MSG(gLogger.contains(b.mention, nvinfer1::ILogger::Severity::kERROR), b.mention);
    }
    DataType fp8In5[5] = {h, f, f, q, q}; // FP8 experts without their scales
    gLogger.messages.clear();
    CHECK(p.getOutputDataTypes(&o, 1, fp8In5, 5) != 0);
    CHECK(gLogger.contains("gate_up_proj must have the type of hidden_states", nvinfer1::ILogger::Severity::kERROR));
    DataType six[6] = {h, f, f, q, q, f};
    gLogger.messages.clear();
    CHECK(p.getOutputDataTypes(&o, 1, six, 6) != 0);
    CHECK(gLogger.contains("DeepseekMoE: expected 5 or 7 inputs and 1 output", nvinfer1::ILogger::Severity::kERROR));
    // Shapes: the output is hidden_states' with 7 inputs too; 6 inputs are refused.
    auto in7 = fp8Inputs(2, 3, 64, 8, 32);
    testutil::ShapeExprs exprs7(in7);
    CHECK(p.getOutputShapes(exprs7.data(), 7, nullptr, 0, out, 1, exprs7.builder()) == 0);
    CHECK(out[0].nbDims == 3 && out[0].d[0] == exprs7[0].d[0] && out[0].d[2] == exprs7[0].d[2]);
    gLogger.messages.clear();
    CHECK(p.getOutputShapes(exprs7.data(), 6, nullptr, 0, out, 1, exprs7.builder()) != 0);
    CHECK(gLogger.contains("DeepseekMoE: expected 5 or 7 inputs and 1 output", nvinfer1::ILogger::Severity::kERROR));
}

bool expectedSupport(int32_t pos, std::vector<DataType> const& types, nvinfer1::TensorFormat format)
{
    if (format != nvinfer1::TensorFormat::kLINEAR)
    {
        return false;
    }
    if (pos == c::kRouterWeight || pos == c::kScoreBias)
    {
        return types[pos] == DataType::kFLOAT;
    }
    bool const activation
        = types[pos] == DataType::kHALF || types[pos] == DataType::kBF16 || types[pos] == DataType::kFLOAT;
    return activation && types[pos] == types[0];
}

void testFormatMatrix()
{
    plugin::DeepseekMoePlugin p(tinyMoe());
    auto const [checked, accepted] = testutil::checkFormatMatrix(
        p, 5, 1, [](DataType t0) { return std::vector<DataType>{t0, DataType::kFLOAT, DataType::kFLOAT, t0, t0, t0}; },
        expectedSupport);
    CHECK(checked == 9 * 6 * 9 * 2);
    // Position 0: the 3 activation types (9 x 3); positions 3, 4, 5: t0 when t0 is one (3 x 3); float at 1
    // and 2 for every t0 (9 x 2).
    CHECK_MSG(accepted == 9 * 3 + 3 * 3 + 9 * 2, "accepted " + std::to_string(accepted));
    nvinfer1::DynamicPluginTensorDesc io[8]{};
    CHECK(!p.supportsFormatCombination(6, io, 5, 1));
    CHECK(!p.supportsFormatCombination(0, io, 4, 1));
    CHECK(!p.supportsFormatCombination(0, io, 6, 1));
    CHECK(!p.supportsFormatCombination(8, io, 7, 1));
    CHECK(!p.supportsFormatCombination(0, nullptr, 5, 1));
}

bool expectedFp8Support(int32_t pos, std::vector<DataType> const& types, nvinfer1::TensorFormat format)
{
    if (format != nvinfer1::TensorFormat::kLINEAR)
    {
        return false;
    }
    if (pos == c::kRouterWeight || pos == c::kScoreBias || pos == c::kGateUpScale || pos == c::kDownScale)
    {
        return types[pos] == DataType::kFLOAT;
    }
    if (pos == c::kGateUpProj || pos == c::kDownProj)
    {
        return types[pos] == DataType::kFP8;
    }
    bool const activation
        = types[pos] == DataType::kHALF || types[pos] == DataType::kBF16 || types[pos] == DataType::kFLOAT;
    return activation && types[pos] == types[0];
}

void testFp8FormatMatrix()
{
    plugin::DeepseekMoePlugin p(tinyMoe());
    DataType const f = DataType::kFLOAT;
    DataType const q = DataType::kFP8;
    auto const [checked, accepted] = testutil::checkFormatMatrix(
        p, 7, 1, [f, q](DataType t0) { return std::vector<DataType>{t0, f, f, q, q, f, f, t0}; }, expectedFp8Support);
    CHECK(checked == 9 * 8 * 9 * 2);
    // hidden_states: the 3 activation types (9 x 3); the output: t0 when t0 is one (3); router, bias and the two
    // scales float32, the two expert tensors kFP8, for every t0 (9 x 6).
    CHECK_MSG(accepted == 9 * 3 + 3 + 9 * 6, "accepted " + std::to_string(accepted));
}

//! The profile [lo, hi] of a 5-input layer, or of a 7-input one (FP8 experts) when lo has 7 shapes.
void profile(nvinfer1::DynamicPluginTensorDesc* in, std::vector<Dims> const& lo, std::vector<Dims> const& hi,
    DataType t)
{
    bool const fp8 = lo.size() == 7;
    for (size_t i = 0; i < lo.size(); ++i)
    {
        in[i].min = lo[i];
        in[i].max = hi[i];
        in[i].opt = hi[i];
        in[i].desc.dims = hi[i];
        in[i].desc.dims.d[0] = i == 0 ? -1 : hi[i].d[0];
        bool const experts = i == c::kGateUpProj || i == c::kDownProj;
        in[i].desc.type = fp8 && experts ? DataType::kFP8 : (experts || i == c::kHiddenStates ? t : DataType::kFLOAT);
        in[i].desc.format = nvinfer1::TensorFormat::kLINEAR;
    }
}

void testConfigurePlugin()
{
    plugin::DeepseekMoePlugin p(tinyMoe());
    nvinfer1::DynamicPluginTensorDesc in[5]{};
    nvinfer1::DynamicPluginTensorDesc out[1]{};
    profile(in, inputs(1, 1, 64, 8, 32), inputs(8, 16, 64, 8, 32), DataType::kHALF);
    CHECK(p.configurePlugin(in, 5, out, 1) == 0);
    profile(in, inputs(1, 1, 64, 8, 32), inputs(8, 16, 64, 8, 32), DataType::kBF16);
    CHECK(p.configurePlugin(in, 5, out, 1) == 0);
    // The AOT kernels have no float32 build: refused at build time, with the kernels' reason.
    profile(in, inputs(1, 1, 64, 8, 32), inputs(8, 16, 64, 8, 32), DataType::kFLOAT);
    gLogger.messages.clear();
    CHECK(p.configurePlugin(in, 5, out, 1) != 0);
    CHECK(gLogger.contains("no kernel for this layer's type and profile: dtype", nvinfer1::ILogger::Severity::kERROR));
    // Dims the AOT kernels do not take (d not a multiple of 16), and inconsistent bounds.
    profile(in, inputs(1, 1, 24, 8, 32), inputs(8, 16, 24, 8, 32), DataType::kHALF);
    gLogger.messages.clear();
    CHECK(p.configurePlugin(in, 5, out, 1) != 0);
    CHECK(gLogger.contains("multiples of 16", nvinfer1::ILogger::Severity::kERROR));
    profile(in, inputs(1, 1, 64, 8, 32), inputs(8, 16, 64, 8, 32), DataType::kHALF);
    in[c::kScoreBias].max = dims({9});
    gLogger.messages.clear();
    CHECK(p.configurePlugin(in, 5, out, 1) != 0);
    CHECK(gLogger.contains("profile bounds", nvinfer1::ILogger::Severity::kERROR));
    // 513 experts: over the AOT kernels' 512.
    plugin::DeepseekMoePlugin wide({513, 8, 1, 1, 1, 1, 1, 1, 1.F});
    profile(in, inputs(1, 1, 64, 513, 32), inputs(8, 16, 64, 513, 32), DataType::kHALF);
    gLogger.messages.clear();
    CHECK(wide.configurePlugin(in, 5, out, 1) != 0);
    CHECK(gLogger.contains("1 to 512 routed experts", nvinfer1::ILogger::Severity::kERROR));

    // FP8 experts: the tiny-moe and V3 layers build in float16 and bfloat16; bad scale bounds are refused.
    nvinfer1::DynamicPluginTensorDesc in7[7]{};
    plugin::MoeAttributes const v3{256, 8, 8, 4, 1, 1, 1, 1, 2.5F};
    for (DataType t : {DataType::kHALF, DataType::kBF16})
    {
        profile(in7, fp8Inputs(1, 1, 64, 8, 32), fp8Inputs(8, 16, 64, 8, 32), t);
        CHECK(p.configurePlugin(in7, 7, out, 1) == 0);
        plugin::DeepseekMoePlugin big(v3);
        profile(in7, fp8Inputs(1, 1, 7168, 256, 2048), fp8Inputs(32, 2048, 7168, 256, 2048), t);
        CHECK(big.configurePlugin(in7, 7, out, 1) == 0);
    }
    profile(in7, fp8Inputs(1, 1, 64, 8, 32), fp8Inputs(8, 16, 64, 8, 32), DataType::kHALF);
    in7[c::kDownScale].max = dims({8, 1, 2});
    gLogger.messages.clear();
    CHECK(p.configurePlugin(in7, 7, out, 1) != 0);
    CHECK(gLogger.contains("ceil(I/128)", nvinfer1::ILogger::Severity::kERROR)
        && gLogger.contains("(profile bounds)", nvinfer1::ILogger::Severity::kERROR));
    gLogger.messages.clear();
    CHECK(p.configurePlugin(in7, 6, out, 1) != 0);
    CHECK(gLogger.contains("DeepseekMoE: expected 5 or 7 inputs and 1 output", nvinfer1::ILogger::Severity::kERROR));
}

void testWorkspace()
{
    auto const a = tinyMoe();
    // Exhaustive over token counts: the profile's workspace holds every shape in it.
    for (int64_t hiTokens : {1, 7, 64, 65, 300})
    {
        auto lo = inputs(1, 1, 64, 8, 32);
        auto hi = inputs(1, hiTokens, 64, 8, 32);
        size_t const got = plugin::moeWorkspaceSize(a, lo.data(), hi.data(), 5, kernels::DataType::kFLOAT16);
        size_t best = 0;
        for (int64_t t = 1; t <= hiTokens; ++t)
        {
            auto in = inputs(1, t, 64, 8, 32);
            best = std::max(best, kernels::moe::workspaceBytes(plugin::moeKernelDims(a, in.data(), 5, kernels::DataType::kFLOAT16)));
        }
        CHECK_MSG(got == best && got > 0, "tokens up to " + std::to_string(hiTokens));
    }
    // Past one chunk the workspace stops growing: a 32 x 2048-token profile needs one chunk's.
    plugin::MoeAttributes const v3{256, 8, 8, 4, 1, 1, 1, 1, 2.5F};
    auto lo = inputs(1, 1, 7168, 256, 2048);
    auto hi = inputs(32, 2048, 7168, 256, 2048);
    auto chunk = inputs(1, kernels::moe::chunkTokens(), 7168, 256, 2048);
    size_t const big = plugin::moeWorkspaceSize(v3, lo.data(), hi.data(), 5, kernels::DataType::kBFLOAT16);
    size_t const one = kernels::moe::workspaceBytes(plugin::moeKernelDims(v3, chunk.data(), 5, kernels::DataType::kBFLOAT16));
    CHECK(big == one && big > 0);
    std::printf("workspace: V3 layer, a 4096-token chunk: %.1f MiB\n", static_cast<double>(big) / (1 << 20));
    // Through the plugin (DynamicPluginTensorDesc bounds), and 0 for a type without kernels.
    plugin::DeepseekMoePlugin p(a);
    nvinfer1::DynamicPluginTensorDesc in[5]{};
    profile(in, inputs(1, 1, 64, 8, 32), inputs(4, 100, 64, 8, 32), DataType::kHALF);
    auto lo2 = inputs(1, 1, 64, 8, 32);
    auto hi2 = inputs(4, 100, 64, 8, 32);
    CHECK(p.getWorkspaceSize(in, 5, nullptr, 1)
        == plugin::moeWorkspaceSize(a, lo2.data(), hi2.data(), 5, kernels::DataType::kFLOAT16));
    in[0].desc.type = DataType::kINT8;
    CHECK(p.getWorkspaceSize(in, 5, nullptr, 1) == 0);

    // FP8 experts: exhaustive over token counts, the kernels' FP8 figure; through the plugin with 7 inputs.
    for (int64_t hiTokens : {1, 7, 64, 65, 300})
    {
        auto lo7 = fp8Inputs(1, 1, 64, 8, 32);
        auto hi7 = fp8Inputs(1, hiTokens, 64, 8, 32);
        size_t const got = plugin::moeWorkspaceSize(a, lo7.data(), hi7.data(), 7, kernels::DataType::kBFLOAT16);
        size_t best = 0;
        for (int64_t t = 1; t <= hiTokens; ++t)
        {
            auto in7 = fp8Inputs(1, t, 64, 8, 32);
            kernels::moe::Dims const kd = plugin::moeKernelDims(a, in7.data(), 7, kernels::DataType::kBFLOAT16);
            CHECK(kd.fp8Experts == 1);
            best = std::max(best, kernels::moe::workspaceBytes(kd));
        }
        CHECK_MSG(got == best && got > 0, "FP8 experts, tokens up to " + std::to_string(hiTokens));
    }
    auto loV3 = fp8Inputs(1, 1, 7168, 256, 2048);
    auto hiV3 = fp8Inputs(32, 2048, 7168, 256, 2048);
    std::printf("workspace: V3 layer with FP8 experts, a 4096-token chunk: %.1f MiB\n",
        static_cast<double>(plugin::moeWorkspaceSize(v3, loV3.data(), hiV3.data(), 7, kernels::DataType::kBFLOAT16))
            / (1 << 20));
    nvinfer1::DynamicPluginTensorDesc in7[7]{};
    auto lo7 = fp8Inputs(1, 1, 64, 8, 32);
    auto hi7 = fp8Inputs(4, 100, 64, 8, 32);
    profile(in7, lo7, hi7, DataType::kHALF);
    CHECK(p.getWorkspaceSize(in7, 7, nullptr, 1)
        == plugin::moeWorkspaceSize(a, lo7.data(), hi7.data(), 7, kernels::DataType::kFLOAT16));
    CHECK(p.getWorkspaceSize(in7, 6, nullptr, 1) == 0);
    CHECK(plugin::moeKernelDims(a, hi2.data(), 5, kernels::DataType::kFLOAT16).fp8Experts == 0);
}
} // namespace

int main()
{
    return testutil::runTests("test_moe_shapes", gLogger,
        {testInputDims, testFp8InputDims, testSliceInputDims, testOutputShapeAndTypes, testFormatMatrix, testFp8FormatMatrix,
            testConfigurePlugin, testWorkspace});
}
