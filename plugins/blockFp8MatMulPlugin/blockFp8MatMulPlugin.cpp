/*
 * BlockFp8MatMul IPluginV3 plugin: its hooks into the skeleton of plugins/common (see blockFp8MatMulPlugin.h).
 * Every hook may throw; the skeleton catches and reports (pluginCore.h).
 */
#include "blockFp8MatMulPlugin.h"

namespace mla
{
namespace plugin
{
namespace
{
namespace c = fp8_contract;
using nvinfer1::Dims;
} // namespace

BlockFp8MatMulPlugin::BlockFp8MatMulPlugin(Fp8Attributes const& attrs)
    : PluginBase(attrs)
{
}

std::string BlockFp8MatMulPlugin::validateInputDims(Dims const* inputs, int32_t nbInputs) const
{
    return validateFp8InputDims(inputs, nbInputs);
}

bool BlockFp8MatMulPlugin::kernelsSupport(
    Dims const* inputs, int32_t /*nbInputs*/, kernels::DataType dtype, char const** why) const
{
    return kernels::fp8::supported(fp8KernelDims(mAttrs, inputs, dtype), why);
}

size_t BlockFp8MatMulPlugin::workspaceSize(
    Dims const* minDims, Dims const* maxDims, int32_t /*nbInputs*/, kernels::DataType dtype) const
{
    return fp8WorkspaceSize(mAttrs, minDims, maxDims, dtype);
}

bool BlockFp8MatMulPlugin::nothingToCompute(Dims const* inputs) const
{
    return fp8Rows(inputs) == 0;
}

int32_t BlockFp8MatMulPlugin::launch(EnqueueCall const& call)
{
    kernels::fp8::Tensors tensors{};
    tensors.input = call.inputs[c::kInput];
    tensors.weight = call.inputs[c::kWeight];
    tensors.scaleInv = static_cast<float const*>(call.inputs[c::kWeightScaleInv]);
    tensors.output = call.outputs[c::kOutput];
    kernels::fp8::Dims const kdims = fp8KernelDims(mAttrs, call.dims, call.dtype);
    return checkCuda(kernels::fp8::launch(module(), kdims, tensors, call.workspace, call.stream), "launching the kernel")
        ? 0
        : -1;
}

} // namespace plugin
} // namespace mla
