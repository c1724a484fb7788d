/*
 * GPU check of the shipped library's DeepseekMoE (run by tests/test_moe_plugin.py::test_enqueue_on_gpu, which
 * writes the inputs and compares the output with the float64 loop): dlopen libmla_plugin.so, create the plugin
 * through getCreators like TensorRT does, attach it to a context, enqueue on device buffers, write the output.
 *
 *   test_moe_gpu_enqueue LIB DIR
 *   DIR/meta.txt: "B S d I E top_k n_group topk_group scoring_func group_score use_bias normalize weight_scale
 *                  dtype(1 fp16, 2 bf16) [fp8]": a last field 1 runs a 7-input node (FP8 experts: gate_up_proj
 *                  and down_proj e4m3 bytes, gate_up_scale and down_scale float32)
 *   DIR/<input name>.bin raw inputs; writes DIR/routed_output.bin (first replay) and DIR/routed_output.again.bin
 *   (second replay, for the determinism check).
 * The step is captured into a CUDA graph after a warm-up enqueue (module loading outside the capture); the graph's
 * nodes are counted and printed ("graph: K kernel, C memcpy, M memset, O other nodes"): the routing and the
 * alignment run on the device, so the step must capture (no host sync) and hold kernels only. Exits 77 (skip)
 * when no CUDA driver or device is present; the driver is opened with dlopen, so it builds everywhere
 * (common/testing/gpuHarness.h).
 */
#include "NvInferRuntime.h"
#include "gpuHarness.h"
#include "moeContract.h"
#include "testFields.h"

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

namespace c = mla::moe_contract;

int main(int argc, char** argv)
{
    gpu::Driver cu("test_moe_gpu_enqueue");
    if (argc != 3)
    {
        return cu.fail("usage: test_moe_gpu_enqueue LIB DIR");
    }
    std::string const dir = argv[2];
    if (int const status = cu.open())
    {
        return status;
    }

    int64_t b, s, d, inter;
    int32_t ints[8];
    float scale;
    int32_t dtype;
    int32_t fp8 = 0;
    {
        std::ifstream meta(dir + "/meta.txt");
        if (!(meta >> b >> s >> d >> inter))
        {
            return cu.fail("cannot read meta.txt");
        }
        for (int32_t& v : ints)
        {
            meta >> v;
        }
        if (!(meta >> scale >> dtype))
        {
            return cu.fail("cannot read meta.txt");
        }
        meta >> fp8; // optional: 0 when absent
    }
    int64_t const e = ints[0];
    nvinfer1::DataType const t = dtype == 1 ? nvinfer1::DataType::kHALF : nvinfer1::DataType::kBF16;
    auto const blocks = [](int64_t extent) { return (extent + c::kFp8Block - 1) / c::kFp8Block; };
    std::vector<std::vector<int64_t>> const shapes = {{b, s, d}, {e, d}, {e}, {e, 2 * inter, d}, {e, d, inter},
        {e, blocks(2 * inter), blocks(d)}, {e, blocks(d), blocks(inter)}};
    int32_t const count = fp8 != 0 ? c::kNumInputs : c::kNumInputsTExperts;
    std::vector<nvinfer1::PluginTensorDesc> in(count);
    std::vector<CUdeviceptr> inPtr(count);
    for (int32_t i = 0; i < count; ++i)
    {
        bool const f32 = i == c::kRouterWeight || i == c::kScoreBias || i >= c::kGateUpScale;
        bool const experts = i == c::kGateUpProj || i == c::kDownProj;
        in[i] = gpu::tensorDesc(
            shapes[i], f32 ? nvinfer1::DataType::kFLOAT : (experts && fp8 != 0 ? nvinfer1::DataType::kFP8 : t));
        std::string const why
            = gpu::uploadFile(cu, dir + "/" + c::kInputNames[i] + ".bin", gpu::tensorBytes(in[i]), inPtr[i]);
        if (!why.empty())
        {
            return cu.fail(why);
        }
    }
    std::vector<nvinfer1::PluginTensorDesc> const out = {in[c::kHiddenStates]};
    size_t const outBytes = gpu::tensorBytes(out[c::kRoutedOutput]);
    CUdeviceptr output{}, scratch{};
    if (!cu.alloc(output, outBytes) || !cu.fill(output, 0xFF, outBytes) || !cu.alloc(scratch, outBytes))
    {
        return cu.fail("device allocation failed");
    }

    std::string why;
    nvinfer1::IPluginCreatorV3One* creator = gpu::findCreator(argv[1], c::kPluginName, why);
    if (creator == nullptr)
    {
        return cu.fail(why);
    }
    char const* const intNames[8] = {c::kAttrNumExperts, c::kAttrTopK, c::kAttrNGroup, c::kAttrTopkGroup,
        c::kAttrScoringFunc, c::kAttrGroupScore, c::kAttrUseBias, c::kAttrNormalize}; // meta.txt's order
    testutil::FieldList fields; // as the ONNX parser sends them
    for (int32_t k = 0; k < 8; ++k)
    {
        fields.add(intNames[k], &ints[k]);
    }
    fields.add(c::kAttrWeightScale, &scale);
    nvinfer1::IPluginV3* built = creator->createPlugin("gpu_test", fields.collection(), nvinfer1::TensorRTPhase::kBUILD);
    if (built == nullptr)
    {
        return cu.fail("createPlugin failed");
    }
    size_t wsBytes = 0;
    why = gpu::configure(built, in, out, wsBytes);
    if (!why.empty())
    {
        return cu.fail(why);
    }
    CUdeviceptr workspace{};
    if (wsBytes == 0 || !cu.alloc(workspace, wsBytes) || !cu.fill(workspace, 0xFF, wsBytes))
    {
        return cu.fail("workspace allocation failed");
    }
    gpu::Context context;
    nvinfer1::IPluginV3* attached = nullptr;
    nvinfer1::IPluginV3OneRuntime* runtime = gpu::attach(built, context, in, out, attached, why);
    if (runtime == nullptr)
    {
        return cu.fail(why);
    }
    std::vector<void const*> const inputAddresses = gpu::addresses(inPtr);
    void const* const* inputs = inputAddresses.data();
    void* warmOutputs[1] = {reinterpret_cast<void*>(scratch)};
    if (runtime->enqueue(in.data(), out.data(), inputs, warmOutputs, reinterpret_cast<void*>(workspace), cu.stream()) != 0
        || !cu.sync())
    {
        return cu.fail("warm-up enqueue failed");
    }
    void* outputs[1] = {reinterpret_cast<void*>(output)};
    CUgraph graph{};
    why = cu.captureStep(
        CU_STREAM_CAPTURE_MODE_GLOBAL,
        [&] {
            return runtime->enqueue(
                in.data(), out.data(), inputs, outputs, reinterpret_cast<void*>(workspace), cu.stream());
        },
        "enqueue failed under stream capture (a host sync?)", graph);
    if (!why.empty())
    {
        return cu.fail(why);
    }
    CUgraphExec exec{};
    if (!cu.instantiate(exec, graph))
    {
        return cu.fail("cannot instantiate the captured step");
    }
    std::vector<char> host(outBytes);
    for (char const* name : {"routed_output.bin", "routed_output.again.bin"})
    {
        if (!cu.launch(exec) || !cu.sync())
        {
            return cu.fail("the captured step failed");
        }
        if (!cu.download(host.data(), output, outBytes))
        {
            return cu.fail("copying the output back failed");
        }
        gpu::writeFile(dir + "/" + name, host.data(), outBytes);
    }
    delete attached; // unloads its kernel module
    delete built;
    std::printf("enqueue ok (workspace %zu bytes)\n", wsBytes);
    return 0;
}
