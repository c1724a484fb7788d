/*
 * DeepseekMoE IPluginV3 plugin: its hooks into the skeleton of plugins/common (see deepseekMoePlugin.h).
 * Every hook may throw; the skeleton catches and reports (pluginCore.h).
 */
#include "deepseekMoePlugin.h"

namespace mla
{
namespace plugin
{
namespace
{
namespace c = moe_contract;
using nvinfer1::Dims;
} // namespace

DeepseekMoePlugin::DeepseekMoePlugin(MoeAttributes const& attrs)
    : PluginBase(attrs)
{
}

std::string DeepseekMoePlugin::validateInputDims(Dims const* inputs, int32_t nbInputs) const
{
    return validateMoeInputDims(mAttrs, inputs, nbInputs);
}

bool DeepseekMoePlugin::kernelsSupport(Dims const* inputs, int32_t nbInputs, kernels::DataType dtype, char const** why) const
{
    return kernels::moe::supported(moeKernelDims(mAttrs, inputs, nbInputs, dtype), why);
}

size_t DeepseekMoePlugin::workspaceSize(
    Dims const* minDims, Dims const* maxDims, int32_t nbInputs, kernels::DataType dtype) const
{
    return moeWorkspaceSize(mAttrs, minDims, maxDims, nbInputs, dtype);
}

bool DeepseekMoePlugin::nothingToCompute(Dims const* inputs) const
{
    return inputs[c::kHiddenStates].d[0] * inputs[c::kHiddenStates].d[1] == 0;
}

int32_t DeepseekMoePlugin::launch(EnqueueCall const& call)
{
    kernels::moe::Tensors tensors{};
    tensors.hidden = call.inputs[c::kHiddenStates];
    tensors.routerWeight = static_cast<float const*>(call.inputs[c::kRouterWeight]);
    tensors.scoreBias = static_cast<float const*>(call.inputs[c::kScoreBias]);
    tensors.gateUp = call.inputs[c::kGateUpProj];
    tensors.down = call.inputs[c::kDownProj];
    bool const fp8 = moeFp8Experts(call.numInputs);
    tensors.gateUpScale = fp8 ? static_cast<float const*>(call.inputs[c::kGateUpScale]) : nullptr;
    tensors.downScale = fp8 ? static_cast<float const*>(call.inputs[c::kDownScale]) : nullptr;
    tensors.out = call.outputs[c::kRoutedOutput];
    kernels::moe::Dims const kdims = moeKernelDims(mAttrs, call.dims, call.numInputs, call.dtype);
    return checkCuda(kernels::moe::launch(module(), kdims, tensors, call.workspace, call.stream), "launching the kernels")
        ? 0
        : -1;
}

} // namespace plugin
} // namespace mla
