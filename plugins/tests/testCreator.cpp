/*
 * MlaAttentionPluginCreator: identity, declared fields, parsing of what TensorRT's ONNX parser sends
 * (kINT32 / kFLOAT32) and of kINT64 / kFLOAT64, rejection of missing and invalid attributes with a
 * message naming the field, and the serialization round trip getFieldsToSerialize -> createPlugin.
 */
#include "mlaAttentionPlugin.h"
#include "mlaContract.h"
#include "testFields.h"
#include "testPlugin.h"
#include "testUtil.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

using namespace mla;
using nvinfer1::PluginField;
using nvinfer1::PluginFieldCollection;
using nvinfer1::PluginFieldType;
using nvinfer1::TensorRTPhase;
using Severity = nvinfer1::ILogger::Severity;

namespace
{
testutil::CapturingLogger gLogger;

// Owns the values a PluginFieldCollection points at.
struct Fields : testutil::FieldList
{
    int32_t heads = 16;
    int32_t rank = 512;
    int32_t rope = 64;
    float scale = 0.0721687824F;
    int64_t heads64 = 16;
    int64_t rank64 = 512;
    int64_t rope64 = 64;
    double scale64 = 0.0721687824;

    // What TensorRT's ONNX parser sends: INT as kINT32, FLOAT as kFLOAT32.
    Fields& onnxTypes()
    {
        fields.clear();
        add(contract::kAttrNumHeads, &heads).add(contract::kAttrKvLoraRank, &rank);
        add(contract::kAttrQkRopeHeadDim, &rope).add(contract::kAttrSoftmaxScale, &scale);
        return *this;
    }
    Fields& wideTypes()
    {
        fields.clear();
        add(contract::kAttrNumHeads, &heads64).add(contract::kAttrKvLoraRank, &rank64);
        add(contract::kAttrQkRopeHeadDim, &rope64).add(contract::kAttrSoftmaxScale, &scale64);
        return *this;
    }
};

std::unique_ptr<plugin::MlaAttentionPlugin> create(
    plugin::MlaAttentionPluginCreator& creator, PluginFieldCollection const* fc, TensorRTPhase phase = TensorRTPhase::kBUILD)
{
    return std::unique_ptr<plugin::MlaAttentionPlugin>(
        static_cast<plugin::MlaAttentionPlugin*>(creator.createPlugin("layer0", fc, phase)));
}

// createPlugin must refuse `f` and log an error that mentions `mention`.
void expectRejected(Fields& f, std::string const& mention, int line)
{
    plugin::MlaAttentionPluginCreator creator;
    gLogger.messages.clear();
    auto p = create(creator, f.collection());
    testutil::check(p == nullptr, "createPlugin returns nullptr", __FILE__, line);
    testutil::check(gLogger.contains(mention, Severity::kERROR), "error names the attribute", __FILE__, line,
        "wanted '" + mention + "', last log: " + gLogger.last());
}

void testIdentity()
{
    plugin::MlaAttentionPluginCreator creator;
    CHECK(std::string(creator.getPluginName()) == "MlaAttention");
    CHECK(std::string(creator.getPluginVersion()) == "1");
    CHECK(std::string(creator.getPluginNamespace()) == "mla");
    CHECK(std::string(creator.getInterfaceInfo().kind) == "PLUGIN CREATOR_V3ONE");
    PluginFieldCollection const* names = creator.getFieldNames();
    // Contract version 1's four attributes, then version 2's (optional: a version-1 file has neither).
    CHECK(names != nullptr && names->nbFields == 6);
    char const* expected[6] = {contract::kAttrNumHeads, contract::kAttrKvLoraRank, contract::kAttrQkRopeHeadDim,
        contract::kAttrSoftmaxScale, contract::kAttrPageSize, contract::kAttrKvCacheDtype};
    PluginFieldType types[6] = {PluginFieldType::kINT32, PluginFieldType::kINT32, PluginFieldType::kINT32,
        PluginFieldType::kFLOAT32, PluginFieldType::kINT32, PluginFieldType::kINT32};
    for (int32_t i = 0; names != nullptr && i < 6 && i < names->nbFields; ++i)
    {
        CHECK(std::string(names->fields[i].name) == expected[i]);
        CHECK(names->fields[i].type == types[i]);
        CHECK(names->fields[i].length == 1);
    }
}

void testParsesOnnxTypes()
{
    plugin::MlaAttentionPluginCreator creator;
    Fields f;
    gLogger.messages.clear();
    auto p = create(creator, f.onnxTypes().collection());
    CHECK(p != nullptr);
    if (!p)
    {
        return;
    }
    CHECK(p->attributes().numHeads == 16);
    CHECK(p->attributes().kvLoraRank == 512);
    CHECK(p->attributes().ropeDim == 64);
    CHECK(p->attributes().softmaxScale == 0.0721687824F);
    CHECK(gLogger.contains("num_heads=16 kv_lora_rank=512 qk_rope_head_dim=64 softmax_scale=0.0721687", Severity::kINFO));
    CHECK(gLogger.contains("field num_heads arrived as kINT32", Severity::kVERBOSE));
    // Identity through the capability interfaces, as TensorRT sees it.
    auto* core = static_cast<nvinfer1::IPluginV3OneCore*>(p->getCapabilityInterface(nvinfer1::PluginCapabilityType::kCORE));
    CHECK(core != nullptr && std::string(core->getPluginName()) == "MlaAttention");
    CHECK(core != nullptr && std::string(core->getPluginNamespace()) == "mla");
    CHECK(core != nullptr && std::string(core->getPluginVersion()) == "1");
    CHECK(core != nullptr && std::string(core->getInterfaceInfo().kind) == "PLUGIN_V3ONE_CORE");
    auto* build = p->getCapabilityInterface(nvinfer1::PluginCapabilityType::kBUILD);
    CHECK(build != nullptr && std::string(build->getInterfaceInfo().kind) == "PLUGIN_V3ONE_BUILD");
    auto* runtime = p->getCapabilityInterface(nvinfer1::PluginCapabilityType::kRUNTIME);
    CHECK(runtime != nullptr && std::string(runtime->getInterfaceInfo().kind) == "PLUGIN_V3ONE_RUNTIME");
}

void testParsesWideTypes()
{
    plugin::MlaAttentionPluginCreator creator;
    Fields f;
    auto p = create(creator, f.wideTypes().collection(), TensorRTPhase::kRUNTIME);
    CHECK(p != nullptr);
    if (p)
    {
        CHECK(p->attributes().numHeads == 16 && p->attributes().kvLoraRank == 512 && p->attributes().ropeDim == 64);
        CHECK(std::fabs(p->attributes().softmaxScale - 0.0721687824F) < 1e-9F);
    }
    // Field order does not matter; an unknown field is ignored with a warning.
    Fields g;
    g.onnxTypes();
    std::swap(g.fields[0], g.fields[3]);
    int32_t extra = 7;
    g.fields.emplace_back("some_future_attribute", &extra, PluginFieldType::kINT32, 1);
    gLogger.messages.clear();
    auto q = create(creator, g.collection());
    CHECK(q != nullptr && q->attributes().numHeads == 16);
    CHECK(gLogger.contains("ignoring unknown attribute some_future_attribute", Severity::kWARNING));
}

void testRejects()
{
    for (char const* name : {contract::kAttrNumHeads, contract::kAttrKvLoraRank, contract::kAttrQkRopeHeadDim,
             contract::kAttrSoftmaxScale})
    {
        Fields f;
        f.onnxTypes().drop(name);
        expectRejected(f, std::string(name) + " is missing", __LINE__);
    }
    {
        Fields f;
        f.onnxTypes().field(contract::kAttrNumHeads).type = PluginFieldType::kFLOAT32;
        expectRejected(f, "num_heads: expected kINT32 or kINT64", __LINE__);
    }
    {
        Fields f;
        char text[] = "16";
        f.onnxTypes().field(contract::kAttrKvLoraRank) = PluginField(contract::kAttrKvLoraRank, text, PluginFieldType::kCHAR, 3);
        expectRejected(f, "kv_lora_rank", __LINE__);
    }
    {
        Fields f;
        f.onnxTypes().field(contract::kAttrSoftmaxScale).type = PluginFieldType::kINT32;
        expectRejected(f, "softmax_scale: expected kFLOAT32 or kFLOAT64", __LINE__);
    }
    {
        Fields f;
        int32_t two[2] = {4, 4};
        f.onnxTypes().field(contract::kAttrNumHeads) = PluginField(contract::kAttrNumHeads, two, PluginFieldType::kINT32, 2);
        expectRejected(f, "num_heads: expected one integer, got length 2", __LINE__);
    }
    {
        Fields f;
        f.onnxTypes().field(contract::kAttrQkRopeHeadDim).data = nullptr;
        expectRejected(f, "qk_rope_head_dim", __LINE__);
    }
    {
        Fields f;
        f.heads = 0;
        expectRejected(f.onnxTypes(), "num_heads = 0", __LINE__);
    }
    {
        Fields f;
        f.rank = -3;
        expectRejected(f.onnxTypes(), "kv_lora_rank = -3", __LINE__);
    }
    {
        Fields f;
        f.rope = 63;
        expectRejected(f.onnxTypes(), "qk_rope_head_dim = 63: expected a positive even integer", __LINE__);
    }
    {
        Fields f;
        f.heads64 = int64_t{1} << 40;
        expectRejected(f.wideTypes(), "num_heads = 1099511627776", __LINE__);
    }
    for (float bad : {0.F, -1.F, std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()})
    {
        Fields f;
        f.scale = bad;
        expectRejected(f.onnxTypes(), "softmax_scale", __LINE__);
    }
    {
        Fields f;
        f.scale64 = 1e300; // overflows float
        expectRejected(f.wideTypes(), "softmax_scale", __LINE__);
    }
    {
        Fields f;
        f.onnxTypes();
        f.fields.push_back(f.fields[0]);
        expectRejected(f, "num_heads given twice", __LINE__);
    }
    {
        plugin::MlaAttentionPluginCreator creator;
        gLogger.messages.clear();
        CHECK(creator.createPlugin("x", nullptr, TensorRTPhase::kBUILD) == nullptr);
        CHECK(gLogger.contains("no attributes given", Severity::kERROR));
        PluginFieldCollection empty{};
        CHECK(creator.createPlugin("x", &empty, TensorRTPhase::kBUILD) == nullptr);
        CHECK(gLogger.contains("num_heads is missing", Severity::kERROR));
    }
}

void testSerializationRoundTrip()
{
    plugin::MlaAttentionPluginCreator creator;
    Fields f;
    f.heads = 128;
    f.rank = 512;
    f.rope = 64;
    f.scale = 0.1352337788F;
    auto p = create(creator, f.onnxTypes().collection());
    CHECK(p != nullptr);
    if (!p)
    {
        return;
    }
    PluginFieldCollection const* serialized = p->getFieldsToSerialize();
    CHECK(serialized != nullptr && serialized->nbFields == 6);
    for (int32_t i = 0; serialized != nullptr && i < serialized->nbFields; ++i)
    {
        PluginField const& field = serialized->fields[i];
        bool const isScale = std::strcmp(field.name, contract::kAttrSoftmaxScale) == 0;
        CHECK(field.type == (isScale ? PluginFieldType::kFLOAT32 : PluginFieldType::kINT32));
        CHECK(field.length == 1 && field.data != nullptr);
    }
    auto q = create(creator, serialized, TensorRTPhase::kRUNTIME);
    CHECK(q != nullptr);
    if (q)
    {
        CHECK(q->attributes().numHeads == 128 && q->attributes().kvLoraRank == 512 && q->attributes().ropeDim == 64);
        CHECK(q->attributes().softmaxScale == 0.1352337788F); // bit-exact
        // Twice in a row gives the same fields (no growth, stable pointers into the plugin).
        PluginFieldCollection const* again = q->getFieldsToSerialize();
        CHECK(again != nullptr && again->nbFields == 6);
    }
    // clone() and attachToContext() keep the attributes.
    std::unique_ptr<nvinfer1::IPluginV3> cloned(p->clone());
    CHECK(cloned != nullptr
        && static_cast<plugin::MlaAttentionPlugin*>(cloned.get())->attributes().softmaxScale == 0.1352337788F);
    std::unique_ptr<nvinfer1::IPluginV3> attached(p->attachToContext(nullptr));
    CHECK(attached != nullptr
        && static_cast<plugin::MlaAttentionPlugin*>(attached.get())->attributes().numHeads == 128);
}
// Contract version 2: page_size and kv_cache_dtype select the node's tensor counts (8 inputs and 2 outputs for a
// paged pool in T, 10 and 4 for the FP8 cache), survive serialization, and bad values are refused by name.
void testCacheAttributes()
{
    plugin::MlaAttentionPluginCreator creator;
    struct Mode
    {
        int32_t page, kvDtype, inputs, outputs;
    };
    for (Mode const m : {Mode{0, 0, 7, 2}, Mode{64, 0, 8, 2}, Mode{16, 1, 10, 4}, Mode{0, 1, 10, 4}, Mode{1, 0, 8, 2},
             Mode{4096, 1, 10, 4}})
    {
        Fields f;
        int32_t page = m.page;
        int32_t kvDtype = m.kvDtype;
        f.onnxTypes().add(contract::kAttrPageSize, &page).add(contract::kAttrKvCacheDtype, &kvDtype);
        gLogger.messages.clear();
        auto p = create(creator, f.collection());
        CHECK_MSG(p != nullptr, "page_size " + std::to_string(m.page) + ", last log: " + gLogger.last());
        if (!p)
        {
            continue;
        }
        CHECK(p->attributes().pageSize == m.page && p->attributes().kvCacheDtype == m.kvDtype);
        CHECK(gLogger.contains("page_size=" + std::to_string(m.page) + " kv_cache_dtype=" + std::to_string(m.kvDtype),
            Severity::kINFO));
        CHECK(p->getNbOutputs() == m.outputs && plugin::numInputsFor(p->attributes()) == m.inputs);
        auto q = create(creator, p->getFieldsToSerialize(), TensorRTPhase::kRUNTIME);
        CHECK(q != nullptr && q->attributes().pageSize == m.page && q->attributes().kvCacheDtype == m.kvDtype);
        CHECK(q != nullptr && q->getNbOutputs() == m.outputs);
    }
    // A version-1 node (no cache attributes): contiguous, the model's dtype.
    Fields v1;
    auto p = create(creator, v1.onnxTypes().collection());
    CHECK(p != nullptr && p->attributes().pageSize == 0 && p->attributes().kvCacheDtype == 0 && p->getNbOutputs() == 2);
    for (int32_t bad : {3, 48, 8192, -64})
    {
        Fields f;
        f.onnxTypes().add(contract::kAttrPageSize, &bad);
        expectRejected(f, bad < 0 ? "page_size" : "page_size = " + std::to_string(bad), __LINE__);
    }
    for (int32_t bad : {2, 7})
    {
        Fields f;
        f.onnxTypes().add(contract::kAttrKvCacheDtype, &bad);
        expectRejected(f, "kv_cache_dtype = " + std::to_string(bad), __LINE__);
    }
}
} // namespace

int main()
{
    return testutil::runTests("test_mla_creator", gLogger,
        {testIdentity, testParsesOnnxTypes, testParsesWideTypes, testRejects, testSerializationRoundTrip,
            testCacheAttributes});
}
