/*
 * Entry points of libmla_plugin.so for dynamic loading: IPluginRegistry::loadLibrary (C++),
 * get_plugin_registry().load_library (Python) and trtexec --dynamicPlugins call getCreators and
 * setLoggerFinder. Only these two symbols are exported (exports.map).
 *
 * getCreators lists every plugin's creator: MlaAttention, DeepseekMoE and BlockFp8MatMul (namespace mla,
 * version 1), in that order.
 * There is no getPluginCreators: that entry point lists IPluginV2 creators, and this library has
 * only IPluginCreatorV3One ones.
 */
#include "NvInferRuntime.h"
#include "blockFp8MatMulPlugin.h"
#include "deepseekMoePlugin.h"
#include "mlaAttentionPlugin.h"
#include "pluginLog.h"

#define MLA_PLUGIN_EXPORT __attribute__((visibility("default")))

extern "C" MLA_PLUGIN_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    mla::plugin::setLoggerFinder(finder);
}

extern "C" MLA_PLUGIN_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static mla::plugin::MlaAttentionPluginCreator sAttention;
    static mla::plugin::DeepseekMoePluginCreator sMoe;
    static mla::plugin::BlockFp8MatMulPluginCreator sFp8;
    static nvinfer1::IPluginCreatorInterface* const sCreators[] = {&sAttention, &sMoe, &sFp8};
    nbCreators = static_cast<int32_t>(sizeof(sCreators) / sizeof(sCreators[0]));
    return sCreators;
}
