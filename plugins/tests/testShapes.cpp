/*
 * mlaShapes and the plugin's build-time answers: attribute and input-shape validation, output
 * shapes and types, the format/type support matrix, and the workspace size over a profile.
 */
#include "fakeCuda.h"
#include "mlaAttentionPlugin.h"
#include "mlaContract.h"
#include "mlaShapes.h"
#include "testPlugin.h"
#include "testUtil.h"

#include <algorithm>
#include <memory>
#include <vector>

using namespace mla;
using nvinfer1::DataType;
using nvinfer1::Dims;
namespace c = mla::contract;

namespace
{
using testutil::dims;
using testutil::sameDims;
testutil::CapturingLogger gLogger;

plugin::MlaAttributes attrs(int32_t h = 4, int32_t dc = 32, int32_t dr = 8)
{
    return plugin::MlaAttributes{h, dc, dr, 0.125F};
}

// The 7 input shapes of a call.
std::vector<Dims> inputs(int64_t b, int64_t s, int64_t h, int64_t dc, int64_t dr, int64_t smax)
{
    return {dims({b, s, h, dc}), dims({b, s, h, dr}), dims({b, s, dc}), dims({b, s, dr}), dims({b, smax, dc + dr}),
        dims({b}), dims({smax, dr})};
}

void testAttributes()
{
    CHECK(plugin::validateAttributes(attrs()).empty());
    CHECK(plugin::validateAttributes({0, 32, 8, 1.F}).find("num_heads") != std::string::npos);
    CHECK(plugin::validateAttributes({4, 0, 8, 1.F}).find("kv_lora_rank") != std::string::npos);
    CHECK(plugin::validateAttributes({4, 32, 7, 1.F}).find("qk_rope_head_dim") != std::string::npos);
    CHECK(plugin::validateAttributes({4, 32, 8, 0.F}).find("softmax_scale") != std::string::npos);
}

void testInputDims()
{
    auto const a = attrs();
    auto in = inputs(2, 3, 4, 32, 8, 64);
    CHECK(plugin::validateInputDims(a, in.data(), 7).empty());
    CHECK(!plugin::validateInputDims(a, in.data(), 6).empty());
    // Unknown extents (build time) are not compared.
    auto dyn = inputs(-1, -1, 4, 32, 8, 64);
    CHECK(plugin::validateInputDims(a, dyn.data(), 7).empty());
    // A longer RoPE table is fine, a shorter one is not.
    in[c::kRopeCosSin] = dims({128, 8});
    CHECK(plugin::validateInputDims(a, in.data(), 7).empty());
    in[c::kRopeCosSin] = dims({32, 8});
    CHECK(plugin::validateInputDims(a, in.data(), 7).find("rope_cos_sin") != std::string::npos);

    struct Case
    {
        int32_t input;
        Dims shape;
        char const* mention;
    };
    std::vector<Case> const bad = {
        {c::kQLatent, dims({2, 3, 5, 32}), "num_heads"},
        {c::kQLatent, dims({2, 3, 4, 16}), "kv_lora_rank"},
        {c::kQLatent, dims({2, 3, 4}), "rank 3, expected 4"},
        {c::kQPe, dims({2, 3, 4, 6}), "qk_rope_head_dim"},
        {c::kQPe, dims({1, 3, 4, 8}), "B of q_latent"},
        {c::kKvLatent, dims({2, 2, 32}), "S of q_latent"},
        {c::kKPe, dims({2, 3, 16}), "qk_rope_head_dim"},
        {c::kPastCache, dims({2, 64, 32}), "kv_lora_rank + qk_rope_head_dim"},
        {c::kPastCache, dims({3, 64, 40}), "B of q_latent"},
        {c::kCacheSeqlensIn, dims({4}), "B of q_latent"},
        {c::kCacheSeqlensIn, dims({2, 1}), "rank 2, expected 1"},
        {c::kRopeCosSin, dims({64, 4}), "qk_rope_head_dim"},
    };
    for (Case const& k : bad)
    {
        auto v = inputs(2, 3, 4, 32, 8, 64);
        v[k.input] = k.shape;
        std::string const why = plugin::validateInputDims(a, v.data(), 7);
        CHECK_MSG(why.find(k.mention) != std::string::npos && why.find(c::kInputNames[k.input]) != std::string::npos,
            "got: " + why);
    }
    auto tooMany = inputs(2, 65, 4, 32, 8, 64);
    CHECK(plugin::validateInputDims(a, tooMany.data(), 7).find("at most Smax") != std::string::npos);
    auto empty = inputs(0, 3, 4, 32, 8, 64);
    CHECK(plugin::validateInputDims(a, empty.data(), 7).find("non-empty") != std::string::npos);
}

void testOutputShapes()
{
    auto in = inputs(2, 3, 4, 32, 8, 64);
    CHECK(sameDims(plugin::outputDims(c::kAttnLatent, in.data()), dims({2, 3, 4, 32})));
    CHECK(sameDims(plugin::outputDims(c::kPresentCache, in.data()), dims({2, 64, 40})));
    CHECK(plugin::kOutputRanks[c::kAttnLatent] == 4 && plugin::kOutputRanks[c::kPresentCache] == 3);

    // getOutputShapes hands back the inputs' shape expressions (never evaluated here).
    plugin::MlaAttentionPlugin p(attrs());
    testutil::ShapeExprs exprs(in);
    nvinfer1::DimsExprs outs[2];
    CHECK(p.getOutputShapes(exprs.data(), 7, nullptr, 0, outs, 2, exprs.builder()) == 0);
    CHECK(outs[0].nbDims == 4 && outs[0].d[3] == exprs[c::kQLatent].d[3]);
    CHECK(outs[1].nbDims == 3 && outs[1].d[1] == exprs[c::kPastCache].d[1]);
    CHECK(p.getOutputShapes(exprs.data(), 6, nullptr, 0, outs, 2, exprs.builder()) != 0);
    CHECK(p.getNbOutputs() == 2);
}

void testOutputTypes()
{
    plugin::MlaAttentionPlugin p(attrs());
    for (DataType t : {DataType::kHALF, DataType::kBF16, DataType::kFLOAT})
    {
        DataType in[7] = {t, t, t, t, t, DataType::kINT32, DataType::kFLOAT};
        DataType out[2] = {DataType::kINT8, DataType::kINT8};
        CHECK(p.getOutputDataTypes(out, 2, in, 7) == 0);
        CHECK(out[0] == t && out[1] == t);
    }
    DataType const h = DataType::kHALF;
    DataType mixed[7] = {h, h, h, h, DataType::kBF16, DataType::kINT32, DataType::kFLOAT};
    DataType out[2];
    gLogger.messages.clear();
    CHECK(p.getOutputDataTypes(out, 2, mixed, 7) != 0);
    CHECK(gLogger.contains("past_cache must have the type of q_latent", nvinfer1::ILogger::Severity::kERROR));
    DataType badSeq[7] = {h, h, h, h, h, DataType::kINT64, DataType::kFLOAT};
    CHECK(p.getOutputDataTypes(out, 2, badSeq, 7) != 0);
    DataType badRope[7] = {h, h, h, h, h, DataType::kINT32, DataType::kHALF};
    CHECK(p.getOutputDataTypes(out, 2, badRope, 7) != 0);
    DataType int8[7] = {DataType::kINT8, DataType::kINT8, DataType::kINT8, DataType::kINT8, DataType::kINT8,
        DataType::kINT32, DataType::kFLOAT};
    CHECK(p.getOutputDataTypes(out, 2, int8, 7) != 0);
}

// The expected answer of the support matrix for position `pos`, given the types chosen so far.
bool expectedSupport(int32_t pos, std::vector<DataType> const& types, nvinfer1::TensorFormat format)
{
    if (format != nvinfer1::TensorFormat::kLINEAR)
    {
        return false;
    }
    if (pos == c::kCacheSeqlensIn)
    {
        return types[pos] == DataType::kINT32;
    }
    if (pos == c::kRopeCosSin)
    {
        return types[pos] == DataType::kFLOAT;
    }
    bool const activation
        = types[pos] == DataType::kHALF || types[pos] == DataType::kBF16 || types[pos] == DataType::kFLOAT;
    return activation && types[pos] == types[0];
}

void testFormatMatrix()
{
    plugin::MlaAttentionPlugin p(attrs());
    // For every T of position 0, every type at every other position (the rest set to valid types).
    auto const [checked, accepted] = testutil::checkFormatMatrix(
        p, 7, 2,
        [](DataType t0) {
            return std::vector<DataType>{t0, t0, t0, t0, t0, DataType::kINT32, DataType::kFLOAT, t0, t0};
        },
        expectedSupport);
    CHECK(checked == 9 * 9 * 9 * 2);
    // Position 0 takes the 3 activation types whatever t0 was (9 x 3); the 6 other T positions only
    // t0, when t0 is an activation type (3 x 6); int32 at 5 and float at 6 for every t0 (9 x 2).
    CHECK_MSG(accepted == 9 * 3 + 3 * 6 + 9 * 2, "accepted " + std::to_string(accepted));
    nvinfer1::DynamicPluginTensorDesc io[9]{};
    CHECK(!p.supportsFormatCombination(9, io, 7, 2));
    CHECK(!p.supportsFormatCombination(0, io, 6, 2));
    CHECK(!p.supportsFormatCombination(0, nullptr, 7, 2));
}

void testConfigurePlugin()
{
    plugin::MlaAttentionPlugin p(attrs());
    auto lo = inputs(1, 1, 4, 32, 8, 64);
    auto hi = inputs(8, 16, 4, 32, 8, 64);
    nvinfer1::DynamicPluginTensorDesc in[7]{};
    nvinfer1::DynamicPluginTensorDesc out[2]{};
    for (int32_t i = 0; i < 7; ++i)
    {
        in[i].min = lo[i];
        in[i].max = hi[i];
        in[i].opt = hi[i];
        in[i].desc.dims = inputs(-1, -1, 4, 32, 8, 64)[i];
        in[i].desc.type = i == c::kCacheSeqlensIn ? DataType::kINT32 : (i == c::kRopeCosSin ? DataType::kFLOAT : DataType::kHALF);
    }
    CHECK(p.configurePlugin(in, 7, out, 2) == 0);
#if MLA_TESTS_USE_GENERATED_KERNELS
    // The AOT kernels have no float32 build: refused at build time, with the kernels' reason.
    for (int32_t i : {0, 1, 2, 3, 4})
    {
        in[i].desc.type = DataType::kFLOAT;
    }
    gLogger.messages.clear();
    CHECK(p.configurePlugin(in, 7, out, 2) != 0);
    CHECK(gLogger.contains("no kernel for this layer's type and profile", nvinfer1::ILogger::Severity::kERROR));
    for (int32_t i : {0, 1, 2, 3, 4})
    {
        in[i].desc.type = DataType::kHALF;
    }
#endif
    in[c::kQLatent].max = dims({8, 16, 8, 32});
    gLogger.messages.clear();
    CHECK(p.configurePlugin(in, 7, out, 2) != 0);
    CHECK(gLogger.contains("profile bounds", nvinfer1::ILogger::Severity::kERROR));
}

// present_cache (output 1) is declared an alias of past_cache (input 4) through the V2 build
// capability, and every build-time answer keeps the pair identical: shape, type and format.
void testAliasing()
{
    plugin::MlaAttentionPlugin p(attrs());
    std::unique_ptr<nvinfer1::IPluginV3> clone(p.clone());
    for (nvinfer1::IPluginV3* object : {static_cast<nvinfer1::IPluginV3*>(&p), clone.get()})
    {
        auto* capability = object->getCapabilityInterface(nvinfer1::PluginCapabilityType::kBUILD);
        CHECK(capability != nullptr);
        if (capability == nullptr)
        {
            continue;
        }
        // TensorRT tells the build capabilities apart by the interface info: V2 is version 2.0.
        nvinfer1::InterfaceInfo const info = capability->getInterfaceInfo();
        CHECK(std::string(info.kind) == "PLUGIN_V3ONE_BUILD" && info.major == 2 && info.minor == 0);
        auto* build = static_cast<nvinfer1::IPluginV3OneBuildV2*>(capability);
        CHECK(build->getAliasedInput(c::kPresentCache) == c::kPastCache);
        CHECK(build->getAliasedInput(c::kAttnLatent) == -1);
        for (int32_t outside : {-1, 2, 7, 1000})
        {
            CHECK(build->getAliasedInput(outside) == -1);
        }
        CHECK(build->getNbOutputs() == 2);
    }
    CHECK(plugin::aliasedInput(c::kPresentCache) == c::kPastCache && plugin::aliasedInput(c::kAttnLatent) == -1);
    CHECK(plugin::outputShapeSource(c::kPresentCache) == plugin::aliasedInput(c::kPresentCache));

    // Shapes: output 1 is input 4's shape, for decode and prefill, every head layout the kernels take.
    for (auto const& k : std::vector<std::vector<int64_t>>{
             {1, 1, 4, 32, 8, 64}, {3, 5, 4, 32, 8, 64}, {8, 1, 128, 512, 64, 4096}, {2, 64, 16, 512, 64, 2048}})
    {
        auto in = inputs(k[0], k[1], k[2], k[3], k[4], k[5]);
        CHECK(sameDims(plugin::outputDims(c::kPresentCache, in.data()), in[c::kPastCache]));
    }
    // Types: output 1 has input 4's type for every accepted T.
    for (DataType t : {DataType::kHALF, DataType::kBF16, DataType::kFLOAT})
    {
        DataType in[7] = {t, t, t, t, t, DataType::kINT32, DataType::kFLOAT};
        DataType out[2]{};
        CHECK(p.getOutputDataTypes(out, 2, in, 7) == 0 && out[c::kPresentCache] == in[c::kPastCache]);
    }
    // Formats and types: whatever input 4 holds, output 1 is accepted only with exactly its type and format.
    std::vector<DataType> const& all = testutil::kAllTypes;
    std::vector<nvinfer1::TensorFormat> const formats
        = {nvinfer1::TensorFormat::kLINEAR, nvinfer1::TensorFormat::kCHW32, nvinfer1::TensorFormat::kHWC8};
    int32_t pairs = 0;
    for (DataType t : {DataType::kHALF, DataType::kBF16, DataType::kFLOAT})
    {
        for (DataType past : all)
        {
            for (DataType present : all)
            {
                for (auto pastFormat : formats)
                {
                    for (auto presentFormat : formats)
                    {
                        nvinfer1::DynamicPluginTensorDesc io[9]{};
                        DataType const types[9] = {t, t, t, t, past, DataType::kINT32, DataType::kFLOAT, t, present};
                        for (int32_t i = 0; i < 9; ++i)
                        {
                            io[i].desc.type = types[i];
                            io[i].desc.format = nvinfer1::TensorFormat::kLINEAR;
                        }
                        io[c::kPastCache].desc.format = pastFormat;
                        io[7 + c::kPresentCache].desc.format = presentFormat;
                        bool const pastOk = p.supportsFormatCombination(c::kPastCache, io, 7, 2);
                        bool const presentOk = p.supportsFormatCombination(7 + c::kPresentCache, io, 7, 2);
                        if (!pastOk)
                        {
                            continue; // TensorRT asks about position 8 only once 0..7 are accepted
                        }
                        bool const identical = past == present && pastFormat == presentFormat;
                        CHECK_MSG(presentOk == identical,
                            "past " + std::to_string(int(past)) + " present " + std::to_string(int(present)));
                        pairs += presentOk ? 1 : 0;
                    }
                }
            }
        }
    }
    CHECK_MSG(pairs == 3, std::to_string(pairs) + " accepted pairs"); // (T, linear) for each of the three T
}

// The brute-force maximum of workspaceBytes over every shape in the profile.
size_t bruteForce(plugin::MlaAttributes const& a, std::vector<Dims> const& lo, std::vector<Dims> const& hi,
    kernels::DataType dtype, int32_t sms)
{
    size_t best = 0;
    for (int64_t b = lo[0].d[0]; b <= hi[0].d[0]; ++b)
    {
        for (int64_t s = lo[0].d[1]; s <= hi[0].d[1]; ++s)
        {
            for (int64_t m = lo[4].d[1]; m <= hi[4].d[1]; ++m)
            {
                auto in = inputs(b, s, a.numHeads, a.kvLoraRank, a.ropeDim, m);
                best = std::max(best, kernels::workspaceBytes(plugin::kernelDims(a, in.data(), dtype), sms));
            }
        }
    }
    return best;
}

void testWorkspace()
{
    auto const a = attrs(16, 512, 64);
    for (auto range : {std::vector<int64_t>{1, 1, 1, 1}, {1, 37, 1, 4}, {3, 64, 1, 1}, {1, 200, 1, 9}})
    {
        auto lo = inputs(range[0], range[2], 16, 512, 64, 2048);
        auto hi = inputs(range[1], range[3], 16, 512, 64, 2048);
        size_t const got = plugin::workspaceSize(a, lo.data(), hi.data(), kernels::DataType::kFLOAT16, 132);
        size_t const want = bruteForce(a, lo, hi, kernels::DataType::kFLOAT16, 132);
        CHECK_MSG(got == want, std::to_string(got) + " vs brute force " + std::to_string(want));
    }
    // A large profile: at least the need of its max shape and of sampled shapes in between.
    auto lo = inputs(1, 1, 16, 512, 64, 4096);
    auto hi = inputs(65536, 4096, 16, 512, 64, 4096);
    size_t const big = plugin::workspaceSize(a, lo.data(), hi.data(), kernels::DataType::kBFLOAT16, 132);
    for (int64_t b : {1, 2, 3, 100, 1000, 65536})
    {
        for (int64_t s : {1, 7, 4096})
        {
            auto in = inputs(b, s, 16, 512, 64, 4096);
            CHECK(big >= kernels::workspaceBytes(plugin::kernelDims(a, in.data(), kernels::DataType::kBFLOAT16), 132));
        }
    }

    // Through the plugin: the device's SM count from the driver (fake: 132; then 20).
    plugin::MlaAttentionPlugin p(a);
    auto lo2 = inputs(1, 1, 16, 512, 64, 2048);
    auto hi2 = inputs(16, 4, 16, 512, 64, 2048);
    nvinfer1::DynamicPluginTensorDesc in[7]{};
    for (int32_t i = 0; i < 7; ++i)
    {
        in[i].min = lo2[i];
        in[i].max = hi2[i];
        in[i].desc.type = i == c::kCacheSeqlensIn ? DataType::kINT32 : (i == c::kRopeCosSin ? DataType::kFLOAT : DataType::kHALF);
    }
    fake::reset();
    CHECK(p.getWorkspaceSize(in, 7, nullptr, 2) == bruteForce(a, lo2, hi2, kernels::DataType::kFLOAT16, 132));
    fake::setDevice(90, 20);
    CHECK(p.getWorkspaceSize(in, 7, nullptr, 2) == bruteForce(a, lo2, hi2, kernels::DataType::kFLOAT16, 20));
    // No context at build time: a conservative SM count, with a warning.
    fake::setNoContext(true);
    gLogger.messages.clear();
    CHECK(p.getWorkspaceSize(in, 7, nullptr, 2)
        == bruteForce(a, lo2, hi2, kernels::DataType::kFLOAT16, plugin::kFallbackNumSms));
    CHECK(gLogger.contains("cannot query the device's SM count", nvinfer1::ILogger::Severity::kWARNING));
    fake::reset();
    in[0].desc.type = DataType::kINT8;
    CHECK(p.getWorkspaceSize(in, 7, nullptr, 2) == 0);
}
} // namespace

int main()
{
    return testutil::runTests("test_mla_shapes", gLogger,
        {testAttributes, testInputDims, testOutputShapes, testOutputTypes, testFormatMatrix, testConfigurePlugin,
            testAliasing, testWorkspace});
}
