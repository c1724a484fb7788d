/*
 * The steps every plugin takes (pluginCore.h). Every step is noexcept and catches everything: failures are
 * reported through the logger and the context's error recorder (pluginLog.h), never thrown across the boundary.
 */
#include "pluginCore.h"

#include "pluginLog.h"
#include "pluginShapes.h"

#include <exception>

namespace mla
{
namespace plugin
{
namespace
{
using nvinfer1::DataType;
using nvinfer1::Dims;
using nvinfer1::ErrorCode;

// Alignment the kernels need for every buffer (mlaKernels.h, moeKernels.h); TensorRT's allocations satisfy it.
constexpr uintptr_t kTensorAlignment = 16;
} // namespace

PluginCore::PluginCore(OpSpec const& spec) noexcept
    : mSpec(spec)
    , mNumInputs(spec.fewerInputs > 0 ? 0 : spec.numInputs)
{
}

PluginCore::PluginCore(PluginCore const& other) noexcept
    : mSpec(other.mSpec)
    , mNumInputs(other.mNumInputs)
    , mErrorRecorder(other.mErrorRecorder)
{
    // The kernel module belongs to one context: a copy loads its own.
}

PluginCore::~PluginCore()
{
    if (mModule.loaded())
    {
        mModule.unload();
    }
}

void PluginCore::reportInvalid(std::string const& why) const noexcept
{
    reportError(mErrorRecorder, ErrorCode::kINVALID_ARGUMENT, why);
}

void PluginCore::reportException(char const* method) const noexcept
{
    try
    {
        throw;
    }
    catch (std::exception const& e)
    {
        reportError(mErrorRecorder, ErrorCode::kINTERNAL_ERROR, std::string(mSpec.name) + "::" + method + ": " + e.what());
    }
    catch (...)
    {
        reportError(
            mErrorRecorder, ErrorCode::kINTERNAL_ERROR, std::string(mSpec.name) + "::" + method + ": unknown exception");
    }
}

bool PluginCore::checkCounts(bool present, int32_t nbInputs, int32_t nbOutputs) const noexcept
{
    if (present && mSpec.acceptsInputCount(nbInputs) && nbOutputs == mSpec.numOutputs)
    {
        return true;
    }
    std::string const fewer = mSpec.fewerInputs > 0 ? std::to_string(mSpec.fewerInputs) + " or " : "";
    reportInvalid(std::string(mSpec.name) + ": expected " + fewer + std::to_string(mSpec.numInputs) + " inputs and "
        + std::to_string(mSpec.numOutputs) + (mSpec.numOutputs == 1 ? " output" : " outputs"));
    return false;
}

Dims PluginCore::expectedOutputDims(int32_t o, Dims const* inputs) const
{
    return mSpec.outputDims != nullptr ? mSpec.outputDims(o, inputs) : inputs[mSpec.outputShapeSource(o)];
}

bool PluginCore::checkCuda(CUresult result, char const* what) const noexcept
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
        std::string(mSpec.name) + ": " + what + " failed: " + name + " (" + std::to_string(static_cast<int>(result))
            + ")");
    return false;
}

bool PluginCore::ensureModuleLoaded() noexcept
{
    if (mModule.loaded())
    {
        return true;
    }
    if (mModuleFailed)
    {
        return false; // reported once already
    }
    mModuleFailed = !checkCuda(mModule.load(mSpec.imageSet()), "loading the kernel module for the current device");
    return !mModuleFailed;
}

int32_t PluginCore::configureProfile(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    try
    {
        if (!checkCounts(in != nullptr && out != nullptr, nbInputs, nbOutputs))
        {
            return -1;
        }
        mNumInputs = nbInputs;
        Dims maxDims[kMaxTensors];
        for (int32_t bound = 0; bound < 2; ++bound)
        {
            Dims dims[kMaxTensors];
            for (int32_t i = 0; i < nbInputs; ++i)
            {
                dims[i] = bound == 0 ? in[i].min : in[i].max;
                maxDims[i] = in[i].max;
            }
            std::string const why = validateInputDims(dims, nbInputs);
            if (!why.empty())
            {
                reportInvalid(why + " (profile bounds)");
                return -1;
            }
        }
        // Fail the build, not the first enqueue, when the kernels cannot run this layer (its type, the
        // profile's largest shapes).
        kernels::DataType dtype{};
        char const* unsupported = nullptr;
        if (toKernelType(in[mSpec.activationInput].desc.type, dtype)
            && !kernelsSupport(maxDims, nbInputs, dtype, &unsupported))
        {
            reportInvalid(std::string(mSpec.name) + ": no kernel for this layer's type and profile: "
                + (unsupported != nullptr ? unsupported : "unsupported"));
            return -1;
        }
        return 0;
    }
    catch (...)
    {
        reportException("configurePlugin");
    }
    return -1;
}

int32_t PluginCore::outputTypesFor(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    try
    {
        std::string const why = mSpec.outputDataTypes(outputTypes, nbOutputs, inputTypes, nbInputs);
        if (why.empty())
        {
            return 0;
        }
        reportInvalid(why);
    }
    catch (...)
    {
        reportException("getOutputDataTypes");
    }
    return -1;
}

int32_t PluginCore::outputShapesFor(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs* outputs,
    int32_t nbOutputs) const noexcept
{
    try
    {
        if (!checkCounts(inputs != nullptr && outputs != nullptr, nbInputs, nbOutputs))
        {
            return -1;
        }
        for (int32_t o = 0; o < nbOutputs; ++o)
        {
            outputs[o] = mSpec.outputExprs != nullptr ? mSpec.outputExprs(o, inputs) : inputs[mSpec.outputShapeSource(o)];
            if (outputs[o].nbDims < 0)
            {
                reportInvalid(std::string(mSpec.name) + ": the input ranks give no shape for output "
                    + mSpec.outputNames[o]);
                return -1;
            }
        }
        return 0;
    }
    catch (...)
    {
        reportException("getOutputShapes");
    }
    return -1;
}

bool PluginCore::formatSupported(
    int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) const noexcept
{
    try
    {
        if (inOut == nullptr || !mSpec.acceptsInputCount(nbInputs) || nbOutputs != mSpec.numOutputs)
        {
            return false;
        }
        nvinfer1::PluginTensorDesc descs[kMaxTensors];
        for (int32_t i = 0; i <= pos && i < nbInputs + nbOutputs; ++i)
        {
            descs[i] = inOut[i].desc;
        }
        return mSpec.supportsFormat(pos, descs, nbInputs, nbOutputs);
    }
    catch (...)
    {
        reportException("supportsFormatCombination");
    }
    return false;
}

size_t PluginCore::workspaceFor(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs) const noexcept
{
    try
    {
        kernels::DataType dtype{};
        if (inputs == nullptr || !mSpec.acceptsInputCount(nbInputs)
            || !toKernelType(inputs[mSpec.activationInput].desc.type, dtype))
        {
            return 0;
        }
        Dims minDims[kMaxTensors];
        Dims maxDims[kMaxTensors];
        for (int32_t i = 0; i < nbInputs; ++i)
        {
            minDims[i] = inputs[i].min;
            maxDims[i] = inputs[i].max;
        }
        return workspaceSize(minDims, maxDims, nbInputs, dtype);
    }
    catch (...)
    {
        reportException("getWorkspaceSize");
    }
    return 0;
}

int32_t PluginCore::shapesChanged(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    try
    {
        if (!checkCounts(in != nullptr && out != nullptr, nbInputs, nbOutputs))
        {
            return -1;
        }
        mNumInputs = nbInputs;
        Dims dims[kMaxTensors];
        for (int32_t i = 0; i < nbInputs; ++i)
        {
            dims[i] = in[i].dims;
        }
        std::string const why = validateInputDims(dims, nbInputs);
        if (!why.empty())
        {
            reportInvalid(why);
            return -1;
        }
        return 0;
    }
    catch (...)
    {
        reportException("onShapeChange");
    }
    return -1;
}

std::string PluginCore::checkPointers(void const* const* inputs, void* const* outputs) const
{
    int32_t const numInputs = mNumInputs;
    for (int32_t i = 0; i < numInputs + mSpec.numOutputs; ++i)
    {
        void const* const ptr = i < numInputs ? inputs[i] : outputs[i - numInputs];
        if (ptr == nullptr || reinterpret_cast<uintptr_t>(ptr) % kTensorAlignment != 0)
        {
            return std::string(mSpec.name) + ": tensor "
                + (i < numInputs ? mSpec.inputNames[i] : mSpec.outputNames[i - numInputs])
                + " is null or not 16-byte aligned (the kernels need 16-byte aligned buffers)";
        }
    }
    return {};
}

int32_t PluginCore::enqueueChecked(nvinfer1::PluginTensorDesc const* inputDesc,
    nvinfer1::PluginTensorDesc const* outputDesc, void const* const* inputs, void* const* outputs, void* workspace,
    cudaStream_t stream) noexcept
{
    try
    {
        std::string const name = mSpec.name;
        if (inputDesc == nullptr || outputDesc == nullptr || inputs == nullptr || outputs == nullptr)
        {
            reportInvalid(name + "::enqueue: null descriptors");
            return -1;
        }
        if (mNumInputs == 0)
        {
            reportInvalid(name + "::enqueue: called before configurePlugin or onShapeChange (the input count is unknown)");
            return -1;
        }
        int32_t const numInputs = mNumInputs;
        int32_t const numOutputs = mSpec.numOutputs;
        DataType types[kMaxTensors];
        Dims dims[kMaxTensors];
        for (int32_t i = 0; i < numInputs; ++i)
        {
            types[i] = inputDesc[i].type;
            dims[i] = inputDesc[i].dims;
        }
        DataType outTypes[kMaxTensors];
        std::string why = mSpec.outputDataTypes(outTypes, numOutputs, types, numInputs);
        if (why.empty())
        {
            why = validateInputDims(dims, numInputs);
        }
        for (int32_t o = 0; why.empty() && o < numOutputs; ++o)
        {
            Dims const expected = expectedOutputDims(o, dims);
            if (outputDesc[o].type != outTypes[o] || !sameDims(outputDesc[o].dims, expected))
            {
                why = name + ": output " + mSpec.outputNames[o]
                    + (mSpec.outputDims != nullptr
                            ? std::string(" does not have the type and shape the inputs give, ") + dimsString(expected)
                            : std::string(" does not have the type and shape of input ")
                                + mSpec.inputNames[mSpec.outputShapeSource(o)]);
            }
        }
        kernels::DataType dtype{};
        if (why.empty() && !toKernelType(types[mSpec.activationInput], dtype))
        {
            why = name + ": unsupported activation type";
        }
        if (!why.empty())
        {
            reportInvalid(why);
            return -1;
        }
        if (nothingToCompute(dims))
        {
            return 0; // nothing to compute or write
        }
        why = checkPointers(inputs, outputs);
        char const* unsupported = nullptr;
        if (why.empty() && !kernelsSupport(dims, numInputs, dtype, &unsupported))
        {
            why = name + ": no kernel for these shapes: " + (unsupported != nullptr ? unsupported : "unsupported");
        }
        if (!why.empty())
        {
            reportInvalid(why);
            return -1;
        }
        if (!ensureModuleLoaded())
        {
            return -1;
        }
        return launch(
            EnqueueCall{numInputs, types, dims, dtype, inputs, outputs, workspace, reinterpret_cast<CUstream>(stream)});
    }
    catch (...)
    {
        reportException("enqueue");
    }
    return -1;
}

} // namespace plugin
} // namespace mla
