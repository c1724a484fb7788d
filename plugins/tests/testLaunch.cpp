/*
 * The plugin's launch path on a fake CUDA driver: for a sweep of tensor descriptors, in both cache
 * modes (present bound to past's buffer, as TensorRT does for the declared alias: in place; separate
 * buffers: copy first), enqueue must
 *   - load the kernel module once per plugin object (per context) and unload it on destruction,
 *   - copy past -> present (cuMemcpyDtoDAsync, whole cache, on the stream) only when the addresses
 *     differ, and before any launch,
 *   - launch on the given stream with the tensors' addresses and dims,
 *   - refuse bad descriptors and report every failing driver call (return nonzero, error recorder).
 * With an expectations file (argv[1], written by tests/test_plugin.py from the Python API's launch
 * plan) the recorded launches must equal the planned ones.
 */
#include "fakeCuda.h"
#include "launchPlan.h"
#include "mlaAttentionPlugin.h"
#include "mlaContract.h"
#include "testPlugin.h"
#include "testUtil.h"

#include <cstdio>
#include <map>
#include <memory>
#include <sstream>
#include <vector>

using namespace mla;
using nvinfer1::DataType;
namespace c = mla::contract;

namespace
{
testutil::CapturingLogger gLogger;

struct Call
{
    int32_t batch, tokens, heads, rank, rope, maxSeqLen;
    DataType type;
};

size_t elementSize(DataType t)
{
    return t == DataType::kFLOAT ? 4 : 2;
}

uintptr_t const kInputBase = 0x7f0000000000;
uintptr_t const kPresentSeparate = 0x7f8000000000;
uintptr_t const kAttnOut = 0x7f9000000000;
uintptr_t const kWorkspace = 0x7fa000000000;
CUstream const kStream = reinterpret_cast<CUstream>(0x5151);

// Descriptors, pointers and the enqueue of one call. Returns enqueue's status.
struct Launch
{
    nvinfer1::PluginTensorDesc in[7]{};
    nvinfer1::PluginTensorDesc out[2]{};
    void const* inputs[7]{};
    void* outputs[2]{};

    Launch(Call const& k, bool inPlace)
    {
        std::vector<std::vector<int64_t>> const shapes = {{k.batch, k.tokens, k.heads, k.rank},
            {k.batch, k.tokens, k.heads, k.rope}, {k.batch, k.tokens, k.rank}, {k.batch, k.tokens, k.rope},
            {k.batch, k.maxSeqLen, k.rank + k.rope}, {k.batch}, {k.maxSeqLen, k.rope}};
        for (int32_t i = 0; i < 7; ++i)
        {
            in[i].dims.nbDims = static_cast<int32_t>(shapes[i].size());
            for (size_t a = 0; a < shapes[i].size(); ++a)
            {
                in[i].dims.d[a] = shapes[i][a];
            }
            in[i].type = i == c::kCacheSeqlensIn ? DataType::kINT32 : (i == c::kRopeCosSin ? DataType::kFLOAT : k.type);
            in[i].format = nvinfer1::TensorFormat::kLINEAR;
            inputs[i] = reinterpret_cast<void const*>(kInputBase + (static_cast<uintptr_t>(i) << 32));
        }
        out[0] = in[c::kQLatent];
        out[1] = in[c::kPastCache];
        outputs[0] = reinterpret_cast<void*>(kAttnOut);
        outputs[1] = inPlace ? const_cast<void*>(inputs[c::kPastCache]) : reinterpret_cast<void*>(kPresentSeparate);
    }

    int32_t run(nvinfer1::IPluginV3OneRuntime& p)
    {
        if (p.onShapeChange(in, 7, out, 2) != 0)
        {
            return -2;
        }
        return p.enqueue(in, out, inputs, outputs, reinterpret_cast<void*>(kWorkspace), kStream);
    }
};

std::string describe(Call const& k, bool inPlace)
{
    std::ostringstream s;
    s << "B=" << k.batch << " S=" << k.tokens << " H=" << k.heads << " Dc=" << k.rank << " Dr=" << k.rope
      << " Smax=" << k.maxSeqLen << " T=" << static_cast<int>(k.type) << (inPlace ? " in-place" : " copy");
    return s.str();
}

// Checks one enqueue's events (from the first one after the module load) and returns its launches.
std::vector<fake::Event> checkCall(Call const& k, bool inPlace, Launch const& l, std::vector<fake::Event> const& ev)
{
    std::string const what = describe(k, inPlace);
    std::vector<fake::Event> launches;
    int32_t copies = 0;
    for (fake::Event const& e : ev)
    {
        if (e.kind == fake::Kind::kMemcpy)
        {
            ++copies;
            CHECK_MSG(launches.empty(), what + ": past -> present copy after a launch");
            CHECK_MSG(e.dst == kPresentSeparate, what);
            CHECK_MSG(e.src == reinterpret_cast<uintptr_t>(l.inputs[c::kPastCache]), what);
            CHECK_MSG(e.bytes
                    == static_cast<uint64_t>(k.batch) * k.maxSeqLen * (k.rank + k.rope) * elementSize(k.type),
                what + ": copied " + std::to_string(e.bytes) + " bytes");
            CHECK_MSG(e.stream == kStream, what);
        }
        else if (e.kind == fake::Kind::kLaunch)
        {
            CHECK_MSG(e.stream == kStream, what + ": launch on another stream");
            launches.push_back(e);
        }
    }
    CHECK_MSG(copies == (inPlace ? 0 : 1), what + ": " + std::to_string(copies) + " copies");
    CHECK_MSG(!launches.empty(), what + ": no launch");
    return launches;
}

std::vector<Call> sweep()
{
    std::vector<Call> calls;
    for (DataType t : {DataType::kHALF, DataType::kBF16, DataType::kFLOAT})
    {
        for (int32_t batch : {1, 3, 8})
        {
            for (int32_t tokens : {1, 2, 5})
            {
                calls.push_back({batch, tokens, 4, 32, 8, 64, t});     // the tiny preset's head shape
                calls.push_back({batch, tokens, 16, 512, 64, 2048, t}); // DeepSeek's latent sizes
            }
        }
    }
    calls.push_back({2, 64, 128, 512, 64, 4096, DataType::kBF16}); // a prefill chunk, 128 heads
    return calls;
}

// The first descriptor set of the sweep the kernels support (the failure tests use it).
Call supportedCall()
{
    for (Call const& k : sweep())
    {
        kernels::DataType dtype{};
        plugin::toKernelType(k.type, dtype);
        if (kernels::supported(kernels::Dims{k.batch, k.tokens, k.heads, k.rank, k.rope, k.maxSeqLen, dtype, 0.125F}, nullptr))
        {
            return k;
        }
    }
    CHECK_MSG(false, "the kernels support no descriptor set of the sweep");
    return sweep().front();
}

plugin::MlaAttributes attributesOf(Call const& k)
{
    return plugin::MlaAttributes{k.heads, k.rank, k.rope, 0.125F};
}

void testSweep()
{
    fake::reset();
    auto p = std::make_unique<plugin::MlaAttentionPlugin>(plugin::MlaAttributes{4, 32, 8, 0.125F});
    auto q = std::make_unique<plugin::MlaAttentionPlugin>(plugin::MlaAttributes{16, 512, 64, 0.07F});
    auto r = std::make_unique<plugin::MlaAttentionPlugin>(plugin::MlaAttributes{128, 512, 64, 0.07F});
    int32_t runs = 0;
    int32_t unsupported = 0;
    std::map<plugin::MlaAttentionPlugin*, int32_t> loads; // images loaded per plugin object
    for (Call const& k : sweep())
    {
        plugin::MlaAttentionPlugin& target = k.heads == 4 ? *p : (k.heads == 16 ? *q : *r);
        kernels::DataType dtype{};
        plugin::toKernelType(k.type, dtype);
        kernels::Dims const kd{k.batch, k.tokens, k.heads, k.rank, k.rope, k.maxSeqLen, dtype, 0.125F};
        if (!kernels::supported(kd, nullptr))
        {
            // Shapes the kernels have no specialization for: refused before any launch or copy.
            ++unsupported;
            size_t const first = fake::events().size();
            Launch l(k, false);
            CHECK_MSG(l.run(target) == -1, describe(k, false));
            CHECK(fake::events().size() == first);
            continue;
        }
        for (bool inPlace : {true, false})
        {
            size_t const first = fake::events().size();
            Launch l(k, inPlace);
            int32_t const status = l.run(target);
            CHECK_MSG(status == 0, describe(k, inPlace) + ": enqueue returned " + std::to_string(status));
            auto ev = fake::eventsSince(first);
            std::vector<fake::Event> afterLoad;
            int32_t loadsNow = 0;
            for (auto const& e : ev)
            {
                if (e.kind == fake::Kind::kModuleLoad)
                {
                    ++loadsNow;
                }
                else if (e.kind != fake::Kind::kGetFunction)
                {
                    afterLoad.push_back(e);
                }
            }
            // The kernel images are loaded by the first enqueue of a plugin object only.
            bool const firstUse = loads.count(&target) == 0;
            CHECK_MSG(firstUse ? loadsNow > 0 : loadsNow == 0,
                describe(k, inPlace) + ": " + std::to_string(loadsNow) + " module loads");
            loads[&target] += loadsNow;
            checkCall(k, inPlace, l, afterLoad);
            ++runs;
        }
    }
    std::printf("launch sweep: %d enqueues, %d descriptor sets without a kernel\n", runs, unsupported);
    CHECK(runs > 0);
    // Modules stay loaded while their plugin object lives, and are unloaded with it.
    int32_t total = 0;
    for (auto const& entry : loads)
    {
        total += entry.second;
    }
    CHECK(fake::liveModules() == total);
    int32_t const ofP = loads.count(p.get()) ? loads[p.get()] : 0;
    p.reset();
    CHECK(fake::liveModules() == total - ofP);
    q.reset();
    r.reset();
    CHECK(fake::liveModules() == 0);
    CHECK(runs + 2 * unsupported == 2 * static_cast<int32_t>(sweep().size()));
}

void testModulePerContext()
{
    fake::reset();
    Call const k = supportedCall();
    plugin::MlaAttentionPlugin built(attributesOf(k));
    testutil::CapturingRecorder recorder;
    testutil::RecordingContext context(&recorder);
    std::unique_ptr<nvinfer1::IPluginV3> a(built.attachToContext(&context));
    std::unique_ptr<nvinfer1::IPluginV3> b(built.attachToContext(&context));
    auto* ra = testutil::runtimeOf(a.get());
    auto* rb = testutil::runtimeOf(b.get());
    size_t perContext = 0;
    for (int32_t i = 0; i < 3; ++i)
    {
        Launch l(k, true);
        CHECK(l.run(*ra) == 0);
        if (i == 0)
        {
            perContext = fake::eventsOf(fake::Kind::kModuleLoad).size(); // images of one Module::load
            CHECK(perContext > 0);
        }
        Launch m(k, false);
        CHECK(m.run(*rb) == 0);
    }
    // Each context (attached plugin object) loads the kernels once, for itself.
    CHECK(fake::eventsOf(fake::Kind::kModuleLoad).size() == 2 * perContext);
    CHECK(fake::liveModules() == static_cast<int32_t>(2 * perContext));
    a.reset();
    b.reset();
    CHECK(fake::liveModules() == 0);
    CHECK(recorder.errors.empty());

    // A failing driver call reaches the context's error recorder.
    std::unique_ptr<nvinfer1::IPluginV3> d(built.attachToContext(&context));
    auto* rd = testutil::runtimeOf(d.get());
    size_t const launchesBefore = fake::eventsOf(fake::Kind::kLaunch).size();
    CHECK(launchesBefore >= 6);
    for (int32_t nth = 0; nth < 4; ++nth) // every image the loader may try (cubin, then PTX, ...)
    {
        fake::failCall("cuModuleLoadData", CUDA_ERROR_NO_BINARY_FOR_GPU, nth);
    }
    Launch l(k, true);
    CHECK(l.run(*rd) != 0);
    CHECK(recorder.errors.size() == 1 && recorder.errors[0].second.find("loading the kernel module") != std::string::npos);
    CHECK(recorder.errors.size() == 1 && recorder.errors[0].first == nvinfer1::ErrorCode::kFAILED_EXECUTION);
    size_t const loads = fake::eventsOf(fake::Kind::kModuleLoad).size();
    CHECK(l.run(*rd) != 0); // not retried: reported once
    CHECK(fake::eventsOf(fake::Kind::kModuleLoad).size() == loads);
    CHECK(fake::eventsOf(fake::Kind::kLaunch).size() == launchesBefore);
    d.reset();
    CHECK(fake::liveModules() == 0); // nothing half-loaded is left behind
}

// Decode steps as TensorRT runs an engine built with aliased plugin I/O: the build capability says
// which input each output aliases, TensorRT hands the plugin that input's buffer for the output, and
// enqueue launches the kernels with no past -> present copy and nothing written over the cache
// except by the kernels. The same steps with separate buffers (an engine built without the preview
// feature) copy the whole cache once per step, before the launches.
void testAliasedDecodeSteps()
{
    Call const k = supportedCall();
    plugin::MlaAttentionPlugin built(attributesOf(k));
    auto* build = static_cast<nvinfer1::IPluginV3OneBuildV2*>(
        built.getCapabilityInterface(nvinfer1::PluginCapabilityType::kBUILD));
    int32_t const aliased = build->getAliasedInput(c::kPresentCache);
    CHECK(aliased == c::kPastCache && build->getAliasedInput(c::kAttnLatent) == -1);
    size_t const cacheBytes
        = static_cast<size_t>(k.batch) * k.maxSeqLen * (k.rank + k.rope) * elementSize(k.type);
    int32_t const steps = 4;
    size_t launchesPerStep[2] = {0, 0};
    for (bool declared : {true, false})
    {
        fake::reset();
        std::unique_ptr<nvinfer1::IPluginV3> attached(built.attachToContext(nullptr));
        auto* runtime = testutil::runtimeOf(attached.get());
        for (int32_t step = 0; step < steps; ++step)
        {
            size_t const first = fake::events().size();
            Launch l(k, false);
            if (declared)
            {
                l.outputs[c::kPresentCache] = const_cast<void*>(l.inputs[aliased]); // TensorRT binds the alias
            }
            CHECK(l.run(*runtime) == 0);
            int32_t copies = 0;
            size_t launches = 0;
            uint64_t const cache = reinterpret_cast<uintptr_t>(l.outputs[c::kPresentCache]);
            for (fake::Event const& e : fake::eventsSince(first))
            {
                if (e.kind == fake::Kind::kMemcpy)
                {
                    ++copies;
                    CHECK(launches == 0 && e.bytes == cacheBytes && e.dst == cache);
                }
                else if (e.kind == fake::Kind::kMemset)
                {
                    CHECK_MSG(e.dst + e.bytes <= cache || e.dst >= cache + cacheBytes, "memset over the cache");
                }
                else if (e.kind == fake::Kind::kLaunch)
                {
                    ++launches;
                }
            }
            std::string const what = std::string(declared ? "aliased" : "separate buffers") + ", step "
                + std::to_string(step) + ": " + std::to_string(copies) + " copies";
            CHECK_MSG(copies == (declared ? 0 : 1), what);
            CHECK(launches > 0);
            launchesPerStep[declared ? 0 : 1] = launches;
        }
        CHECK(fake::eventsOf(fake::Kind::kMemcpy).size() == (declared ? 0u : static_cast<size_t>(steps)));
    }
    CHECK(launchesPerStep[0] == launchesPerStep[1]); // the same kernels either way
}

void testFailures()
{
    Call const k = supportedCall();
    {
        // A failing copy: no launch, nonzero.
        fake::reset();
        plugin::MlaAttentionPlugin p(attributesOf(k));
        fake::failCall("cuMemcpyDtoDAsync", CUDA_ERROR_ILLEGAL_ADDRESS);
        gLogger.messages.clear();
        Launch l(k, false);
        CHECK(l.run(p) == -1);
        CHECK(fake::eventsOf(fake::Kind::kLaunch).empty());
        CHECK(gLogger.contains("copying past_cache to present_cache (cuMemcpyDtoDAsync) failed: FAKE_CUDA_ERROR_700",
            nvinfer1::ILogger::Severity::kERROR));
        // The next call works.
        Launch m(k, false);
        CHECK(m.run(p) == 0);
    }
    {
        fake::reset();
        plugin::MlaAttentionPlugin p(attributesOf(k));
        fake::failCall("cuLaunchKernel", CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES);
        gLogger.messages.clear();
        Launch l(k, true);
        CHECK(l.run(p) == -1);
        CHECK(gLogger.contains("launching the kernels failed", nvinfer1::ILogger::Severity::kERROR));
    }
    {
        // Bad descriptors: refused before any driver call.
        fake::reset();
        plugin::MlaAttentionPlugin p(attributesOf(k));
        Launch l(k, true);
        l.in[c::kKPe].dims.d[2] = 16;
        CHECK(p.enqueue(l.in, l.out, l.inputs, l.outputs, nullptr, kStream) == -1);
        CHECK(p.onShapeChange(l.in, 7, l.out, 2) == -1);
        Launch m(k, true);
        m.out[c::kPresentCache].dims.d[1] = 32;
        CHECK(p.enqueue(m.in, m.out, m.inputs, m.outputs, nullptr, kStream) == -1);
        Launch n(k, true);
        n.in[c::kQPe].type = DataType::kBF16;
        CHECK(p.enqueue(n.in, n.out, n.inputs, n.outputs, nullptr, kStream) == -1);
        Launch o(k, true);
        o.out[c::kAttnLatent].type = DataType::kFLOAT;
        CHECK(p.enqueue(o.in, o.out, o.inputs, o.outputs, nullptr, kStream) == -1);
        CHECK(p.enqueue(nullptr, o.out, o.inputs, o.outputs, nullptr, kStream) == -1);
        Launch misaligned(k, true);
        misaligned.inputs[c::kQPe] = static_cast<char const*>(misaligned.inputs[c::kQPe]) + 2;
        gLogger.messages.clear();
        CHECK(p.enqueue(misaligned.in, misaligned.out, misaligned.inputs, misaligned.outputs, nullptr, kStream) == -1);
        CHECK(gLogger.contains("tensor q_pe is null or not 16-byte aligned", nvinfer1::ILogger::Severity::kERROR));
        CHECK(fake::events().empty());
    }
}

// Expectations written by tests/test_plugin.py from the Python API's plan:
//   case B S H Dc Dr Smax dtype(0 fp32, 1 fp16, 2 bf16) numSms
//   launch ...   (one line per planned launch, in order: launchPlan.h, with wildcards)
// where the pointers of the arguments are p:<tensor>: q_latent q_pe kv_latent k_pe cache_seqlens rope_cos_sin
// past (inputs), present attn_latent (outputs), ws+<bytes> (workspace offset), null; p:* any pointer.
float const kPlanSoftmaxScale = 0.1F;

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
    if (what == "present" || what == "attn_latent")
    {
        out = reinterpret_cast<uintptr_t>(l.outputs[what == "present" ? c::kPresentCache : c::kAttnLatent]);
        return true;
    }
    for (int32_t i = 0; i < c::kNumInputs; ++i)
    {
        if (what == c::kInputNames[i] || (what == "past" && i == c::kPastCache))
        {
            out = reinterpret_cast<uintptr_t>(l.inputs[i]);
            return true;
        }
    }
    out = ~uint64_t{0}; // unknown name: never matches
    return true;
}

int32_t compareWithPlan(char const* path)
{
    struct Planned
    {
        Call call;
        int32_t numSms;
        std::vector<testutil::PlannedLaunch> launches;
    };
    std::vector<Planned> plans;
    auto const readCase = [&plans](std::istream& s) {
        Planned p{};
        int32_t dtype = 0;
        s >> p.call.batch >> p.call.tokens >> p.call.heads >> p.call.rank >> p.call.rope >> p.call.maxSeqLen >> dtype
            >> p.numSms;
        p.call.type = dtype == 0 ? DataType::kFLOAT : (dtype == 1 ? DataType::kHALF : DataType::kBF16);
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
            plugin::MlaAttentionPlugin p(
                plugin::MlaAttributes{plan.call.heads, plan.call.rank, plan.call.rope, kPlanSoftmaxScale});
            Launch l(plan.call, inPlace);
            CHECK(l.run(p) == 0);
            testutil::checkLaunches(fake::eventsOf(fake::Kind::kLaunch), plan.launches, describe(plan.call, inPlace),
                [&l](std::string const& name, uint64_t& address) { return expectedPointer(name, l, address); },
                /*wildcards=*/true);
        }
    }
    std::printf("compared %zu planned calls\n", plans.size());
    return static_cast<int32_t>(plans.size());
}
} // namespace

int main(int argc, char** argv)
{
    return testutil::runTests("test_mla_launch", gLogger,
        {testSweep, testModulePerContext, testAliasedDecodeSteps, testFailures, [&] {
             if (argc > 1)
             {
                 CHECK(compareWithPlan(argv[1]) > 0);
             }
         }});
}
