/*
 * A stand-in libnccl for test_mla_nccl: the entry points loadNccl looks up, with NCCL's C signatures, doing a
 * world-size-1 job on host memory (ncclAllReduce copies send to recv). Not NCCL; only for the loader's test.
 */
#include <cstddef>
#include <cstring>

extern "C"
{
struct FakeUniqueId
{
    char internal[128];
};
struct FakeComm;

int ncclGetUniqueId(FakeUniqueId* id)
{
    for (int i = 0; i < 128; ++i)
        id->internal[i] = static_cast<char>(255 - i);
    return 0;
}
int ncclCommInitRank(FakeComm** comm, int nranks, FakeUniqueId, int rank)
{
    *comm = reinterpret_cast<FakeComm*>(static_cast<size_t>(0x4000 + 16 * nranks + rank));
    return nranks == 1 && rank == 0 ? 0 : 4; // ncclInvalidArgument: this stand-in has one rank
}
int ncclCommDestroy(FakeComm*) { return 0; }
int ncclAllReduce(void const* send, void* recv, size_t count, int datatype, int op, FakeComm*, void*)
{
    if (datatype != 7 || op != 0) // ncclFloat32, ncclSum
        return 4;
    std::memmove(recv, send, count * sizeof(float));
    return 0;
}
char const* ncclGetErrorString(int result) { return result == 0 ? "no error" : "invalid argument"; }
int ncclGetVersion(int* version)
{
    *version = 22303;
    return 0;
}
}
