/*
 * The BlockFp8MatMul plugin's launch path on a fake CUDA driver. For a sweep of tensor descriptors (decode and
 * prefill rows, 2-D and 3-D weights, inputs of rank 2 to 4, the three activation types, native-FP8 and
 * weight-only devices), enqueue must
 *   - load the kernel module once per plugin object (per context) and unload it on destruction,
 *   - launch on the given stream the kernels the C++ plan plans (fp8KernelsPlan.h), and nothing else
 *     (no copy, no memset, no host sync),
 *   - refuse bad descriptors before any driver call and report every failing driver call.
 * With an expectations file (argv[1], written by tests/test_fp8_kernels_aot.py's write_launch_plan from
 * mla_export.kernels.fp8.plan: the file test_fp8_launch reads), every planned call is run through the plugin's
 * descriptors (a 2-D weight for G = 1, else a 3-D one) and the recorded launches must equal the planned ones:
 * kernel, grid, block, shared memory, every argument (the tensors' addresses, the workspace).
 */
#include "blockFp8MatMulPlugin.h"
#include "fakeCuda.h"
#include "fp8Contract.h"
#include "fp8KernelsPlan.h"
#include "fp8_kernels_tables.h"
#include "launchPlan.h"
#include "testPlugin.h"
#include "testUtil.h"

#include <cstdio>
#include <memory>
#include <sstream>
#include <vector>

using namespace mla;
using nvinfer1::DataType;
namespace c = mla::fp8_contract;

namespace
{
testutil::CapturingLogger gLogger;

//! One call: input `lead` + [K], weight [N, K] (groups 0) or [G, N, K].
struct Call
{
    std::vector<int64_t> lead;
    int64_t groups; //!< 0: a 2-D weight
    int64_t n, k;
    DataType type;
};

uintptr_t const kInputBase = 0x7f0000000000;
uintptr_t const kOutput = 0x7f9000000000;
uintptr_t const kWorkspace = 0x7fa000000000;
CUstream const kStream = reinterpret_cast<CUstream>(0x5151);

int64_t blocks(int64_t extent)
{
    return (extent + 127) / 128;
}

struct Launch
{
    nvinfer1::PluginTensorDesc in[3]{};
    nvinfer1::PluginTensorDesc out[1]{};
    void const* inputs[3]{};
    void* outputs[1]{};

    explicit Launch(Call const& k)
    {
        std::vector<int64_t> x = k.lead;
        x.push_back(k.k);
        std::vector<std::vector<int64_t>> shapes = {x, {k.n, k.k}, {blocks(k.n), blocks(k.k)}};
        if (k.groups > 0)
        {
            shapes[1].insert(shapes[1].begin(), k.groups);
            shapes[2].insert(shapes[2].begin(), k.groups);
        }
        for (int32_t i = 0; i < 3; ++i)
        {
            in[i].dims = testutil::dims(shapes[i]);
            in[i].type = i == c::kWeight ? DataType::kFP8 : (i == c::kWeightScaleInv ? DataType::kFLOAT : k.type);
            in[i].format = nvinfer1::TensorFormat::kLINEAR;
            inputs[i] = reinterpret_cast<void const*>(kInputBase + (static_cast<uintptr_t>(i) << 36));
        }
        out[0] = in[c::kInput];
        out[0].dims.d[out[0].dims.nbDims - 1] = k.n;
        outputs[0] = reinterpret_cast<void*>(kOutput);
    }

    int32_t run(nvinfer1::IPluginV3OneRuntime& p)
    {
        if (p.onShapeChange(in, 3, out, 1) != 0)
        {
            return -2;
        }
        return p.enqueue(in, out, inputs, outputs, reinterpret_cast<void*>(kWorkspace), kStream);
    }

    kernels::fp8::Dims kernelDims(kernels::DataType dtype) const
    {
        nvinfer1::Dims shapes[3] = {in[0].dims, in[1].dims, in[2].dims};
        return plugin::fp8KernelDims(plugin::Fp8Attributes{}, shapes, dtype);
    }
};

std::string describe(Call const& k)
{
    std::ostringstream s;
    s << "lead=[";
    for (int64_t v : k.lead)
    {
        s << v << ",";
    }
    s << "] G=" << k.groups << " N=" << k.n << " K=" << k.k << " T=" << static_cast<int>(k.type);
    return s.str();
}

//! The Python-planned calls of an expectations file, run through the plugin; returns the number compared.
int32_t compareWithPlan(char const* path)
{
    struct Planned
    {
        Call call;
        std::vector<testutil::PlannedLaunch> launches;
    };
    std::vector<Planned> plans;
    auto const readCase = [&plans](std::istream& s) {
        int64_t g = 0, m = 0, n = 0, k = 0;
        int32_t dtype = 0;
        s >> g >> m >> n >> k >> dtype;
        DataType const t = dtype == 0 ? DataType::kFLOAT : (dtype == 1 ? DataType::kHALF : DataType::kBF16);
        plans.push_back({g == 1 ? Call{{m}, 0, n, k, t} : Call{{g, m}, g, n, k, t}, {}});
    };
    if (!testutil::readPlanFile(
            path, readCase, [&plans](testutil::PlannedLaunch launch) { plans.back().launches.push_back(launch); }))
    {
        return -1;
    }
    for (Planned const& plan : plans)
    {
        fake::reset();
        fake::setDevice(90, 132);
        for (testutil::PlannedLaunch const& l : plan.launches) // reset() forgot the signatures: register them again
        {
            std::vector<uint32_t> sizes;
            for (std::string const& a : l.args)
            {
                sizes.push_back(a.rfind("p:", 0) == 0 ? 8 : 4);
            }
            fake::setSignature(l.event.name, sizes);
        }
        plugin::BlockFp8MatMulPlugin p(plugin::Fp8Attributes{});
        Launch l(plan.call);
        CHECK_MSG(l.run(p) == 0, describe(plan.call));
        auto const pointer = [&l](std::string const& token, uint64_t& address) { // "name" or "name+offset"
            size_t const plus = token.find('+');
            std::string const name = token.substr(0, plus);
            uint64_t const offset = plus == std::string::npos ? 0 : std::stoull(token.substr(plus + 1));
            address = offset + (name == "input" ? reinterpret_cast<uintptr_t>(l.inputs[c::kInput])
                : name == "weight"              ? reinterpret_cast<uintptr_t>(l.inputs[c::kWeight])
                : name == "scale_inv"           ? reinterpret_cast<uintptr_t>(l.inputs[c::kWeightScaleInv])
                : name == "output"              ? reinterpret_cast<uintptr_t>(l.outputs[c::kOutput])
                : name == "ws"                  ? kWorkspace
                : name == "null"                ? 0
                                                : ~uint64_t{0});
            return true;
        };
        testutil::checkLaunches(fake::eventsOf(fake::Kind::kLaunch), plan.launches, describe(plan.call), pointer,
            /*wildcards=*/false);
    }
    std::printf("compared %zu planned calls\n", plans.size());
    return static_cast<int32_t>(plans.size());
}

std::vector<Call> sweep()
{
    std::vector<Call> calls;
    for (DataType t : {DataType::kHALF, DataType::kBF16, DataType::kFLOAT})
    {
        for (std::vector<int64_t> lead : std::vector<std::vector<int64_t>>{{1, 1}, {8, 1}, {3, 5}, {2, 700}, {4096}})
        {
            calls.push_back({lead, 0, 1536, 7168, t}); // V3 q_a_proj
            calls.push_back({lead, 0, 40, 80, t});     // tiny: ragged single blocks
        }
        calls.push_back({{128, 1}, 128, 128, 512, t});  // W_UK^T per head, decode
        calls.push_back({{128, 300}, 128, 512, 128, t}); // W_UV per head, prefill
        calls.push_back({{2, 2, 3}, 1, 64, 64, t});      // 3-D weight with G = 1, rank-4 input
    }
    calls.push_back({{1, 3}, 0, 64, 24, DataType::kHALF}); // K not a multiple of 16: no kernel
    return calls;
}

//! The launches the C++ plan plans for `d` on a device of `arch` (what enqueue must launch): the gemm, the
//! split-K reduce when it splits, and act_quant first where the plan quantizes (prefill) on a native-FP8 arch.
size_t plannedLaunches(kernels::fp8::Dims const& d, int32_t arch)
{
    kernels::fp8::plan::LaunchPlan p{};
    if (!kernels::fp8::plan::makePlan(d, p))
    {
        return 0;
    }
    bool const quant = p.grids[kernels::fp8_tables::kActQuant][0] != 0 && arch >= kernels::fp8_tables::kNativeMinArch;
    return 1 + (p.splits > 1 ? 1 : 0) + (quant ? 1 : 0);
}

void testSweep()
{
    int32_t runs = 0;
    int32_t unsupported = 0;
    for (int32_t arch : {90, 80})
    {
        for (Call const& k : sweep())
        {
            fake::reset();
            fake::setDevice(arch, arch == 90 ? 132 : 108);
            auto p = std::make_unique<plugin::BlockFp8MatMulPlugin>(plugin::Fp8Attributes{});
            Launch l(k);
            kernels::DataType dtype{};
            bool const ok = plugin::toKernelType(k.type, dtype) && kernels::fp8::supported(l.kernelDims(dtype), nullptr);
            if (!ok)
            {
                ++unsupported;
                CHECK_MSG(l.run(*p) == -1, describe(k));
                CHECK_MSG(fake::events().empty(), describe(k) + ": a driver call before the refusal");
                continue;
            }
            size_t const planned = plannedLaunches(l.kernelDims(dtype), arch);
            CHECK_MSG(planned >= 1, describe(k));
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
                        CHECK_MSG(e.name.rfind("block_fp8_", 0) == 0, describe(k) + ": launched " + e.name);
                    }
                    else
                    {
                        CHECK_MSG(e.kind == fake::Kind::kGetFunction || e.kind == fake::Kind::kFuncSetAttribute,
                            describe(k) + ": a driver call other than loads and launches");
                    }
                }
                CHECK_MSG(launches == planned, describe(k) + ": " + std::to_string(launches) + " launches, planned "
                        + std::to_string(planned));
                CHECK_MSG(repeat == 0 ? loads > 0 : loads == 0, describe(k) + ": module loaded " + std::to_string(loads));
                ++runs;
            }
            CHECK(fake::liveModules() > 0);
            p.reset();
            CHECK(fake::liveModules() == 0);
        }
    }
    std::printf("launch sweep: %d enqueues, %d descriptor sets without a kernel\n", runs, unsupported);
    CHECK(runs > 0 && unsupported == 2 * 14); // float32 (13 calls) and K = 24, on both devices
}

void testModulePerContextAndFailures()
{
    Call const k{{1, 3}, 0, 64, 64, DataType::kHALF};
    fake::reset();
    plugin::BlockFp8MatMulPlugin built(plugin::Fp8Attributes{});
    testutil::CapturingRecorder recorder;
    testutil::RecordingContext context(&recorder);
    std::unique_ptr<nvinfer1::IPluginV3> a(built.attachToContext(&context));
    std::unique_ptr<nvinfer1::IPluginV3> b(built.attachToContext(&context));
    auto runtime = testutil::runtimeOf;
    Launch l(k);
    CHECK(l.run(*runtime(a.get())) == 0);
    size_t const perContext = fake::eventsOf(fake::Kind::kModuleLoad).size();
    CHECK(perContext == static_cast<size_t>(kernels::fp8::imageSet().numKernels));
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
    CHECK(recorder.errors.size() == 1
        && recorder.errors[0].second.find("BlockFp8MatMul: loading the kernel module") != std::string::npos);
    CHECK(l.run(*runtime(d.get())) != 0);
    CHECK(recorder.errors.size() == 1);
    CHECK(fake::eventsOf(fake::Kind::kLaunch).size() == launches);
    d.reset();
    CHECK(fake::liveModules() == 0);

    // A failing launch: nonzero, logged.
    fake::reset();
    plugin::BlockFp8MatMulPlugin p(plugin::Fp8Attributes{});
    fake::failCall("cuLaunchKernel", CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES, 0);
    gLogger.messages.clear();
    CHECK(l.run(p) == -1);
    CHECK(gLogger.contains("BlockFp8MatMul: launching the kernel failed", nvinfer1::ILogger::Severity::kERROR));

    // Bad descriptors and pointers: refused before any driver call.
    fake::reset();
    plugin::BlockFp8MatMulPlugin q(plugin::Fp8Attributes{});
    Launch badK(k);
    badK.in[c::kInput].dims.d[2] = 48;
    CHECK(q.onShapeChange(badK.in, 3, badK.out, 1) == -1);
    CHECK(q.enqueue(badK.in, badK.out, badK.inputs, badK.outputs, nullptr, kStream) == -1);
    Launch wrongOut(k);
    wrongOut.out[0].dims.d[2] = 32;
    gLogger.messages.clear();
    CHECK(q.enqueue(wrongOut.in, wrongOut.out, wrongOut.inputs, wrongOut.outputs, nullptr, kStream) == -1);
    CHECK(gLogger.contains("output output does not have the type and shape the inputs give, [1,3,64]",
        nvinfer1::ILogger::Severity::kERROR));
    Launch halfWeight(k);
    halfWeight.in[c::kWeight].type = DataType::kHALF;
    CHECK(q.enqueue(halfWeight.in, halfWeight.out, halfWeight.inputs, halfWeight.outputs, nullptr, kStream) == -1);
    Launch misaligned(k);
    misaligned.inputs[c::kWeightScaleInv] = static_cast<char const*>(misaligned.inputs[c::kWeightScaleInv]) + 4;
    gLogger.messages.clear();
    CHECK(q.enqueue(misaligned.in, misaligned.out, misaligned.inputs, misaligned.outputs, nullptr, kStream) == -1);
    CHECK(gLogger.contains("tensor weight_scale_inv is null or not 16-byte aligned", nvinfer1::ILogger::Severity::kERROR));
    CHECK(q.enqueue(nullptr, badK.out, badK.inputs, badK.outputs, nullptr, kStream) == -1);
    Launch none(Call{{0, 3}, 0, 64, 64, DataType::kHALF}); // no row: nothing to do, success
    CHECK(none.run(q) == 0);
    CHECK(fake::events().empty());
}
} // namespace

int main(int argc, char** argv)
{
    return testutil::runTests("test_fp8_plugin_launch", gLogger, {testSweep, testModulePerContextAndFailures, [&] {
                                                                     if (argc > 1)
                                                                     {
                                                                         CHECK(compareWithPlan(argv[1]) > 0);
                                                                     }
                                                                 }});
}
