/*
 * DeepseekMoE IPluginV3 plugin (see deepseekMoePlugin.h; its creator: deepseekMoePluginCreator.cpp).
 *
 * Every TensorRT-facing method is noexcept and catches everything: errors are reported through the logger and
 * the context's error recorder (pluginLog.h), never thrown across the boundary.
 */
#include "deepseekMoePlugin.h"

#include "pluginLog.h"
#include "moeContract.h"

#include <exception>

namespace mla
{
namespace plugin
{
namespace
{
namespace c = moe_contract;
using nvinfer1::DataType;
using nvinfer1::Dims;
using nvinfer1::ErrorCode;
using nvinfer1::PluginFieldType;

void reportException(nvinfer1::IErrorRecorder* recorder, char const* method) noexcept
{
    try
    {
        throw;
    }
    catch (std::exception const& e)
    {
        reportError(recorder, ErrorCode::kINTERNAL_ERROR, std::string("DeepseekMoE::") + method + ": " + e.what());
    }
    catch (...)
    {
        reportError(recorder, ErrorCode::kINTERNAL_ERROR, std::string("DeepseekMoE::") + method + ": unknown exception");
    }
}

constexpr uintptr_t kTensorAlignment = 16; // what the kernels need (moeKernels.h); TensorRT's allocations satisfy it
constexpr char const kIoCount[] = "DeepseekMoE: expected 5 inputs and 1 output";

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

DeepseekMoePlugin::DeepseekMoePlugin(MoeAttributes const& attrs)
    : mAttrs(attrs)
{
}

DeepseekMoePlugin::DeepseekMoePlugin(DeepseekMoePlugin const& other)
    : mAttrs(other.mAttrs)
    , mErrorRecorder(other.mErrorRecorder)
{
    // The kernel module belongs to one context: a copy loads its own.
}

DeepseekMoePlugin::~DeepseekMoePlugin()
{
    if (mModule.loaded())
    {
        mModule.unload();
    }
}

nvinfer1::IPluginCapability* DeepseekMoePlugin::getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept
{
    try
    {
        switch (type)
        {
        case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
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

nvinfer1::IPluginV3* DeepseekMoePlugin::clone() noexcept
{
    try
    {
        return new DeepseekMoePlugin(*this);
    }
    catch (...)
    {
        reportException(mErrorRecorder, "clone");
    }
    return nullptr;
}

char const* DeepseekMoePlugin::getPluginName() const noexcept
{
    return c::kPluginName;
}

char const* DeepseekMoePlugin::getPluginVersion() const noexcept
{
    return c::kPluginVersion;
}

char const* DeepseekMoePlugin::getPluginNamespace() const noexcept
{
    return c::kPluginNamespace;
}

int32_t DeepseekMoePlugin::configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    try
    {
        if (in == nullptr || out == nullptr || nbInputs != c::kNumInputs || nbOutputs != c::kNumOutputs)
        {
            reportError(mErrorRecorder, ErrorCode::kINVALID_ARGUMENT, kIoCount);
            return -1;
        }
        Dims maxDims[c::kNumInputs];
        for (int32_t bound = 0; bound < 2; ++bound)
        {
            Dims dims[c::kNumInputs];
            for (int32_t i = 0; i < c::kNumInputs; ++i)
            {
                dims[i] = bound == 0 ? in[i].min : in[i].max;
                maxDims[i] = in[i].max;
            }
            std::string const why = validateMoeInputDims(mAttrs, dims, nbInputs);
            if (!why.empty())
            {
                reportError(mErrorRecorder, ErrorCode::kINVALID_ARGUMENT, why + " (profile bounds)");
                return -1;
            }
        }
        // Fail the build, not the first enqueue, when the kernels cannot run this layer (its type, its dims).
        kernels::DataType dtype{};
        char const* unsupported = nullptr;
        if (toKernelType(in[c::kHiddenStates].desc.type, dtype)
            && !kernels::moe::supported(moeKernelDims(mAttrs, maxDims, dtype), &unsupported))
        {
            reportError(mErrorRecorder, ErrorCode::kINVALID_ARGUMENT,
                std::string("DeepseekMoE: no kernel for this layer's type and profile: ")
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

int32_t DeepseekMoePlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    try
    {
        std::string const why = moeOutputDataTypes(outputTypes, nbOutputs, inputTypes, nbInputs);
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

int32_t DeepseekMoePlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
    nvinfer1::DimsExprs const* /*shapeInputs*/, int32_t /*nbShapeInputs*/, nvinfer1::DimsExprs* outputs,
    int32_t nbOutputs, nvinfer1::IExprBuilder& /*exprBuilder*/) noexcept
{
    try
    {
        if (inputs == nullptr || outputs == nullptr || nbInputs != c::kNumInputs || nbOutputs != c::kNumOutputs)
        {
            reportError(mErrorRecorder, ErrorCode::kINVALID_ARGUMENT, kIoCount);
            return -1;
        }
        outputs[c::kRoutedOutput] = inputs[c::kHiddenStates];
        return 0;
    }
    catch (...)
    {
        reportException(mErrorRecorder, "getOutputShapes");
    }
    return -1;
}

bool DeepseekMoePlugin::supportsFormatCombination(
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
        return moeSupportsFormat(pos, descs, nbInputs, nbOutputs);
    }
    catch (...)
    {
        reportException(mErrorRecorder, "supportsFormatCombination");
    }
    return false;
}

int32_t DeepseekMoePlugin::getNbOutputs() const noexcept
{
    return c::kNumOutputs;
}

size_t DeepseekMoePlugin::getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    try
    {
        kernels::DataType dtype{};
        if (inputs == nullptr || nbInputs != c::kNumInputs || !toKernelType(inputs[c::kHiddenStates].desc.type, dtype))
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
        return moeWorkspaceSize(mAttrs, minDims, maxDims, dtype);
    }
    catch (...)
    {
        reportException(mErrorRecorder, "getWorkspaceSize");
    }
    return 0;
}

int32_t DeepseekMoePlugin::onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
    nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept
{
    try
    {
        if (in == nullptr || out == nullptr || nbInputs != c::kNumInputs || nbOutputs != c::kNumOutputs)
        {
            reportError(mErrorRecorder, ErrorCode::kINVALID_ARGUMENT, kIoCount);
            return -1;
        }
        Dims dims[c::kNumInputs];
        for (int32_t i = 0; i < c::kNumInputs; ++i)
        {
            dims[i] = in[i].dims;
        }
        std::string const why = validateMoeInputDims(mAttrs, dims, nbInputs);
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

bool DeepseekMoePlugin::checkCuda(CUresult result, char const* what) const noexcept
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
        std::string("DeepseekMoE: ") + what + " failed: " + name + " (" + std::to_string(static_cast<int>(result))
            + ")");
    return false;
}

bool DeepseekMoePlugin::ensureModuleLoaded() noexcept
{
    if (mModule.loaded())
    {
        return true;
    }
    if (mModuleFailed)
    {
        return false; // reported once already
    }
    mModuleFailed = !checkCuda(mModule.load(kernels::moe::imageSet()), "loading the kernel module for the current device");
    return !mModuleFailed;
}

int32_t DeepseekMoePlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
    nvinfer1::PluginTensorDesc const* outputDesc, void const* const* inputs, void* const* outputs, void* workspace,
    cudaStream_t stream) noexcept
{
    try
    {
        if (inputDesc == nullptr || outputDesc == nullptr || inputs == nullptr || outputs == nullptr)
        {
            reportError(mErrorRecorder, ErrorCode::kINVALID_ARGUMENT, "DeepseekMoE::enqueue: null descriptors");
            return -1;
        }
        DataType types[c::kNumInputs];
        Dims dims[c::kNumInputs];
        for (int32_t i = 0; i < c::kNumInputs; ++i)
        {
            types[i] = inputDesc[i].type;
            dims[i] = inputDesc[i].dims;
        }
        DataType outType{};
        std::string why = moeOutputDataTypes(&outType, c::kNumOutputs, types, c::kNumInputs);
        if (why.empty())
        {
            why = validateMoeInputDims(mAttrs, dims, c::kNumInputs);
        }
        if (why.empty()
            && (outputDesc[c::kRoutedOutput].type != outType
                || !sameDims(outputDesc[c::kRoutedOutput].dims, moeOutputDims(dims))))
        {
            why = "DeepseekMoE: output routed_output does not have the type and shape of input hidden_states";
        }
        kernels::DataType dtype{};
        if (why.empty() && !toKernelType(types[c::kHiddenStates], dtype))
        {
            why = "DeepseekMoE: unsupported activation type";
        }
        if (!why.empty())
        {
            reportError(mErrorRecorder, ErrorCode::kINVALID_ARGUMENT, why);
            return -1;
        }
        kernels::moe::Dims const kdims = moeKernelDims(mAttrs, dims, dtype);
        if (kdims.tokens == 0)
        {
            return 0; // no token: nothing to compute or write
        }
        for (int32_t i = 0; i < c::kNumInputs + c::kNumOutputs; ++i)
        {
            void const* const ptr = i < c::kNumInputs ? inputs[i] : outputs[i - c::kNumInputs];
            if (ptr == nullptr || reinterpret_cast<uintptr_t>(ptr) % kTensorAlignment != 0)
            {
                reportError(mErrorRecorder, ErrorCode::kINVALID_ARGUMENT,
                    std::string("DeepseekMoE: tensor ")
                        + (i < c::kNumInputs ? c::kInputNames[i] : c::kOutputNames[i - c::kNumInputs])
                        + " is null or not 16-byte aligned (the kernels need 16-byte aligned buffers)");
                return -1;
            }
        }
        char const* unsupported = nullptr;
        if (!kernels::moe::supported(kdims, &unsupported))
        {
            reportError(mErrorRecorder, ErrorCode::kINVALID_ARGUMENT,
                std::string("DeepseekMoE: no kernel for these shapes: ")
                    + (unsupported != nullptr ? unsupported : "unsupported"));
            return -1;
        }
        if (!ensureModuleLoaded())
        {
            return -1;
        }
        kernels::moe::Tensors tensors{};
        tensors.hidden = inputs[c::kHiddenStates];
        tensors.routerWeight = static_cast<float const*>(inputs[c::kRouterWeight]);
        tensors.scoreBias = static_cast<float const*>(inputs[c::kScoreBias]);
        tensors.gateUp = inputs[c::kGateUpProj];
        tensors.down = inputs[c::kDownProj];
        tensors.out = outputs[c::kRoutedOutput];
        return checkCuda(kernels::moe::launch(mModule, kdims, tensors, workspace, reinterpret_cast<CUstream>(stream)),
                   "launching the kernels")
            ? 0
            : -1;
    }
    catch (...)
    {
        reportException(mErrorRecorder, "enqueue");
    }
    return -1;
}

nvinfer1::IPluginV3* DeepseekMoePlugin::attachToContext(nvinfer1::IPluginResourceContext* context) noexcept
{
    try
    {
        auto* attached = new DeepseekMoePlugin(*this);
        attached->mErrorRecorder = context != nullptr ? context->getErrorRecorder() : nullptr;
        return attached;
    }
    catch (...)
    {
        reportException(mErrorRecorder, "attachToContext");
    }
    return nullptr;
}

nvinfer1::PluginFieldCollection const* DeepseekMoePlugin::getFieldsToSerialize() noexcept
{
    try
    {
        // Types as TensorRT's ONNX parser sends them, so one parser serves both paths.
        mFields.clear();
        mFields.emplace_back(c::kAttrNumExperts, &mAttrs.numExperts, PluginFieldType::kINT32, 1);
        mFields.emplace_back(c::kAttrTopK, &mAttrs.topK, PluginFieldType::kINT32, 1);
        mFields.emplace_back(c::kAttrNGroup, &mAttrs.nGroup, PluginFieldType::kINT32, 1);
        mFields.emplace_back(c::kAttrTopkGroup, &mAttrs.topkGroup, PluginFieldType::kINT32, 1);
        mFields.emplace_back(c::kAttrScoringFunc, &mAttrs.scoringFunc, PluginFieldType::kINT32, 1);
        mFields.emplace_back(c::kAttrGroupScore, &mAttrs.groupScore, PluginFieldType::kINT32, 1);
        mFields.emplace_back(c::kAttrUseBias, &mAttrs.useBias, PluginFieldType::kINT32, 1);
        mFields.emplace_back(c::kAttrNormalize, &mAttrs.normalize, PluginFieldType::kINT32, 1);
        mFields.emplace_back(c::kAttrWeightScale, &mAttrs.weightScale, PluginFieldType::kFLOAT32, 1);
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
