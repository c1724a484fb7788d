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

OpSpec const& MlaAttentionPlugin::specFor(MlaAttributes const& attrs) noexcept
{
    if (!usesCacheV2(attrs))
    {
        return kSpec;
    }
    return attrs.kvCacheDtype == c::kKvCacheDtypeFp8 ? kFp8CacheSpec : kPagedSpec;
}

MlaAttentionPlugin::MlaAttentionPlugin(MlaAttributes const& attrs)
    : PluginBase(attrs, specFor(attrs))
{
}

int32_t MlaAttentionPlugin::getAliasedInput(int32_t outputIndex) noexcept
{
    if (outputIndex < 0 || outputIndex >= spec().numOutputs)
    {
        return -1;
    }
    return usesCacheV2(mAttrs) ? cacheAliasedInput(outputIndex) : aliasedInput(outputIndex);
}

std::string MlaAttentionPlugin::validateInputDims(Dims const* inputs, int32_t nbInputs) const
{
    return usesCacheV2(mAttrs) ? validateCacheInputDims(mAttrs, inputs, nbInputs)
                               : plugin::validateInputDims(mAttrs, inputs, nbInputs);
}

kernels::Dims MlaAttentionPlugin::kernelDimsOf(Dims const* inputs, kernels::DataType dtype) const
{
    return usesCacheV2(mAttrs) ? cacheKernelDims(mAttrs, inputs, dtype) : kernelDims(mAttrs, inputs, dtype);
}

bool MlaAttentionPlugin::kernelsSupport(
    Dims const* inputs, int32_t /*nbInputs*/, kernels::DataType dtype, char const** why) const
{
    return kernels::supported(kernelDimsOf(inputs, dtype), why);
}

size_t MlaAttentionPlugin::workspaceSize(
    Dims const* minDims, Dims const* maxDims, int32_t /*nbInputs*/, kernels::DataType dtype) const
{
    return usesCacheV2(mAttrs) ? cacheWorkspaceSize(mAttrs, minDims, maxDims, dtype, queryNumSms())
                               : plugin::workspaceSize(mAttrs, minDims, maxDims, dtype, queryNumSms());
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
    // Separate buffers (an engine built without aliased plugin I/O): make each present plane hold its past one,
    // then the kernels write only the new rows. Aliased (getAliasedInput), TensorRT hands us one buffer per
    // plane and the rows are already there: no copy.
    for (int32_t o = c::kPresentCache; o < spec().numOutputs; ++o)
    {
        int32_t const source = getAliasedInput(o);
        void const* past = call.inputs[source];
        void* present = call.outputs[o];
        if (present == past)
        {
            continue;
        }
        size_t const bytes = static_cast<size_t>(volume(call.dims[source])) * elementSize(call.types[source]);
        std::string const what = std::string("copying ") + spec().inputNames[source] + " to " + spec().outputNames[o]
            + " (cuMemcpyDtoDAsync)";
        if (!checkCuda(cuMemcpyDtoDAsync(reinterpret_cast<CUdeviceptr>(present), reinterpret_cast<CUdeviceptr>(past),
                           bytes, call.stream),
                what.c_str()))
        {
            return -1;
        }
    }
    bool const cacheV2 = usesCacheV2(mAttrs);
    bool const fp8 = mAttrs.kvCacheDtype == c::kKvCacheDtypeFp8;
    kernels::Tensors tensors{};
    tensors.qLatent = call.inputs[c::kQLatent];
    tensors.qPe = call.inputs[c::kQPe];
    tensors.kvLatent = call.inputs[c::kKvLatent];
    tensors.kPe = call.inputs[c::kKPe];
    tensors.cache = call.outputs[c::kPresentCache];
    tensors.cacheSeqlens = static_cast<int32_t const*>(call.inputs[c::kCacheSeqlensIn]);
    tensors.ropeCosSin = static_cast<float const*>(call.inputs[c::kRopeCosSin]);
    tensors.attnLatent = call.outputs[c::kAttnLatent];
    tensors.blockTable = cacheV2 ? static_cast<int32_t const*>(call.inputs[c::kBlockTable]) : nullptr;
    tensors.cacheScale = fp8 ? static_cast<float*>(call.outputs[c::kPresentScale]) : nullptr;
    tensors.cacheRope = fp8 ? call.outputs[c::kPresentRope] : nullptr;
    kernels::Dims const kdims = kernelDimsOf(call.dims, call.dtype);
    return checkCuda(kernels::launch(module(), kdims, tensors, call.workspace, call.stream), "launching the kernels") ? 0
                                                                                                                    : -1;
}

} // namespace plugin
} // namespace mla
