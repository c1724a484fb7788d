/*
 * PluginCore: what every plugin of this library does in the same order, over hooks each plugin supplies.
 * PluginBase (pluginBase.h) forwards TensorRT's IPluginV3 calls here. The op's spec (opSpec.h) gives the
 * tensor counts, names and the rules of its descriptors; a plugin implements the hooks that depend on its
 * attributes (mlaShapes.h, moeShapes.h: pure functions of attributes and descriptors), the kernels'
 * answers (supported, workspace) and its launch.
 *
 * Each step checks the tensor counts against the spec, asks the spec's rules and the hooks, reports a failure through
 * the logger and the context's error recorder (pluginLog.h) with a message starting "<op>: ", and never
 * throws: an exception escaping a hook is reported as "<op>::<method>: ...". Steps in TensorRT's order:
 *   configureProfile   both profile bounds valid (validateInputDims), kernels for the largest shapes
 *   outputTypesFor     the spec's outputDataTypes
 *   outputShapesFor    each output gets the spec's outputExprs, or the expressions of its outputShapeSource
 *   formatSupported    the spec's supportsFormat, on the positions TensorRT has decided
 *   workspaceFor       workspaceSize over the profile (0 for a type without kernels)
 *   shapesChanged      validateInputDims
 *   enqueueChecked     types, shapes (outputs included), kernel type, nothingToCompute, 16-byte aligned
 *                      buffers, kernels for these shapes, the kernel module of this object's context
 *                      (the spec's imageSet, loaded on first use, a failure reported once), then launch.
 * An op with two input counts (OpSpec::fewerInputs) learns the count of its layer from configurePlugin and
 * onShapeChange (enqueue is not told): enqueue before either is refused.
 * The kernel module belongs to one context: a copy (clone, attachToContext) loads its own, and the
 * module is unloaded with its object.
 */
#pragma once

#include "NvInferRuntime.h"
#include "mlaKernels.h"
#include "opSpec.h"

#include <cuda.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace mla
{
namespace plugin
{

//! One enqueue, checked: what the launch hook gets. Arrays are indexed by the op's input/output indices.
struct EnqueueCall
{
    int32_t numInputs;               //!< this layer's input count (OpSpec::acceptsInputCount)
    nvinfer1::DataType const* types; //!< [numInputs]
    nvinfer1::Dims const* dims;      //!< [numInputs]
    kernels::DataType dtype;         //!< the activation type, as the kernels name it
    void const* const* inputs;       //!< [numInputs] device pointers, non-null, 16-byte aligned
    void* const* outputs;            //!< [numOutputs] likewise
    void* workspace;                 //!< getWorkspaceSize bytes
    CUstream stream;
};

class PluginCore
{
public:
    PluginCore& operator=(PluginCore const&) = delete;
    virtual ~PluginCore(); //!< unloads the kernel module of its context, if loaded

    OpSpec const& spec() const noexcept { return mSpec; }

protected:
    explicit PluginCore(OpSpec const& spec) noexcept;
    //! A copy keeps the spec and the error recorder; it has no kernel module yet.
    PluginCore(PluginCore const& other) noexcept;

    // ---- hooks: what depends on the attributes (arrays indexed by the op's input indices)
    //! Empty when the input shapes agree with each other and the attributes (extents < 0: unknown).
    virtual std::string validateInputDims(nvinfer1::Dims const* inputs, int32_t nbInputs) const = 0;
    //! True when the kernels take these (fully known) input dims and type; else `why` may name the reason.
    virtual bool kernelsSupport(
        nvinfer1::Dims const* inputs, int32_t nbInputs, kernels::DataType dtype, char const** why) const = 0;
    //! Workspace bytes for every shape in [minDims, maxDims].
    virtual size_t workspaceSize(nvinfer1::Dims const* minDims, nvinfer1::Dims const* maxDims, int32_t nbInputs,
        kernels::DataType dtype) const = 0;
    //! True when a valid call has nothing to compute (enqueue then succeeds at once, before the pointer checks).
    virtual bool nothingToCompute(nvinfer1::Dims const* /*inputs*/) const { return false; }
    //! Runs the checked call with `module()` loaded; 0 or -1 (after reporting, e.g. through checkCuda).
    virtual int32_t launch(EnqueueCall const& call) = 0;

    // ---- for the hooks
    kernels::Module const& module() const noexcept { return mModule; }
    //! True when `result` is CUDA_SUCCESS; else reports "<op>: <what> failed: <error name> (<code>)".
    bool checkCuda(CUresult result, char const* what) const noexcept;
    //! Reports a rejected call (kINVALID_ARGUMENT).
    void reportInvalid(std::string const& why) const noexcept;
    //! Reports the exception being handled, escaped from `method`; call only inside a catch block.
    void reportException(char const* method) const noexcept;
    void setErrorRecorder(nvinfer1::IErrorRecorder* recorder) noexcept { mErrorRecorder = recorder; }

    // ---- the steps PluginBase forwards TensorRT's calls to
    int32_t configureProfile(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept;
    int32_t outputTypesFor(nvinfer1::DataType* outputTypes, int32_t nbOutputs, nvinfer1::DataType const* inputTypes,
        int32_t nbInputs) const noexcept;
    int32_t outputShapesFor(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs* outputs,
        int32_t nbOutputs) const noexcept;
    bool formatSupported(
        int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) const noexcept;
    size_t workspaceFor(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs) const noexcept;
    int32_t shapesChanged(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::PluginTensorDesc const* out, int32_t nbOutputs) noexcept;
    int32_t enqueueChecked(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept;

private:
    //! True when the counts are the op's; else reports "<op>: expected N [or F] inputs and M output(s)".
    bool checkCounts(bool present, int32_t nbInputs, int32_t nbOutputs) const noexcept;
    //! The expected dims of output `o` of a call with these (valid) input dims.
    nvinfer1::Dims expectedOutputDims(int32_t o, nvinfer1::Dims const* inputs) const;
    //! Loads the kernel module for the current context once; true when loaded.
    bool ensureModuleLoaded() noexcept;
    //! Empty when every buffer is non-null and 16-byte aligned (what the kernels need); else names one.
    std::string checkPointers(void const* const* inputs, void* const* outputs) const;

    OpSpec mSpec;
    //! This layer's input count: the spec's when it has one, else the last configurePlugin/onShapeChange's (0: unknown).
    int32_t mNumInputs;
    nvinfer1::IErrorRecorder* mErrorRecorder{nullptr};
    kernels::Module mModule;
    bool mModuleFailed{false};
};

} // namespace plugin
} // namespace mla
