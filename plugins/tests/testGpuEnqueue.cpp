/*
 * GPU check of the shipped library (run by tests/test_plugin.py::test_enqueue_matches_reference_on_gpu,
 * which writes the inputs and compares the outputs with the float64 reference): dlopen
 * libmla_plugin.so, create the plugin through getCreators like TensorRT does, attach it to a context,
 * enqueue on real device buffers, write the outputs back.
 *
 *   test_mla_gpu_enqueue LIB DIR MODE     MODE: aliased or copy
 *     aliased: as TensorRT runs an engine built with aliased plugin I/O: each output the build capability's
 *              getAliasedInput names (present_cache -> past_cache, FP8: present_scale, present_rope too) gets
 *              that input's buffer;
 *     copy:    each present plane gets a buffer of its own (an engine built without the preview feature).
 *   DIR/meta.txt: "B S H Dc Dr Smax dtype(0 fp32, 1 fp16, 2 bf16) softmax_scale", and for contract version 2
 *                 (a paged and/or FP8 cache) "page_size kv_cache_dtype P rows max_pages rope_rows" after it
 *   DIR/<input name>.bin raw inputs; writes DIR/<output name>.<MODE>.bin (every present plane).
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
    // Contract version 2 (optional, after the version-1 fields): page kv_cache_dtype P rows max_pages rope_rows.
    int32_t page = 0, kvDtype = 0;
    int64_t pages = 0, rows = 0, maxPages = 0, ropeRows = 0;
    bool cacheV2 = false;
    {
        std::ifstream meta(dir + "/meta.txt");
        if (!(meta >> b >> s >> h >> dc >> dr >> smax >> dtype >> scale))
        {
            return cu.fail("cannot read meta.txt");
        }
        cacheV2 = static_cast<bool>(meta >> page >> kvDtype >> pages >> rows >> maxPages >> ropeRows);
    }
    bool const fp8 = cacheV2 && kvDtype == c::kKvCacheDtypeFp8;
    nvinfer1::DataType const t
        = dtype == 0 ? nvinfer1::DataType::kFLOAT : (dtype == 1 ? nvinfer1::DataType::kHALF : nvinfer1::DataType::kBF16);
    int32_t const numInputs = !cacheV2 ? c::kNumInputs : (fp8 ? c::kNumFp8CacheInputs : c::kNumPagedInputs);
    int32_t const numOutputs = fp8 ? c::kNumFp8CacheOutputs : c::kNumOutputs;
    int64_t const tiles = (dc + c::kFp8CacheTile - 1) / c::kFp8CacheTile;
    std::vector<std::vector<int64_t>> const shapes = cacheV2
        ? std::vector<std::vector<int64_t>>{{b, s, h, dc}, {b, s, h, dr}, {b, s, dc}, {b, s, dr},
            {pages, rows, fp8 ? dc : dc + dr}, {b}, {ropeRows, dr}, {b, maxPages}, {pages, rows, tiles},
            {pages, rows, dr}}
        : std::vector<std::vector<int64_t>>{{b, s, h, dc}, {b, s, h, dr}, {b, s, dc}, {b, s, dr}, {b, smax, dc + dr},
            {b}, {smax, dr}};
    std::vector<nvinfer1::DataType> const types = {t, t, t, t, fp8 ? nvinfer1::DataType::kFP8 : t,
        nvinfer1::DataType::kINT32, nvinfer1::DataType::kFLOAT, nvinfer1::DataType::kINT32, nvinfer1::DataType::kFLOAT,
        t};
    std::vector<nvinfer1::PluginTensorDesc> in(numInputs);
    std::vector<CUdeviceptr> inPtr(numInputs);
    for (int32_t i = 0; i < numInputs; ++i)
    {
        in[i] = gpu::tensorDesc(shapes[i], types[i]);
        std::string const why
            = gpu::uploadFile(cu, dir + "/" + c::kCacheInputNames[i] + ".bin", gpu::tensorBytes(in[i]), inPtr[i]);
        if (!why.empty())
        {
            return cu.fail(why);
        }
    }
    // Output o has the shape and type of input `sources[o]`, which each present plane aliases.
    int32_t const sources[c::kNumFp8CacheOutputs] = {c::kQLatent, c::kPastCache, c::kPastScale, c::kPastRope};
    std::vector<nvinfer1::PluginTensorDesc> out;
    for (int32_t o = 0; o < numOutputs; ++o)
    {
        out.push_back(in[sources[o]]);
    }
    size_t const attnBytes = gpu::tensorBytes(out[c::kAttnLatent]);
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
    if (cacheV2)
    {
        fields.add(c::kAttrPageSize, &page).add(c::kAttrKvCacheDtype, &kvDtype);
    }
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
    if (build->getAliasedInput(c::kAttnLatent) != -1)
    {
        return cu.fail("getAliasedInput declares attn_latent an alias");
    }
    // Each present plane: the buffer of the input getAliasedInput names (what TensorRT hands the plugin for an
    // aliased output), or one of its own in copy mode.
    std::vector<CUdeviceptr> present(numOutputs);
    present[c::kAttnLatent] = attn;
    for (int32_t o = c::kPresentCache; o < numOutputs; ++o)
    {
        int32_t const aliased = build->getAliasedInput(o);
        if (aliased != sources[o])
        {
            return cu.fail(std::string("getAliasedInput does not declare ") + c::kCacheOutputNames[o]
                + " an alias of " + c::kCacheInputNames[sources[o]]);
        }
        size_t const bytes = gpu::tensorBytes(out[o]);
        present[o] = inPtr[aliased];
        if (!aliasedMode && (!cu.alloc(present[o], bytes) || !cu.fill(present[o], 0xFF, bytes)))
        {
            return cu.fail("device allocation failed");
        }
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
    // Warm-up on scratch copies of the cache planes and output, so that the kernel module is loaded outside the
    // capture and the buffers under test are written by the captured step only.
    {
        std::vector<void const*> warmInputs(inputs, inputs + numInputs);
        std::vector<void*> warmOutputs(numOutputs);
        CUdeviceptr scratchAttn{};
        if (!cu.alloc(scratchAttn, attnBytes))
        {
            return cu.fail("scratch allocation failed");
        }
        warmOutputs[c::kAttnLatent] = reinterpret_cast<void*>(scratchAttn);
        for (int32_t o = c::kPresentCache; o < numOutputs; ++o)
        {
            CUdeviceptr scratch{};
            size_t const bytes = gpu::tensorBytes(out[o]);
            if (!cu.alloc(scratch, bytes) || !cu.copy(scratch, inPtr[sources[o]], bytes))
            {
                return cu.fail("scratch allocation failed");
            }
            warmInputs[sources[o]] = reinterpret_cast<void const*>(scratch);
            warmOutputs[o] = reinterpret_cast<void*>(scratch);
        }
        if (runtime->enqueue(in.data(), out.data(), warmInputs.data(), warmOutputs.data(),
                reinterpret_cast<void*>(workspace), cu.stream())
                != 0
            || !cu.sync())
        {
            return cu.fail("warm-up enqueue failed");
        }
    }
    std::vector<void*> outputs(numOutputs);
    for (int32_t o = 0; o < numOutputs; ++o)
    {
        outputs[o] = reinterpret_cast<void*>(present[o]);
    }
    CUgraph graph{};
    why = cu.captureStep(
        CU_STREAM_CAPTURE_MODE_RELAXED,
        [&] {
            return runtime->enqueue(
                in.data(), out.data(), inputs, outputs.data(), reinterpret_cast<void*>(workspace), cu.stream());
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
    for (int32_t o = 0; o < numOutputs; ++o)
    {
        size_t const bytes = gpu::tensorBytes(out[o]);
        std::vector<char> host(bytes);
        if (!cu.download(host.data(), present[o], bytes))
        {
            return cu.fail("copying the outputs back failed");
        }
        gpu::writeFile(dir + "/" + c::kCacheOutputNames[o] + "." + mode + ".bin", host.data(), bytes);
    }
    cu.destroy(exec, graph);
    delete attached; // unloads its kernel module
    delete built;
    std::printf("enqueue ok (%s, workspace %zu bytes)\n", mode.c_str(), wsBytes);
    return 0;
}
