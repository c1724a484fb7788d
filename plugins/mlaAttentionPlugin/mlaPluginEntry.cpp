/*
 * Entry points of libmla_plugin.so for dynamic loading: IPluginRegistry::loadLibrary (C++),
 * get_plugin_registry().load_library (Python) and trtexec --dynamicPlugins call getCreators and
 * setLoggerFinder. Only these two symbols are exported (exports.map).
 *
 * There is no getPluginCreators: that entry point lists IPluginV2 creators, and this library has
 * only an IPluginCreatorV3One.
 */
#include "NvInferRuntime.h"
#include "mlaAttentionPlugin.h"
#include "mlaPluginLog.h"

#define MLA_PLUGIN_EXPORT __attribute__((visibility("default")))

extern "C" MLA_PLUGIN_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    mla::plugin::setLoggerFinder(finder);
}

extern "C" MLA_PLUGIN_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static mla::plugin::MlaAttentionPluginCreator sCreator;
    static nvinfer1::IPluginCreatorInterface* const sCreators[] = {&sCreator};
    nbCreators = 1;
    return sCreators;
}
