/*
 * The launch plan of the BlockFp8MatMul AOT kernels (fp8KernelsPlan.h): mla_export/kernels/fp8/plan.py's formula in
 * C++, over the tables the AOT build generates from fp8_plan.py (fp8_kernels_tables.h). No CUDA calls, so tests
 * compile it alone and compare its plans with the Python ones (tests/test_fp8_kernels_aot.py).
 */
#include "fp8KernelsPlan.h"

#include "fp8_kernels_tables.h"

#include <algorithm>
#include <iterator>

namespace mla
{
namespace kernels
{
namespace fp8
{
namespace plan
{
namespace
{
using namespace fp8_tables;

static_assert(kNumKernels <= Module::kMaxFunctions, "kernel table larger than Module::kMaxFunctions");
static_assert(kNumGemmConfigs == 2, "the plan picks config 0 (decode) or 1 (prefill)");

int64_t cdiv(int64_t a, int64_t b) noexcept
{
    return (a + b - 1) / b;
}

int64_t alignUp(int64_t n) noexcept
{
    return cdiv(n, kWorkspaceAlign) * kWorkspaceAlign;
}

//! Index of the kernel table entry, or -1 (fp8_plan.kernel_indices).
int32_t findKernel(int32_t kind, int32_t dtype, int32_t variant) noexcept
{
    for (int32_t i = 0; i < kNumKernels; ++i)
    {
        KernelEntry const& e = kKernels[i];
        if (e.kind == kind && e.dtype == dtype && e.variant == variant)
        {
            return i;
        }
    }
    return -1;
}

//! One config's tiling of `rows` rows and its workspace regions (fp8_plan._layout).
struct Layout
{
    int64_t mTiles;
    int64_t nTiles;
    int64_t splits;
    int64_t perSplit;
    int64_t sxOffset;
    int64_t partialOffset;
    int64_t total;
};

//! fp8_plan.split_k: (splits, K-blocks per split) for `programs` output tiles of all groups.
void splitK(int64_t programs, int64_t kBlocks, int64_t& splits, int64_t& perSplit) noexcept
{
    if (programs <= 0 || programs >= kTargetPrograms || kBlocks <= 1)
    {
        splits = 1;
        perSplit = std::max<int64_t>(kBlocks, 0);
        return;
    }
    int64_t const want = std::min({kMaxSplits, kBlocks, cdiv(kTargetPrograms, programs)});
    perSplit = cdiv(kBlocks, want);
    splits = cdiv(kBlocks, perSplit);
}

Layout layout(Dims const& d, int64_t rows, int32_t config) noexcept
{
    GemmConfig const& c = kGemmConfigs[config];
    int64_t const kBlocks = cdiv(d.k, kBlockK);
    bool const quant = config == 1; // prefill: act_quant's regions
    Layout l{};
    l.mTiles = cdiv(rows, c.blockM);
    l.nTiles = cdiv(d.n, c.blockN);
    splitK(d.groups * l.mTiles * l.nTiles, kBlocks, l.splits, l.perSplit);
    l.sxOffset = quant ? alignUp(d.groups * rows * d.k) : 0;
    l.partialOffset = l.sxOffset + (quant ? alignUp(d.groups * rows * kBlocks * 4) : 0);
    l.total = l.partialOffset + (l.splits > 1 ? alignUp(l.splits * d.groups * rows * d.n * 4) : 0);
    return l;
}

//! fp8_plan.workspace_bound: the largest workspace over 1 <= M' <= rows.
int64_t workspaceBound(Dims const& d) noexcept
{
    if (std::min<int64_t>({d.rows, d.n, d.groups}) <= 0)
    {
        return 0;
    }
    int64_t best = layout(d, std::min<int64_t>(d.rows, kDecodeMaxRows), 0).total;
    GemmConfig const& prefill = kGemmConfigs[1];
    int64_t const nTiles = cdiv(d.n, prefill.blockN);
    int64_t const maxTiles = std::min(cdiv(d.rows, prefill.blockM), cdiv(kTargetPrograms, d.groups * nTiles));
    for (int64_t tiles = 1; tiles <= maxTiles + 1; ++tiles)
    {
        int64_t const rows = tiles <= maxTiles ? std::min<int64_t>(d.rows, tiles * prefill.blockM) : d.rows;
        if (rows > kDecodeMaxRows)
        {
            best = std::max(best, layout(d, rows, 1).total);
        }
    }
    return best;
}

void setGrid(uint32_t grid[3], int64_t x, int64_t y, int64_t z) noexcept
{
    grid[0] = static_cast<uint32_t>(x);
    grid[1] = static_cast<uint32_t>(y);
    grid[2] = static_cast<uint32_t>(z);
}
} // namespace

int32_t numKernels() noexcept
{
    return kNumKernels;
}

// fp8_plan.unsupported_reason
char const* unsupportedReason(Dims const& d) noexcept
{
    int32_t const dtype = static_cast<int32_t>(d.dtype);
    if (std::find(std::begin(kAotDtypes), std::end(kAotDtypes), dtype) == std::end(kAotDtypes))
    {
        return kReasonDtype;
    }
    if (d.blockSize != kBlockK)
    {
        return kReasonBlock;
    }
    if (d.k < 1 || d.n < 1 || d.k % kKMultiple != 0 || d.n % kNMultiple != 0)
    {
        return kReasonDims;
    }
    if (d.groups < 1 || d.groups > kMaxGroups)
    {
        return kReasonGroups;
    }
    if (d.rows < 0)
    {
        return kReasonNegative;
    }
    int64_t const limit = int64_t{1} << 31;
    // rows > limit / max(n, k) already makes a product too large; below it none overflows int64.
    int64_t const wide = std::max(d.n, d.k);
    if (d.rows > limit / wide || d.groups * d.rows * wide >= limit)
    {
        return kReasonSize;
    }
    return nullptr;
}

// fp8_plan.make_plan
bool makePlan(Dims const& d, LaunchPlan& p) noexcept
{
    if (unsupportedReason(d) != nullptr)
    {
        return false;
    }
    p.config = d.rows <= kDecodeMaxRows ? 0 : 1;
    Layout const l = layout(d, d.rows, p.config);
    p.mTiles = l.mTiles;
    p.nTiles = l.nTiles;
    p.kBlocks = cdiv(d.k, kBlockK);
    p.splits = static_cast<int32_t>(l.splits);
    p.kBlocksPerSplit = static_cast<int32_t>(l.perSplit);
    bool const empty = l.mTiles * l.nTiles <= 0;
    setGrid(p.grids[kGemm], empty ? 0 : l.mTiles * l.nTiles, empty ? 0 : l.splits, empty ? 0 : d.groups);
    bool const quant = p.config == 1 && !empty && p.kBlocks > 0;
    setGrid(p.grids[kActQuant], quant ? cdiv(d.groups * d.rows, kQuantBlockR) : 0, quant ? p.kBlocks : 0,
        quant ? 1 : 0);
    bool const reduce = l.splits > 1 && !empty;
    setGrid(p.grids[kReduce], reduce ? cdiv(d.groups * d.rows * d.n, kReduceBlock) : 0, reduce ? 1 : 0,
        reduce ? 1 : 0);
    p.xqOffset = 0;
    p.sxOffset = l.sxOffset;
    p.partialOffset = l.partialOffset;
    p.callBytes = l.total;
    p.workspaceBytes = workspaceBound(d);
    int32_t const dtype = static_cast<int32_t>(d.dtype);
    p.kernels[kActQuant] = findKernel(kActQuant, dtype, 0);
    p.kernels[kGemm] = findKernel(kGemm, dtype, p.config);
    p.kernels[kReduce] = findKernel(kReduce, dtype, 0);
    return p.kernels[kActQuant] >= 0 && p.kernels[kGemm] >= 0 && p.kernels[kReduce] >= 0;
}

} // namespace plan
} // namespace fp8
} // namespace kernels
} // namespace mla
