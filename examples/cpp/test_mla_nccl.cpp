/*
 * Unit test of mlaNccl.h without NCCL: the NCCL id file exchange between two ranks (threads here, processes in
 * use) through NcclCommunicator over a fake NcclApi whose ncclCommInitRank, like NCCL's, returns only once every
 * rank has joined; the refusals (an id file left from an earlier run, a malformed one, no rank 0 within the
 * timeout, a failed ncclCommInitRank); the id's hex form; loadNccl on a missing library and on a stand-in
 * library (fake_nccl.cpp, path FAKE_NCCL_LIB) through dlopen; the --tp command-line flags and the sidecar's rank.
 * Prints "N passed, N failed" and returns nonzero on any failure.
 */
#include "mlaGenerate.h"
#include "mlaNccl.h"
#include "mlaRuntime.h"

#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace
{
int gPassed = 0, gFailed = 0;

void expect(bool condition, std::string const& what)
{
    if (condition) ++gPassed;
    else { ++gFailed; std::printf("FAILED: %s\n", what.c_str()); }
}

bool contains(std::string const& text, char const* part)
{
    return text.find(part) != std::string::npos;
}

using namespace mla::runtime;

//! NCCL's collective init, faked: each rank records the id it was given and waits for all ranks to join.
struct FakeNccl
{
    std::mutex mutex;
    std::condition_variable joinedAll;
    int joined{0};
    int failWith{0};
    std::vector<std::string> ids;
    std::vector<NcclComm> destroyed;
} gFake;

int fakeGetUniqueId(NcclUniqueId* id)
{
    for (size_t i = 0; i < kNcclUniqueIdBytes; ++i)
        id->internal[i] = static_cast<char>(i * 7 + 3);
    return kNcclSuccess;
}

int fakeCommInitRank(NcclComm* comm, int nranks, NcclUniqueId id, int rank)
{
    std::unique_lock<std::mutex> lock(gFake.mutex);
    gFake.ids.push_back(uniqueIdToHex(id));
    ++gFake.joined;
    gFake.joinedAll.notify_all();
    if (!gFake.joinedAll.wait_for(lock, std::chrono::seconds(5), [&] { return gFake.joined >= nranks; }))
        return 5; // the other ranks never came
    *comm = reinterpret_cast<NcclComm>(static_cast<size_t>(0x1000 + rank));
    return gFake.failWith;
}

int fakeCommDestroy(NcclComm comm)
{
    std::lock_guard<std::mutex> lock(gFake.mutex);
    gFake.destroyed.push_back(comm);
    return kNcclSuccess;
}

char const* fakeErrorString(int) { return "fake failure"; }

NcclApi fakeApi()
{
    NcclApi api;
    api.getUniqueId = fakeGetUniqueId;
    api.commInitRank = fakeCommInitRank;
    api.commDestroy = fakeCommDestroy;
    api.getErrorString = fakeErrorString;
    return api;
}

void resetFake()
{
    std::lock_guard<std::mutex> lock(gFake.mutex);
    gFake.joined = 0;
    gFake.failWith = 0;
    gFake.ids.clear();
    gFake.destroyed.clear();
}

ParallelOptions rankOptions(int rank, int world, std::string const& idFile, int timeout = 10)
{
    ParallelOptions o;
    o.rank = rank;
    o.worldSize = world;
    o.idFile = idFile;
    o.timeoutSeconds = timeout;
    return o;
}

bool exists(std::string const& path)
{
    struct stat info{};
    return stat(path.c_str(), &info) == 0;
}

void writeText(std::string const& path, char const* text)
{
    std::FILE* f = std::fopen(path.c_str(), "w");
    std::fputs(text, f);
    std::fclose(f);
}
} // namespace

int main()
{
    char dirTemplate[] = "/tmp/test_mla_nccl.XXXXXX";
    std::string const dir = mkdtemp(dirTemplate);
    std::string const idFile = dir + "/nccl.id";

    // Two ranks: rank 1 starts first and polls; rank 0 writes the id; both join; the file is gone after.
    {
        resetFake();
        std::unique_ptr<NcclCommunicator> comm0, comm1;
        Status s1;
        std::thread rank1([&] { s1 = NcclCommunicator::create(fakeApi(), rankOptions(1, 2, idFile), comm1); });
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        Status const s0 = NcclCommunicator::create(fakeApi(), rankOptions(0, 2, idFile), comm0);
        rank1.join();
        expect(s0.ok && s1.ok, "two ranks join: " + s0.message + s1.message);
        NcclUniqueId expected{};
        fakeGetUniqueId(&expected);
        expect(gFake.ids.size() == 2 && gFake.ids[0] == uniqueIdToHex(expected) && gFake.ids[1] == gFake.ids[0],
            "both ranks init with rank 0's id");
        expect(comm0 && comm1 && comm0->comm() == reinterpret_cast<NcclComm>(0x1000)
                && comm1->comm() == reinterpret_cast<NcclComm>(0x1001), "each rank has its communicator");
        expect(!exists(idFile), "rank 0 removes the id file once every rank joined");
        comm0.reset();
        comm1.reset();
        expect(gFake.destroyed.size() == 2, "both communicators destroyed with their owners");
    }
    // Rank 0 refuses an id file left by an earlier run (a late rank would read the old id and hang).
    {
        resetFake();
        writeText(idFile, "stale\n");
        std::unique_ptr<NcclCommunicator> comm;
        Status const s = NcclCommunicator::create(fakeApi(), rankOptions(0, 2, idFile), comm);
        expect(!s.ok && contains(s.message, "exists (left by an earlier run?)") && !comm, "stale id file refused: " + s.message);
        expect(gFake.joined == 0, "no init after the refusal");
        // ... and another rank refuses it as malformed rather than passing garbage to NCCL.
        Status const s1 = NcclCommunicator::create(fakeApi(), rankOptions(1, 2, idFile), comm);
        expect(!s1.ok && contains(s1.message, "is not an NCCL id file"), "malformed id file refused: " + s1.message);
        std::remove(idFile.c_str());
    }
    // A rank > 0 with no rank 0 gives up after its timeout, naming the file.
    {
        resetFake();
        std::unique_ptr<NcclCommunicator> comm;
        auto const start = std::chrono::steady_clock::now();
        Status const s = NcclCommunicator::create(fakeApi(), rankOptions(1, 2, idFile, 1), comm);
        double const waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        expect(!s.ok && contains(s.message, "rank 1: no NCCL id in") && contains(s.message, "after 1 s"),
            "timeout message: " + s.message);
        expect(waited >= 0.9 && waited < 5.0, "waited about the timeout");
    }
    // A failing ncclCommInitRank is reported with NCCL's text, the id file removed, nothing to destroy.
    {
        resetFake();
        gFake.failWith = 3;
        std::unique_ptr<NcclCommunicator> comm;
        Status const s = NcclCommunicator::create(fakeApi(), rankOptions(0, 1, idFile), comm);
        expect(!s.ok && contains(s.message, "ncclCommInitRank (rank 0 of 1) failed: fake failure (3)"),
            "init failure: " + s.message);
        expect(!exists(idFile) && !comm && gFake.destroyed.empty(), "failed init leaves no file and no communicator");
    }
    // The id's hex form: every byte value round-trips; wrong lengths and digits are refused.
    {
        NcclUniqueId a{}, b{}, back{};
        for (size_t i = 0; i < kNcclUniqueIdBytes; ++i)
        {
            a.internal[i] = static_cast<char>(i);
            b.internal[i] = static_cast<char>(128 + i);
        }
        std::string const ha = uniqueIdToHex(a), hb = uniqueIdToHex(b);
        expect(ha.size() == 256 && ha.substr(0, 6) == "000102" && hb.substr(254) == "ff", "hex form");
        expect(uniqueIdFromHex(ha, back) && std::memcmp(back.internal, a.internal, kNcclUniqueIdBytes) == 0, "round trip 0..127");
        expect(uniqueIdFromHex(hb, back) && std::memcmp(back.internal, b.internal, kNcclUniqueIdBytes) == 0, "round trip 128..255");
        expect(!uniqueIdFromHex(ha.substr(2), back) && !uniqueIdFromHex("zz" + ha.substr(2), back), "bad hex refused");
    }
    // loadNccl through dlopen: a missing library, then the stand-in.
    {
        NcclApi api;
        Status const missing = loadNccl("libnccl_not_here.so.2", api);
        expect(!missing.ok && contains(missing.message, "cannot load libnccl_not_here.so.2"), "missing NCCL: " + missing.message);
        Status const loaded = loadNccl(FAKE_NCCL_LIB, api);
        expect(loaded.ok, "stand-in library loaded: " + loaded.message);
        int version = 0;
        float send[3] = {1.5f, -2.f, 4.f}, recv[3] = {};
        NcclComm comm = nullptr;
        NcclUniqueId id{};
        expect(loaded.ok && api.getVersion(&version) == 0 && version == 22303, "ncclGetVersion through the table");
        expect(loaded.ok && api.getUniqueId(&id) == 0 && api.commInitRank(&comm, 1, id, 0) == 0
                && api.allReduce(send, recv, 3, kNcclFloat32, kNcclSum, comm, nullptr) == 0 && recv[0] == 1.5f
                && recv[2] == 4.f && api.commDestroy(comm) == 0, "every entry point called with NCCL's signature");
    }
    // Command-line flags and option checks.
    {
        ParallelOptions o;
        Status st;
        expect(parseParallelFlag("--rank", "3", o, st) && st.ok && o.rank == 3, "--rank");
        expect(parseParallelFlag("--world-size", "4", o, st) && st.ok && o.worldSize == 4, "--world-size");
        expect(parseParallelFlag("--world-size", "two", o, st) && !st.ok && o.worldSize == 4, "--world-size two refused");
        expect(!parseParallelFlag("--batch", "3", o, st), "other flags are not taken");
        expect(!checkParallelOptions(o).ok && contains(checkParallelOptions(o).message, "needs --nccl-id-file"),
            "world size 4 needs an id file");
        expect(parseParallelFlag("--nccl-id-file", idFile, o, st) && checkParallelOptions(o).ok, "rank 3 of 4 with a file");
        o.rank = 4;
        expect(!checkParallelOptions(o).ok, "rank 4 of 4 refused");
        expect(checkParallelOptions(ParallelOptions{}).ok, "defaults: one device");
        GenerateOptions g;
        char const* argv[] = {"mla_generate", "--engine", "r1.engine", "--prompt-ids", "1,2", "--rank", "1",
            "--world-size", "2", "--nccl-id-file", "/tmp/x.id"};
        Status const parsed = parseGenerateArgs(11, argv, g);
        expect(parsed.ok && g.session.parallel.rank == 1 && g.session.parallel.worldSize == 2
                && g.session.parallel.idFile == "/tmp/x.id", "mla_generate takes the --tp flags: " + parsed.message);
        char const* noFile[] = {"mla_generate", "--engine", "r1.engine", "--prompt-ids", "1", "--world-size", "2"};
        expect(!parseGenerateArgs(7, noFile, g).ok, "mla_generate --world-size 2 without an id file refused");
    }
    // The sidecar's rank against the process's.
    {
        ParallelOptions one, rank1 = rankOptions(1, 2, idFile);
        std::string const single = R"({"format": "mla-export-engine", "tp_size": 1, "tp_rank": 0})";
        std::string const r1 = R"({"tp_size": 2, "tp_rank": 1, "tp_export_id": "ab"})";
        expect(checkSidecarRank(single, one).ok && checkSidecarRank("{}", one).ok, "single-device engine, one process");
        expect(checkSidecarRank(r1, rank1).ok, "rank 1 engine, rank 1 process");
        Status const wrong = checkSidecarRank(r1, rankOptions(0, 2, idFile));
        expect(!wrong.ok && contains(wrong.message, "the engine is rank 1 of 2") && contains(wrong.message, "rank0.engine"),
            "rank 1 engine in rank 0 refused: " + wrong.message);
        expect(!checkSidecarRank(r1, one).ok && !checkSidecarRank(single, rank1).ok, "world sizes must agree");
    }
    rmdir(dir.c_str());
    std::printf("%d passed, %d failed\n", gPassed, gFailed);
    return gFailed == 0 ? 0 : 1;
}
