/*
 * The GPU checks' shared part (gpuHarness.h).
 */
#include "gpuHarness.h"

#include <dlfcn.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>

namespace gpu
{

template <typename F>
F Driver::get(char const* name) const
{
    return reinterpret_cast<F>(dlsym(mLib, name));
}

int Driver::open()
{
    mLib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL);
    if (mLib == nullptr)
    {
        std::printf("no CUDA driver: skipped\n");
        return 77;
    }
    CUdevice device{};
    CUcontext ctx{};
    if (get<CUresult (*)(unsigned)>("cuInit")(0) != CUDA_SUCCESS
        || get<CUresult (*)(CUdevice*, int)>("cuDeviceGet")(&device, 0) != CUDA_SUCCESS)
    {
        std::printf("no CUDA device: skipped\n");
        return 77;
    }
    if (get<CUresult (*)(CUcontext*, CUdevice)>("cuDevicePrimaryCtxRetain")(&ctx, device) != CUDA_SUCCESS
        || get<CUresult (*)(CUcontext)>("cuCtxSetCurrent")(ctx) != CUDA_SUCCESS
        || get<CUresult (*)(CUstream*, unsigned)>("cuStreamCreate")(&mStream, 0) != CUDA_SUCCESS)
    {
        return fail("cannot set up a context and stream");
    }
    return 0;
}

int Driver::fail(std::string const& what) const
{
    std::fprintf(stderr, "%s: %s\n", mProgram, what.c_str());
    return 1;
}

bool Driver::alloc(CUdeviceptr& ptr, size_t bytes) const
{
    return get<CUresult (*)(CUdeviceptr*, size_t)>("cuMemAlloc_v2")(&ptr, bytes) == CUDA_SUCCESS;
}

bool Driver::upload(CUdeviceptr dst, void const* src, size_t bytes) const
{
    return get<CUresult (*)(CUdeviceptr, void const*, size_t)>("cuMemcpyHtoD_v2")(dst, src, bytes) == CUDA_SUCCESS;
}

bool Driver::download(void* dst, CUdeviceptr src, size_t bytes) const
{
    return get<CUresult (*)(void*, CUdeviceptr, size_t)>("cuMemcpyDtoH_v2")(dst, src, bytes) == CUDA_SUCCESS;
}

bool Driver::fill(CUdeviceptr dst, unsigned char value, size_t bytes) const
{
    return get<CUresult (*)(CUdeviceptr, unsigned char, size_t)>("cuMemsetD8_v2")(dst, value, bytes) == CUDA_SUCCESS;
}

bool Driver::copy(CUdeviceptr dst, CUdeviceptr src, size_t bytes) const
{
    return get<CUresult (*)(CUdeviceptr, CUdeviceptr, size_t)>("cuMemcpyDtoD_v2")(dst, src, bytes) == CUDA_SUCCESS;
}

bool Driver::sync() const
{
    return get<CUresult (*)(CUstream)>("cuStreamSynchronize")(mStream) == CUDA_SUCCESS;
}

bool Driver::instantiate(CUgraphExec& exec, CUgraph graph) const
{
    using Instantiate = CUresult (*)(CUgraphExec*, CUgraph, unsigned long long);
    return get<Instantiate>("cuGraphInstantiateWithFlags")(&exec, graph, 0) == CUDA_SUCCESS;
}

bool Driver::launch(CUgraphExec exec) const
{
    return get<CUresult (*)(CUgraphExec, CUstream)>("cuGraphLaunch")(exec, mStream) == CUDA_SUCCESS;
}

void Driver::destroy(CUgraphExec exec, CUgraph graph) const
{
    get<CUresult (*)(CUgraphExec)>("cuGraphExecDestroy")(exec);
    get<CUresult (*)(CUgraph)>("cuGraphDestroy")(graph);
}

std::string Driver::captureStep(
    CUstreamCaptureMode mode, std::function<int32_t()> const& step, char const* stepFailed, CUgraph& graph) const
{
    if (get<CUresult (*)(CUstream, CUstreamCaptureMode)>("cuStreamBeginCapture_v2")(mStream, mode) != CUDA_SUCCESS)
    {
        return "cuStreamBeginCapture failed";
    }
    int32_t const enqueued = step();
    if (get<CUresult (*)(CUstream, CUgraph*)>("cuStreamEndCapture")(mStream, &graph) != CUDA_SUCCESS || enqueued != 0)
    {
        return stepFailed;
    }
    auto getNodes = get<CUresult (*)(CUgraph, CUgraphNode*, size_t*)>("cuGraphGetNodes");
    size_t numNodes = 0;
    if (getNodes(graph, nullptr, &numNodes) != CUDA_SUCCESS)
    {
        return "cuGraphGetNodes failed";
    }
    std::vector<CUgraphNode> nodes(numNodes);
    int32_t kernelNodes = 0, memcpyNodes = 0, memsetNodes = 0, otherNodes = 0;
    if (numNodes > 0 && getNodes(graph, nodes.data(), &numNodes) != CUDA_SUCCESS)
    {
        return "cuGraphGetNodes failed";
    }
    for (CUgraphNode node : nodes)
    {
        CUgraphNodeType type{};
        if (get<CUresult (*)(CUgraphNode, CUgraphNodeType*)>("cuGraphNodeGetType")(node, &type) != CUDA_SUCCESS)
        {
            return "cuGraphNodeGetType failed";
        }
        kernelNodes += type == CU_GRAPH_NODE_TYPE_KERNEL;
        memcpyNodes += type == CU_GRAPH_NODE_TYPE_MEMCPY;
        memsetNodes += type == CU_GRAPH_NODE_TYPE_MEMSET;
        otherNodes += type != CU_GRAPH_NODE_TYPE_KERNEL && type != CU_GRAPH_NODE_TYPE_MEMCPY
            && type != CU_GRAPH_NODE_TYPE_MEMSET;
    }
    std::printf("graph: %d kernel, %d memcpy, %d memset, %d other nodes\n", kernelNodes, memcpyNodes, memsetNodes,
        otherNodes);
    return {};
}

nvinfer1::PluginTensorDesc tensorDesc(std::vector<int64_t> const& shape, nvinfer1::DataType type)
{
    nvinfer1::PluginTensorDesc desc{};
    desc.dims.nbDims = static_cast<int32_t>(shape.size());
    for (size_t a = 0; a < shape.size(); ++a)
    {
        desc.dims.d[a] = shape[a];
    }
    desc.type = type;
    desc.format = nvinfer1::TensorFormat::kLINEAR;
    return desc;
}

size_t tensorBytes(nvinfer1::PluginTensorDesc const& desc)
{
    size_t n = 1;
    for (int32_t a = 0; a < desc.dims.nbDims; ++a)
    {
        n *= static_cast<size_t>(desc.dims.d[a]);
    }
    bool const wide = desc.type == nvinfer1::DataType::kFLOAT || desc.type == nvinfer1::DataType::kINT32;
    bool const narrow = desc.type == nvinfer1::DataType::kFP8;
    return n * (wide ? 4 : (narrow ? 1 : 2));
}

std::string uploadFile(Driver const& cu, std::string const& path, size_t bytes, CUdeviceptr& out)
{
    std::ifstream f(path, std::ios::binary);
    std::vector<char> const host((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    if (host.size() != bytes)
    {
        return "wrong size of " + path.substr(path.find_last_of('/') + 1);
    }
    if (!cu.alloc(out, bytes) || !cu.upload(out, host.data(), bytes))
    {
        return "device allocation/copy failed";
    }
    return {};
}

void writeFile(std::string const& path, void const* data, size_t bytes)
{
    std::ofstream(path, std::ios::binary).write(static_cast<char const*>(data), static_cast<long>(bytes));
}

nvinfer1::IPluginCreatorV3One* findCreator(char const* path, char const* name, std::string& why)
{
    void* lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr)
    {
        why = dlerror();
        return nullptr;
    }
    using GetCreators = nvinfer1::IPluginCreatorInterface* const* (*) (int32_t&);
    int32_t n = 0;
    nvinfer1::IPluginCreatorInterface* const* creators = reinterpret_cast<GetCreators>(dlsym(lib, "getCreators"))(n);
    for (int32_t i = 0; i < n; ++i)
    {
        auto* candidate = static_cast<nvinfer1::IPluginCreatorV3One*>(creators[i]);
        if (std::strcmp(candidate->getPluginName(), name) == 0)
        {
            return candidate;
        }
    }
    why = std::string("the library has no ") + name + " creator";
    return nullptr;
}

namespace
{
// Descriptors of a fixed profile: min = opt = max = each tensor's dims.
std::vector<nvinfer1::DynamicPluginTensorDesc> fixedProfile(std::vector<nvinfer1::PluginTensorDesc> const& descs)
{
    std::vector<nvinfer1::DynamicPluginTensorDesc> dyn(descs.size());
    for (size_t i = 0; i < descs.size(); ++i)
    {
        dyn[i].desc = descs[i];
        dyn[i].min = dyn[i].max = dyn[i].opt = descs[i].dims;
    }
    return dyn;
}

nvinfer1::IPluginV3OneRuntime* runtimeOf(nvinfer1::IPluginV3* plugin)
{
    return static_cast<nvinfer1::IPluginV3OneRuntime*>(
        plugin->getCapabilityInterface(nvinfer1::PluginCapabilityType::kRUNTIME));
}
} // namespace

std::string configure(nvinfer1::IPluginV3* built, std::vector<nvinfer1::PluginTensorDesc> const& in,
    std::vector<nvinfer1::PluginTensorDesc> const& out, size_t& workspaceBytes)
{
    auto* build = static_cast<nvinfer1::IPluginV3OneBuild*>(
        built->getCapabilityInterface(nvinfer1::PluginCapabilityType::kBUILD));
    std::vector<nvinfer1::DynamicPluginTensorDesc> dyn = fixedProfile(in);
    std::vector<nvinfer1::DynamicPluginTensorDesc> dynOut = fixedProfile(out);
    int32_t const nbIn = static_cast<int32_t>(in.size());
    int32_t const nbOut = static_cast<int32_t>(out.size());
    if (build->configurePlugin(dyn.data(), nbIn, dynOut.data(), nbOut) != 0)
    {
        return "configurePlugin failed";
    }
    workspaceBytes = build->getWorkspaceSize(dyn.data(), nbIn, dynOut.data(), nbOut);
    return {};
}

nvinfer1::IPluginV3OneRuntime* attach(nvinfer1::IPluginV3* built, Context& context,
    std::vector<nvinfer1::PluginTensorDesc> const& in, std::vector<nvinfer1::PluginTensorDesc> const& out,
    nvinfer1::IPluginV3*& attached, std::string& why)
{
    attached = runtimeOf(built)->attachToContext(&context);
    nvinfer1::IPluginV3OneRuntime* runtime = runtimeOf(attached);
    if (runtime->onShapeChange(in.data(), static_cast<int32_t>(in.size()), out.data(), static_cast<int32_t>(out.size()))
        != 0)
    {
        why = "onShapeChange failed";
        return nullptr;
    }
    return runtime;
}

std::vector<void const*> addresses(std::vector<CUdeviceptr> const& buffers)
{
    std::vector<void const*> pointers(buffers.size());
    for (size_t i = 0; i < buffers.size(); ++i)
    {
        pointers[i] = reinterpret_cast<void const*>(buffers[i]);
    }
    return pointers;
}

} // namespace gpu
