/*
 * mla_nccl_smoke: the runtime's NCCL set-up (mlaNccl.h) on one GPU, world size 1: libnccl.so.2 loaded with
 * dlopen, the id file written and removed by rank 0, ncclCommInitRank with one rank, then one ncclAllReduce (sum)
 * of a float32 device buffer, checked on the host (one rank's sum is its own input, exactly). One JSON line on
 * stdout. Exit 77 (a skip for `make gpu-check`) where there is no CUDA device or no libnccl.so.2.
 *
 *   mla_nccl_smoke [--nccl-library PATH]
 */
#include "mlaNccl.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

using namespace mla::runtime;

namespace
{
int fail(std::string const& what)
{
    std::fprintf(stderr, "mla_nccl_smoke: %s\n", what.c_str());
    return 1;
}

#define SMOKE_CUDA(call)                                                                                               \
    do                                                                                                                 \
    {                                                                                                                  \
        cudaError_t const err_ = (call);                                                                               \
        if (err_ != cudaSuccess)                                                                                       \
            return fail(std::string(#call) + " failed: " + cudaGetErrorString(err_));                                \
    } while (0)
} // namespace

int main(int argc, char** argv)
{
    ParallelOptions o;
    for (int i = 1; i < argc; ++i)
    {
        Status st;
        if (i + 1 < argc && parseParallelFlag(argv[i], argv[i + 1], o, st) && st.ok && o.worldSize == 1)
            ++i;
        else
            return fail("usage: mla_nccl_smoke [--nccl-library PATH]");
    }
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0)
    {
        std::printf("skip: no CUDA device\n");
        return 77;
    }
    NcclApi api;
    if (Status s = loadNccl(o.ncclLibrary, api); !s)
    {
        std::printf("skip: %s\n", s.message.c_str());
        return 77;
    }
    char dirTemplate[] = "/tmp/mla_nccl_smoke.XXXXXX";
    if (mkdtemp(dirTemplate) == nullptr)
        return fail("cannot make a temporary directory");
    o.idFile = std::string(dirTemplate) + "/nccl.id";
    int version = 0;
    api.getVersion(&version);
    std::unique_ptr<NcclCommunicator> comm;
    if (Status s = NcclCommunicator::create(api, o, comm); !s)
        return fail(s.message);
    struct stat info{};
    bool const idFileRemoved = stat(o.idFile.c_str(), &info) != 0;
    rmdir(dirTemplate);

    size_t const count = size_t(1) << 20;
    std::vector<float> host(count), back(count, NAN);
    for (size_t i = 0; i < count; ++i)
        host[i] = static_cast<float>(i % 1000) * 0.5f - 250.f;
    void *send = nullptr, *recv = nullptr;
    cudaStream_t stream = nullptr;
    SMOKE_CUDA(cudaStreamCreate(&stream));
    SMOKE_CUDA(cudaMalloc(&send, count * sizeof(float)));
    SMOKE_CUDA(cudaMalloc(&recv, count * sizeof(float)));
    SMOKE_CUDA(cudaMemcpy(send, host.data(), count * sizeof(float), cudaMemcpyHostToDevice));
    SMOKE_CUDA(cudaMemset(recv, 0xff, count * sizeof(float))); // NaN: an element left unwritten fails
    if (int r = api.allReduce(send, recv, count, kNcclFloat32, kNcclSum, comm->comm(), stream); r != kNcclSuccess)
        return fail(std::string("ncclAllReduce failed: ") + api.getErrorString(r));
    SMOKE_CUDA(cudaStreamSynchronize(stream));
    SMOKE_CUDA(cudaMemcpy(back.data(), recv, count * sizeof(float), cudaMemcpyDeviceToHost));
    size_t mismatches = 0;
    for (size_t i = 0; i < count; ++i)
        mismatches += !(back[i] == host[i]); // one rank: the sum is the input itself, bit for bit
    cudaFree(send);
    cudaFree(recv);
    cudaStreamDestroy(stream);
    comm.reset();
    std::printf("{\"nccl_version\": %d, \"world_size\": 1, \"count\": %zu, \"mismatches\": %zu, "
                "\"id_file_removed\": %s}\n", version, count, mismatches, idFileRemoved ? "true" : "false");
    return mismatches == 0 && idFileRemoved ? 0 : 1;
}
