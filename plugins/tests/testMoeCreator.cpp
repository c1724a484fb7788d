/*
 * DeepseekMoePluginCreator: identity, declared fields, parsing of what TensorRT's ONNX parser sends (kINT32 /
 * kFLOAT32) and of kINT64 / kFLOAT64, rejection of missing, malformed and invalid attributes (every routing
 * rule of mla_export.model.moe.RoutingRule) with a message naming the field, first_expert (contract version 3:
 * optional, 0 when a file from before it lacks it; checked against num_experts), and the serialization round trip
 * getFieldsToSerialize -> createPlugin.
 */
#include "deepseekMoePlugin.h"
#include "moeContract.h"
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
namespace c = mla::moe_contract;

namespace
{
testutil::CapturingLogger gLogger;

char const* const kNames[10] = {c::kAttrNumExperts, c::kAttrTopK, c::kAttrNGroup, c::kAttrTopkGroup,
    c::kAttrScoringFunc, c::kAttrGroupScore, c::kAttrUseBias, c::kAttrNormalize, c::kAttrWeightScale,
    c::kAttrFirstExpert};

// Owns the values a PluginFieldCollection points at: DeepSeek-V3's rule by default.
struct Fields : testutil::FieldList
{
    int32_t ints[8] = {256, 8, 8, 4, 1, 1, 1, 1};
    float scale = 2.5F;
    int32_t first = 0;
    int64_t ints64[8] = {256, 8, 8, 4, 1, 1, 1, 1};
    double scale64 = 2.5;
    int64_t first64 = 0;

    Fields& onnxTypes()
    {
        fields.clear();
        for (int32_t k = 0; k < 8; ++k)
        {
            add(kNames[k], &ints[k]);
        }
        add(kNames[8], &scale);
        add(kNames[9], &first);
        return *this;
    }
    Fields& wideTypes()
    {
        fields.clear();
        for (int32_t k = 0; k < 8; ++k)
        {
            add(kNames[k], &ints64[k]);
        }
        add(kNames[8], &scale64);
        add(kNames[9], &first64);
        return *this;
    }
};

bool sameAttrs(plugin::MoeAttributes const& a, plugin::MoeAttributes const& b)
{
    return a.numExperts == b.numExperts && a.topK == b.topK && a.nGroup == b.nGroup && a.topkGroup == b.topkGroup
        && a.scoringFunc == b.scoringFunc && a.groupScore == b.groupScore && a.useBias == b.useBias
        && a.normalize == b.normalize && a.weightScale == b.weightScale && a.firstExpert == b.firstExpert;
}

std::string parse(Fields& f, plugin::MoeAttributes& out)
{
    return plugin::DeepseekMoePluginCreator::parseFields(f.collection(), out);
}

void testIdentityAndDeclaredFields()
{
    plugin::DeepseekMoePluginCreator creator;
    CHECK(std::string(creator.getPluginName()) == "DeepseekMoE");
    CHECK(std::string(creator.getPluginVersion()) == "1");
    CHECK(std::string(creator.getPluginNamespace()) == "mla");
    PluginFieldCollection const* declared = creator.getFieldNames();
    CHECK(declared != nullptr && declared->nbFields == 10);
    for (int32_t k = 0; declared != nullptr && k < declared->nbFields; ++k)
    {
        CHECK(std::strcmp(declared->fields[k].name, kNames[k]) == 0);
        CHECK(declared->fields[k].type == (k == 8 ? PluginFieldType::kFLOAT32 : PluginFieldType::kINT32));
        CHECK(declared->fields[k].length == 1);
    }
}

void testParsing()
{
    plugin::MoeAttributes const v3{256, 8, 8, 4, 1, 1, 1, 1, 2.5F};
    for (bool wide : {false, true})
    {
        Fields f;
        wide ? f.wideTypes() : f.onnxTypes();
        plugin::MoeAttributes got;
        CHECK_MSG(parse(f, got).empty(), wide ? "wide types" : "onnx types");
        CHECK(sameAttrs(got, v3));
    }
    // Every field is required but first_expert, which files of contract versions 1-2 lack (then 0: every expert).
    for (char const* name : kNames)
    {
        Fields f;
        f.onnxTypes().drop(name);
        plugin::MoeAttributes got;
        if (std::strcmp(name, c::kAttrFirstExpert) == 0)
        {
            CHECK(parse(f, got).empty() && sameAttrs(got, v3));
            continue;
        }
        CHECK_MSG(parse(f, got) == std::string("attribute ") + name + " is missing", name);
    }
    {
        // A rank's slice: first_expert 96 of 256 (DeepSeek-V3 at --tp 8, rank 3), in both integer widths.
        for (bool wide : {false, true})
        {
            Fields f;
            f.first = 96;
            f.first64 = 96;
            wide ? f.wideTypes() : f.onnxTypes();
            plugin::MoeAttributes got;
            CHECK(parse(f, got).empty() && got.firstExpert == 96);
        }
        Fields f;
        f.onnxTypes();
        f.first = -1;
        plugin::MoeAttributes got;
        CHECK(parse(f, got).find("first_expert = -1: expected a non-negative") != std::string::npos);
        f.first = 256;
        plugin::DeepseekMoePluginCreator creator;
        gLogger.messages.clear();
        CHECK(creator.createPlugin("layer", f.collection(), TensorRTPhase::kBUILD) == nullptr);
        CHECK(gLogger.contains("attribute first_expert = 256: expected an integer in [0, num_experts)", Severity::kERROR));
    }
    // Malformed fields: wrong type, wrong length, duplicates, values out of range.
    {
        Fields f;
        f.onnxTypes().field(c::kAttrTopK).type = PluginFieldType::kCHAR;
        plugin::MoeAttributes got;
        CHECK(parse(f, got).find("attribute top_k: expected kINT32 or kINT64, got kCHAR") != std::string::npos);
    }
    {
        Fields f;
        f.onnxTypes().field(c::kAttrWeightScale).type = PluginFieldType::kINT32;
        plugin::MoeAttributes got;
        CHECK(parse(f, got).find("weight_scale: expected kFLOAT32 or kFLOAT64") != std::string::npos);
    }
    {
        Fields f;
        f.onnxTypes().field(c::kAttrNGroup).length = 2;
        plugin::MoeAttributes got;
        CHECK(parse(f, got).find("attribute n_group: expected one integer, got length 2") != std::string::npos);
    }
    {
        Fields f;
        f.onnxTypes();
        f.fields.push_back(f.fields[0]);
        plugin::MoeAttributes got;
        CHECK(parse(f, got) == "attribute num_experts given twice");
    }
    {
        Fields f;
        f.onnxTypes();
        f.ints[6] = -1;
        plugin::MoeAttributes got;
        CHECK(parse(f, got).find("use_bias = -1: expected a non-negative") != std::string::npos);
    }
    {
        Fields f;
        f.onnxTypes();
        f.scale = std::numeric_limits<float>::infinity();
        plugin::MoeAttributes got;
        CHECK(parse(f, got).find("weight_scale = inf: expected a finite") != std::string::npos);
    }
    {
        // Unknown fields are ignored with a warning (the parser drops undeclared ones anyway).
        Fields f;
        f.onnxTypes();
        int32_t extra = 3;
        f.fields.emplace_back("plugin_extra", &extra, PluginFieldType::kINT32, 1);
        plugin::MoeAttributes got;
        gLogger.messages.clear();
        CHECK(parse(f, got).empty());
        CHECK(gLogger.contains("ignoring unknown attribute plugin_extra", Severity::kWARNING));
    }
    plugin::MoeAttributes unused;
    CHECK(plugin::DeepseekMoePluginCreator::parseFields(nullptr, unused).find("no attributes") != std::string::npos);
}

void testRoutingRules()
{
    struct Case
    {
        int32_t ints[8];
        char const* mention;
    };
    std::vector<Case> const bad = {
        {{0, 1, 1, 1, 0, 0, 0, 0}, "num_experts = 0"},
        {{8, 9, 1, 1, 0, 0, 0, 0}, "top_k = 9: expected an integer in [1, num_experts]"},
        {{8, 0, 1, 1, 0, 0, 0, 0}, "top_k = 0"},
        {{8, 2, 3, 1, 0, 0, 0, 0}, "n_group = 3: expected a positive divisor of num_experts"},
        {{8, 2, 4, 5, 0, 0, 0, 0}, "topk_group = 5: expected an integer in [1, n_group]"},
        {{8, 5, 4, 2, 0, 0, 0, 0}, "top_k = 5: expected at most the experts of the topk_group groups kept"},
        {{8, 2, 1, 1, 2, 0, 0, 0}, "scoring_func = 2"},
        {{8, 2, 1, 1, 0, 2, 0, 0}, "group_score = 2"},
        {{8, 1, 8, 2, 0, 1, 0, 0}, "group_score = 1: expected 0 when groups hold one expert"},
        {{8, 2, 1, 1, 0, 0, 2, 0}, "use_bias = 2"},
        {{8, 2, 1, 1, 0, 0, 0, 3}, "normalize = 3"},
    };
    plugin::DeepseekMoePluginCreator creator;
    for (Case const& k : bad)
    {
        Fields f;
        std::copy(k.ints, k.ints + 8, f.ints);
        f.onnxTypes();
        plugin::MoeAttributes got;
        std::string const why = parse(f, got);
        CHECK_MSG(why.find(k.mention) != std::string::npos, "got: " + why);
        gLogger.messages.clear();
        CHECK(creator.createPlugin("layer", f.collection(), TensorRTPhase::kBUILD) == nullptr);
        CHECK(gLogger.contains(std::string("DeepseekMoE: cannot create plugin layer: attribute ") + k.mention,
            Severity::kERROR));
    }
    // Every rule of the presets and of tests/test_moe.py's RULES is accepted.
    std::vector<plugin::MoeAttributes> const good = {{64, 6, 1, 1, 0, 0, 0, 0, 1.F}, {160, 6, 8, 3, 0, 0, 0, 0, 16.F},
        {256, 8, 8, 4, 1, 1, 1, 1, 2.5F}, {384, 8, 1, 1, 1, 1, 1, 1, 2.827F}, {8, 2, 4, 2, 1, 1, 1, 1, 2.5F},
        {8, 1, 2, 1, 1, 1, 1, 1, 1.5F}, {16, 3, 4, 2, 0, 0, 0, 0, 16.F}};
    for (auto const& a : good)
    {
        CHECK_MSG(plugin::validateMoeAttributes(a).empty(), plugin::validateMoeAttributes(a));
    }
}

void testSerializationRoundTrip()
{
    plugin::DeepseekMoePluginCreator creator;
    Fields f;
    f.ints[0] = 160;
    f.ints[1] = 6;
    f.ints[3] = 3;
    f.ints[4] = 0;
    f.ints[5] = 0;
    f.ints[6] = 0;
    f.ints[7] = 0;
    f.scale = 16.F;
    f.first = 80; // rank 2 of 4: experts 80 .. 119 of 160
    std::unique_ptr<nvinfer1::IPluginV3> built(creator.createPlugin("moe0", f.onnxTypes().collection(), TensorRTPhase::kBUILD));
    CHECK(built != nullptr);
    if (built == nullptr)
    {
        return;
    }
    CHECK(gLogger.contains("DeepseekMoE: num_experts=160 top_k=6 n_group=8 topk_group=3 scoring_func=0 group_score=0 "
                           "use_bias=0 normalize=0 weight_scale=16 first_expert=80 (build phase, layer moe0)",
        Severity::kINFO));
    auto* runtime = static_cast<nvinfer1::IPluginV3OneRuntime*>(
        built->getCapabilityInterface(nvinfer1::PluginCapabilityType::kRUNTIME));
    PluginFieldCollection const* serialized = runtime->getFieldsToSerialize();
    CHECK(serialized != nullptr && serialized->nbFields == 10);
    for (int32_t k = 0; serialized != nullptr && k < serialized->nbFields; ++k)
    {
        CHECK(std::strcmp(serialized->fields[k].name, kNames[k]) == 0);
        CHECK(serialized->fields[k].type == (k == 8 ? PluginFieldType::kFLOAT32 : PluginFieldType::kINT32));
    }
    std::unique_ptr<nvinfer1::IPluginV3> restored(creator.createPlugin("moe0", serialized, TensorRTPhase::kRUNTIME));
    CHECK(restored != nullptr);
    auto const& original = static_cast<plugin::DeepseekMoePlugin*>(built.get())->attributes();
    if (restored != nullptr)
    {
        CHECK(sameAttrs(static_cast<plugin::DeepseekMoePlugin*>(restored.get())->attributes(), original));
    }
    std::unique_ptr<nvinfer1::IPluginV3> copy(built->clone());
    CHECK(copy != nullptr && sameAttrs(static_cast<plugin::DeepseekMoePlugin*>(copy.get())->attributes(), original));
    auto* core = static_cast<nvinfer1::IPluginV3OneCore*>(built->getCapabilityInterface(nvinfer1::PluginCapabilityType::kCORE));
    CHECK(std::string(core->getPluginName()) == "DeepseekMoE" && std::string(core->getPluginNamespace()) == "mla"
        && std::string(core->getPluginVersion()) == "1");
}
} // namespace

int main()
{
    return testutil::runTests("test_moe_creator", gLogger,
        {testIdentityAndDeclaredFields, testParsing, testRoutingRules, testSerializationRoundTrip});
}
