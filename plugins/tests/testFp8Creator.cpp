/*
 * BlockFp8MatMulPluginCreator: identity, the declared field, parsing of what TensorRT's ONNX parser sends
 * (kINT32) and of kINT64, one clear refusal for every block_size but 128 (and for a missing, mistyped or
 * wrong-length field), and the serialization round trip getFieldsToSerialize -> createPlugin, clone.
 */
#include "blockFp8MatMulPlugin.h"
#include "fp8Contract.h"
#include "testFields.h"
#include "testPlugin.h"
#include "testUtil.h"

#include <cstring>
#include <memory>
#include <string>

using namespace mla;
using nvinfer1::PluginFieldCollection;
using nvinfer1::PluginFieldType;
using nvinfer1::TensorRTPhase;
using Severity = nvinfer1::ILogger::Severity;
namespace c = mla::fp8_contract;

namespace
{
testutil::CapturingLogger gLogger;

std::string parse(testutil::FieldList& f, plugin::Fp8Attributes& out)
{
    return plugin::BlockFp8MatMulPluginCreator::parseFields(f.collection(), out);
}

void testIdentityAndDeclaredFields()
{
    plugin::BlockFp8MatMulPluginCreator creator;
    CHECK(std::string(creator.getPluginName()) == "BlockFp8MatMul");
    CHECK(std::string(creator.getPluginVersion()) == "1");
    CHECK(std::string(creator.getPluginNamespace()) == "mla");
    PluginFieldCollection const* declared = creator.getFieldNames();
    CHECK(declared != nullptr && declared->nbFields == 1);
    if (declared != nullptr && declared->nbFields == 1)
    {
        CHECK(std::strcmp(declared->fields[0].name, "block_size") == 0);
        CHECK(declared->fields[0].type == PluginFieldType::kINT32 && declared->fields[0].length == 1);
    }
}

void testParsing()
{
    int32_t const block = 128;
    int64_t const block64 = 128;
    for (bool wide : {false, true})
    {
        testutil::FieldList f;
        wide ? f.add(c::kAttrBlockSize, &block64) : f.add(c::kAttrBlockSize, &block);
        plugin::Fp8Attributes got{0};
        CHECK_MSG(parse(f, got).empty(), wide ? "kINT64" : "kINT32");
        CHECK(got.blockSize == 128);
    }
    {
        testutil::FieldList f;
        plugin::Fp8Attributes got;
        CHECK(parse(f, got) == "attribute block_size is missing");
    }
    {
        float const asFloat = 128.F;
        testutil::FieldList f;
        f.add(c::kAttrBlockSize, &asFloat);
        plugin::Fp8Attributes got;
        CHECK(parse(f, got).find("attribute block_size: expected kINT32 or kINT64, got kFLOAT32") != std::string::npos);
    }
    {
        int32_t const two[2] = {128, 128};
        testutil::FieldList f;
        f.add(c::kAttrBlockSize, two, 2);
        plugin::Fp8Attributes got;
        CHECK(parse(f, got).find("attribute block_size: expected one integer, got length 2") != std::string::npos);
    }
    {
        int64_t const huge = int64_t{1} << 40;
        testutil::FieldList f;
        f.add(c::kAttrBlockSize, &huge);
        plugin::Fp8Attributes got;
        std::string const why = parse(f, got);
        CHECK_MSG(why == "attribute block_size = 1099511627776: expected a 32-bit integer", why);
    }
}

void testOnlyBlock128()
{
    plugin::BlockFp8MatMulPluginCreator creator;
    for (int32_t bad : {64, 0, -128, 127, 129, 256})
    {
        testutil::FieldList f;
        f.add(c::kAttrBlockSize, &bad);
        plugin::Fp8Attributes got;
        std::string const why = parse(f, got);
        std::string const want = "attribute block_size = " + std::to_string(bad) + ": expected 128";
        CHECK_MSG(why.rfind(want, 0) == 0, "got: " + why);
        CHECK_MSG(why.size() <= 160, "two 80-column lines at most: " + why);
        gLogger.messages.clear();
        CHECK(creator.createPlugin("fc", f.collection(), TensorRTPhase::kBUILD) == nullptr);
        CHECK(gLogger.contains("BlockFp8MatMul: cannot create plugin fc: " + want, Severity::kERROR));
    }
    CHECK(plugin::validateFp8Attributes(plugin::Fp8Attributes{}).empty()); // the default is the contract's 128
}

void testSerializationRoundTrip()
{
    plugin::BlockFp8MatMulPluginCreator creator;
    int32_t const block = 128;
    testutil::FieldList f;
    f.add(c::kAttrBlockSize, &block);
    gLogger.messages.clear();
    std::unique_ptr<nvinfer1::IPluginV3> built(creator.createPlugin("q_a_proj", f.collection(), TensorRTPhase::kBUILD));
    CHECK(built != nullptr);
    if (built == nullptr)
    {
        return;
    }
    CHECK(gLogger.contains("BlockFp8MatMul: block_size=128 (build phase, layer q_a_proj)", Severity::kINFO));
    PluginFieldCollection const* serialized = testutil::runtimeOf(built.get())->getFieldsToSerialize();
    CHECK(serialized != nullptr && serialized->nbFields == 1);
    if (serialized != nullptr && serialized->nbFields == 1)
    {
        CHECK(std::strcmp(serialized->fields[0].name, "block_size") == 0);
        CHECK(serialized->fields[0].type == PluginFieldType::kINT32);
        CHECK(*static_cast<int32_t const*>(serialized->fields[0].data) == 128);
    }
    std::unique_ptr<nvinfer1::IPluginV3> restored(creator.createPlugin("q_a_proj", serialized, TensorRTPhase::kRUNTIME));
    CHECK(restored != nullptr
        && static_cast<plugin::BlockFp8MatMulPlugin*>(restored.get())->attributes().blockSize == 128);
    std::unique_ptr<nvinfer1::IPluginV3> copy(built->clone());
    CHECK(copy != nullptr && static_cast<plugin::BlockFp8MatMulPlugin*>(copy.get())->attributes().blockSize == 128);
    auto* core = static_cast<nvinfer1::IPluginV3OneCore*>(built->getCapabilityInterface(nvinfer1::PluginCapabilityType::kCORE));
    CHECK(std::string(core->getPluginName()) == "BlockFp8MatMul" && std::string(core->getPluginNamespace()) == "mla"
        && std::string(core->getPluginVersion()) == "1");
}
} // namespace

int main()
{
    return testutil::runTests(
        "test_fp8_creator", gLogger, {testIdentityAndDeclaredFields, testParsing, testOnlyBlock128, testSerializationRoundTrip});
}
