/*
 * mlaNccl: the NCCL communicator of one rank of a `--tp` engine, one process per rank (as TensorRT's
 * sampleDistCollective does): rank 0 asks NCCL for a unique id and writes it, hex-encoded, to an id file
 * (staged, then renamed: a reader never sees half of it); the other ranks poll for that file up to a timeout;
 * every rank then calls ncclCommInitRank(world size, id, rank), and the session hands the communicator to
 * TensorRT with IExecutionContext::setCommunicator. ncclCommInitRank returns once every rank has joined, so
 * rank 0 removes the id file right after it; an id file left from an earlier run is refused by rank 0.
 *
 * NCCL is loaded at run time with dlopen("libnccl.so.2"), not linked and not included: no nccl.h is needed to
 * build. The handful of entry points and types used are declared below as NCCL 2.x's documented C API defines
 * them (ncclUniqueId: 128 bytes passed by value; ncclComm_t: an opaque pointer; ncclResult_t, ncclDataType_t and
 * ncclRedOp_t: C enums, passed as int). TensorRT loads libnccl.so.2 itself for its DIST_COLLECTIVE layers; the
 * same soname resolves to the same loaded library, so the communicator made here is the one it expects.
 *
 * Everything here but loadNccl's dlopen runs without NCCL (the id file, the options; NcclCommunicator over any
 * NcclApi table: test_mla_nccl.cpp drives it with a fake one).
 */
#pragma once

#include "mlaStatus.h"

#include <cuda_runtime_api.h>

#include <dlfcn.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <sys/stat.h>
#include <thread>

namespace mla
{
namespace runtime
{

constexpr size_t kNcclUniqueIdBytes = 128; //!< NCCL_UNIQUE_ID_BYTES
struct NcclUniqueId                        //!< ncclUniqueId
{
    char internal[kNcclUniqueIdBytes];
};
struct NcclCommOpaque;
using NcclComm = NcclCommOpaque*; //!< ncclComm_t
constexpr int kNcclSuccess = 0;   //!< ncclSuccess (ncclResult_t)
constexpr int kNcclFloat32 = 7;   //!< ncclFloat32 (ncclDataType_t)
constexpr int kNcclSum = 0;       //!< ncclSum (ncclRedOp_t)

//! The NCCL entry points the runtime calls (loadNccl fills it from libnccl.so.2; a test may fill it with fakes).
struct NcclApi
{
    int (*getUniqueId)(NcclUniqueId*){nullptr};                   //!< ncclGetUniqueId
    int (*commInitRank)(NcclComm*, int, NcclUniqueId, int){nullptr}; //!< ncclCommInitRank(comm, nranks, id, rank)
    int (*commDestroy)(NcclComm){nullptr};                        //!< ncclCommDestroy
    int (*allReduce)(void const*, void*, size_t, int, int, NcclComm, cudaStream_t){nullptr}; //!< ncclAllReduce
    char const* (*getErrorString)(int){nullptr};                  //!< ncclGetErrorString
    int (*getVersion)(int*){nullptr};                             //!< ncclGetVersion
};

//! Loads `library` (libnccl.so.2 by default) and every entry point of NcclApi.
inline Status loadNccl(std::string const& library, NcclApi& api)
{
    void* handle = dlopen(library.c_str(), RTLD_NOW | RTLD_LOCAL); // kept loaded for the process's lifetime
    if (handle == nullptr)
    {
        char const* why = dlerror();
        return Status::error("cannot load " + library + " (" + (why ? why : "?") + "): install NCCL 2.19+ or "
            "pass --nccl-library PATH");
    }
    struct Entry
    {
        char const* name;
        void** slot;
    };
    Entry const entries[] = {{"ncclGetUniqueId", reinterpret_cast<void**>(&api.getUniqueId)},
        {"ncclCommInitRank", reinterpret_cast<void**>(&api.commInitRank)},
        {"ncclCommDestroy", reinterpret_cast<void**>(&api.commDestroy)},
        {"ncclAllReduce", reinterpret_cast<void**>(&api.allReduce)},
        {"ncclGetErrorString", reinterpret_cast<void**>(&api.getErrorString)},
        {"ncclGetVersion", reinterpret_cast<void**>(&api.getVersion)}};
    for (Entry const& e : entries)
    {
        *e.slot = dlsym(handle, e.name);
        if (*e.slot == nullptr)
            return Status::error(library + " has no " + e.name + ": not an NCCL 2.x library");
    }
    return Status::success();
}

//! One rank's place in a --tp run (the engines of `mla-export build --onnx DIR`).
struct ParallelOptions
{
    int32_t rank{0};
    int32_t worldSize{1};      //!< 1: a single-device engine, no NCCL
    std::string idFile;        //!< where rank 0 writes the NCCL unique id and the others read it
    std::string ncclLibrary{"libnccl.so.2"};
    int32_t timeoutSeconds{30}; //!< how long ranks > 0 wait for the id file
};

inline Status checkParallelOptions(ParallelOptions const& o)
{
    if (o.worldSize < 1 || o.rank < 0 || o.rank >= o.worldSize)
        return Status::error("--rank " + std::to_string(o.rank) + " --world-size " + std::to_string(o.worldSize)
            + ": expected 0 <= rank < world size");
    if (o.worldSize > 1 && o.idFile.empty())
        return Status::error("--world-size " + std::to_string(o.worldSize) + " needs --nccl-id-file PATH (the same "
            "path for every rank; rank 0 writes it)");
    if (o.timeoutSeconds < 1)
        return Status::error("--nccl-timeout must be >= 1 second");
    return Status::success();
}

//! Takes `flag value` if it is one of --rank, --world-size, --nccl-id-file, --nccl-library, --nccl-timeout
//! (returns true; `status` says whether the value was good); false for any other flag.
inline bool parseParallelFlag(std::string const& flag, std::string const& value, ParallelOptions& o, Status& status)
{
    status = Status::success();
    if (flag == "--nccl-id-file") { o.idFile = value; return true; }
    if (flag == "--nccl-library") { o.ncclLibrary = value; return true; }
    int32_t* target = flag == "--rank" ? &o.rank : flag == "--world-size" ? &o.worldSize
        : flag == "--nccl-timeout" ? &o.timeoutSeconds : nullptr;
    if (target == nullptr)
        return false;
    char* end = nullptr;
    long const v = std::strtol(value.c_str(), &end, 10);
    if (value.empty() || *end != '\0' || v < 0 || v > (1 << 20))
        status = Status::error(flag + " " + value + ": expected an integer >= 0");
    else
        *target = static_cast<int32_t>(v);
    return true;
}

inline std::string uniqueIdToHex(NcclUniqueId const& id)
{
    static char const digits[] = "0123456789abcdef";
    std::string hex;
    for (char c : id.internal)
    {
        auto const byte = static_cast<unsigned char>(c);
        hex += digits[byte >> 4];
        hex += digits[byte & 15];
    }
    return hex;
}

inline bool uniqueIdFromHex(std::string const& hex, NcclUniqueId& id)
{
    if (hex.size() != 2 * kNcclUniqueIdBytes)
        return false;
    auto nibble = [](char c) { return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1; };
    for (size_t i = 0; i < kNcclUniqueIdBytes; ++i)
    {
        int const hi = nibble(hex[2 * i]), lo = nibble(hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return false;
        id.internal[i] = static_cast<char>(hi << 4 | lo);
    }
    return true;
}

//! Rank 0: writes `id` to `path` (hex and a newline), staged beside it and renamed in. Refuses an existing file.
inline Status writeUniqueIdFile(std::string const& path, NcclUniqueId const& id)
{
    struct stat info{};
    if (stat(path.c_str(), &info) == 0)
        return Status::error("NCCL id file " + path + " exists (left by an earlier run?): remove it or pass another "
            "--nccl-id-file; rank 0 writes it, the other ranks read it");
    std::string const staged = path + ".staging." + std::to_string(getpid());
    {
        std::ofstream out(staged, std::ios::trunc);
        out << uniqueIdToHex(id) << "\n";
        if (!out.flush())
            return Status::error("cannot write " + staged + " (is its directory writable?)");
    }
    if (std::rename(staged.c_str(), path.c_str()) != 0)
    {
        std::remove(staged.c_str());
        return Status::error("cannot rename " + staged + " to " + path);
    }
    return Status::success();
}

//! Ranks > 0: polls `path` every `pollMs` until it holds an id, for up to `timeoutSeconds`.
inline Status readUniqueIdFile(std::string const& path, int32_t timeoutSeconds, NcclUniqueId& id, int pollMs = 50)
{
    auto const deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeoutSeconds);
    while (true)
    {
        std::ifstream in(path);
        if (in)
        {
            std::string hex;
            in >> hex;
            if (!uniqueIdFromHex(hex, id))
                return Status::error(path + " is not an NCCL id file (expected " + std::to_string(2 * kNcclUniqueIdBytes)
                    + " hex digits): remove it and start every rank again");
            return Status::success();
        }
        if (std::chrono::steady_clock::now() >= deadline)
            return Status::error("no NCCL id in " + path + " after " + std::to_string(timeoutSeconds) + " s: start "
                "rank 0 with the same --nccl-id-file (it writes the file)");
        std::this_thread::sleep_for(std::chrono::milliseconds(pollMs));
    }
}

//! One rank's NCCL communicator, destroyed with this object (keep it alive longer than the execution context).
class NcclCommunicator
{
public:
    static Status create(NcclApi const& api, ParallelOptions const& o, std::unique_ptr<NcclCommunicator>& out)
    {
        if (Status s = checkParallelOptions(o); !s)
            return s;
        auto describe = [&](int result) {
            return std::string(api.getErrorString ? api.getErrorString(result) : "?") + " (" + std::to_string(result) + ")";
        };
        NcclUniqueId id{};
        if (o.rank == 0)
        {
            if (int r = api.getUniqueId(&id); r != kNcclSuccess)
                return Status::error("ncclGetUniqueId failed: " + describe(r));
            if (Status s = writeUniqueIdFile(o.idFile, id); !s)
                return s;
        }
        else if (Status s = readUniqueIdFile(o.idFile, o.timeoutSeconds, id); !s)
            return Status::error("rank " + std::to_string(o.rank) + ": " + s.message);
        std::unique_ptr<NcclCommunicator> comm(new NcclCommunicator(api));
        int const r = api.commInitRank(&comm->mComm, o.worldSize, id, o.rank);
        if (o.rank == 0)
            std::remove(o.idFile.c_str()); // every rank has read it: ncclCommInitRank returns once all joined
        if (r != kNcclSuccess)
        {
            comm->mComm = nullptr;
            return Status::error("ncclCommInitRank (rank " + std::to_string(o.rank) + " of " + std::to_string(o.worldSize)
                + ") failed: " + describe(r));
        }
        out = std::move(comm);
        return Status::success();
    }

    ~NcclCommunicator()
    {
        if (mComm != nullptr && mApi.commDestroy != nullptr)
            mApi.commDestroy(mComm);
    }
    NcclCommunicator(NcclCommunicator const&) = delete;
    NcclCommunicator& operator=(NcclCommunicator const&) = delete;

    NcclComm comm() const { return mComm; }
    NcclApi const& api() const { return mApi; }

private:
    explicit NcclCommunicator(NcclApi const& api) : mApi(api) {}
    NcclApi mApi;
    NcclComm mComm{nullptr};
};

} // namespace runtime
} // namespace mla
