/*
 * MlaAttention contract version 2 (a paged and/or FP8 latent cache) on a fake CUDA driver. For each call, with every
 * present plane bound to its past input's buffer (as TensorRT binds a declared alias: in place) and with separate
 * buffers (copy first), enqueue must
 *   - copy each past plane to its present (cuMemcpyDtoDAsync, the whole plane, on the stream) only when the
 *     addresses differ, and before any launch;
 *   - launch the contract-2 cache kernels of the node's kv cache dtype with the block table, the scale and rope
 *     planes and the pool's sizes after version 1's arguments;
 *   - refuse descriptors that do not fit the attributes before any driver call.
 * With an expectations file (argv[1], written by tests/plugin_helpers.py from the Python API's plan) the recorded
 * launches must equal the planned ones.
 */
#include "fakeCuda.h"
#include "launchPlan.h"
#include "mlaAttentionPlugin.h"
#include "mlaContract.h"
#include "testPlugin.h"
#include "testUtil.h"

#include <cstdio>
#include <functional>
#include <memory>
#include <sstream>
#include <vector>

using namespace mla;
using nvinfer1::DataType;
namespace c = mla::contract;

namespace
{
testutil::CapturingLogger gLogger;

//! One contract-2 call: the pool of `pages` pages of `rows` rows (contiguous, page 0: pages = B, rows = Smax).
struct CacheCall
{
    int32_t batch, tokens, heads, rank, rope;
    int32_t page, kvDtype, pages, rows, maxPages, ropeRows;
    DataType type;

    bool fp8() const { return kvDtype == c::kKvCacheDtypeFp8; }
    int32_t numInputs() const { return fp8() ? c::kNumFp8CacheInputs : c::kNumPagedInputs; }
    int32_t numOutputs() const { return fp8() ? c::kNumFp8CacheOutputs : c::kNumOutputs; }
};

float const kPlanSoftmaxScale = 0.1F; // tests/plugin_helpers.py: PLAN_SOFTMAX_SCALE

size_t bytesOf(DataType t)
{
    return t == DataType::kFLOAT || t == DataType::kINT32 ? 4 : (t == DataType::kFP8 ? 1 : 2);
}

uintptr_t const kInputBase = 0x7f0000000000;
uintptr_t const kSeparateBase = 0x7f8000000000; // present planes in separate buffers: + (output index << 32)
uintptr_t const kAttnOut = 0x7f9000000000;
uintptr_t const kWorkspace = 0x7fa000000000;
CUstream const kStream = reinterpret_cast<CUstream>(0x5252);

//! Descriptors, pointers and the enqueue of one call.
struct Launch
{
    CacheCall call;
    nvinfer1::PluginTensorDesc in[c::kNumFp8CacheInputs]{};
    nvinfer1::PluginTensorDesc out[c::kNumFp8CacheOutputs]{};
    void const* inputs[c::kNumFp8CacheInputs]{};
    void* outputs[c::kNumFp8CacheOutputs]{};

    Launch(CacheCall const& k, bool inPlace)
        : call(k)
    {
        int64_t const width = k.fp8() ? k.rank : k.rank + k.rope;
        int64_t const tiles = (k.rank + c::kFp8CacheTile - 1) / c::kFp8CacheTile;
        std::vector<std::vector<int64_t>> const shapes = {{k.batch, k.tokens, k.heads, k.rank},
            {k.batch, k.tokens, k.heads, k.rope}, {k.batch, k.tokens, k.rank}, {k.batch, k.tokens, k.rope},
            {k.pages, k.rows, width}, {k.batch}, {k.ropeRows, k.rope}, {k.batch, k.maxPages}, {k.pages, k.rows, tiles},
            {k.pages, k.rows, k.rope}};
        DataType const types[] = {k.type, k.type, k.type, k.type, k.fp8() ? DataType::kFP8 : k.type, DataType::kINT32,
            DataType::kFLOAT, DataType::kINT32, DataType::kFLOAT, k.type};
        for (int32_t i = 0; i < k.numInputs(); ++i)
        {
            in[i].dims = testutil::dims(shapes[i]);
            in[i].type = types[i];
            in[i].format = nvinfer1::TensorFormat::kLINEAR;
            inputs[i] = reinterpret_cast<void const*>(kInputBase + (static_cast<uintptr_t>(i) << 32));
        }
        out[c::kAttnLatent] = in[c::kQLatent];
        outputs[c::kAttnLatent] = reinterpret_cast<void*>(kAttnOut);
        for (int32_t o = c::kPresentCache; o < k.numOutputs(); ++o)
        {
            int32_t const source = pastOf(o);
            out[o] = in[source];
            outputs[o] = inPlace ? const_cast<void*>(inputs[source])
                                 : reinterpret_cast<void*>(kSeparateBase + (static_cast<uintptr_t>(o) << 32));
        }
    }

    static int32_t pastOf(int32_t output)
    {
        return output == c::kPresentCache ? c::kPastCache : (output == c::kPresentScale ? c::kPastScale : c::kPastRope);
    }

    uint64_t planeBytes(int32_t input) const
    {
        return static_cast<uint64_t>(plugin::volume(in[input].dims)) * bytesOf(in[input].type);
    }

    int32_t run(nvinfer1::IPluginV3OneRuntime& p)
    {
        if (p.onShapeChange(in, call.numInputs(), out, call.numOutputs()) != 0)
        {
            return -2;
        }
        return p.enqueue(in, out, inputs, outputs, reinterpret_cast<void*>(kWorkspace), kStream);
    }
};

plugin::MlaAttributes attributesOf(CacheCall const& k, float scale = 0.125F)
{
    plugin::MlaAttributes a{k.heads, k.rank, k.rope, scale};
    a.pageSize = k.page;
    a.kvCacheDtype = k.kvDtype;
    return a;
}

std::string describe(CacheCall const& k, bool inPlace)
{
    std::ostringstream s;
    s << "B=" << k.batch << " S=" << k.tokens << " H=" << k.heads << " Dc=" << k.rank << " Dr=" << k.rope
      << " page=" << k.page << " kv=" << k.kvDtype << " P=" << k.pages << " rows=" << k.rows
      << " max_pages=" << k.maxPages << " T=" << static_cast<int>(k.type) << (inPlace ? " in-place" : " copy");
    return s.str();
}

//! CHECKs the copies of one enqueue (one per present plane with separate buffers, before any launch); returns
//! its launches.
std::vector<fake::Event> checkCopies(Launch const& l, bool inPlace, std::vector<fake::Event> const& events)
{
    std::string const what = describe(l.call, inPlace);
    std::vector<fake::Event> launches;
    int32_t copies = 0;
    for (fake::Event const& e : events)
    {
        if (e.kind == fake::Kind::kMemcpy)
        {
            CHECK_MSG(launches.empty(), what + ": a past -> present copy after a launch");
            int32_t const o = c::kPresentCache + copies;
            CHECK_MSG(o < l.call.numOutputs(), what + ": more copies than present planes");
            if (o < l.call.numOutputs())
            {
                int32_t const source = Launch::pastOf(o);
                CHECK_MSG(e.dst == reinterpret_cast<uintptr_t>(l.outputs[o]), what);
                CHECK_MSG(e.src == reinterpret_cast<uintptr_t>(l.inputs[source]), what);
                CHECK_MSG(e.bytes == l.planeBytes(source), what + ": copied " + std::to_string(e.bytes) + " bytes");
            }
            CHECK_MSG(e.stream == kStream, what);
            ++copies;
        }
        else if (e.kind == fake::Kind::kLaunch)
        {
            CHECK_MSG(e.stream == kStream, what + ": launch on another stream");
            launches.push_back(e);
        }
    }
    CHECK_MSG(copies == (inPlace ? 0 : l.call.numOutputs() - 1), what + ": " + std::to_string(copies) + " copies");
    CHECK_MSG(!launches.empty(), what + ": no launch");
    return launches;
}

std::vector<CacheCall> sweep()
{
    std::vector<CacheCall> calls;
    for (DataType t : {DataType::kHALF, DataType::kBF16})
    {
        for (int32_t kv : {0, 1})
        {
            calls.push_back({3, 1, 4, 32, 8, 64, kv, 9, 64, 2, 128, t});      // tiny, decode
            calls.push_back({2, 7, 4, 32, 8, 16, kv, 20, 16, 8, 128, t});     // 16-row pages, prefill
            calls.push_back({4, 1, 16, 512, 64, 64, kv, 300, 64, 32, 2048, t}); // DeepSeek's latent sizes
        }
        calls.push_back({3, 2, 4, 32, 8, 0, 1, 3, 64, 1, 64, t}); // contiguous FP8
    }
    return calls;
}

void testSweep()
{
    int32_t runs = 0;
    for (CacheCall const& k : sweep())
    {
        for (bool inPlace : {true, false})
        {
            fake::reset();
            plugin::MlaAttentionPlugin p(attributesOf(k));
            CHECK(p.getNbOutputs() == k.numOutputs());
            Launch l(k, inPlace);
            int32_t const status = l.run(p);
            CHECK_MSG(status == 0, describe(k, inPlace) + ": enqueue returned " + std::to_string(status));
            // RoPE + append and attention, then the combine when the cache is split.
            size_t const launches = checkCopies(l, inPlace, fake::events()).size();
            CHECK_MSG(launches == 2 || launches == 3, describe(k, inPlace) + ": " + std::to_string(launches));
            ++runs;
        }
    }
    std::printf("cache launch sweep: %d enqueues\n", runs);
    CHECK(runs == 2 * static_cast<int32_t>(sweep().size()));
}

// A present plane bound to its past buffer (TensorRT's declared alias) is never copied: every plane of the FP8
// cache is its own alias pair, and attn_latent aliases nothing.
void testAliases()
{
    CacheCall const k = sweep()[3]; // FP8, paged
    plugin::MlaAttentionPlugin p(attributesOf(k));
    auto* build = static_cast<nvinfer1::IPluginV3OneBuildV2*>(p.getCapabilityInterface(nvinfer1::PluginCapabilityType::kBUILD));
    CHECK(build->getAliasedInput(c::kAttnLatent) == -1);
    CHECK(build->getAliasedInput(c::kPresentCache) == c::kPastCache);
    CHECK(build->getAliasedInput(c::kPresentScale) == c::kPastScale);
    CHECK(build->getAliasedInput(c::kPresentRope) == c::kPastRope);
    CHECK(build->getAliasedInput(4) == -1 && build->getAliasedInput(-1) == -1);
    plugin::MlaAttentionPlugin paged(attributesOf(sweep()[0]));
    auto* pagedBuild = static_cast<nvinfer1::IPluginV3OneBuildV2*>(
        paged.getCapabilityInterface(nvinfer1::PluginCapabilityType::kBUILD));
    CHECK(pagedBuild->getAliasedInput(c::kPresentCache) == c::kPastCache);
    CHECK(pagedBuild->getAliasedInput(c::kPresentScale) == -1); // a pool in T has two outputs
    // Only one plane in place: only the others are copied.
    fake::reset();
    Launch l(k, false);
    l.outputs[c::kPresentScale] = const_cast<void*>(l.inputs[c::kPastScale]);
    CHECK(l.run(p) == 0);
    auto const copies = fake::eventsOf(fake::Kind::kMemcpy);
    CHECK(copies.size() == 2);
    for (fake::Event const& e : copies)
    {
        CHECK(e.src != reinterpret_cast<uintptr_t>(l.inputs[c::kPastScale]));
    }
}

void testRefusals()
{
    CacheCall const k = sweep()[3]; // FP8, paged
    fake::reset();
    plugin::MlaAttentionPlugin p(attributesOf(k));
    struct Bad
    {
        char const* what;
        std::function<void(Launch&)> spoil;
    };
    std::vector<Bad> const bad = {
        {"page rows differ from page_size", [](Launch& l) { l.in[c::kPastCache].dims.d[1] = 32; }},
        {"codes wider than kv_lora_rank", [](Launch& l) { l.in[c::kPastCache].dims.d[2] += 64; }},
        {"a scale plane of other pages", [](Launch& l) { l.in[c::kPastScale].dims.d[0] -= 1; }},
        {"a scale per 64 values", [](Launch& l) { l.in[c::kPastScale].dims.d[2] *= 2; }},
        {"a rope plane of other rows", [](Launch& l) { l.in[c::kPastRope].dims.d[1] = 16; }},
        {"a block table of another batch", [](Launch& l) { l.in[c::kBlockTable].dims.d[0] += 1; }},
        {"past_cache in T", [](Launch& l) { l.in[c::kPastCache].type = l.call.type; }},
        {"past_scale in T", [](Launch& l) { l.in[c::kPastScale].type = l.call.type; }},
        {"block_table as float", [](Launch& l) { l.in[c::kBlockTable].type = DataType::kFLOAT; }},
        {"present_scale of another shape", [](Launch& l) { l.out[c::kPresentScale].dims.d[1] = 1; }},
        {"present_rope in float32", [](Launch& l) { l.out[c::kPresentRope].type = DataType::kFLOAT; }},
        {"more new tokens than the table's pages hold",
            [](Launch& l) {
                for (int32_t i : {c::kQLatent, c::kQPe, c::kKvLatent, c::kKPe})
                {
                    l.in[i].dims.d[1] = l.call.maxPages * l.call.page + 1;
                }
                l.out[c::kAttnLatent] = l.in[c::kQLatent];
            }},
    };
    for (Bad const& b : bad)
    {
        Launch l(k, true);
        b.spoil(l);
        gLogger.messages.clear();
        CHECK_MSG(p.enqueue(l.in, l.out, l.inputs, l.outputs, reinterpret_cast<void*>(kWorkspace), kStream) == -1,
            b.what);
        CHECK_MSG(gLogger.contains("MlaAttention", nvinfer1::ILogger::Severity::kERROR), b.what);
    }
    // A version-1 call (7 inputs, 2 outputs) on a node with the FP8 cache: refused by count.
    Launch l(k, true);
    gLogger.messages.clear();
    CHECK(p.onShapeChange(l.in, c::kNumInputs, l.out, c::kNumOutputs) == -1);
    CHECK(gLogger.contains("expected 10 inputs and 4 outputs", nvinfer1::ILogger::Severity::kERROR));
    CHECK(fake::eventsOf(fake::Kind::kLaunch).empty() && fake::eventsOf(fake::Kind::kMemcpy).empty());
    // A misaligned scale plane.
    Launch m(k, false);
    m.inputs[c::kPastScale] = static_cast<char const*>(m.inputs[c::kPastScale]) + 4;
    gLogger.messages.clear();
    CHECK(m.run(p) == -1);
    CHECK(gLogger.contains("tensor past_scale is null or not 16-byte aligned", nvinfer1::ILogger::Severity::kERROR));
    // A failing copy of the rope plane: nonzero, no launch, named.
    fake::reset();
    plugin::MlaAttentionPlugin q(attributesOf(k));
    fake::failCall("cuMemcpyDtoDAsync", CUDA_ERROR_ILLEGAL_ADDRESS, 2);
    gLogger.messages.clear();
    Launch n(k, false);
    CHECK(n.run(q) == -1);
    CHECK(fake::eventsOf(fake::Kind::kLaunch).empty());
    CHECK(gLogger.contains("copying past_rope to present_rope (cuMemcpyDtoDAsync) failed",
        nvinfer1::ILogger::Severity::kERROR));
}

// The address a "p:" token names for launch `l`; false for "p:*" (any).
bool expectedPointer(std::string const& what, Launch const& l, uint64_t& out)
{
    if (what == "*")
    {
        return false;
    }
    if (what == "null")
    {
        out = 0;
        return true;
    }
    if (what.rfind("ws+", 0) == 0)
    {
        out = kWorkspace + std::stoull(what.substr(3));
        return true;
    }
    for (int32_t o = 0; o < l.call.numOutputs(); ++o)
    {
        if (what == c::kCacheOutputNames[o] || (what == "present" && o == c::kPresentCache))
        {
            out = reinterpret_cast<uintptr_t>(l.outputs[o]);
            return true;
        }
    }
    for (int32_t i = 0; i < l.call.numInputs(); ++i)
    {
        if (what == c::kCacheInputNames[i])
        {
            out = reinterpret_cast<uintptr_t>(l.inputs[i]);
            return true;
        }
    }
    out = ~uint64_t{0}; // unknown name: never matches
    return true;
}

// Expectations (tests/plugin_helpers.py, write_mla_cache_launch_plan):
//   case B S H Dc Dr page kv P rows max_pages rope_rows dtype(0 fp32, 1 fp16, 2 bf16) numSms
//   launch ...   (one line per planned launch, in order: launchPlan.h, with wildcards)
int32_t compareWithPlan(char const* path)
{
    struct Planned
    {
        CacheCall call;
        int32_t numSms;
        std::vector<testutil::PlannedLaunch> launches;
    };
    std::vector<Planned> plans;
    auto const readCase = [&plans](std::istream& s) {
        Planned p{};
        int32_t dtype = 0;
        CacheCall& k = p.call;
        s >> k.batch >> k.tokens >> k.heads >> k.rank >> k.rope >> k.page >> k.kvDtype >> k.pages >> k.rows
            >> k.maxPages >> k.ropeRows >> dtype >> p.numSms;
        k.type = dtype == 0 ? DataType::kFLOAT : (dtype == 1 ? DataType::kHALF : DataType::kBF16);
        plans.push_back(p);
    };
    if (!testutil::readPlanFile(
            path, readCase, [&plans](testutil::PlannedLaunch launch) { plans.back().launches.push_back(launch); }))
    {
        return -1;
    }
    for (Planned const& plan : plans)
    {
        for (bool inPlace : {true, false})
        {
            fake::reset();
            fake::setDevice(90, plan.numSms);
            plugin::MlaAttentionPlugin p(attributesOf(plan.call, kPlanSoftmaxScale));
            Launch l(plan.call, inPlace);
            CHECK_MSG(l.run(p) == 0, describe(plan.call, inPlace));
            checkCopies(l, inPlace, fake::events());
            testutil::checkLaunches(fake::eventsOf(fake::Kind::kLaunch), plan.launches, describe(plan.call, inPlace),
                [&l](std::string const& name, uint64_t& address) { return expectedPointer(name, l, address); },
                /*wildcards=*/true);
        }
    }
    std::printf("compared %zu planned cache calls\n", plans.size());
    return static_cast<int32_t>(plans.size());
}
} // namespace

int main(int argc, char** argv)
{
    return testutil::runTests("test_mla_cache_launch", gLogger,
        {testSweep, testAliases, testRefusals, [&] {
             if (argc > 1)
             {
                 CHECK(compareWithPlan(argv[1]) > 0);
             }
         }});
}
