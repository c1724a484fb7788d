/*
 * GPU check of the shipped library's BlockFp8MatMul (run by tests/test_fp8_plugin.py::test_enqueue_on_gpu, which
 * writes the inputs and compares the output with the float64 product of the dequantized weight): dlopen
 * libmla_plugin.so, create the plugin through getCreators like TensorRT does, configure it for the call's shape,
 * attach it to a context, enqueue on device buffers, write the output.
 *
 *   test_fp8_gpu_enqueue LIB DIR
 *   DIR/meta.txt: "G M N K dtype(1 fp16, 2 bf16)": G 0 for a 2-D weight [N, K] with input [M, K], else a 3-D
 *                 weight [G, N, K] with input [G, M, K]
 *   DIR/input.bin, weight.bin (e4m3 bytes), weight_scale_inv.bin raw inputs; writes DIR/output.bin (first replay)
 *   and DIR/output.again.bin (second replay, for the determinism check).
 * The step is captured into a CUDA graph after a warm-up enqueue (module loading outside the capture); the graph's
 * nodes are counted and printed ("graph: K kernel, C memcpy, M memset, O other nodes"). Exits 77 (skip) when no
 * CUDA driver or device is present; the driver is opened with dlopen, so it builds everywhere.
 */
#include "NvInferRuntime.h"
#include "fp8Contract.h"
#include "gpuHarness.h"
#include "testFields.h"

#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

namespace c = mla::fp8_contract;

int main(int argc, char** argv)
{
    gpu::Driver cu("test_fp8_gpu_enqueue");
    if (argc != 3)
    {
        return cu.fail("usage: test_fp8_gpu_enqueue LIB DIR");
    }
    std::string const dir = argv[2];
    if (int const status = cu.open())
    {
        return status;
    }
    int64_t g = 0, m = 0, n = 0, k = 0;
    int32_t dtype = 0;
    {
        std::ifstream meta(dir + "/meta.txt");
        if (!(meta >> g >> m >> n >> k >> dtype))
        {
            return cu.fail("cannot read meta.txt");
        }
    }
    nvinfer1::DataType const t = dtype == 1 ? nvinfer1::DataType::kHALF : nvinfer1::DataType::kBF16;
    int64_t const nb = (n + c::kBlock - 1) / c::kBlock;
    int64_t const kb = (k + c::kBlock - 1) / c::kBlock;
    std::vector<std::vector<int64_t>> const shapes = g == 0
        ? std::vector<std::vector<int64_t>>{{m, k}, {n, k}, {nb, kb}}
        : std::vector<std::vector<int64_t>>{{g, m, k}, {g, n, k}, {g, nb, kb}};
    nvinfer1::DataType const types[3] = {t, nvinfer1::DataType::kFP8, nvinfer1::DataType::kFLOAT};
    std::vector<nvinfer1::PluginTensorDesc> in(3);
    std::vector<CUdeviceptr> inPtr(3);
    for (int32_t i = 0; i < 3; ++i)
    {
        in[i] = gpu::tensorDesc(shapes[i], types[i]);
        std::string const why
            = gpu::uploadFile(cu, dir + "/" + c::kInputNames[i] + ".bin", gpu::tensorBytes(in[i]), inPtr[i]);
        if (!why.empty())
        {
            return cu.fail(why);
        }
    }
    std::vector<int64_t> outShape = shapes[0];
    outShape.back() = n;
    std::vector<nvinfer1::PluginTensorDesc> const out = {gpu::tensorDesc(outShape, t)};
    size_t const outBytes = gpu::tensorBytes(out[c::kOutput]);
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
    int32_t block = c::kBlock;
    testutil::FieldList fields; // as the ONNX parser sends it
    fields.add(c::kAttrBlockSize, &block);
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
    if (wsBytes > 0 && (!cu.alloc(workspace, wsBytes) || !cu.fill(workspace, 0xFF, wsBytes)))
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
    void* ws = reinterpret_cast<void*>(workspace);
    void* warmOutputs[1] = {reinterpret_cast<void*>(scratch)};
    if (runtime->enqueue(in.data(), out.data(), inputs, warmOutputs, ws, cu.stream()) != 0 || !cu.sync())
    {
        return cu.fail("warm-up enqueue failed");
    }
    void* outputs[1] = {reinterpret_cast<void*>(output)};
    CUgraph graph{};
    why = cu.captureStep(
        CU_STREAM_CAPTURE_MODE_GLOBAL,
        [&] { return runtime->enqueue(in.data(), out.data(), inputs, outputs, ws, cu.stream()); },
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
    for (char const* name : {"output.bin", "output.again.bin"})
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
