/*
 * moeShapes and the DeepseekMoE plugin's build-time answers: input-shape validation, output shape and type,
 * the format/type support matrix, configurePlugin's refusals, and the workspace over a profile.
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
        {c::kGateUpProj, dims({4, 64, 64}), "num_experts"},
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
    nvinfer1::DynamicPluginTensorDesc io[6]{};
    CHECK(!p.supportsFormatCombination(6, io, 5, 1));
    CHECK(!p.supportsFormatCombination(0, io, 4, 1));
    CHECK(!p.supportsFormatCombination(0, nullptr, 5, 1));
}

void profile(nvinfer1::DynamicPluginTensorDesc* in, std::vector<Dims> const& lo, std::vector<Dims> const& hi,
    DataType t)
{
    for (int32_t i = 0; i < 5; ++i)
    {
        in[i].min = lo[i];
        in[i].max = hi[i];
        in[i].opt = hi[i];
        in[i].desc.dims = hi[i];
        in[i].desc.dims.d[0] = i == 0 ? -1 : hi[i].d[0];
        in[i].desc.type = i == c::kRouterWeight || i == c::kScoreBias ? DataType::kFLOAT : t;
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
}

void testWorkspace()
{
    auto const a = tinyMoe();
    // Exhaustive over token counts: the profile's workspace holds every shape in it.
    for (int64_t hiTokens : {1, 7, 64, 65, 300})
    {
        auto lo = inputs(1, 1, 64, 8, 32);
        auto hi = inputs(1, hiTokens, 64, 8, 32);
        size_t const got = plugin::moeWorkspaceSize(a, lo.data(), hi.data(), kernels::DataType::kFLOAT16);
        size_t best = 0;
        for (int64_t t = 1; t <= hiTokens; ++t)
        {
            auto in = inputs(1, t, 64, 8, 32);
            best = std::max(best, kernels::moe::workspaceBytes(plugin::moeKernelDims(a, in.data(), kernels::DataType::kFLOAT16)));
        }
        CHECK_MSG(got == best && got > 0, "tokens up to " + std::to_string(hiTokens));
    }
    // Past one chunk the workspace stops growing: a 32 x 2048-token profile needs one chunk's.
    plugin::MoeAttributes const v3{256, 8, 8, 4, 1, 1, 1, 1, 2.5F};
    auto lo = inputs(1, 1, 7168, 256, 2048);
    auto hi = inputs(32, 2048, 7168, 256, 2048);
    auto chunk = inputs(1, kernels::moe::chunkTokens(), 7168, 256, 2048);
    size_t const big = plugin::moeWorkspaceSize(v3, lo.data(), hi.data(), kernels::DataType::kBFLOAT16);
    size_t const one = kernels::moe::workspaceBytes(plugin::moeKernelDims(v3, chunk.data(), kernels::DataType::kBFLOAT16));
    CHECK(big == one && big > 0);
    std::printf("workspace: V3 layer, a 4096-token chunk: %.1f MiB\n", static_cast<double>(big) / (1 << 20));
    // Through the plugin (DynamicPluginTensorDesc bounds), and 0 for a type without kernels.
    plugin::DeepseekMoePlugin p(a);
    nvinfer1::DynamicPluginTensorDesc in[5]{};
    profile(in, inputs(1, 1, 64, 8, 32), inputs(4, 100, 64, 8, 32), DataType::kHALF);
    auto lo2 = inputs(1, 1, 64, 8, 32);
    auto hi2 = inputs(4, 100, 64, 8, 32);
    CHECK(p.getWorkspaceSize(in, 5, nullptr, 1)
        == plugin::moeWorkspaceSize(a, lo2.data(), hi2.data(), kernels::DataType::kFLOAT16));
    in[0].desc.type = DataType::kINT8;
    CHECK(p.getWorkspaceSize(in, 5, nullptr, 1) == 0);
}
} // namespace

int main()
{
    return testutil::runTests("test_moe_shapes", gLogger,
        {testInputDims, testOutputShapeAndTypes, testFormatMatrix, testConfigurePlugin, testWorkspace});
}
