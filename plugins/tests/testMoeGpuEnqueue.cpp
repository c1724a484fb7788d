/*
 * GPU check of the shipped library's DeepseekMoE (run by tests/test_moe_plugin.py::test_enqueue_on_gpu, which
 * writes the inputs and compares the output with the float64 loop): dlopen libmla_plugin.so, create the plugin
 * through getCreators like TensorRT does, attach it to a context, enqueue on device buffers, write the output.
 *
 *   test_moe_gpu_enqueue LIB DIR
 *   DIR/meta.txt: "B S d I E top_k n_group topk_group scoring_func group_score use_bias normalize weight_scale
 *                  dtype(1 fp16, 2 bf16)"
 *   DIR/<input name>.bin raw inputs; writes DIR/routed_output.bin (first replay) and DIR/routed_output.again.bin
 *   (second replay, for the determinism check).
 * The step is captured into a CUDA graph after a warm-up enqueue (module loading outside the capture); the graph's
 * nodes are counted and printed ("graph: K kernel, C memcpy, M memset, O other nodes"): the routing and the
 * alignment run on the device, so the step must capture (no host sync) and hold kernels only. Exits 77 (skip)
 * when no CUDA driver or device is present; the driver is opened with dlopen, so it builds everywhere.
 */
#include "NvInferRuntime.h"
#include "moeContract.h"

#include <cuda.h>
#include <dlfcn.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

namespace
{
namespace c = mla::moe_contract;

struct Driver
{
    void* lib{nullptr};
    template <typename F>
    F get(char const* name)
    {
        return reinterpret_cast<F>(dlsym(lib, name));
    }
};

int fail(std::string const& what)
{
    std::fprintf(stderr, "test_moe_gpu_enqueue: %s\n", what.c_str());
    return 1;
}

std::vector<char> readFile(std::string const& path)
{
    std::ifstream f(path, std::ios::binary);
    return std::vector<char>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

struct Context : nvinfer1::IPluginResourceContext
{
    nvinfer1::IGpuAllocator* getGpuAllocator() const noexcept override { return nullptr; }
    nvinfer1::IErrorRecorder* getErrorRecorder() const noexcept override { return nullptr; }
};
} // namespace

int main(int argc, char** argv)
{
    if (argc != 3)
    {
        return fail("usage: test_moe_gpu_enqueue LIB DIR");
    }
    std::string const dir = argv[2];
    Driver cu;
    cu.lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
    if (cu.lib == nullptr)
    {
        std::printf("no CUDA driver: skipped\n");
        return 77;
    }
    using Init = CUresult (*)(unsigned);
    using DeviceGet = CUresult (*)(CUdevice*, int);
    using Retain = CUresult (*)(CUcontext*, CUdevice);
    using SetCurrent = CUresult (*)(CUcontext);
    using StreamCreate = CUresult (*)(CUstream*, unsigned);
    using StreamSync = CUresult (*)(CUstream);
    using Alloc = CUresult (*)(CUdeviceptr*, size_t);
    using HtoD = CUresult (*)(CUdeviceptr, void const*, size_t);
    using DtoH = CUresult (*)(void*, CUdeviceptr, size_t);
    using Memset = CUresult (*)(CUdeviceptr, unsigned char, size_t);
    using BeginCapture = CUresult (*)(CUstream, CUstreamCaptureMode);
    using EndCapture = CUresult (*)(CUstream, CUgraph*);
    using GetNodes = CUresult (*)(CUgraph, CUgraphNode*, size_t*);
    using NodeType = CUresult (*)(CUgraphNode, CUgraphNodeType*);
    using Instantiate = CUresult (*)(CUgraphExec*, CUgraph, unsigned long long);
    using GraphLaunch = CUresult (*)(CUgraphExec, CUstream);
    CUdevice device{};
    CUcontext ctx{};
    CUstream stream{};
    if (cu.get<Init>("cuInit")(0) != CUDA_SUCCESS || cu.get<DeviceGet>("cuDeviceGet")(&device, 0) != CUDA_SUCCESS)
    {
        std::printf("no CUDA device: skipped\n");
        return 77;
    }
    if (cu.get<Retain>("cuDevicePrimaryCtxRetain")(&ctx, device) != CUDA_SUCCESS
        || cu.get<SetCurrent>("cuCtxSetCurrent")(ctx) != CUDA_SUCCESS
        || cu.get<StreamCreate>("cuStreamCreate")(&stream, 0) != CUDA_SUCCESS)
    {
        return fail("cannot set up a context and stream");
    }
    auto alloc = cu.get<Alloc>("cuMemAlloc_v2");
    auto htod = cu.get<HtoD>("cuMemcpyHtoD_v2");
    auto dtoh = cu.get<DtoH>("cuMemcpyDtoH_v2");
    auto memset8 = cu.get<Memset>("cuMemsetD8_v2");
    auto sync = cu.get<StreamSync>("cuStreamSynchronize");

    int64_t b, s, d, inter;
    int32_t ints[8];
    float scale;
    int32_t dtype;
    {
        std::ifstream meta(dir + "/meta.txt");
        if (!(meta >> b >> s >> d >> inter))
        {
            return fail("cannot read meta.txt");
        }
        for (int32_t& v : ints)
        {
            meta >> v;
        }
        if (!(meta >> scale >> dtype))
        {
            return fail("cannot read meta.txt");
        }
    }
    int64_t const e = ints[0];
    nvinfer1::DataType const t = dtype == 1 ? nvinfer1::DataType::kHALF : nvinfer1::DataType::kBF16;
    std::vector<std::vector<int64_t>> const shapes = {{b, s, d}, {e, d}, {e}, {e, 2 * inter, d}, {e, d, inter}};
    nvinfer1::PluginTensorDesc in[5]{};
    nvinfer1::PluginTensorDesc out[1]{};
    CUdeviceptr inPtr[5]{};
    for (int32_t i = 0; i < 5; ++i)
    {
        in[i].dims.nbDims = static_cast<int32_t>(shapes[i].size());
        size_t n = 1;
        for (size_t a = 0; a < shapes[i].size(); ++a)
        {
            in[i].dims.d[a] = shapes[i][a];
            n *= static_cast<size_t>(shapes[i][a]);
        }
        bool const f32 = i == c::kRouterWeight || i == c::kScoreBias;
        in[i].type = f32 ? nvinfer1::DataType::kFLOAT : t;
        in[i].format = nvinfer1::TensorFormat::kLINEAR;
        size_t const bytes = n * (f32 ? 4 : 2);
        std::vector<char> host = readFile(dir + "/" + c::kInputNames[i] + ".bin");
        if (host.size() != bytes)
        {
            return fail(std::string("wrong size of ") + c::kInputNames[i] + ".bin");
        }
        if (alloc(&inPtr[i], bytes) != CUDA_SUCCESS || htod(inPtr[i], host.data(), bytes) != CUDA_SUCCESS)
        {
            return fail("device allocation/copy failed");
        }
    }
    out[0] = in[c::kHiddenStates];
    size_t const outBytes = static_cast<size_t>(b * s * d) * 2;
    CUdeviceptr output{}, scratch{};
    if (alloc(&output, outBytes) != CUDA_SUCCESS || memset8(output, 0xFF, outBytes) != CUDA_SUCCESS
        || alloc(&scratch, outBytes) != CUDA_SUCCESS)
    {
        return fail("device allocation failed");
    }

    void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr)
    {
        return fail(dlerror());
    }
    using GetCreators = nvinfer1::IPluginCreatorInterface* const* (*) (int32_t&);
    int32_t n = 0;
    nvinfer1::IPluginCreatorInterface* const* creators = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"))(n);
    nvinfer1::IPluginCreatorV3One* creator = nullptr;
    for (int32_t i = 0; i < n; ++i)
    {
        auto* candidate = static_cast<nvinfer1::IPluginCreatorV3One*>(creators[i]);
        if (std::strcmp(candidate->getPluginName(), c::kPluginName) == 0)
        {
            creator = candidate;
        }
    }
    if (creator == nullptr)
    {
        return fail("the library has no DeepseekMoE creator");
    }
    char const* const names[9] = {c::kAttrNumExperts, c::kAttrTopK, c::kAttrNGroup, c::kAttrTopkGroup,
        c::kAttrScoringFunc, c::kAttrGroupScore, c::kAttrUseBias, c::kAttrNormalize, c::kAttrWeightScale};
    nvinfer1::PluginField fields[9];
    for (int32_t k = 0; k < 8; ++k)
    {
        fields[k] = nvinfer1::PluginField(names[k], &ints[k], nvinfer1::PluginFieldType::kINT32, 1);
    }
    fields[8] = nvinfer1::PluginField(names[8], &scale, nvinfer1::PluginFieldType::kFLOAT32, 1);
    nvinfer1::PluginFieldCollection fc{9, fields};
    nvinfer1::IPluginV3* built = creator->createPlugin("gpu_test", &fc, nvinfer1::TensorRTPhase::kBUILD);
    if (built == nullptr)
    {
        return fail("createPlugin failed");
    }
    auto* build = static_cast<nvinfer1::IPluginV3OneBuild*>(
        built->getCapabilityInterface(nvinfer1::PluginCapabilityType::kBUILD));
    nvinfer1::DynamicPluginTensorDesc dyn[5]{};
    nvinfer1::DynamicPluginTensorDesc dynOut[1]{};
    for (int32_t i = 0; i < 5; ++i)
    {
        dyn[i].desc = in[i];
        dyn[i].min = dyn[i].max = dyn[i].opt = in[i].dims;
    }
    dynOut[0].desc = out[0];
    dynOut[0].min = dynOut[0].max = dynOut[0].opt = out[0].dims;
    if (build->configurePlugin(dyn, 5, dynOut, 1) != 0)
    {
        return fail("configurePlugin failed");
    }
    size_t const wsBytes = build->getWorkspaceSize(dyn, 5, dynOut, 1);
    CUdeviceptr workspace{};
    if (wsBytes == 0 || alloc(&workspace, wsBytes) != CUDA_SUCCESS || memset8(workspace, 0xFF, wsBytes) != CUDA_SUCCESS)
    {
        return fail("workspace allocation failed");
    }
    Context context;
    nvinfer1::IPluginV3* attached = static_cast<nvinfer1::IPluginV3OneRuntime*>(
        built->getCapabilityInterface(nvinfer1::PluginCapabilityType::kRUNTIME))
                                        ->attachToContext(&context);
    auto* runtime = static_cast<nvinfer1::IPluginV3OneRuntime*>(
        attached->getCapabilityInterface(nvinfer1::PluginCapabilityType::kRUNTIME));
    void const* inputs[5];
    for (int32_t i = 0; i < 5; ++i)
    {
        inputs[i] = reinterpret_cast<void const*>(inPtr[i]);
    }
    if (runtime->onShapeChange(in, 5, out, 1) != 0)
    {
        return fail("onShapeChange failed");
    }
    void* warmOutputs[1] = {reinterpret_cast<void*>(scratch)};
    if (runtime->enqueue(in, out, inputs, warmOutputs, reinterpret_cast<void*>(workspace), stream) != 0
        || sync(stream) != CUDA_SUCCESS)
    {
        return fail("warm-up enqueue failed");
    }
    void* outputs[1] = {reinterpret_cast<void*>(output)};
    CUgraph graph{};
    if (cu.get<BeginCapture>("cuStreamBeginCapture_v2")(stream, CU_STREAM_CAPTURE_MODE_GLOBAL) != CUDA_SUCCESS)
    {
        return fail("cuStreamBeginCapture failed");
    }
    int32_t const enqueued = runtime->enqueue(in, out, inputs, outputs, reinterpret_cast<void*>(workspace), stream);
    if (cu.get<EndCapture>("cuStreamEndCapture")(stream, &graph) != CUDA_SUCCESS || enqueued != 0)
    {
        return fail("enqueue failed under stream capture (a host sync?)");
    }
    size_t numNodes = 0;
    auto getNodes = cu.get<GetNodes>("cuGraphGetNodes");
    if (getNodes(graph, nullptr, &numNodes) != CUDA_SUCCESS)
    {
        return fail("cuGraphGetNodes failed");
    }
    std::vector<CUgraphNode> nodes(numNodes);
    int32_t kernelNodes = 0, memcpyNodes = 0, memsetNodes = 0, otherNodes = 0;
    if (numNodes > 0 && getNodes(graph, nodes.data(), &numNodes) != CUDA_SUCCESS)
    {
        return fail("cuGraphGetNodes failed");
    }
    for (CUgraphNode node : nodes)
    {
        CUgraphNodeType type{};
        if (cu.get<NodeType>("cuGraphNodeGetType")(node, &type) != CUDA_SUCCESS)
        {
            return fail("cuGraphNodeGetType failed");
        }
        kernelNodes += type == CU_GRAPH_NODE_TYPE_KERNEL;
        memcpyNodes += type == CU_GRAPH_NODE_TYPE_MEMCPY;
        memsetNodes += type == CU_GRAPH_NODE_TYPE_MEMSET;
        otherNodes += type != CU_GRAPH_NODE_TYPE_KERNEL && type != CU_GRAPH_NODE_TYPE_MEMCPY
            && type != CU_GRAPH_NODE_TYPE_MEMSET;
    }
    std::printf("graph: %d kernel, %d memcpy, %d memset, %d other nodes\n", kernelNodes, memcpyNodes, memsetNodes,
        otherNodes);
    CUgraphExec exec{};
    if (cu.get<Instantiate>("cuGraphInstantiateWithFlags")(&exec, graph, 0) != CUDA_SUCCESS)
    {
        return fail("cannot instantiate the captured step");
    }
    std::vector<char> host(outBytes);
    for (char const* name : {"routed_output.bin", "routed_output.again.bin"})
    {
        if (cu.get<GraphLaunch>("cuGraphLaunch")(exec, stream) != CUDA_SUCCESS || sync(stream) != CUDA_SUCCESS)
        {
            return fail("the captured step failed");
        }
        if (dtoh(host.data(), output, outBytes) != CUDA_SUCCESS)
        {
            return fail("copying the output back failed");
        }
        std::ofstream(dir + "/" + name, std::ios::binary).write(host.data(), static_cast<long>(outBytes));
    }
    delete attached; // unloads its kernel module
    delete built;
    std::printf("enqueue ok (workspace %zu bytes)\n", wsBytes);
    return 0;
}
