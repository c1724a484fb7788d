/*
 * MlaAttention IPluginV3 plugin (see mlaAttentionPlugin.h; its creator: mlaAttentionPluginCreator.cpp).
 *
 * Every TensorRT-facing method is noexcept and catches everything: errors are reported through
 * the logger and the context's error recorder (pluginLog.h), never thrown across the boundary.
 */
#include "mlaAttentionPlugin.h"

#include "mlaContract.h"
#include "pluginLog.h"

#include <exception>

namespace mla
{
namespace plugin
{
namespace
{
namespace c = contract;
using nvinfer1::DataType;
using nvinfer1::Dims;
using nvinfer1::ErrorCode;
using nvinfer1::PluginFieldType;
using Severity = nvinfer1::ILogger::Severity;

// Reports an exception escaping a method body; used in every catch of an interface method.
void reportException(nvinfer1::IErrorRecorder* recorder, char const* method) noexcept
{
    try
    {
        throw;
    }
    catch (std::exception const& e)
    {
        reportError(recorder, ErrorCode::kINTERNAL_ERROR, std::string("MlaAttention::") + method + ": " + e.what());
    }
    catch (...)
    {
        reportError(recorder, ErrorCode::kINTERNAL_ERROR, std::string("MlaAttention::") + method + ": unknown exception");
    }
}

// Alignment the kernels need for every buffer (mlaKernels.h); TensorRT's allocations satisfy it.
constexpr uintptr_t kTensorAlignment = 16;

size_t elementSize(DataType type)
{
    switch (type)
    {
    case DataType::kFLOAT:
    case DataType::kINT32: return 4;
    case DataType::kHALF:
    case DataType::kBF16: return 2;
    default: return 0;
    }
}

int64_t volume(Dims const& d)
{
    int64_t v = 1;
    for (int32_t i = 0; i < d.nbDims; ++i)
    {
        v *= d.d[i];
    }
    return v;
}

bool sameDims(Dims const& a, Dims const& b)
{
    if (a.nbDims != b.nbDims)
    {
        return false;
    }
    for (int32_t i = 0; i < a.nbDims; ++i)
    {
        if (a.d[i] != b.d[i])
        {
            return false;
        }
    }
    return true;
}

} // namespace

// ---------------------------------------------------------------------------------------------
// MlaAttentionPlugin

MlaAttentionPlugin::MlaAttentionPlugin(MlaAttributes const& attrs)
    : mAttrs(attrs)
{
}

MlaAttentionPlugin::MlaAttentionPlugin(MlaAttentionPlugin const& other)
    : mAttrs(other.mAttrs)
    , mErrorRecorder(other.mErrorRecorder)
{
    // The kernel module belongs to one context: a copy loads its own.
}

MlaAttentionPlugin::~MlaAttentionPlugin()
{
    if (mModule.loaded())
    {
        mModule.unload();
    }
}

nvinfer1::IPluginCapability* MlaAttentionPlugin::getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept
{
    try
    {
        switch (type)
        {
        case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuildV2*>(this);
        case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
        case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
        }
    }
    catch (...)
    {
        reportException(mErrorRecorder, "getCapabilityInterface");
    }
    return nullptr;
}

nvinfer1::IPluginV3* MlaAttentionPlugin::clone() noexcept
{
    try
    {
        return new MlaAttentionPlugin(*this);
    }
    catch (...)
    {
        reportException(mErrorRecorder, "clone");
    }
    return nullptr;
}

char const* MlaAttentionPlugin::getPluginName() const noexcept
{
    return c::kPluginName;
}

char const* MlaAttentionPlugin::getPluginVersion() const noexcept
{
    return c::kPluginVersion;
}

char const* MlaAttentionPlugin::getPluginNamespace() const noexcept
{
    return c::kPluginNamespace;
}

int32_t MlaAttentionPlugin::configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    try
    {
        if (in == nullptr || out == nullptr || nbInputs != c::kNumInputs || nbOutputs != c::kNumOutputs)
        {
            reportError(mErrorRecorder, ErrorCode::kINVALID_ARGUMENT, "MlaAttention: expected 7 inputs and 2 outputs");
            return -1;
        }
        for (int32_t bound = 0; bound < 2; ++bound)
        {
            Dims dims[c::kNumInputs];
            for (int32_t i = 0; i < c::kNumInputs; ++i)
            {
                dims[i] = bound == 0 ? in[i].min : in[i].max;
            }
            std::string const why = validateInputDims(mAttrs, dims, nbInputs);
            if (!why.empty())
            {
                reportError(mErrorRecorder, ErrorCode::kINVALID_ARGUMENT, why + " (profile bounds)");
                return -1;
            }
        }
        // Fail the build, not the first enqueue, when the kernels cannot run the profile's largest shapes
        // or its type (the AOT kernels are compiled for float16 and bfloat16).
        kernels::DataType dtype{};
        Dims maxDims[c::kNumInputs];
        for (int32_t i = 0; i < c::kNumInputs; ++i)
        {
            maxDims[i] = in[i].max;
        }
        char const* unsupported = nullptr;
        if (toKernelType(in[c::kQLatent].desc.type, dtype)
            && !kernels::supported(kernelDims(mAttrs, maxDims, dtype), &unsupported))
        {
            reportError(mErrorRecorder, ErrorCode::kINVALID_ARGUMENT,
                std::string("MlaAttention: no kernel for this layer's type and profile: ")
                    + (unsupported != nullptr ? unsupported : "unsupported"));
            return -1;
        }
        return 0;
    }
    catch (...)
    {
        reportException(mErrorRecorder, "configurePlugin");
    }
    return -1;
}

int32_t MlaAttentionPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    try
    {
        std::string const why = plugin::outputDataTypes(outputTypes, nbOutputs, inputTypes, nbInputs);
        if (why.empty())
        {
            return 0;
        }
        reportError(mErrorRecorder, ErrorCode::kINVALID_ARGUMENT, why);
    }
    catch (...)
    {
        reportException(mErrorRecorder, "getOutputDataTypes");
    }
    return -1;
}

int32_t MlaAttentionPlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
    nvinfer1::DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, nvinfer1::DimsExprs* outputs,
    int32_t nbOutputs, nvinfer1::IExprBuilder& /*exprBuilder*/) noexcept
{
    try
    {
        if (inputs == nullptr || outputs == nullptr || nbInputs != c::kNumInputs || nbOutputs != c::kNumOutputs)
        {
            reportError(mErrorRecorder, ErrorCode::kINVALID_ARGUMENT, "MlaAttention: expected 7 inputs and 2 outputs");
            return -1;
        }
        for (int32_t o = 0; o < c::kNumOutputs; ++o)
        {
            outputs[o] = inputs[outputShapeSource(o)];
        }
        return 0;
    }
    catch (...)
    {
        reportException(mErrorRecorder, "getOutputShapes");
    }
    return -1;
}

bool MlaAttentionPlugin::supportsFormatCombination(
    int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    try
    {
        if (inOut == nullptr || nbInputs != c::kNumInputs || nbOutputs != c::kNumOutputs)
        {
            return false;
        }
        nvinfer1::PluginTensorDesc descs[c::kNumInputs + c::kNumOutputs];
        for (int32_t i = 0; i <= pos && i < nbInputs + nbOutputs; ++i)
        {
            descs[i] = inOut[i].desc;
        }
        return supportsFormat(pos, descs, nbInputs, nbOutputs);
    }
    catch (...)
    {
        reportException(mErrorRecorder, "supportsFormatCombination");
    }
    return false;
}

int32_t MlaAttentionPlugin::getNbOutputs() const noexcept
{
    return c::kNumOutputs;
}

size_t MlaAttentionPlugin::getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    try
    {
        kernels::DataType dtype{};
        if (inputs == nullptr || nbInputs != c::kNumInputs || !toKernelType(inputs[c::kQLatent].desc.type, dtype))
        {
            return 0;
        }
        Dims minDims[c::kNumInputs];
        Dims maxDims[c::kNumInputs];
        for (int32_t i = 0; i < c::kNumInputs; ++i)
        {
            minDims[i] = inputs[i].min;
            maxDims[i] = inputs[i].max;
        }
        return workspaceSize(mAttrs, minDims, maxDims, dtype, queryNumSms());
    }
    catch (...)
    {
        reportException(mErrorRecorder, "getWorkspaceSize");
    }
    return 0;
}

int32_t MlaAttentionPlugin::getAliasedInput(int32_t outputIndex) noexcept
{
    return aliasedInput(outputIndex);
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

int32_t MlaAttentionPlugin::onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    try
    {
        if (in == nullptr || out == nullptr || nbInputs != c::kNumInputs || nbOutputs != c::kNumOutputs)
        {
            reportError(mErrorRecorder, ErrorCode::kINVALID_ARGUMENT, "MlaAttention: expected 7 inputs and 2 outputs");
            return -1;
        }
        Dims dims[c::kNumInputs];
        for (int32_t i = 0; i < c::kNumInputs; ++i)
        {
            dims[i] = in[i].dims;
        }
        std::string const why = validateInputDims(mAttrs, dims, nbInputs);
        if (!why.empty())
        {
            reportError(mErrorRecorder, ErrorCode::kINVALID_ARGUMENT, why);
            return -1;
        }
        return 0;
    }
    catch (...)
    {
        reportException(mErrorRecorder, "onShapeChange");
    }
    return -1;
}

bool MlaAttentionPlugin::checkCuda(CUresult result, char const* what) const noexcept
{
    if (result == CUDA_SUCCESS)
    {
        return true;
    }
    char const* name = nullptr;
    if (cuGetErrorName(result, &name) != CUDA_SUCCESS || name == nullptr)
    {
        name = "unknown CUDA error";
    }
    reportError(mErrorRecorder, ErrorCode::kFAILED_EXECUTION,
        std::string("MlaAttention: ") + what + " failed: " + name + " (" + std::to_string(static_cast<int>(result))
            + ")");
    return false;
}

bool MlaAttentionPlugin::ensureModuleLoaded() noexcept
{
    if (mModule.loaded())
    {
        return true;
    }
    if (mModuleFailed)
    {
        return false; // reported once already
    }
    mModuleFailed = !checkCuda(mModule.load(), "loading the kernel module for the current device");
    return !mModuleFailed;
}

int32_t MlaAttentionPlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
    nvinfer1::PluginTensorDesc const* outputDesc, void const* const* inputs, void* const* outputs, void* workspace,
    cudaStream_t stream) noexcept
{
    try
    {
        if (inputDesc == nullptr || outputDesc == nullptr || inputs == nullptr || outputs == nullptr)
        {
            reportError(mErrorRecorder, ErrorCode::kINVALID_ARGUMENT, "MlaAttention::enqueue: null descriptors");
            return -1;
        }
        DataType types[c::kNumInputs];
        Dims dims[c::kNumInputs];
        for (int32_t i = 0; i < c::kNumInputs; ++i)
        {
            types[i] = inputDesc[i].type;
            dims[i] = inputDesc[i].dims;
        }
        DataType outTypes[c::kNumOutputs];
        std::string why = plugin::outputDataTypes(outTypes, c::kNumOutputs, types, c::kNumInputs);
        if (why.empty())
        {
            why = validateInputDims(mAttrs, dims, c::kNumInputs);
        }
        for (int32_t o = 0; why.empty() && o < c::kNumOutputs; ++o)
        {
            if (outputDesc[o].type != outTypes[o] || !sameDims(outputDesc[o].dims, outputDims(o, dims)))
            {
                why = std::string("MlaAttention: output ") + c::kOutputNames[o]
                    + " does not have the type and shape of input " + c::kInputNames[outputShapeSource(o)];
            }
        }
        kernels::DataType dtype{};
        if (why.empty() && !toKernelType(types[c::kQLatent], dtype))
        {
            why = "MlaAttention: unsupported activation type";
        }
        if (!why.empty())
        {
            reportError(mErrorRecorder, ErrorCode::kINVALID_ARGUMENT, why);
            return -1;
        }
        for (int32_t i = 0; i < c::kNumInputs + c::kNumOutputs; ++i)
        {
            void const* const ptr = i < c::kNumInputs ? inputs[i] : outputs[i - c::kNumInputs];
            if (reinterpret_cast<uintptr_t>(ptr) % kTensorAlignment != 0 || ptr == nullptr)
            {
                reportError(mErrorRecorder, ErrorCode::kINVALID_ARGUMENT,
                    std::string("MlaAttention: tensor ")
                        + (i < c::kNumInputs ? c::kInputNames[i] : c::kOutputNames[i - c::kNumInputs])
                        + " is null or not 16-byte aligned (the kernels need 16-byte aligned buffers)");
                return -1;
            }
        }
        kernels::Dims const kdims = kernelDims(mAttrs, dims, dtype);
        char const* unsupported = nullptr;
        if (!kernels::supported(kdims, &unsupported))
        {
            reportError(mErrorRecorder, ErrorCode::kINVALID_ARGUMENT,
                std::string("MlaAttention: no kernel for these shapes: ")
                    + (unsupported != nullptr ? unsupported : "unsupported"));
            return -1;
        }
        if (!ensureModuleLoaded())
        {
            return -1;
        }
        auto const cuStream = reinterpret_cast<CUstream>(stream);
        void const* past = inputs[c::kPastCache];
        void* present = outputs[c::kPresentCache];
        if (present != past)
        {
            // Separate buffers (an engine built without aliased plugin I/O): make present hold past,
            // then the kernels write only the new rows. Aliased (getAliasedInput), TensorRT hands us
            // one buffer and the rows are already there: no copy.
            size_t const bytes = static_cast<size_t>(volume(dims[c::kPastCache])) * elementSize(types[c::kPastCache]);
            if (!checkCuda(cuMemcpyDtoDAsync(reinterpret_cast<CUdeviceptr>(present),
                               reinterpret_cast<CUdeviceptr>(past), bytes, cuStream),
                    "copying past_cache to present_cache (cuMemcpyDtoDAsync)"))
            {
                return -1;
            }
        }
        kernels::Tensors tensors{};
        tensors.qLatent = inputs[c::kQLatent];
        tensors.qPe = inputs[c::kQPe];
        tensors.kvLatent = inputs[c::kKvLatent];
        tensors.kPe = inputs[c::kKPe];
        tensors.cache = present;
        tensors.cacheSeqlens = static_cast<int32_t const*>(inputs[c::kCacheSeqlensIn]);
        tensors.ropeCosSin = static_cast<float const*>(inputs[c::kRopeCosSin]);
        tensors.attnLatent = outputs[c::kAttnLatent];
        return checkCuda(kernels::launch(mModule, kdims, tensors, workspace, cuStream), "launching the kernels") ? 0
                                                                                                             : -1;
    }
    catch (...)
    {
        reportException(mErrorRecorder, "enqueue");
    }
    return -1;
}

nvinfer1::IPluginV3* MlaAttentionPlugin::attachToContext(nvinfer1::IPluginResourceContext* context) noexcept
{
    try
    {
        auto* attached = new MlaAttentionPlugin(*this);
        attached->mErrorRecorder = context != nullptr ? context->getErrorRecorder() : nullptr;
        return attached;
    }
    catch (...)
    {
        reportException(mErrorRecorder, "attachToContext");
    }
    return nullptr;
}

nvinfer1::PluginFieldCollection const* MlaAttentionPlugin::getFieldsToSerialize() noexcept
{
    try
    {
        // Types as TensorRT's ONNX parser sends them, so one parser serves both paths.
        mFields.clear();
        mFields.emplace_back(c::kAttrNumHeads, &mAttrs.numHeads, PluginFieldType::kINT32, 1);
        mFields.emplace_back(c::kAttrKvLoraRank, &mAttrs.kvLoraRank, PluginFieldType::kINT32, 1);
        mFields.emplace_back(c::kAttrQkRopeHeadDim, &mAttrs.ropeDim, PluginFieldType::kINT32, 1);
        mFields.emplace_back(c::kAttrSoftmaxScale, &mAttrs.softmaxScale, PluginFieldType::kFLOAT32, 1);
        mFieldCollection.nbFields = static_cast<int32_t>(mFields.size());
        mFieldCollection.fields = mFields.data();
        return &mFieldCollection;
    }
    catch (...)
    {
        reportException(mErrorRecorder, "getFieldsToSerialize");
    }
    return nullptr;
}

} // namespace plugin
} // namespace mla
