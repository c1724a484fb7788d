/*
 * The BlockFp8MatMul kernels' launch path (plugins/kernels/fp8Kernels.h) on the recording fake CUDA driver:
 *   - a decode shape (M = 1, kv_a_proj_with_mqa's 576 x 7168: split-K, gemm + reduce), a prefill shape (M = 4096,
 *     7168 x 2048: one split; act_quant + gemm on sm_90, gemm alone on sm_86) and per-head weights (G = 128,
 *     W_UK^T's 512 x 128) launch exactly the kernels, grids, blocks, shared memory and arguments worked out by
 *     hand below from fp8_plan.py's rule;
 *   - the module loads the image of the device's arch (the native path's on sm_89+, the weight-only one below);
 *   - bad dims, null or misaligned pointers and a missing workspace are refused before any driver call, a failing
 *     launch is reported, no row launches nothing.
 * With an expectations file (argv[1], written by tests/test_fp8_kernels_aot.py from mla_export.kernels.fp8.plan)
 * the recorded launches of every case there must equal the planned ones, every field.
 */
#include "fakeCuda.h"
#include "fp8Kernels.h"
#include "fp8KernelsPlan.h"
#include "fp8_kernels_tables.h"
#include "launchPlan.h"
#include "mlaKernelsTables.h"
#include "testUtil.h"

#include <cstdio>
#include <sstream>
#include <string>
#include <vector>

using namespace mla::kernels;

namespace
{
uintptr_t const kInput = 0x7f0000000000;
uintptr_t const kWeight = 0x7f1000000000;
uintptr_t const kScale = 0x7f2000000000;
uintptr_t const kOutput = 0x7f3000000000;
uintptr_t const kWorkspace = 0x7f4000000000;
CUstream const kStream = reinterpret_cast<CUstream>(0x5151);

fp8::Tensors tensors()
{
    return fp8::Tensors{reinterpret_cast<void const*>(kInput), reinterpret_cast<void const*>(kWeight),
        reinterpret_cast<float const*>(kScale), reinterpret_cast<void*>(kOutput)};
}

std::string describe(fp8::Dims const& d)
{
    std::ostringstream s;
    s << "G=" << d.groups << " M=" << d.rows << " N=" << d.n << " K=" << d.k << " T=" << static_cast<int>(d.dtype);
    return s.str();
}

//! Loads the fp8 images on a fake device of `arch`; the module stays loaded until `unload`.
void loadOn(Module& module, int32_t arch)
{
    fake::reset();
    fake::setDevice(arch, 132);
    CHECK(module.load(fp8::imageSet()) == CUDA_SUCCESS);
}

//! What one launch must be: kernel table index, grid, and the int32 arguments after the pointers.
struct Expected
{
    int32_t kernel;
    uint32_t grid[3];
    std::vector<uint64_t> pointers; //!< the kernel's pointer arguments, then Triton's two null scratch pointers
    std::vector<int32_t> ints;
};

void checkLaunch(Module const& module, fake::Event const& e, Expected const& want, std::string const& what)
{
    tables::ArchImage const* image = module.image();
    CHECK_MSG(e.name == fp8::imageSet().entryNames[want.kernel], what + ": launched " + e.name);
    CHECK_MSG(e.grid[0] == want.grid[0] && e.grid[1] == want.grid[1] && e.grid[2] == want.grid[2],
        what + ": grid " + std::to_string(e.grid[0]) + " " + std::to_string(e.grid[1]) + " " + std::to_string(e.grid[2]));
    CHECK_MSG(e.block[0] == 128 && e.block[1] == 1 && e.block[2] == 1, what + ": block"); // 4 warps, every kernel
    CHECK_MSG(e.sharedMem == static_cast<uint32_t>(image->sharedBytes[want.kernel]), what + ": shared memory");
    CHECK_MSG(e.stream == kStream, what + ": stream");
    size_t const count = want.pointers.size() + want.ints.size() + 2;
    CHECK_MSG(e.args.size() == count, what + ": " + std::to_string(e.args.size()) + " arguments");
    if (e.args.size() != count)
    {
        return;
    }
    for (size_t i = 0; i < want.pointers.size(); ++i)
    {
        CHECK_MSG(fake::argAs<uint64_t>(e, i) == want.pointers[i], what + ": pointer argument " + std::to_string(i));
    }
    for (size_t i = 0; i < want.ints.size(); ++i)
    {
        CHECK_MSG(fake::argAs<int32_t>(e, want.pointers.size() + i) == want.ints[i],
            what + ": int argument " + std::to_string(i));
    }
    CHECK_MSG(fake::argAs<uint64_t>(e, count - 2) == 0 && fake::argAs<uint64_t>(e, count - 1) == 0,
        what + ": Triton's scratch pointers must be null");
}

//! Kernel table index of (kind, dtype, variant) in the generated table (fp8_plan.aot_kernel_table), or -1.
int32_t kernelOf(fp8_tables::KernelKind kind, DataType dtype, int32_t variant)
{
    for (int32_t i = 0; i < fp8_tables::kNumKernels; ++i)
    {
        fp8_tables::KernelEntry const& e = fp8_tables::kKernels[i];
        if (e.kind == kind && e.dtype == static_cast<int32_t>(dtype) && e.variant == variant)
        {
            return i;
        }
    }
    return -1;
}

void registerSignatures()
{
    // act_quant: 3 pointers, 2 int32; gemm: 6 pointers, 4 int32; reduce: 2 pointers, 2 int32; then 2 scratch.
    fake::setSignature("block_fp8_act_quant_kernel", {8, 8, 8, 4, 4, 8, 8});
    fake::setSignature("block_fp8_matmul_kernel", {8, 8, 8, 8, 8, 8, 4, 4, 4, 4, 8, 8});
    fake::setSignature("block_fp8_reduce_kernel", {8, 8, 4, 4, 8, 8});
}

//! The driver calls of one launch() on `module` (every one must be a launch).
std::vector<fake::Event> launchesOf(Module const& module, fp8::Dims const& d, void* workspace)
{
    size_t const first = fake::events().size();
    CHECK_MSG(fp8::launch(module, d, tensors(), workspace, kStream) == CUDA_SUCCESS, describe(d));
    std::vector<fake::Event> got = fake::eventsSince(first);
    for (fake::Event const& e : got)
    {
        CHECK_MSG(e.kind == fake::Kind::kLaunch, describe(d) + ": a driver call other than a launch");
    }
    return got;
}

// By hand from fp8_plan.py: decode (M <= 16) tiles 16 x 64, prefill 64 x 128, BLOCK_K 128; split K while
// G * tiles < 256: want = min(32, kBlocks, cdiv(256, tiles)), perSplit = cdiv(kBlocks, want), splits =
// cdiv(kBlocks, perSplit). Prefill workspace: codes [G*M, K] u8, scales [G*M, kBlocks] f32, partials; 256-aligned.
void testDecodePrefillAndPerHead()
{
    Module module;
    loadOn(module, 90);
    registerSignatures();
    void* const ws = reinterpret_cast<void*>(kWorkspace);

    // Decode: M 1, N 576, K 7168 bf16. nTiles 9, kBlocks 56: want min(32, 56, 29) = 29, perSplit 2, splits 28.
    fp8::Dims const decode{1, 1, 576, 7168, 128, DataType::kBFLOAT16};
    CHECK(fp8::workspaceBytes(decode) >= 28 * 576 * 4);
    std::vector<fake::Event> got = launchesOf(module, decode, ws);
    CHECK_MSG(got.size() == 2, describe(decode) + ": " + std::to_string(got.size()) + " launches");
    if (got.size() == 2)
    {
        checkLaunch(module, got[0],
            {kernelOf(fp8_tables::kGemm, DataType::kBFLOAT16, 0), {9, 28, 1},
                {kInput, kWeight, kScale, 0, kOutput, kWorkspace}, {1, 576, 7168, 2}},
            "decode gemm");
        checkLaunch(module, got[1],
            {kernelOf(fp8_tables::kReduce, DataType::kBFLOAT16, 0), {1, 1, 1}, {kWorkspace, kOutput}, {576, 28}},
            "decode reduce");
    }

    // Prefill: M 4096, N 7168, K 2048 fp16. 64 x 56 = 3584 tiles >= 256: one split. On sm_90 act_quant first
    // (grid 4096/16 = 256 x 16 K-blocks): codes at ws, scales at ws + 4096 * 2048, read by the gemm.
    fp8::Dims const prefill{1, 4096, 7168, 2048, 128, DataType::kFLOAT16};
    uint64_t const scales = kWorkspace + 4096 * 2048;
    // Its workspace covers every M' <= 4096: the worst is M' = 256 (4 x 56 = 224 tiles < 256: 2 splits), whose
    // partials 2 * 256 * 7168 * 4 B and codes and scales 256 * 2048 + 256 * 16 * 4 B outgrow M = 4096's 8.65 MB.
    CHECK(fp8::workspaceBytes(prefill) == 2 * 256 * 7168 * 4 + 256 * 2048 + 256 * 16 * 4);
    got = launchesOf(module, prefill, ws);
    CHECK_MSG(got.size() == 2, describe(prefill) + ": " + std::to_string(got.size()) + " launches");
    if (got.size() == 2)
    {
        checkLaunch(module, got[0],
            {kernelOf(fp8_tables::kActQuant, DataType::kFLOAT16, 0), {256, 16, 1}, {kInput, kWorkspace, scales},
                {4096, 2048}},
            "prefill act_quant");
        checkLaunch(module, got[1],
            {kernelOf(fp8_tables::kGemm, DataType::kFLOAT16, 1), {3584, 1, 1},
                {kWorkspace, kWeight, kScale, scales, kOutput, 0}, {4096, 7168, 2048, 16}},
            "prefill gemm (sm_90)");
    }

    // Per head: G 128, M 4, N 512, K 128 (one K-block: never split). Decode tiles: 8 per group.
    fp8::Dims const heads{128, 4, 512, 128, 128, DataType::kBFLOAT16};
    CHECK(fp8::workspaceBytes(heads) == 0);
    got = launchesOf(module, heads, nullptr);
    CHECK(got.size() == 1);
    if (got.size() == 1)
    {
        checkLaunch(module, got[0],
            {kernelOf(fp8_tables::kGemm, DataType::kBFLOAT16, 0), {8, 1, 128}, {kInput, kWeight, kScale, 0, kOutput, 0},
                {4, 512, 128, 1}},
            "per-head gemm");
    }
    module.unload();

    // sm_86 (weight-only images): the prefill gemm reads the input itself, no act_quant, no workspace needed.
    loadOn(module, 86);
    registerSignatures();
    got = launchesOf(module, prefill, nullptr);
    CHECK(got.size() == 1);
    if (got.size() == 1)
    {
        checkLaunch(module, got[0],
            {kernelOf(fp8_tables::kGemm, DataType::kFLOAT16, 1), {3584, 1, 1}, {kInput, kWeight, kScale, 0, kOutput, 0},
                {4096, 7168, 2048, 16}},
            "prefill gemm (sm_86)");
    }
    module.unload();
    CHECK(fake::liveModules() == 0);
}

void testImagePerArch()
{
    for (int32_t arch : {80, 86, 89, 90, 100, 120, 121, 103})
    {
        Module module;
        loadOn(module, arch);
        ImageSet const set = fp8::imageSet();
        tables::ArchImage const* image = pickImage(set, arch);
        CHECK_MSG(image != nullptr && module.image() == image, "sm_" + std::to_string(arch));
        std::vector<fake::Event> loads = fake::eventsOf(fake::Kind::kModuleLoad);
        CHECK(loads.size() == static_cast<size_t>(set.numKernels));
        for (size_t i = 0; i < loads.size() && image != nullptr; ++i)
        {
            CHECK(loads[i].image == image->images[i]);
        }
        module.unload();
    }
}

void testRefusalsAndFailures()
{
    Module module;
    fp8::Dims const ok{1, 1, 576, 7168, 128, DataType::kBFLOAT16};
    fp8::Tensors const t = tensors();
    void* const ws = reinterpret_cast<void*>(kWorkspace);
    CHECK(fp8::launch(module, ok, t, ws, kStream) == CUDA_ERROR_NOT_INITIALIZED);
    loadOn(module, 89);
    size_t const first = fake::events().size();
    char const* why = nullptr;
    std::vector<fp8::Dims> const bad = {{1, 1, 576, 7168, 64, DataType::kBFLOAT16}, {1, 1, 576, 7168, 128,
                                            DataType::kFLOAT32},
        {1, 1, 576, 7160, 128, DataType::kBFLOAT16}, {1, 1, 580, 7168, 128, DataType::kBFLOAT16},
        {0, 1, 576, 7168, 128, DataType::kBFLOAT16}, {1, -1, 576, 7168, 128, DataType::kBFLOAT16},
        {1, int64_t{1} << 31, 576, 7168, 128, DataType::kBFLOAT16}};
    for (fp8::Dims const& d : bad)
    {
        CHECK_MSG(!fp8::supported(d, &why) && why != nullptr, describe(d));
        CHECK_MSG(fp8::workspaceBytes(d) == 0, describe(d));
        CHECK_MSG(fp8::launch(module, d, t, ws, kStream) == CUDA_ERROR_INVALID_VALUE, describe(d));
    }
    CHECK(fp8::supported(ok, &why) && why == nullptr);
    fp8::Tensors misaligned = t;
    misaligned.weight = reinterpret_cast<void const*>(kWeight + 8);
    CHECK(fp8::launch(module, ok, misaligned, ws, kStream) == CUDA_ERROR_INVALID_VALUE);
    fp8::Tensors nullScale = t;
    nullScale.scaleInv = nullptr;
    CHECK(fp8::launch(module, ok, nullScale, ws, kStream) == CUDA_ERROR_INVALID_VALUE);
    CHECK(fp8::launch(module, ok, t, nullptr, kStream) == CUDA_ERROR_INVALID_VALUE); // split: needs the workspace
    fp8::Dims const prefill{1, 300, 576, 7168, 128, DataType::kBFLOAT16}; // native: act_quant needs it too
    CHECK(fp8::launch(module, prefill, t, nullptr, kStream) == CUDA_ERROR_INVALID_VALUE);
    CHECK(fp8::launch(module, {1, 0, 576, 7168, 128, DataType::kBFLOAT16}, t, nullptr, kStream) == CUDA_SUCCESS);
    CHECK_MSG(fake::eventsSince(first).empty(), "a driver call before a refusal, or for no row");

    fake::failCall("cuLaunchKernel", CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES, 0);
    CHECK(fp8::launch(module, ok, t, ws, kStream) == CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES);
    CHECK(fake::eventsOf(fake::Kind::kLaunch).size() <= 1); // nothing follows a failed launch
    module.unload();
}

// Expectations written by tests/test_fp8_kernels_aot.py from mla_export.kernels.fp8.plan:
//   case G M N K dtype   then one launch line per planned launch (launchPlan.h, every field fixed), pointers
//   p:input, p:weight, p:scale_inv, p:output, p:ws or p:null, each optionally +<bytes>.
int32_t compareWithPlan(char const* path)
{
    struct Planned
    {
        fp8::Dims dims;
        std::vector<testutil::PlannedLaunch> launches;
    };
    std::vector<Planned> plans;
    auto const readCase = [&plans](std::istream& s) {
        Planned p{};
        int32_t dtype = 0;
        s >> p.dims.groups >> p.dims.rows >> p.dims.n >> p.dims.k >> dtype;
        p.dims.blockSize = 128;
        p.dims.dtype = static_cast<DataType>(dtype);
        plans.push_back(p);
    };
    if (!testutil::readPlanFile(
            path, readCase, [&plans](testutil::PlannedLaunch launch) { plans.back().launches.push_back(launch); }))
    {
        return -1;
    }
    auto const pointer = [](std::string const& token, uint64_t& address) {
        size_t const plus = token.find('+');
        std::string const name = token.substr(0, plus);
        uint64_t const offset = plus == std::string::npos ? 0 : std::stoull(token.substr(plus + 1));
        address = offset + (name == "input" ? kInput
            : name == "weight"    ? kWeight
            : name == "scale_inv" ? kScale
            : name == "output"    ? kOutput
            : name == "ws"        ? kWorkspace
            : name == "null"      ? 0
                                  : ~uint64_t{0});
        return true;
    };
    for (Planned const& p : plans)
    {
        Module module;
        fake::reset();
        fake::setDevice(90, 132);
        CHECK(module.load(fp8::imageSet()) == CUDA_SUCCESS);
        for (testutil::PlannedLaunch const& l : p.launches) // reset() forgot the signatures: register them again
        {
            std::vector<uint32_t> sizes;
            for (std::string const& a : l.args)
            {
                sizes.push_back(a.rfind("p:", 0) == 0 ? 8 : 4);
            }
            fake::setSignature(l.event.name, sizes);
        }
        CHECK_MSG(fp8::launch(module, p.dims, tensors(), reinterpret_cast<void*>(kWorkspace), kStream) == CUDA_SUCCESS,
            describe(p.dims));
        testutil::checkLaunches(fake::eventsOf(fake::Kind::kLaunch), p.launches, describe(p.dims), pointer,
            /*wildcards=*/false);
        module.unload();
    }
    std::printf("compared %zu planned calls\n", plans.size());
    return static_cast<int32_t>(plans.size());
}
} // namespace

int main(int argc, char** argv)
{
    testDecodePrefillAndPerHead();
    testImagePerArch();
    testRefusalsAndFailures();
    if (argc > 1)
    {
        CHECK(compareWithPlan(argv[1]) > 0);
    }
    return testutil::finish("test_fp8_launch");
}
