/*
 * libmla_plugin.so as TensorRT loads it: dlopen, getCreators/setLoggerFinder present and nothing
 * else exported (in particular none of the CUDA driver forwarders), the three creators' identities
 * (MlaAttention, DeepseekMoE, BlockFp8MatMul), and a plugin of each created from the fields the ONNX
 * parser sends, on a machine without a CUDA driver; MlaAttention's build capability declares
 * present_cache an alias of past_cache.
 */
#include "NvInferRuntime.h"
#include "fp8Contract.h"
#include "mlaContract.h"
#include "moeContract.h"
#include "testFields.h"
#include "testLogger.h"
#include "testUtil.h"

#include <dlfcn.h>

#include <cstring>
#include <string>

int main(int argc, char** argv)
{
    if (argc < 2)
    {
        std::printf("usage: test_mla_entry path/to/libmla_plugin.so\n");
        return 2;
    }
    void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    char const* error = lib == nullptr ? dlerror() : nullptr;
    CHECK_MSG(lib != nullptr, error != nullptr ? error : "");
    if (lib == nullptr)
    {
        return testutil::finish("test_mla_entry");
    }
    using GetCreators = nvinfer1::IPluginCreatorInterface* const* (*) (int32_t&);
    using SetLoggerFinder = void (*)(nvinfer1::ILoggerFinder*);
    auto getCreators = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"));
    auto setLoggerFinder = reinterpret_cast<SetLoggerFinder>(dlsym(lib, "setLoggerFinder"));
    CHECK(getCreators != nullptr);
    CHECK(setLoggerFinder != nullptr);
    for (char const* hidden : {"cuLaunchKernel", "cuModuleLoadData", "cuMemcpyDtoDAsync_v2", "getPluginCreators"})
    {
        CHECK_MSG(dlsym(lib, hidden) == nullptr, std::string(hidden) + " must not be exported");
    }
    if (getCreators == nullptr || setLoggerFinder == nullptr)
    {
        return testutil::finish("test_mla_entry");
    }
    testutil::CapturingLogger logger;
    setLoggerFinder(&logger);
    int32_t n = 0;
    nvinfer1::IPluginCreatorInterface* const* creators = getCreators(n);
    CHECK(n == 3 && creators != nullptr && creators[0] != nullptr && creators[1] != nullptr && creators[2] != nullptr);
    if (n == 3 && creators != nullptr && creators[2] != nullptr)
    {
        namespace f = mla::fp8_contract;
        CHECK(std::string(creators[2]->getInterfaceInfo().kind) == "PLUGIN CREATOR_V3ONE");
        auto* creator = static_cast<nvinfer1::IPluginCreatorV3One*>(creators[2]);
        CHECK(std::string(creator->getPluginName()) == f::kPluginName);
        CHECK(std::string(creator->getPluginVersion()) == f::kPluginVersion);
        CHECK(std::string(creator->getPluginNamespace()) == f::kPluginNamespace);
        CHECK(creator->getFieldNames() != nullptr && creator->getFieldNames()->nbFields == 1);
        int32_t block = 128;
        testutil::FieldList fields; // as the ONNX parser sends them
        fields.add(f::kAttrBlockSize, &block);
        nvinfer1::IPluginV3* plugin = creator->createPlugin("fc", fields.collection(), nvinfer1::TensorRTPhase::kBUILD);
        CHECK(plugin != nullptr);
        CHECK(logger.contains("BlockFp8MatMul: block_size=128 (build phase, layer fc)", nvinfer1::ILogger::Severity::kINFO));
        if (plugin != nullptr)
        {
            auto* core = static_cast<nvinfer1::IPluginV3OneCore*>(
                plugin->getCapabilityInterface(nvinfer1::PluginCapabilityType::kCORE));
            CHECK(core != nullptr && std::strcmp(core->getPluginName(), "BlockFp8MatMul") == 0);
            auto* capability = plugin->getCapabilityInterface(nvinfer1::PluginCapabilityType::kBUILD);
            CHECK(capability != nullptr && capability->getInterfaceInfo().major == 1); // no aliased output
            delete plugin;
        }
        block = 64;
        CHECK(creator->createPlugin("fc", fields.collection(), nvinfer1::TensorRTPhase::kBUILD) == nullptr);
        CHECK(logger.contains("attribute block_size = 64: expected 128", nvinfer1::ILogger::Severity::kERROR));
    }
    if (n >= 2 && creators != nullptr && creators[1] != nullptr)
    {
        namespace m = mla::moe_contract;
        CHECK(std::string(creators[1]->getInterfaceInfo().kind) == "PLUGIN CREATOR_V3ONE");
        auto* creator = static_cast<nvinfer1::IPluginCreatorV3One*>(creators[1]);
        CHECK(std::string(creator->getPluginName()) == m::kPluginName);
        CHECK(std::string(creator->getPluginVersion()) == m::kPluginVersion);
        CHECK(std::string(creator->getPluginNamespace()) == m::kPluginNamespace);
        CHECK(creator->getFieldNames() != nullptr && creator->getFieldNames()->nbFields == 10);
        int32_t values[8] = {8, 2, 4, 2, 1, 1, 1, 1};
        float scale = 2.5F;
        testutil::FieldList fields; // as the ONNX parser sends them
        fields.add(m::kAttrNumExperts, &values[0]).add(m::kAttrTopK, &values[1]).add(m::kAttrNGroup, &values[2]);
        fields.add(m::kAttrTopkGroup, &values[3]).add(m::kAttrScoringFunc, &values[4]).add(m::kAttrGroupScore, &values[5]);
        fields.add(m::kAttrUseBias, &values[6]).add(m::kAttrNormalize, &values[7]).add(m::kAttrWeightScale, &scale);
        nvinfer1::IPluginV3* plugin = creator->createPlugin("moe", fields.collection(), nvinfer1::TensorRTPhase::kBUILD);
        CHECK(plugin != nullptr);
        CHECK(logger.contains("DeepseekMoE: num_experts=8 top_k=2 n_group=4 topk_group=2 scoring_func=1 "
                              "group_score=1 use_bias=1 normalize=1 weight_scale=2.5 first_expert=0 (build phase, layer moe)",
            nvinfer1::ILogger::Severity::kINFO));
        if (plugin != nullptr)
        {
            auto* core = static_cast<nvinfer1::IPluginV3OneCore*>(
                plugin->getCapabilityInterface(nvinfer1::PluginCapabilityType::kCORE));
            CHECK(core != nullptr && std::strcmp(core->getPluginName(), "DeepseekMoE") == 0);
            auto* capability = plugin->getCapabilityInterface(nvinfer1::PluginCapabilityType::kBUILD);
            CHECK(capability != nullptr && capability->getInterfaceInfo().major == 1); // no aliased output
            delete plugin;
        }
        values[1] = 9; // top_k above num_experts
        CHECK(creator->createPlugin("moe", fields.collection(), nvinfer1::TensorRTPhase::kBUILD) == nullptr);
        CHECK(logger.contains("attribute top_k = 9: expected an integer in [1, num_experts]",
            nvinfer1::ILogger::Severity::kERROR));
    }
    if (n >= 1 && creators != nullptr && creators[0] != nullptr)
    {
        CHECK(std::string(creators[0]->getInterfaceInfo().kind) == "PLUGIN CREATOR_V3ONE");
        auto* creator = static_cast<nvinfer1::IPluginCreatorV3One*>(creators[0]);
        CHECK(std::string(creator->getPluginName()) == mla::contract::kPluginName);
        CHECK(std::string(creator->getPluginVersion()) == mla::contract::kPluginVersion);
        CHECK(std::string(creator->getPluginNamespace()) == mla::contract::kPluginNamespace);
        int32_t heads = 4, rank = 32, rope = 8;
        float scale = 0.25F;
        testutil::FieldList fields; // as the ONNX parser sends them
        fields.add(mla::contract::kAttrNumHeads, &heads).add(mla::contract::kAttrKvLoraRank, &rank);
        fields.add(mla::contract::kAttrQkRopeHeadDim, &rope).add(mla::contract::kAttrSoftmaxScale, &scale);
        nvinfer1::IPluginV3* plugin = creator->createPlugin("layer", fields.collection(), nvinfer1::TensorRTPhase::kBUILD);
        CHECK(plugin != nullptr);
        CHECK(logger.contains("MlaAttention: num_heads=4 kv_lora_rank=32 qk_rope_head_dim=8 softmax_scale=0.25",
            nvinfer1::ILogger::Severity::kINFO));
        if (plugin != nullptr)
        {
            auto* core = static_cast<nvinfer1::IPluginV3OneCore*>(
                plugin->getCapabilityInterface(nvinfer1::PluginCapabilityType::kCORE));
            CHECK(core != nullptr && std::strcmp(core->getPluginName(), "MlaAttention") == 0);
            // The build capability TensorRT gets is the aliasing one (V2): present_cache aliases past_cache.
            auto* capability = plugin->getCapabilityInterface(nvinfer1::PluginCapabilityType::kBUILD);
            CHECK(capability != nullptr && capability->getInterfaceInfo().major == 2);
            if (capability != nullptr && capability->getInterfaceInfo().major == 2)
            {
                auto* build = static_cast<nvinfer1::IPluginV3OneBuildV2*>(capability);
                CHECK(build->getAliasedInput(mla::contract::kPresentCache) == mla::contract::kPastCache);
                CHECK(build->getAliasedInput(mla::contract::kAttnLatent) == -1);
            }
            delete plugin; // no module was loaded: no driver call on destruction
        }
        fields.field(mla::contract::kAttrNumHeads).length = 0;
        CHECK(creator->createPlugin("layer", fields.collection(), nvinfer1::TensorRTPhase::kBUILD) == nullptr);
        CHECK(logger.contains("num_heads: expected one integer", nvinfer1::ILogger::Severity::kERROR));
    }
    setLoggerFinder(nullptr);
    return testutil::finish("test_mla_entry");
}
