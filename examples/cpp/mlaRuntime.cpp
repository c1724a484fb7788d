/*
 * MlaSession: TensorRT 10 runtime calls for an mla-export engine. See mlaRuntime.h.
 * Every CUDA and TensorRT call is checked and turned into a Status; nothing throws.
 */
#include "mlaRuntime.h"

#include "argmaxKernel.h"

#include <NvInferRuntime.h>

#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>

namespace mla
{
namespace runtime
{
namespace
{

class Logger : public nvinfer1::ILogger
{
public:
    void log(Severity severity, nvinfer1::AsciiChar const* msg) noexcept override
    {
        if (severity <= Severity::kWARNING)
            std::cerr << "[TensorRT] " << msg << "\n";
    }
};

Logger gLogger;

#define MLA_CUDA(call)                                                                                                 \
    do                                                                                                                 \
    {                                                                                                                  \
        cudaError_t const err_ = (call);                                                                               \
        if (err_ != cudaSuccess)                                                                                       \
            return Status::error(std::string(#call) + " failed: " + cudaGetErrorString(err_));                       \
    } while (0)

#define MLA_CHECK(condition, text)                                                                                     \
    do                                                                                                                 \
    {                                                                                                                  \
        if (!(condition))                                                                                              \
            return Status::error(text);                                                                                \
    } while (0)

Status readFile(std::string const& path, std::string& out)
{
    std::ifstream file(path, std::ios::binary);
    if (!file)
        return Status::error("cannot open " + path);
    out.assign(std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>());
    return Status::success();
}

int64_t elementSize(nvinfer1::DataType type)
{
    switch (type)
    {
    case nvinfer1::DataType::kFLOAT: return 4;
    case nvinfer1::DataType::kHALF: return 2;
    case nvinfer1::DataType::kBF16: return 2;
    case nvinfer1::DataType::kINT32: return 4;
    case nvinfer1::DataType::kINT64: return 8;
    default: return 0;
    }
}

int64_t volume(nvinfer1::Dims const& d)
{
    int64_t v = 1;
    for (int32_t i = 0; i < d.nbDims; ++i)
        v *= d.d[i];
    return v;
}

//! A --tp rank (world size > 1): NCCL loaded, the communicator made from the id file (mlaNccl.h) and handed to
//! the context, a collective call: it returns once every rank has called it. Single-device engines: nothing.
Status joinRanks(ParallelOptions const& o, std::unique_ptr<NcclCommunicator>& comm, nvinfer1::IExecutionContext& context)
{
    if (o.worldSize == 1)
        return Status::success();
#if NV_TENSORRT_MAJOR > 10 || (NV_TENSORRT_MAJOR == 10 && NV_TENSORRT_MINOR >= 16)
    NcclApi api;
    if (Status s = loadNccl(o.ncclLibrary, api); !s)
        return s;
    if (Status s = NcclCommunicator::create(api, o, comm); !s)
        return s;
    MLA_CHECK(context.setCommunicator(comm->comm()), "IExecutionContext::setCommunicator failed (rank "
        + std::to_string(o.rank) + "; TensorRT's log above says why: NCCL 2.19+ is needed)");
    return Status::success();
#else
    (void) comm;
    (void) context;
    return Status::error("this program was built against TensorRT " + std::to_string(NV_TENSORRT_MAJOR) + "."
        + std::to_string(NV_TENSORRT_MINOR) + " headers, which have no IExecutionContext::setCommunicator: "
        "rebuild it against TensorRT 10.16 or later to run --tp engines");
#endif
}

} // namespace

struct MlaSession::Impl
{
    std::unique_ptr<nvinfer1::IRuntime> runtime;
    std::unique_ptr<nvinfer1::ICudaEngine> engine;
    std::unique_ptr<NcclCommunicator> communicator; //!< --tp ranks; declared before context: it outlives it
    std::unique_ptr<nvinfer1::IExecutionContext> context;
    cudaStream_t stream{nullptr};
    cudaEvent_t start{nullptr}, stop{nullptr};
    std::vector<void*> caches;        //!< buffersPerLayer per layer: caches[layer * buffersPerLayer + slot]
    int64_t stepsRun{0};              //!< picks the cache slots in copy mode (cacheSlots)
    void* seqlensDevice{nullptr};     //!< int32 [B] on the device
    int32_t* seqlensHost{nullptr};    //!< pinned mirror, copied in on the stream before each step
    void* input{nullptr};
    void* output{nullptr};
    size_t inputBytesPerToken{0};
    size_t outputBytes{0};
    int32_t hidden{0};
    int32_t decodeProfile{0}, prefillProfile{1};
    cudaGraphExec_t decodeGraph{nullptr};
    bool useCudaGraph{true};
    int32_t boundTokens{-1};

    ~Impl()
    {
        if (decodeGraph) cudaGraphExecDestroy(decodeGraph);
        for (void* p : caches) cudaFree(p);
        cudaFree(seqlensDevice);
        cudaFreeHost(seqlensHost);
        cudaFree(input);
        cudaFree(output);
        if (start) cudaEventDestroy(start);
        if (stop) cudaEventDestroy(stop);
        if (stream) cudaStreamDestroy(stream);
    }
};

Status MlaSession::create(SessionOptions const& options, std::unique_ptr<MlaSession>& session)
{
    namespace c = mla::contract;
    if (Status s = checkOptions(options); !s)
        return s;
    std::string sidecar, blob;
    if (Status s = readFile(options.enginePath + ".json", sidecar); !s)
        return Status::error(s.message + ": the engine's sidecar is missing (engines from `mla-export build` have one)");
    if (Status s = checkSidecar(sidecar); !s)
        return s;
    CacheBinding binding{};
    if (Status s = cacheBindingOf(sidecar, binding); !s)
        return s;
    if (Status s = readFile(options.enginePath, blob); !s)
        return s;
    if (Status s = checkEngineSize(sidecar, blob.size()); !s)
        return s;
    if (Status s = checkSidecarRank(sidecar, options.parallel); !s)
        return s;
    if (!options.pluginPath.empty())
    {
        auto* registry = getPluginRegistry();
        MLA_CHECK(registry != nullptr, "TensorRT has no plugin registry");
        MLA_CHECK(registry->loadLibrary(options.pluginPath.c_str()) != nullptr,
            "cannot load plugin library " + options.pluginPath + " (build it with `make plugins`)");
        MLA_CHECK(registry->getCreator(c::kPluginName, c::kPluginVersion, c::kPluginNamespace) != nullptr,
            options.pluginPath + " does not register MlaAttention v1 in namespace mla");
    }

    if (options.parallel.worldSize > 1)
    {
        int devices = 0;
        MLA_CUDA(cudaGetDeviceCount(&devices));
        MLA_CHECK(devices > 0, "no CUDA device");
        MLA_CUDA(cudaSetDevice(options.parallel.rank % devices)); // one GPU per rank on one machine
    }
    std::unique_ptr<MlaSession> s(new MlaSession());
    s->mImpl = std::make_unique<Impl>();
    Impl& m = *s->mImpl;
    s->mCachePlan = planCacheBinding(binding);
    // Copy mode swaps each layer's two buffers every step: a captured step would replay old addresses.
    m.useCudaGraph = options.useCudaGraph && s->mCachePlan.fixedAddresses;
    m.runtime.reset(nvinfer1::createInferRuntime(gLogger));
    MLA_CHECK(m.runtime != nullptr, "createInferRuntime failed");
    m.engine.reset(m.runtime->deserializeCudaEngine(blob.data(), blob.size()));
    MLA_CHECK(m.engine != nullptr, "cannot deserialize " + options.enginePath
        + " (built for another TensorRT version or GPU, or a plugin engine without --plugin): rebuild it here");
    MLA_CHECK(m.engine->getNbOptimizationProfiles() == 2, "expected the decode and prefill optimization profiles");

    std::vector<TensorInfo> tensors;
    for (int32_t i = 0; i < m.engine->getNbIOTensors(); ++i)
    {
        char const* name = m.engine->getIOTensorName(i);
        tensors.push_back({name, m.engine->getTensorIOMode(name) == nvinfer1::TensorIOMode::kINPUT});
    }
    if (Status st = matchIoNames(tensors, s->mPlan); !st)
        return st;

    // Sizes from the engine itself: cache [B, Smax, W] (Smax, W static), input [B, S, d] or [B, S].
    std::string const past0 = std::string(c::kPastCachePrefix) + "0";
    nvinfer1::Dims const cacheMax
        = m.engine->getProfileShape(past0.c_str(), m.decodeProfile, nvinfer1::OptProfileSelector::kMAX);
    MLA_CHECK(cacheMax.nbDims == 3, "latent cache binding is not 3-D");
    MLA_CHECK(options.batch <= cacheMax.d[0],
        "batch " + std::to_string(options.batch) + " exceeds the engine's maximum " + std::to_string(cacheMax.d[0]));
    s->mMaxSeqLen = static_cast<int32_t>(cacheMax.d[1]);
    int64_t const cacheElement = elementSize(m.engine->getTensorDataType(past0.c_str()));
    nvinfer1::Dims const inputMax
        = m.engine->getProfileShape(s->mPlan.input.c_str(), m.prefillProfile, nvinfer1::OptProfileSelector::kMAX);
    m.hidden = s->mPlan.tokens ? 1 : static_cast<int32_t>(inputMax.d[2]);
    m.inputBytesPerToken = static_cast<size_t>(m.hidden * elementSize(m.engine->getTensorDataType(s->mPlan.input.c_str())));

    MLA_CUDA(cudaStreamCreateWithFlags(&m.stream, cudaStreamNonBlocking));
    MLA_CUDA(cudaEventCreate(&m.start));
    MLA_CUDA(cudaEventCreate(&m.stop));
    size_t cacheBytes = 0;
    if (Status st = latentCacheBytes(options.batch, cacheMax.d[1], cacheMax.d[2], cacheElement, cacheBytes); !st)
        return st;
    for (int32_t i = 0; i < s->mPlan.numLayers * s->mCachePlan.buffersPerLayer; ++i)
    {
        void* buffer = nullptr;
        MLA_CUDA(cudaMalloc(&buffer, cacheBytes)); // cudaMalloc is 256-byte aligned
        m.caches.push_back(buffer);
        MLA_CUDA(cudaMemsetAsync(buffer, 0, cacheBytes, m.stream));
    }
    MLA_CUDA(cudaMalloc(&m.seqlensDevice, sizeof(int32_t) * options.batch));
    MLA_CUDA(cudaMallocHost(reinterpret_cast<void**>(&m.seqlensHost), sizeof(int32_t) * options.batch));
    MLA_CUDA(cudaMalloc(&m.input, m.inputBytesPerToken * options.batch * inputMax.d[1]));
    m.context.reset(m.engine->createExecutionContext());
    MLA_CHECK(m.context != nullptr, "createExecutionContext failed (out of GPU memory?)");
    if (Status st = joinRanks(options.parallel, m.communicator, *m.context); !st)
        return st;
    s->mLengths.assign(options.batch, 0);
    s->mSidecar = sidecar;
    session = std::move(s);
    return Status::success();
}

MlaSession::~MlaSession() = default;

size_t MlaSession::inputBytesPerToken() const
{
    return mImpl->inputBytesPerToken;
}

Status MlaSession::step(void const* input, int32_t newTokens, float* milliseconds, int64_t* nextIds)
{
    namespace c = mla::contract;
    Impl& m = *mImpl;
    int32_t const batch = static_cast<int32_t>(mLengths.size());
    MLA_CHECK(newTokens >= 1, "newTokens must be >= 1");
    MLA_CHECK((input != nullptr || newTokens == 1) && (input != nullptr || nextIds != nullptr || m.stepsRun > 0)
            && (mPlan.tokens || (input != nullptr && nextIds == nullptr)),
        "only a token engine's decode step takes its ids from the device (the previous step's argmax)");
    if (Status s = checkCacheRoom(mLengths, newTokens, mMaxSeqLen); !s)
        return s;
    bool const decode = newTokens == 1;
    auto* ctx = m.context.get();
    bool rebind = newTokens != m.boundTokens;
    if (rebind)
    {
        MLA_CHECK(ctx->setOptimizationProfileAsync(decode ? m.decodeProfile : m.prefillProfile, m.stream),
            "setOptimizationProfileAsync failed");
        nvinfer1::Dims in{};
        in.nbDims = mPlan.tokens ? 2 : 3;
        in.d[0] = batch;
        in.d[1] = newTokens;
        in.d[2] = m.hidden;
        MLA_CHECK(ctx->setInputShape(mPlan.input.c_str(), in), "prompt length outside the engine's prefill profile");
        nvinfer1::Dims seq{};
        seq.nbDims = 1;
        seq.d[0] = batch;
        MLA_CHECK(ctx->setInputShape(c::kCacheSeqlens, seq), "batch outside the engine's profile");
        for (int32_t layer = 0; layer < mPlan.numLayers; ++layer)
        {
            std::string const past = c::kPastCachePrefix + std::to_string(layer);
            nvinfer1::Dims cache = m.engine->getTensorShape(past.c_str());
            cache.d[0] = batch;
            MLA_CHECK(ctx->setInputShape(past.c_str(), cache), "cannot set the latent cache shape");
        }
        nvinfer1::Dims const out = ctx->getTensorShape(mPlan.output.c_str());
        size_t const outBytes = static_cast<size_t>(volume(out) * elementSize(m.engine->getTensorDataType(mPlan.output.c_str())));
        if (outBytes > m.outputBytes)
        {
            cudaFree(m.output);
            MLA_CUDA(cudaMalloc(&m.output, outBytes));
            m.outputBytes = outBytes;
        }
        MLA_CHECK(ctx->setTensorAddress(mPlan.input.c_str(), m.input), "cannot bind the input");
        MLA_CHECK(ctx->setTensorAddress(c::kCacheSeqlens, m.seqlensDevice), "cannot bind cache_seqlens");
        MLA_CHECK(ctx->setTensorAddress(mPlan.output.c_str(), m.output), "cannot bind the output");
        m.boundTokens = newTokens;
        if (m.decodeGraph)
        {
            cudaGraphExecDestroy(m.decodeGraph);
            m.decodeGraph = nullptr;
        }
    }
    if (rebind || !mCachePlan.fixedAddresses)
    {
        // Aliased: past and present of a layer on its one buffer. Copy: on its two buffers, swapped each step.
        CacheSlots const slots = cacheSlots(mCachePlan, m.stepsRun);
        for (int32_t layer = 0; layer < mPlan.numLayers; ++layer)
        {
            std::string const past = c::kPastCachePrefix + std::to_string(layer);
            std::string const present = c::kPresentCachePrefix + std::to_string(layer);
            void* const* buffers = &m.caches[static_cast<size_t>(layer) * mCachePlan.buffersPerLayer];
            MLA_CHECK(ctx->setTensorAddress(past.c_str(), buffers[slots.past]), "cannot bind " + past);
            MLA_CHECK(ctx->setTensorAddress(present.c_str(), buffers[slots.present]), "cannot bind " + present);
        }
    }
    std::copy(mLengths.begin(), mLengths.end(), m.seqlensHost);
    size_t const inputBytes = m.inputBytesPerToken * batch * newTokens;
    if (input != nullptr)
        MLA_CUDA(cudaMemcpyAsync(m.input, input, inputBytes, cudaMemcpyHostToDevice, m.stream));
    MLA_CUDA(cudaEventRecord(m.start, m.stream));
    if (decode && m.useCudaGraph && m.decodeGraph)
        MLA_CUDA(cudaGraphLaunch(m.decodeGraph, m.stream));
    else
    {
        // The lengths copy is part of the step so that a captured graph replays it too.
        MLA_CUDA(cudaMemcpyAsync(m.seqlensDevice, m.seqlensHost, sizeof(int32_t) * batch, cudaMemcpyHostToDevice, m.stream));
        MLA_CHECK(ctx->enqueueV3(m.stream), "enqueueV3 failed (see the TensorRT log)");
        if (decode && m.useCudaGraph && !rebind)
        {
            // Second decode step with these shapes: capture it for the following ones.
            cudaGraph_t graph = nullptr;
            MLA_CUDA(cudaStreamSynchronize(m.stream));
            MLA_CUDA(cudaStreamBeginCapture(m.stream, cudaStreamCaptureModeThreadLocal));
            MLA_CUDA(cudaMemcpyAsync(m.seqlensDevice, m.seqlensHost, sizeof(int32_t) * batch, cudaMemcpyHostToDevice, m.stream));
            bool const enqueued = ctx->enqueueV3(m.stream);
            cudaError_t const captured = cudaStreamEndCapture(m.stream, &graph);
            if (enqueued && captured == cudaSuccess
                && cudaGraphInstantiate(&m.decodeGraph, graph, 0) != cudaSuccess)
                m.decodeGraph = nullptr;
            if (graph) cudaGraphDestroy(graph);
            if (!m.decodeGraph)
                m.useCudaGraph = false; // capture refused: keep launching directly
        }
    }
    if (nextIds != nullptr)
    {
        // logits [B, S, V]: the last position's argmax per row, into the input buffer (the next step's ids)
        nvinfer1::Dims const out = ctx->getTensorShape(mPlan.output.c_str());
        nvinfer1::DataType const type = m.engine->getTensorDataType(mPlan.output.c_str());
        MLA_CHECK(out.nbDims == 3 && (type == nvinfer1::DataType::kFLOAT || type == nvinfer1::DataType::kHALF
                      || type == nvinfer1::DataType::kBF16), "the engine's logits are not [B, S, V] float");
#ifdef MLA_HAVE_ARGMAX_KERNEL
        LogitsType const logitsType = type == nvinfer1::DataType::kFLOAT ? LogitsType::kFloat32
            : type == nvinfer1::DataType::kHALF                           ? LogitsType::kFloat16
                                                                          : LogitsType::kBFloat16;
        MLA_CUDA(launchLastTokenArgmax(m.output, logitsType, batch, static_cast<int32_t>(out.d[1]),
            static_cast<int32_t>(out.d[2]), static_cast<int64_t*>(m.input), m.stream));
        MLA_CUDA(cudaMemcpyAsync(nextIds, m.input, sizeof(int64_t) * batch, cudaMemcpyDeviceToHost, m.stream));
#else
        return Status::error("this program was built without nvcc, so without the argmax kernel: rebuild it where "
                             "CMake finds the CUDA compiler");
#endif
    }
    MLA_CUDA(cudaEventRecord(m.stop, m.stream));
    MLA_CUDA(cudaEventSynchronize(m.stop));
    if (milliseconds)
        MLA_CUDA(cudaEventElapsedTime(milliseconds, m.start, m.stop));
    for (auto& length : mLengths)
        length += newTokens;
    ++m.stepsRun;
    return Status::success();
}

} // namespace runtime
} // namespace mla
