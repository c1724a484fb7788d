/*
 * MlaAttention IPluginV3 plugin: its hooks into the skeleton of plugins/common (see mlaAttentionPlugin.h).
 * Every hook may throw; the skeleton catches and reports (pluginCore.h).
 */
#include "mlaAttentionPlugin.h"

#include "pluginLog.h"

namespace mla
{
namespace plugin
{
namespace
{
namespace c = contract;
using nvinfer1::Dims;
using Severity = nvinfer1::ILogger::Severity;
} // namespace

MlaAttentionPlugin::MlaAttentionPlugin(MlaAttributes const& attrs)
    : PluginBase(attrs)
{
}

int32_t MlaAttentionPlugin::getAliasedInput(int32_t outputIndex) noexcept
{
    return aliasedInput(outputIndex);
}

std::string MlaAttentionPlugin::validateInputDims(Dims const* inputs, int32_t nbInputs) const
{
    return plugin::validateInputDims(mAttrs, inputs, nbInputs);
}

bool MlaAttentionPlugin::kernelsSupport(
    Dims const* inputs, int32_t /*nbInputs*/, kernels::DataType dtype, char const** why) const
{
    return kernels::supported(kernelDims(mAttrs, inputs, dtype), why);
}

size_t MlaAttentionPlugin::workspaceSize(
    Dims const* minDims, Dims const* maxDims, int32_t /*nbInputs*/, kernels::DataType dtype) const
{
    return plugin::workspaceSize(mAttrs, minDims, maxDims, dtype, queryNumSms());
}

int32_t MlaAttentionPlugin::queryNumSms() noexcept
{
    CUdevice device{};
    int32_t numSms = 0;
    if (cuCtxGetDevice(&device) == CUDA_SUCCESS
        && cuDeviceGetAttribute(&numSms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, device) == CUDA_SUCCESS
        && numSms > 0)
    {
        return numSms;
    }
    log(Severity::kWARNING,
        "MlaAttention: cannot query the device's SM count; sizing the workspace for " + std::to_string(kFallbackNumSms)
            + " SMs");
    return kFallbackNumSms;
}

int32_t MlaAttentionPlugin::launch(EnqueueCall const& call)
{
    void const* past = call.inputs[c::kPastCache];
    void* present = call.outputs[c::kPresentCache];
    if (present != past)
    {
        // Separate buffers (an engine built without aliased plugin I/O): make present hold past, then the
        // kernels write only the new rows. Aliased (getAliasedInput), TensorRT hands us one buffer and the
        // rows are already there: no copy.
        size_t const bytes
            = static_cast<size_t>(volume(call.dims[c::kPastCache])) * elementSize(call.types[c::kPastCache]);
        if (!checkCuda(cuMemcpyDtoDAsync(reinterpret_cast<CUdeviceptr>(present), reinterpret_cast<CUdeviceptr>(past),
                           bytes, call.stream),
                "copying past_cache to present_cache (cuMemcpyDtoDAsync)"))
        {
            return -1;
        }
    }
    kernels::Tensors tensors{};
    tensors.qLatent = call.inputs[c::kQLatent];
    tensors.qPe = call.inputs[c::kQPe];
    tensors.kvLatent = call.inputs[c::kKvLatent];
    tensors.kPe = call.inputs[c::kKPe];
    tensors.cache = present;
    tensors.cacheSeqlens = static_cast<int32_t const*>(call.inputs[c::kCacheSeqlensIn]);
    tensors.ropeCosSin = static_cast<float const*>(call.inputs[c::kRopeCosSin]);
    tensors.attnLatent = call.outputs[c::kAttnLatent];
    kernels::Dims const kdims = kernelDims(mAttrs, call.dims, call.dtype);
    return checkCuda(kernels::launch(module(), kdims, tensors, call.workspace, call.stream), "launching the kernels") ? 0
                                                                                                                    : -1;
}

} // namespace plugin
} // namespace mla
