/*
 * GPU check of the shipped library (run by tests/test_plugin.py::test_enqueue_matches_reference_on_gpu,
 * which writes the inputs and compares the outputs with the float64 reference): dlopen
 * libmla_plugin.so, create the plugin through getCreators like TensorRT does, attach it to a context,
 * enqueue on real device buffers, write the outputs back.
 *
 *   test_mla_gpu_enqueue LIB DIR MODE     MODE: aliased or copy
 *     aliased: as TensorRT runs an engine built with aliased plugin I/O: the output the build
 *              capability's getAliasedInput names (present_cache -> past_cache) gets that input's buffer;
 *     copy:    present_cache gets a buffer of its own (an engine built without the preview feature).
 *   DIR/meta.txt: "B S H Dc Dr Smax dtype(0 fp32, 1 fp16, 2 bf16) softmax_scale"
 *   DIR/<input name>.bin raw inputs; writes DIR/<output name>.<MODE>.bin.
 * The step is captured into a CUDA graph (after a warm-up enqueue on scratch buffers has loaded the
 * kernels) and the graph's nodes are counted and printed ("graph: K kernel, C memcpy, M memset, O other
 * nodes"): in aliased mode the step must hold no copy. Then the graph runs and the outputs are read back.
 * Exits 77 (skip) when no CUDA driver or device is present. The driver is opened with dlopen, so the
 * program builds and links on machines without one (common/testing/gpuHarness.h).
 */
#include "NvInferRuntime.h"
#include "gpuHarness.h"
#include "mlaContract.h"
#include "testFields.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

namespace c = mla::contract;

int main(int argc, char** argv)
{
    gpu::Driver cu("test_mla_gpu_enqueue");
    if (argc != 4)
    {
        return cu.fail("usage: test_mla_gpu_enqueue LIB DIR aliased|copy");
    }
    std::string const dir = argv[2];
    std::string const mode = argv[3];
    if (mode != "aliased" && mode != "copy")
    {
        return cu.fail("MODE must be aliased or copy, got " + mode);
    }
    bool const aliasedMode = mode == "aliased";
    if (int const status = cu.open())
    {
        return status;
    }

    int64_t b, s, h, dc, dr, smax;
    int32_t dtype;
    float scale;
    {
        std::ifstream meta(dir + "/meta.txt");
        if (!(meta >> b >> s >> h >> dc >> dr >> smax >> dtype >> scale))
        {
            return cu.fail("cannot read meta.txt");
        }
    }
    nvinfer1::DataType const t
        = dtype == 0 ? nvinfer1::DataType::kFLOAT : (dtype == 1 ? nvinfer1::DataType::kHALF : nvinfer1::DataType::kBF16);
    std::vector<std::vector<int64_t>> const shapes
        = {{b, s, h, dc}, {b, s, h, dr}, {b, s, dc}, {b, s, dr}, {b, smax, dc + dr}, {b}, {smax, dr}};
    std::vector<nvinfer1::PluginTensorDesc> in(7);
    std::vector<CUdeviceptr> inPtr(7);
    for (int32_t i = 0; i < 7; ++i)
    {
        in[i] = gpu::tensorDesc(shapes[i],
            i == c::kCacheSeqlensIn ? nvinfer1::DataType::kINT32
                                    : (i == c::kRopeCosSin ? nvinfer1::DataType::kFLOAT : t));
        std::string const why
            = gpu::uploadFile(cu, dir + "/" + c::kInputNames[i] + ".bin", gpu::tensorBytes(in[i]), inPtr[i]);
        if (!why.empty())
        {
            return cu.fail(why);
        }
    }
    std::vector<nvinfer1::PluginTensorDesc> const out = {in[c::kQLatent], in[c::kPastCache]};
    size_t const attnBytes = gpu::tensorBytes(out[c::kAttnLatent]);
    size_t const cacheBytes = gpu::tensorBytes(out[c::kPresentCache]);
    CUdeviceptr attn{};
    if (!cu.alloc(attn, attnBytes) || !cu.fill(attn, 0xFF, attnBytes))
    {
        return cu.fail("device allocation failed");
    }

    std::string why;
    nvinfer1::IPluginCreatorV3One* creator = gpu::findCreator(argv[1], c::kPluginName, why);
    if (creator == nullptr)
    {
        return cu.fail(why);
    }
    int32_t heads = static_cast<int32_t>(h), rank = static_cast<int32_t>(dc), rope = static_cast<int32_t>(dr);
    testutil::FieldList fields; // as the ONNX parser sends them
    fields.add(c::kAttrNumHeads, &heads).add(c::kAttrKvLoraRank, &rank);
    fields.add(c::kAttrQkRopeHeadDim, &rope).add(c::kAttrSoftmaxScale, &scale);
    nvinfer1::IPluginV3* built = creator->createPlugin("gpu_test", fields.collection(), nvinfer1::TensorRTPhase::kBUILD);
    if (built == nullptr)
    {
        return cu.fail("createPlugin failed");
    }
    auto* capability = built->getCapabilityInterface(nvinfer1::PluginCapabilityType::kBUILD);
    if (capability == nullptr || capability->getInterfaceInfo().major != 2)
    {
        return cu.fail("the build capability is not IPluginV3OneBuildV2");
    }
    auto* build = static_cast<nvinfer1::IPluginV3OneBuildV2*>(capability);
    int32_t const aliased = build->getAliasedInput(c::kPresentCache);
    if (aliased != c::kPastCache || build->getAliasedInput(c::kAttnLatent) != -1)
    {
        return cu.fail("getAliasedInput does not declare present_cache an alias of past_cache");
    }
    CUdeviceptr present = inPtr[aliased]; // what TensorRT hands the plugin for an aliased output
    if (!aliasedMode && (!cu.alloc(present, cacheBytes) || !cu.fill(present, 0xFF, cacheBytes)))
    {
        return cu.fail("device allocation failed");
    }
    size_t wsBytes = 0;
    why = gpu::configure(built, in, out, wsBytes);
    if (!why.empty())
    {
        return cu.fail(why);
    }
    CUdeviceptr workspace{};
    if (wsBytes > 0 && !cu.alloc(workspace, wsBytes))
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
    // Warm-up on scratch copies of the cache and output, so that the kernel module is loaded outside the
    // capture and the buffers under test are written by the captured step only.
    {
        CUdeviceptr scratchCache{}, scratchAttn{};
        if (!cu.alloc(scratchCache, cacheBytes) || !cu.alloc(scratchAttn, attnBytes)
            || !cu.copy(scratchCache, inPtr[c::kPastCache], cacheBytes))
        {
            return cu.fail("scratch allocation failed");
        }
        void const* warmInputs[7];
        std::copy(inputs, inputs + 7, warmInputs);
        warmInputs[c::kPastCache] = reinterpret_cast<void const*>(scratchCache);
        void* warmOutputs[2] = {reinterpret_cast<void*>(scratchAttn), reinterpret_cast<void*>(scratchCache)};
        if (runtime->enqueue(in.data(), out.data(), warmInputs, warmOutputs, reinterpret_cast<void*>(workspace),
                cu.stream())
                != 0
            || !cu.sync())
        {
            return cu.fail("warm-up enqueue failed");
        }
    }
    void* outputs[2] = {reinterpret_cast<void*>(attn), reinterpret_cast<void*>(present)};
    CUgraph graph{};
    why = cu.captureStep(
        CU_STREAM_CAPTURE_MODE_RELAXED,
        [&] {
            return runtime->enqueue(
                in.data(), out.data(), inputs, outputs, reinterpret_cast<void*>(workspace), cu.stream());
        },
        "enqueue failed under stream capture", graph);
    if (!why.empty())
    {
        return cu.fail(why);
    }
    CUgraphExec exec{};
    if (!cu.instantiate(exec, graph) || !cu.launch(exec))
    {
        return cu.fail("cannot instantiate or launch the captured step");
    }
    if (!cu.sync())
    {
        return cu.fail("the kernels failed (cuStreamSynchronize)");
    }
    std::vector<char> hostAttn(attnBytes), hostCache(cacheBytes);
    if (!cu.download(hostAttn.data(), attn, attnBytes) || !cu.download(hostCache.data(), present, cacheBytes))
    {
        return cu.fail("copying the outputs back failed");
    }
    gpu::writeFile(dir + "/attn_latent." + mode + ".bin", hostAttn.data(), attnBytes);
    gpu::writeFile(dir + "/present_cache." + mode + ".bin", hostCache.data(), cacheBytes);
    cu.destroy(exec, graph);
    delete attached; // unloads its kernel module
    delete built;
    std::printf("enqueue ok (%s, workspace %zu bytes)\n", mode.c_str(), wsBytes);
    return 0;
}
