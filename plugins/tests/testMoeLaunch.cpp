/*
 * The DeepseekMoE plugin's launch path on a fake CUDA driver. For a sweep of tensor descriptors (experts in T, 5
 * inputs, and FP8 experts with their block scales, 7 inputs), enqueue must
 *   - load the MoE kernel module once per plugin object (per context) and unload it on destruction,
 *   - launch on the given stream, seven kernels per chunk of at most chunkTokens() tokens, and nothing else
 *     (no copy, no memset, no host sync: the alignment runs on the device),
 *   - refuse bad descriptors before any driver call and report every failing driver call.
 * With an expectations file (argv[1], written by tests/plugin_helpers.py from mla_export.kernels.moe.plan) the
 * recorded launches must equal the planned ones: kernel, grid, block, shared memory, every argument. Cases whose
 * case line ends in 1 have FP8 experts (contract version 2): they run through the plugin's 7-input descriptors,
 * the block scales included in the expected arguments; cases with two more fields (first_expert, E_local) are a
 * rank's slice of the experts (contract version 3).
 */
#include "deepseekMoePlugin.h"
#include "fakeCuda.h"
#include "launchPlan.h"
#include "moeContract.h"
#include "testPlugin.h"
#include "testUtil.h"

#include <cstdio>
#include <memory>
#include <sstream>
#include <vector>

using namespace mla;
using nvinfer1::DataType;
namespace c = mla::moe_contract;

namespace
{
testutil::CapturingLogger gLogger;

struct Call
{
    int64_t batch, tokens, hidden, inter;
    plugin::MoeAttributes attrs;
    DataType type;
    bool fp8{false}; //!< FP8 experts: 7 inputs
    int64_t localExperts{0}; //!< E_local of the expert stacks (a rank's slice from attrs.firstExpert); 0: all
};

int64_t blocks(int64_t extent)
{
    return (extent + 127) / 128;
}

uintptr_t const kInputBase = 0x7f0000000000;
uintptr_t const kOutput = 0x7f9000000000;
uintptr_t const kWorkspace = 0x7fa000000000;
CUstream const kStream = reinterpret_cast<CUstream>(0x5151);

struct Launch
{
    int32_t count;
    nvinfer1::PluginTensorDesc in[7]{};
    nvinfer1::PluginTensorDesc out[1]{};
    void const* inputs[7]{};
    void* outputs[1]{};

    explicit Launch(Call const& k)
        : count(k.fp8 ? c::kNumInputs : c::kNumInputsTExperts)
    {
        int64_t const e = k.attrs.numExperts;
        int64_t const held = k.localExperts > 0 ? k.localExperts : e;
        std::vector<std::vector<int64_t>> const shapes = {{k.batch, k.tokens, k.hidden}, {e, k.hidden}, {e},
            {held, 2 * k.inter, k.hidden}, {held, k.hidden, k.inter}, {held, blocks(2 * k.inter), blocks(k.hidden)},
            {held, blocks(k.hidden), blocks(k.inter)}};
        for (int32_t i = 0; i < count; ++i)
        {
            in[i].dims.nbDims = static_cast<int32_t>(shapes[i].size());
            for (size_t a = 0; a < shapes[i].size(); ++a)
            {
                in[i].dims.d[a] = shapes[i][a];
            }
            bool const experts = i == c::kGateUpProj || i == c::kDownProj;
            in[i].type = k.fp8 && experts ? DataType::kFP8
                                          : (experts || i == c::kHiddenStates ? k.type : DataType::kFLOAT);
            in[i].format = nvinfer1::TensorFormat::kLINEAR;
            inputs[i] = reinterpret_cast<void const*>(kInputBase + (static_cast<uintptr_t>(i) << 36));
        }
        out[0] = in[c::kHiddenStates];
        outputs[0] = reinterpret_cast<void*>(kOutput);
    }

    int32_t run(nvinfer1::IPluginV3OneRuntime& p)
    {
        if (p.onShapeChange(in, count, out, 1) != 0)
        {
            return -2;
        }
        return p.enqueue(in, out, inputs, outputs, reinterpret_cast<void*>(kWorkspace), kStream);
    }

    kernels::moe::Dims kernelDims(plugin::MoeAttributes const& attrs, kernels::DataType dtype) const
    {
        nvinfer1::Dims shapes[7];
        for (int32_t i = 0; i < count; ++i)
        {
            shapes[i] = in[i].dims;
        }
        return plugin::moeKernelDims(attrs, shapes, count, dtype);
    }
};

std::string describe(Call const& k)
{
    std::ostringstream s;
    s << "B=" << k.batch << " S=" << k.tokens << " d=" << k.hidden << " I=" << k.inter << " E=" << k.attrs.numExperts
      << " K=" << k.attrs.topK << " T=" << static_cast<int>(k.type) << (k.fp8 ? " FP8 experts" : "");
    if (k.localExperts > 0)
    {
        s << " experts " << k.attrs.firstExpert << ".." << k.attrs.firstExpert + k.localExperts - 1;
    }
    return s.str();
}

plugin::MoeAttributes const kTinyMoe{8, 2, 4, 2, 1, 1, 1, 1, 2.5F};
plugin::MoeAttributes const kLite{64, 6, 1, 1, 0, 0, 0, 0, 1.F};
plugin::MoeAttributes const kV3{256, 8, 8, 4, 1, 1, 1, 1, 2.5F};
plugin::MoeAttributes const kTinyMoeRank1{8, 2, 4, 2, 1, 1, 1, 1, 2.5F, 4}; // --tp 2, rank 1: experts 4 .. 7

std::vector<Call> sweep()
{
    std::vector<Call> calls;
    for (bool fp8 : {false, true})
    {
        for (DataType t : {DataType::kHALF, DataType::kBF16, DataType::kFLOAT})
        {
            for (int64_t batch : {1, 3})
            {
                for (int64_t tokens : {1, 5, 700})
                {
                    calls.push_back({batch, tokens, 64, 32, kTinyMoe, t, fp8});
                    calls.push_back({batch, tokens, 2048, 1408, kLite, t, fp8});
                }
            }
        }
        calls.push_back({2, 4097, 7168, 2048, kV3, DataType::kBF16, fp8}); // three chunks
        calls.push_back({3, 5, 64, 32, kTinyMoeRank1, DataType::kHALF, fp8, 4}); // a rank's slice
        calls.push_back({1, 3, 24, 32, kTinyMoe, DataType::kHALF, fp8});   // d not a multiple of 16: no kernel
    }
    return calls;
}

void testSweep()
{
    int32_t runs = 0;
    int32_t unsupported = 0;
    for (Call const& k : sweep())
    {
        fake::reset();
        auto p = std::make_unique<plugin::DeepseekMoePlugin>(k.attrs);
        kernels::DataType dtype{};
        Launch l(k);
        bool const ok = plugin::toKernelType(k.type, dtype) && kernels::moe::supported(l.kernelDims(k.attrs, dtype), nullptr);
        if (!ok)
        {
            ++unsupported;
            CHECK_MSG(l.run(*p) == -1, describe(k));
            CHECK_MSG(fake::events().empty(), describe(k) + ": a driver call before the refusal");
            continue;
        }
        for (int32_t repeat = 0; repeat < 2; ++repeat)
        {
            size_t const first = fake::events().size();
            CHECK_MSG(l.run(*p) == 0, describe(k));
            size_t loads = 0;
            size_t launches = 0;
            for (fake::Event const& e : fake::eventsSince(first))
            {
                if (e.kind == fake::Kind::kModuleLoad)
                {
                    ++loads;
                }
                else if (e.kind == fake::Kind::kLaunch)
                {
                    ++launches;
                    CHECK_MSG(e.stream == kStream, describe(k) + ": launch on another stream");
                    CHECK_MSG(e.name.rfind("moe_", 0) == 0, describe(k) + ": launched " + e.name);
                }
                else
                {
                    CHECK_MSG(e.kind == fake::Kind::kGetFunction || e.kind == fake::Kind::kFuncSetAttribute,
                        describe(k) + ": a driver call other than loads and launches");
                }
            }
            int64_t const tokens = k.batch * k.tokens;
            int64_t const chunks = (tokens + kernels::moe::chunkTokens() - 1) / kernels::moe::chunkTokens();
            CHECK_MSG(launches == static_cast<size_t>(7 * chunks), describe(k) + ": " + std::to_string(launches)
                    + " launches for " + std::to_string(chunks) + " chunks");
            CHECK_MSG(repeat == 0 ? loads > 0 : loads == 0, describe(k) + ": module loaded " + std::to_string(loads));
            ++runs;
        }
        int32_t const live = fake::liveModules();
        CHECK(live > 0);
        p.reset();
        CHECK(fake::liveModules() == 0);
    }
    std::printf("launch sweep: %d enqueues, %d descriptor sets without a kernel\n", runs, unsupported);
    CHECK(runs > 0 && unsupported == 2 * 13); // float32 (12 calls) and d = 24, with experts in T and in FP8
}

void testModulePerContextAndFailures()
{
    Call const k{1, 3, 64, 32, kTinyMoe, DataType::kHALF};
    fake::reset();
    plugin::DeepseekMoePlugin built(k.attrs);
    testutil::CapturingRecorder recorder;
    testutil::RecordingContext context(&recorder);
    std::unique_ptr<nvinfer1::IPluginV3> a(built.attachToContext(&context));
    std::unique_ptr<nvinfer1::IPluginV3> b(built.attachToContext(&context));
    auto runtime = testutil::runtimeOf;
    Launch l(k);
    CHECK(l.run(*runtime(a.get())) == 0);
    size_t const perContext = fake::eventsOf(fake::Kind::kModuleLoad).size();
    CHECK(perContext == static_cast<size_t>(kernels::moe::imageSet().numKernels));
    CHECK(l.run(*runtime(b.get())) == 0);
    CHECK(l.run(*runtime(a.get())) == 0);
    CHECK(fake::eventsOf(fake::Kind::kModuleLoad).size() == 2 * perContext);
    a.reset();
    b.reset();
    CHECK(fake::liveModules() == 0);
    CHECK(recorder.errors.empty());

    // A failing module load reaches the context's error recorder once, and is not retried.
    std::unique_ptr<nvinfer1::IPluginV3> d(built.attachToContext(&context));
    fake::failCall("cuModuleLoadData", CUDA_ERROR_NO_BINARY_FOR_GPU, 0);
    size_t const launches = fake::eventsOf(fake::Kind::kLaunch).size();
    CHECK(l.run(*runtime(d.get())) != 0);
    CHECK(recorder.errors.size() == 1 && recorder.errors[0].second.find("DeepseekMoE: loading the kernel module")
        != std::string::npos);
    CHECK(l.run(*runtime(d.get())) != 0);
    CHECK(recorder.errors.size() == 1);
    CHECK(fake::eventsOf(fake::Kind::kLaunch).size() == launches);
    d.reset();
    CHECK(fake::liveModules() == 0);

    // A failing launch: nonzero, logged.
    fake::reset();
    plugin::DeepseekMoePlugin p(k.attrs);
    fake::failCall("cuLaunchKernel", CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES, 3);
    gLogger.messages.clear();
    CHECK(l.run(p) == -1);
    CHECK(fake::eventsOf(fake::Kind::kLaunch).size() == 4); // stopped at the failing one
    CHECK(gLogger.contains("DeepseekMoE: launching the kernels failed", nvinfer1::ILogger::Severity::kERROR));

    // Bad descriptors and pointers: refused before any driver call.
    fake::reset();
    plugin::DeepseekMoePlugin q(k.attrs);
    Launch bad(k);
    bad.in[c::kDownProj].dims.d[2] = 16;
    CHECK(q.enqueue(bad.in, bad.out, bad.inputs, bad.outputs, nullptr, kStream) == -1);
    CHECK(q.onShapeChange(bad.in, 5, bad.out, 1) == -1);
    Launch wrongOut(k);
    wrongOut.out[0].dims.d[2] = 32;
    CHECK(q.enqueue(wrongOut.in, wrongOut.out, wrongOut.inputs, wrongOut.outputs, nullptr, kStream) == -1);
    Launch halfRouter(k);
    halfRouter.in[c::kRouterWeight].type = DataType::kHALF;
    CHECK(q.enqueue(halfRouter.in, halfRouter.out, halfRouter.inputs, halfRouter.outputs, nullptr, kStream) == -1);
    Launch misaligned(k);
    misaligned.inputs[c::kGateUpProj] = static_cast<char const*>(misaligned.inputs[c::kGateUpProj]) + 2;
    gLogger.messages.clear();
    CHECK(q.enqueue(misaligned.in, misaligned.out, misaligned.inputs, misaligned.outputs, nullptr, kStream) == -1);
    CHECK(gLogger.contains("tensor gate_up_proj is null or not 16-byte aligned", nvinfer1::ILogger::Severity::kERROR));
    CHECK(q.enqueue(nullptr, bad.out, bad.inputs, bad.outputs, nullptr, kStream) == -1);
    // The kernels refuse FP8 experts without their scales before any launch (the plugin always passes both).
    {
        fake::reset();
        Launch l7(Call{1, 3, 64, 32, kTinyMoe, DataType::kHALF, true});
        kernels::moe::Dims const d = l7.kernelDims(kTinyMoe, kernels::DataType::kFLOAT16);
        CHECK(d.fp8Experts == 1 && kernels::moe::supported(d, nullptr));
        kernels::Module module;
        CHECK(module.load(kernels::moe::imageSet()) == CUDA_SUCCESS);
        kernels::moe::Tensors t{l7.inputs[c::kHiddenStates], static_cast<float const*>(l7.inputs[c::kRouterWeight]),
            static_cast<float const*>(l7.inputs[c::kScoreBias]), l7.inputs[c::kGateUpProj], l7.inputs[c::kDownProj],
            l7.outputs[0], nullptr, static_cast<float const*>(l7.inputs[c::kDownScale])};
        CHECK(kernels::moe::launch(module, d, t, reinterpret_cast<void*>(kWorkspace), kStream) == CUDA_ERROR_INVALID_VALUE);
        CHECK(fake::eventsOf(fake::Kind::kLaunch).empty());
        module.unload();
    }
    fake::reset();
    Launch none(Call{0, 3, 64, 32, kTinyMoe, DataType::kHALF}); // no token: nothing to do, success
    CHECK(none.run(q) == 0);
    CHECK(fake::events().empty());

    // FP8 experts: the layer's input count comes from onShapeChange (enqueue is not told it).
    Call const fp8{1, 3, 64, 32, kTinyMoe, DataType::kHALF, true};
    plugin::DeepseekMoePlugin fresh(fp8.attrs);
    Launch l7(fp8);
    gLogger.messages.clear();
    CHECK(fresh.enqueue(l7.in, l7.out, l7.inputs, l7.outputs, nullptr, kStream) == -1);
    CHECK(gLogger.contains("DeepseekMoE::enqueue: called before configurePlugin or onShapeChange",
        nvinfer1::ILogger::Severity::kERROR));
    CHECK(fake::events().empty());
    Launch halfScale(fp8);
    halfScale.in[c::kGateUpScale].type = DataType::kHALF;
    CHECK(halfScale.run(fresh) == -1);
    Launch badScale(fp8);
    badScale.in[c::kDownScale].dims.d[2] = 2;
    CHECK(fresh.onShapeChange(badScale.in, 7, badScale.out, 1) == -1);
    Launch unaligned(fp8);
    unaligned.inputs[c::kDownScale] = static_cast<char const*>(unaligned.inputs[c::kDownScale]) + 4;
    gLogger.messages.clear();
    CHECK(unaligned.run(fresh) == -1);
    CHECK(gLogger.contains("tensor down_scale is null or not 16-byte aligned", nvinfer1::ILogger::Severity::kERROR));
    CHECK(fake::events().empty());
    CHECK(l7.run(fresh) == 0);
    CHECK(!fake::eventsOf(fake::Kind::kLaunch).empty());
}

// Expectations written by tests/plugin_helpers.py from mla_export.kernels.moe.plan:
//   case B S d I E top_k n_group topk_group scoring_func group_score use_bias normalize weight_scale dtype [fp8
//        [first_expert E_local]]
//   launch ...   (one line per planned launch, in order: launchPlan.h, every field fixed)
// where the pointers of the arguments are p:<tensor>[+<bytes>] with tensor hidden_states, router_weight,
// score_bias, gate_up_proj, down_proj, gate_up_scale, down_scale (FP8 experts), routed_output, ws (the workspace) or null.
bool expectedPointer(std::string const& what, Launch const& l, uint64_t& out)
{
    std::string name = what;
    uint64_t offset = 0;
    size_t const plus = what.find('+');
    if (plus != std::string::npos)
    {
        name = what.substr(0, plus);
        offset = std::stoull(what.substr(plus + 1));
    }
    if (name == "null")
    {
        out = offset;
        return true;
    }
    if (name == "ws")
    {
        out = kWorkspace + offset;
        return true;
    }
    if (name == c::kOutputNames[0])
    {
        out = reinterpret_cast<uintptr_t>(l.outputs[0]) + offset;
        return true;
    }
    for (int32_t i = 0; i < c::kNumInputs; ++i)
    {
        if (name == c::kInputNames[i])
        {
            out = reinterpret_cast<uintptr_t>(l.inputs[i]) + offset;
            return true;
        }
    }
    out = ~uint64_t{0};
    return true;
}

int32_t compareWithPlan(char const* path)
{
    struct Planned
    {
        Call call;
        std::vector<testutil::PlannedLaunch> launches;
    };
    std::vector<Planned> plans;
    auto const readCase = [&plans](std::istream& s) {
        Planned p{};
        plugin::MoeAttributes& a = p.call.attrs;
        int32_t dtype = 0;
        int32_t fp8 = 0; // an optional field: 1 for FP8 experts (a 7-input node)
        int64_t held = 0; // optional last fields: first_expert and E_local (a rank's slice)
        s >> p.call.batch >> p.call.tokens >> p.call.hidden >> p.call.inter >> a.numExperts >> a.topK >> a.nGroup
            >> a.topkGroup >> a.scoringFunc >> a.groupScore >> a.useBias >> a.normalize >> a.weightScale >> dtype;
        s >> fp8 >> a.firstExpert >> held;
        p.call.localExperts = held;
        p.call.type = dtype == 0 ? DataType::kFLOAT : (dtype == 1 ? DataType::kHALF : DataType::kBF16);
        p.call.fp8 = fp8 == 1;
        plans.push_back(p);
    };
    if (!testutil::readPlanFile(
            path, readCase, [&plans](testutil::PlannedLaunch launch) { plans.back().launches.push_back(launch); }))
    {
        return -1;
    }
    size_t fp8Calls = 0;
    size_t sliceCalls = 0;
    size_t firstExperts = 0;
    for (Planned const& plan : plans)
    {
        fake::reset();
        fake::setDevice(90, 132);
        plugin::DeepseekMoePlugin p(plan.call.attrs);
        Launch l(plan.call); // 7 inputs for FP8 experts
        CHECK_MSG(l.run(p) == 0, describe(plan.call));
        testutil::checkLaunches(fake::eventsOf(fake::Kind::kLaunch), plan.launches, describe(plan.call),
            [&l](std::string const& name, uint64_t& address) { return expectedPointer(name, l, address); },
            /*wildcards=*/false);
        bool const slice = plan.call.localExperts > 0;
        fp8Calls += plan.call.fp8 && !slice ? 1 : 0;
        sliceCalls += slice ? 1 : 0;
        firstExperts += slice && plan.call.attrs.firstExpert > 0 ? 1 : 0;
    }
    std::printf("compared %zu planned calls\n", plans.size() - fp8Calls - sliceCalls);
    std::printf("compared %zu planned FP8-expert calls through the plugin\n", fp8Calls);
    std::printf("compared %zu planned expert-slice calls, %zu with first_expert > 0\n", sliceCalls, firstExperts);
    return static_cast<int32_t>(plans.size() - fp8Calls - sliceCalls);
}
} // namespace

int main(int argc, char** argv)
{
    return testutil::runTests("test_moe_launch", gLogger, {testSweep, testModulePerContextAndFailures, [&] {
                                                               if (argc > 1)
                                                               {
                                                                   CHECK(compareWithPlan(argv[1]) > 0);
                                                               }
                                                           }});
}
