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
 * program builds and links on machines without one.
 */
#include "NvInferRuntime.h"
#include "mlaContract.h"

#include <cuda.h>
#include <dlfcn.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

namespace
{
namespace c = mla::contract;

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
    std::fprintf(stderr, "test_mla_gpu_enqueue: %s\n", what.c_str());
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
    if (argc != 4)
    {
        return fail("usage: test_mla_gpu_enqueue LIB DIR aliased|copy");
    }
    std::string const dir = argv[2];
    std::string const mode = argv[3];
    if (mode != "aliased" && mode != "copy")
    {
        return fail("MODE must be aliased or copy, got " + mode);
    }
    bool const aliasedMode = mode == "aliased";
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
    using DtoD = CUresult (*)(CUdeviceptr, CUdeviceptr, size_t);
    using BeginCapture = CUresult (*)(CUstream, CUstreamCaptureMode);
    using EndCapture = CUresult (*)(CUstream, CUgraph*);
    using GetNodes = CUresult (*)(CUgraph, CUgraphNode*, size_t*);
    using NodeType = CUresult (*)(CUgraphNode, CUgraphNodeType*);
    using Instantiate = CUresult (*)(CUgraphExec*, CUgraph, unsigned long long);
    using GraphLaunch = CUresult (*)(CUgraphExec, CUstream);
    using GraphExecDestroy = CUresult (*)(CUgraphExec);
    using GraphDestroy = CUresult (*)(CUgraph);
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
    auto dtod = cu.get<DtoD>("cuMemcpyDtoD_v2");

    int64_t b, s, h, dc, dr, smax;
    int32_t dtype;
    float scale;
    {
        std::ifstream meta(dir + "/meta.txt");
        if (!(meta >> b >> s >> h >> dc >> dr >> smax >> dtype >> scale))
        {
            return fail("cannot read meta.txt");
        }
    }
    nvinfer1::DataType const t
        = dtype == 0 ? nvinfer1::DataType::kFLOAT : (dtype == 1 ? nvinfer1::DataType::kHALF : nvinfer1::DataType::kBF16);
    size_t const es = dtype == 0 ? 4 : 2;
    std::vector<std::vector<int64_t>> const shapes
        = {{b, s, h, dc}, {b, s, h, dr}, {b, s, dc}, {b, s, dr}, {b, smax, dc + dr}, {b}, {smax, dr}};
    nvinfer1::PluginTensorDesc in[7]{};
    nvinfer1::PluginTensorDesc out[2]{};
    std::vector<CUdeviceptr> inPtr(7);
    for (int32_t i = 0; i < 7; ++i)
    {
        in[i].dims.nbDims = static_cast<int32_t>(shapes[i].size());
        size_t n = 1;
        for (size_t a = 0; a < shapes[i].size(); ++a)
        {
            in[i].dims.d[a] = shapes[i][a];
            n *= static_cast<size_t>(shapes[i][a]);
        }
        in[i].type = i == c::kCacheSeqlensIn ? nvinfer1::DataType::kINT32
                                             : (i == c::kRopeCosSin ? nvinfer1::DataType::kFLOAT : t);
        in[i].format = nvinfer1::TensorFormat::kLINEAR;
        size_t const bytes = n * (i >= c::kCacheSeqlensIn ? 4 : es);
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
    out[0] = in[c::kQLatent];
    out[1] = in[c::kPastCache];
    size_t const attnBytes = static_cast<size_t>(b * s * h * dc) * es;
    size_t const cacheBytes = static_cast<size_t>(b * smax * (dc + dr)) * es;
    CUdeviceptr attn{};
    if (alloc(&attn, attnBytes) != CUDA_SUCCESS || memset8(attn, 0xFF, attnBytes) != CUDA_SUCCESS)
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
    auto* creator = static_cast<nvinfer1::IPluginCreatorV3One*>(
        reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"))(n)[0]);
    int32_t heads = static_cast<int32_t>(h), rank = static_cast<int32_t>(dc), rope = static_cast<int32_t>(dr);
    nvinfer1::PluginField fields[4] = {{c::kAttrNumHeads, &heads, nvinfer1::PluginFieldType::kINT32, 1},
        {c::kAttrKvLoraRank, &rank, nvinfer1::PluginFieldType::kINT32, 1},
        {c::kAttrQkRopeHeadDim, &rope, nvinfer1::PluginFieldType::kINT32, 1},
        {c::kAttrSoftmaxScale, &scale, nvinfer1::PluginFieldType::kFLOAT32, 1}};
    nvinfer1::PluginFieldCollection fc{4, fields};
    nvinfer1::IPluginV3* built = creator->createPlugin("gpu_test", &fc, nvinfer1::TensorRTPhase::kBUILD);
    if (built == nullptr)
    {
        return fail("createPlugin failed");
    }
    auto* capability = built->getCapabilityInterface(nvinfer1::PluginCapabilityType::kBUILD);
    if (capability == nullptr || capability->getInterfaceInfo().major != 2)
    {
        return fail("the build capability is not IPluginV3OneBuildV2");
    }
    auto* build = static_cast<nvinfer1::IPluginV3OneBuildV2*>(capability);
    int32_t const aliased = build->getAliasedInput(c::kPresentCache);
    if (aliased != c::kPastCache || build->getAliasedInput(c::kAttnLatent) != -1)
    {
        return fail("getAliasedInput does not declare present_cache an alias of past_cache");
    }
    CUdeviceptr present = inPtr[aliased]; // what TensorRT hands the plugin for an aliased output
    if (!aliasedMode
        && (alloc(&present, cacheBytes) != CUDA_SUCCESS || memset8(present, 0xFF, cacheBytes) != CUDA_SUCCESS))
    {
        return fail("device allocation failed");
    }
    nvinfer1::DynamicPluginTensorDesc dyn[7]{};
    nvinfer1::DynamicPluginTensorDesc dynOut[2]{};
    for (int32_t i = 0; i < 7; ++i)
    {
        dyn[i].desc = in[i];
        dyn[i].min = dyn[i].max = dyn[i].opt = in[i].dims;
    }
    for (int32_t o = 0; o < 2; ++o)
    {
        dynOut[o].desc = out[o];
        dynOut[o].min = dynOut[o].max = dynOut[o].opt = out[o].dims;
    }
    if (build->configurePlugin(dyn, 7, dynOut, 2) != 0)
    {
        return fail("configurePlugin failed");
    }
    size_t const wsBytes = build->getWorkspaceSize(dyn, 7, dynOut, 2);
    CUdeviceptr workspace{};
    if (wsBytes > 0 && alloc(&workspace, wsBytes) != CUDA_SUCCESS)
    {
        return fail("workspace allocation failed");
    }
    Context context;
    nvinfer1::IPluginV3* attached = static_cast<nvinfer1::IPluginV3OneRuntime*>(
        built->getCapabilityInterface(nvinfer1::PluginCapabilityType::kRUNTIME))
                                        ->attachToContext(&context);
    auto* runtime = static_cast<nvinfer1::IPluginV3OneRuntime*>(
        attached->getCapabilityInterface(nvinfer1::PluginCapabilityType::kRUNTIME));
    void const* inputs[7];
    for (int32_t i = 0; i < 7; ++i)
    {
        inputs[i] = reinterpret_cast<void const*>(inPtr[i]);
    }
    auto sync = cu.get<StreamSync>("cuStreamSynchronize");
    if (runtime->onShapeChange(in, 7, out, 2) != 0)
    {
        return fail("onShapeChange failed");
    }
    // Warm-up on scratch copies of the cache and output, so that the kernel module is loaded outside the
    // capture and the buffers under test are written by the captured step only.
    {
        CUdeviceptr scratchCache{}, scratchAttn{};
        if (alloc(&scratchCache, cacheBytes) != CUDA_SUCCESS || alloc(&scratchAttn, attnBytes) != CUDA_SUCCESS
            || dtod(scratchCache, inPtr[c::kPastCache], cacheBytes) != CUDA_SUCCESS)
        {
            return fail("scratch allocation failed");
        }
        void const* warmInputs[7];
        std::copy(inputs, inputs + 7, warmInputs);
        warmInputs[c::kPastCache] = reinterpret_cast<void const*>(scratchCache);
        void* warmOutputs[2] = {reinterpret_cast<void*>(scratchAttn), reinterpret_cast<void*>(scratchCache)};
        if (runtime->enqueue(in, out, warmInputs, warmOutputs, reinterpret_cast<void*>(workspace), stream) != 0
            || sync(stream) != CUDA_SUCCESS)
        {
            return fail("warm-up enqueue failed");
        }
    }
    void* outputs[2] = {reinterpret_cast<void*>(attn), reinterpret_cast<void*>(present)};
    CUgraph graph{};
    if (cu.get<BeginCapture>("cuStreamBeginCapture_v2")(stream, CU_STREAM_CAPTURE_MODE_RELAXED) != CUDA_SUCCESS)
    {
        return fail("cuStreamBeginCapture failed");
    }
    int32_t const enqueued = runtime->enqueue(in, out, inputs, outputs, reinterpret_cast<void*>(workspace), stream);
    if (cu.get<EndCapture>("cuStreamEndCapture")(stream, &graph) != CUDA_SUCCESS || enqueued != 0)
    {
        return fail("enqueue failed under stream capture");
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
    if (cu.get<Instantiate>("cuGraphInstantiateWithFlags")(&exec, graph, 0) != CUDA_SUCCESS
        || cu.get<GraphLaunch>("cuGraphLaunch")(exec, stream) != CUDA_SUCCESS)
    {
        return fail("cannot instantiate or launch the captured step");
    }
    if (sync(stream) != CUDA_SUCCESS)
    {
        return fail("the kernels failed (cuStreamSynchronize)");
    }
    std::vector<char> hostAttn(attnBytes), hostCache(cacheBytes);
    if (dtoh(hostAttn.data(), attn, attnBytes) != CUDA_SUCCESS || dtoh(hostCache.data(), present, cacheBytes) != CUDA_SUCCESS)
    {
        return fail("copying the outputs back failed");
    }
    std::ofstream(dir + "/attn_latent." + mode + ".bin", std::ios::binary).write(hostAttn.data(), static_cast<long>(attnBytes));
    std::ofstream(dir + "/present_cache." + mode + ".bin", std::ios::binary).write(hostCache.data(), static_cast<long>(cacheBytes));
    cu.get<GraphExecDestroy>("cuGraphExecDestroy")(exec);
    cu.get<GraphDestroy>("cuGraphDestroy")(graph);
    delete attached; // unloads its kernel module
    delete built;
    std::printf("enqueue ok (%s, workspace %zu bytes)\n", mode.c_str(), wsBytes);
    return 0;
}
