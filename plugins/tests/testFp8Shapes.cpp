/*
 * fp8Shapes and the BlockFp8MatMul plugin's build-time answers: input-shape validation (2-D and 3-D weights,
 * the one-scale-per-128x128-block rule, ragged last blocks, mismatched K), the output shape ([..., N] from the
 * weight's N, [G, M, N]) and type, the format/type support matrix, configurePlugin's refusals, and the workspace
 * over a profile against the kernels' own figure at every row count.
 */
#include "blockFp8MatMulPlugin.h"
#include "fp8Contract.h"
#include "fp8Kernels.h"
#include "fp8Shapes.h"
#include "testPlugin.h"
#include "testUtil.h"

#include <algorithm>
#include <vector>

using namespace mla;
using nvinfer1::DataType;
using nvinfer1::Dims;
namespace c = mla::fp8_contract;

namespace
{
using testutil::dims;
using testutil::sameDims;
testutil::CapturingLogger gLogger;

int64_t blocks(int64_t extent)
{
    return (extent + 127) / 128;
}

// The 3 input shapes of a product with a 2-D weight [N, K]: input `lead` + [K].
std::vector<Dims> dense(std::vector<int64_t> lead, int64_t n, int64_t k)
{
    lead.push_back(k);
    return {dims(lead), dims({n, k}), dims({blocks(n), blocks(k)})};
}

// ... with a 3-D weight [G, N, K]: input [G, M, K] (or `lead` + [K] when given, for G = 1).
std::vector<Dims> grouped(int64_t g, int64_t m, int64_t n, int64_t k)
{
    return {dims({g, m, k}), dims({g, n, k}), dims({g, blocks(n), blocks(k)})};
}

struct Valid
{
    std::vector<Dims> in;
    Dims out;
    char const* what;
};

std::vector<Valid> validCases()
{
    return {
        {dense({1, 1}, 1536, 7168), dims({1, 1, 1536}), "V3 q_a_proj, decode"},
        {dense({4, 300}, 24576, 1536), dims({4, 300, 24576}), "V3 q_up_proj, prefill"},
        {dense({2, 3}, 40, 72), dims({2, 3, 40}), "tiny: ragged single blocks"},
        {dense({2, 3}, 200, 136), dims({2, 3, 200}), "ragged last blocks (N 200, K 136)"},
        {dense({7}, 64, 32), dims({7, 64}), "rank-2 input"},
        {dense({2, 3, 4, 5}, 48, 64), dims({2, 3, 4, 5, 48}), "rank-5 input"},
        {grouped(128, 4, 128, 512), dims({128, 4, 128}), "V3 W_UK^T per head [H, Dc, Dn]"},
        {grouped(128, 1, 512, 128), dims({128, 1, 512}), "V3 W_UV per head, decode"},
        {{dims({2, 5, 64}), dims({1, 32, 64}), dims({1, 1, 1})}, dims({2, 5, 32}), "3-D weight, G = 1 broadcasts"},
        {dense({0, 3}, 64, 64), dims({0, 3, 64}), "no row: valid, nothing to compute"},
        {dense({-1, -1}, 576, 7168), dims({-1, -1, 576}), "build time: unknown B and S"},
    };
}

void testInputDims()
{
    for (Valid const& v : validCases())
    {
        std::string const why = plugin::validateFp8InputDims(v.in.data(), 3);
        CHECK_MSG(why.empty(), std::string(v.what) + ": " + why);
        CHECK_MSG(sameDims(plugin::fp8OutputDims(0, v.in.data()), v.out), v.what);
    }
    auto ok = dense({2, 3}, 200, 136);
    CHECK(!plugin::validateFp8InputDims(ok.data(), 2).empty());
    struct Case
    {
        std::vector<Dims> in;
        int32_t input;
        char const* mention;
    };
    std::vector<Case> const bad = {
        {{dims({2, 64}), dims({64}), dims({1})}, c::kWeight, "expected rank 2 [N, K] or 3 [G, N, K]"},
        {{dims({2, 64}), dims({1, 1, 64, 64}), dims({1, 1, 1, 1})}, c::kWeight, "expected rank 2 [N, K] or 3"},
        {{dims({2, 64}), dims({64, 64}), dims({1, 1, 1})}, c::kWeightScaleInv, "rank 2 [ceil(N/128), ceil(K/128)]"},
        {{dims({2, 4, 64}), dims({2, 64, 64}), dims({1, 1})}, c::kWeightScaleInv, "rank 3 [G, ceil(N/128)"},
        {{dims({64}), dims({64, 64}), dims({1, 1})}, c::kInput, "expected rank 2 or more [..., K]"},
        {{dims({4, 64}), dims({2, 64, 64}), dims({2, 1, 1})}, c::kInput, "rank 3 [G, M, K] for a weight [G, N, K]"},
        {{dims({2, 3, 72}), dims({40, 64}), dims({1, 1})}, c::kInput, "axis 2 is 72, expected 64 (K: the weight's last axis)"},
        {{dims({2, 136}), dims({200, 136}), dims({1, 2})}, c::kWeightScaleInv, "axis 0 is 1, expected 2 (ceil(N/128)"},
        {{dims({2, 136}), dims({200, 136}), dims({2, 1})}, c::kWeightScaleInv, "axis 1 is 1, expected 2 (ceil(K/128)"},
        {{dims({2, 7168}), dims({1536, 7168}), dims({1536, 7168})}, c::kWeightScaleInv, "one scale per 128x128 block"},
        {{dims({128, 4, 512}), dims({128, 128, 512}), dims({64, 1, 4})}, c::kWeightScaleInv, "expected 128 (G"},
        {{dims({64, 4, 512}), dims({128, 128, 512}), dims({128, 1, 4})}, c::kInput, "expected 128 (G: the weight's groups)"},
        {{dims({2, 3, 0}), dims({64, 0}), dims({1, 0})}, c::kInput, "a non-empty extent"},
        {{dims({2, 64}), dims({0, 64}), dims({0, 1})}, c::kWeight, "a non-empty extent"},
    };
    for (Case const& k : bad)
    {
        std::string const why = plugin::validateFp8InputDims(k.in.data(), 3);
        CHECK_MSG(why.find(k.mention) != std::string::npos
                && why.find(std::string("(") + c::kInputNames[k.input] + ")") != std::string::npos
                && why.rfind("BlockFp8MatMul: input ", 0) == 0,
            "got: " + why);
    }
}

void testOutputShapeAndTypes()
{
    plugin::BlockFp8MatMulPlugin p(plugin::Fp8Attributes{});
    CHECK(p.getNbOutputs() == 1);
    for (Valid const& v : validCases())
    {
        testutil::ShapeExprs exprs(v.in);
        nvinfer1::DimsExprs out[1];
        CHECK(p.getOutputShapes(exprs.data(), 3, nullptr, 0, out, 1, exprs.builder()) == 0);
        int32_t const rank = v.in[0].nbDims;
        bool same = out[0].nbDims == rank && out[0].d[rank - 1] == exprs[1].d[v.in[1].nbDims - 2];
        for (int32_t a = 0; a + 1 < rank; ++a)
        {
            same = same && out[0].d[a] == exprs[0].d[a];
        }
        CHECK_MSG(same, v.what);
    }
    auto const flat = std::vector<Dims>{dims({2, 64}), dims({64}), dims({1})};
    testutil::ShapeExprs badRank(flat);
    nvinfer1::DimsExprs out[1];
    gLogger.messages.clear();
    CHECK(p.getOutputShapes(badRank.data(), 3, nullptr, 0, out, 1, badRank.builder()) != 0);
    CHECK(gLogger.contains("BlockFp8MatMul: the input ranks give no shape for output output", nvinfer1::ILogger::Severity::kERROR));
    CHECK(p.getOutputShapes(badRank.data(), 2, nullptr, 0, out, 1, badRank.builder()) != 0);

    for (DataType t : {DataType::kHALF, DataType::kBF16, DataType::kFLOAT})
    {
        DataType types[3] = {t, DataType::kFP8, DataType::kFLOAT};
        DataType o = DataType::kINT8;
        CHECK(p.getOutputDataTypes(&o, 1, types, 3) == 0 && o == t);
    }
    struct Bad
    {
        DataType types[3];
        char const* mention;
    };
    std::vector<Bad> const bad = {
        {{DataType::kHALF, DataType::kHALF, DataType::kFLOAT}, "input weight must be float8e4m3fn (kFP8)"},
        {{DataType::kHALF, DataType::kINT8, DataType::kFLOAT}, "input weight must be float8e4m3fn (kFP8)"},
        {{DataType::kHALF, DataType::kFP8, DataType::kHALF}, "input weight_scale_inv must be float32"},
        {{DataType::kFP8, DataType::kFP8, DataType::kFLOAT}, "input must be float16, bfloat16 or float32"},
    };
    for (Bad const& b : bad)
    {
        DataType o{};
        gLogger.messages.clear();
        CHECK(p.getOutputDataTypes(&o, 1, b.types, 3) != 0);
        CHECK_MSG(gLogger.contains(b.mention, nvinfer1::ILogger::Severity::kERROR), b.mention);
    }
}

bool expectedSupport(int32_t pos, std::vector<DataType> const& types, nvinfer1::TensorFormat format)
{
    if (format != nvinfer1::TensorFormat::kLINEAR)
    {
        return false;
    }
    bool const activation
        = types[pos] == DataType::kHALF || types[pos] == DataType::kBF16 || types[pos] == DataType::kFLOAT;
    switch (pos)
    {
    case c::kWeight: return types[pos] == DataType::kFP8;
    case c::kWeightScaleInv: return types[pos] == DataType::kFLOAT;
    case c::kInput: return activation;
    default: return activation && types[pos] == types[c::kInput];
    }
}

void testFormatMatrix()
{
    plugin::BlockFp8MatMulPlugin p(plugin::Fp8Attributes{});
    auto const [checked, accepted] = testutil::checkFormatMatrix(
        p, 3, 1, [](DataType t0) { return std::vector<DataType>{t0, DataType::kFP8, DataType::kFLOAT, t0}; },
        expectedSupport);
    CHECK(checked == 9 * 4 * 9 * 2);
    // Input: the 3 activation types (9 x 3); weight kFP8, scales float32 whatever T (9 each); output: T when T is
    // an activation type (3).
    CHECK_MSG(accepted == 9 * 3 + 9 + 9 + 3, "accepted " + std::to_string(accepted));
    nvinfer1::DynamicPluginTensorDesc io[4]{};
    CHECK(!p.supportsFormatCombination(4, io, 3, 1));
    CHECK(!p.supportsFormatCombination(0, io, 2, 1));
    CHECK(!p.supportsFormatCombination(0, nullptr, 3, 1));
}

void profile(nvinfer1::DynamicPluginTensorDesc* in, std::vector<Dims> const& lo, std::vector<Dims> const& hi, DataType t)
{
    for (int32_t i = 0; i < 3; ++i)
    {
        in[i].min = lo[i];
        in[i].max = hi[i];
        in[i].opt = hi[i];
        in[i].desc.dims = hi[i];
        in[i].desc.type = i == c::kWeight ? DataType::kFP8 : (i == c::kWeightScaleInv ? DataType::kFLOAT : t);
        in[i].desc.format = nvinfer1::TensorFormat::kLINEAR;
    }
    in[0].desc.dims.d[0] = -1;
}

void testConfigurePlugin()
{
    plugin::BlockFp8MatMulPlugin p(plugin::Fp8Attributes{});
    nvinfer1::DynamicPluginTensorDesc in[3]{};
    nvinfer1::DynamicPluginTensorDesc out[1]{};
    for (DataType t : {DataType::kHALF, DataType::kBF16})
    {
        profile(in, dense({1, 1}, 1536, 7168), dense({32, 2048}, 1536, 7168), t);
        CHECK(p.configurePlugin(in, 3, out, 1) == 0);
        profile(in, grouped(128, 1, 128, 512), grouped(128, 4096, 128, 512), t);
        CHECK(p.configurePlugin(in, 3, out, 1) == 0);
        profile(in, dense({1, 1}, 40, 80), dense({8, 64}, 40, 80), t); // tiny: ragged blocks
        CHECK(p.configurePlugin(in, 3, out, 1) == 0);
    }
    // float32 has no AOT build: refused at build time with the kernels' reason.
    profile(in, dense({1, 1}, 1536, 7168), dense({8, 16}, 1536, 7168), DataType::kFLOAT);
    gLogger.messages.clear();
    CHECK(p.configurePlugin(in, 3, out, 1) != 0);
    CHECK(gLogger.contains("BlockFp8MatMul: no kernel for this layer's type and profile: ", nvinfer1::ILogger::Severity::kERROR));
    // A scale that is not one per block, at a profile bound.
    profile(in, dense({1, 1}, 1536, 7168), dense({8, 16}, 1536, 7168), DataType::kHALF);
    in[c::kWeightScaleInv].max = dims({12, 57});
    gLogger.messages.clear();
    CHECK(p.configurePlugin(in, 3, out, 1) != 0);
    CHECK(gLogger.contains("(profile bounds)", nvinfer1::ILogger::Severity::kERROR));
    CHECK(p.configurePlugin(in, 2, out, 1) != 0);
    CHECK(gLogger.contains("BlockFp8MatMul: expected 3 inputs and 1 output", nvinfer1::ILogger::Severity::kERROR));
}

void testWorkspace()
{
    plugin::Fp8Attributes const a{};
    // Exhaustive over row counts: the profile's workspace holds every call in it (the kernels' own figure).
    struct Layer
    {
        int64_t g, n, k;
    };
    for (Layer const& l : {Layer{1, 1536, 7168}, Layer{1, 40, 80}, Layer{128, 128, 512}, Layer{1, 7168, 18432}})
    {
        for (int64_t hiRows : {1, 16, 17, 300})
        {
            auto const shapes = [&l](int64_t rows) {
                return l.g == 1 ? dense({1, rows}, l.n, l.k) : grouped(l.g, rows, l.n, l.k);
            };
            auto lo = shapes(1);
            auto hi = shapes(hiRows);
            size_t const got = plugin::fp8WorkspaceSize(a, lo.data(), hi.data(), kernels::DataType::kBFLOAT16);
            size_t best = 0;
            for (int64_t rows = 1; rows <= hiRows; ++rows)
            {
                auto in = shapes(rows);
                best = std::max(best,
                    kernels::fp8::workspaceBytes(plugin::fp8KernelDims(a, in.data(), kernels::DataType::kBFLOAT16)));
            }
            CHECK_MSG(got == best, "G=" + std::to_string(l.g) + " N=" + std::to_string(l.n) + " rows up to "
                    + std::to_string(hiRows) + ": " + std::to_string(got) + " vs " + std::to_string(best));
        }
    }
    auto lo = dense({1, 1}, 1536, 7168);
    auto hi = dense({32, 2048}, 1536, 7168);
    std::printf("workspace: V3 q_a_proj, up to 65536 rows: %.1f MiB\n",
        static_cast<double>(plugin::fp8WorkspaceSize(a, lo.data(), hi.data(), kernels::DataType::kBFLOAT16)) / (1 << 20));
    // Through the plugin (DynamicPluginTensorDesc bounds), and 0 for a type without kernels.
    plugin::BlockFp8MatMulPlugin p(a);
    nvinfer1::DynamicPluginTensorDesc in[3]{};
    profile(in, lo, hi, DataType::kHALF);
    CHECK(p.getWorkspaceSize(in, 3, nullptr, 1)
        == plugin::fp8WorkspaceSize(a, lo.data(), hi.data(), kernels::DataType::kFLOAT16));
    in[0].desc.type = DataType::kINT8;
    CHECK(p.getWorkspaceSize(in, 3, nullptr, 1) == 0);
    CHECK(p.getWorkspaceSize(in, 2, nullptr, 1) == 0);
}
} // namespace

int main()
{
    return testutil::runTests("test_fp8_shapes", gLogger,
        {testInputDims, testOutputShapeAndTypes, testFormatMatrix, testConfigurePlugin, testWorkspace});
}
