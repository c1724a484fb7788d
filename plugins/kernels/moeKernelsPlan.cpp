/*
 * The launch plan of the DeepseekMoE AOT kernels (moeKernelsPlan.h): mla_export/kernels/moe/plan.py's formula
 * in C++, over the tables the AOT build generates from moe_plan.py (moe_kernels_tables.h). No CUDA calls, so
 * tests compile it alone and compare its plans with the Python ones (tests/test_moe_kernels_aot.py).
 */
#include "moeKernelsPlan.h"

#include "moe_kernels_tables.h"

#include <algorithm>
#include <iterator>

namespace mla
{
namespace kernels
{
namespace moe
{
namespace plan
{
namespace
{
using namespace moe_tables;

static_assert(kNumKernels <= Module::kMaxFunctions, "kernel table larger than Module::kMaxFunctions");

int64_t cdiv(int64_t a, int64_t b) noexcept
{
    return (a + b - 1) / b;
}

int64_t alignUp(int64_t n) noexcept
{
    return cdiv(n, kWorkspaceAlign) * kWorkspaceAlign;
}

int32_t elementBytes(int32_t dtype) noexcept
{
    for (ElementBytes const& e : kElementBytes)
    {
        if (e.dtype == dtype)
        {
            return e.bytes;
        }
    }
    return 0;
}

//! moe_plan.topk_block_e (AOT sizes only: unsupportedReason has refused larger E).
int32_t topkBlockE(int32_t numExperts) noexcept
{
    for (int32_t block : kTopkBlockEs)
    {
        if (numExperts <= block)
        {
            return block;
        }
    }
    return -1;
}

//! Index of the kernel table entry, or -1 (moe_plan.kernel_indices).
int32_t findKernel(int32_t kind, int32_t dtype, int32_t variant) noexcept
{
    bool const typed = kind == kRouterLogits || kind == kGateUp || kind == kDown || kind == kCombine;
    for (int32_t i = 0; i < kNumKernels; ++i)
    {
        KernelEntry const& k = kKernels[i];
        if (k.kind == kind && k.dtype == (typed ? dtype : -1) && k.variant == variant)
        {
            return i;
        }
    }
    return -1;
}

void setGrid(uint32_t grid[3], int64_t x, int64_t y) noexcept
{
    grid[0] = static_cast<uint32_t>(x);
    grid[1] = static_cast<uint32_t>(y);
    grid[2] = 1;
}

//! moe_plan.chunk_plan (the config by moe_plan.choose_config) with the kernels of moe_plan.kernel_indices.
bool chunkPlan(Dims const& d, int64_t tokens, int32_t blockE, ChunkPlan& c) noexcept
{
    int64_t const slots = tokens * d.topK;
    c.tokens = tokens;
    c.config = (slots <= kDecodeSlotsPerExpert * d.numExperts ? 0 : 1) + (d.fp8Experts != 0 ? kFp8ConfigOffset : 0);
    GemmConfig const& g = kGemmConfigs[c.config];
    int32_t const held = heldExperts(d);
    c.slots = slots;
    c.maxBlocks = cdiv(slots, g.blockM) + std::min<int64_t>(held, slots);
    setGrid(c.grids[kRouterLogits], cdiv(tokens, kRouterBlockT), cdiv(d.numExperts, kRouterBlockE));
    setGrid(c.grids[kTopk], cdiv(tokens, kTopkBlockT), 1);
    setGrid(c.grids[kCount], cdiv(held, kCountBlockE), 1);
    setGrid(c.grids[kAlign], held, 1);
    setGrid(c.grids[kGateUp], c.maxBlocks, cdiv(d.inter, g.blockN));
    setGrid(c.grids[kDown], c.maxBlocks, cdiv(d.hidden, g.blockN));
    setGrid(c.grids[kCombine], tokens, cdiv(d.hidden, kCombineBlockD));
    int32_t const dtype = static_cast<int32_t>(d.dtype);
    bool ok = true;
    for (int32_t kind = 0; kind < kNumKinds; ++kind)
    {
        int32_t const variant = kind == kTopk ? blockE : (kind == kGateUp || kind == kDown ? c.config : 0);
        c.kernels[kind] = findKernel(kind, dtype, variant);
        ok = ok && c.kernels[kind] >= 0;
    }
    return ok;
}
} // namespace

int32_t numKernels() noexcept
{
    return kNumKernels;
}

// moe_plan.unsupported_reason
char const* unsupportedReason(Dims const& d) noexcept
{
    int32_t const dtype = static_cast<int32_t>(d.dtype);
    if (std::find(std::begin(kAotDtypes), std::end(kAotDtypes), dtype) == std::end(kAotDtypes))
    {
        return kReasonDtype;
    }
    if (d.numExperts < 1 || d.numExperts > kMaxExperts)
    {
        return kReasonExperts;
    }
    if (heldExperts(d) < 1 || heldExperts(d) > d.numExperts)
    {
        return kReasonLocalExperts;
    }
    if (d.topK < 1 || d.topK > std::min<int64_t>(kMaxTopK, d.numExperts))
    {
        return kReasonTopK;
    }
    if (d.nGroup < 1 || d.nGroup > kMaxGroups)
    {
        return kReasonGroups;
    }
    if (std::min(d.hidden, d.inter) < 1 || d.hidden % kDimMultiple != 0 || d.inter % kDimMultiple != 0)
    {
        return kReasonDims;
    }
    if (d.tokens < 0)
    {
        return kReasonNegative;
    }
    return nullptr;
}

// moe_plan.make_plan
bool makePlan(Dims const& d, LaunchPlan& p) noexcept
{
    if (unsupportedReason(d) != nullptr)
    {
        return false;
    }
    p.chunkTokens = kChunkTokens;
    p.numChunks = d.tokens > 0 ? cdiv(d.tokens, kChunkTokens) : 0;
    p.topkBlockE = topkBlockE(d.numExperts);
    bool ok = chunkPlan(d, std::min<int64_t>(d.tokens, kChunkTokens), p.topkBlockE, p.full);
    if (p.numChunks > 1)
    {
        ok = chunkPlan(d, d.tokens - (p.numChunks - 1) * kChunkTokens, p.topkBlockE, p.last) && ok;
    }
    else
    {
        p.last = p.full;
    }
    int64_t const rows = std::max(p.full.maxBlocks * kGemmConfigs[p.full.config].blockM,
        p.last.maxBlocks * kGemmConfigs[p.last.config].blockM);
    int64_t const blocks = std::max(p.full.maxBlocks, p.last.maxBlocks);
    int64_t const elem = elementBytes(static_cast<int32_t>(d.dtype));
    int64_t const sizes[8] = {p.full.tokens * d.numExperts * 4, p.full.slots * 4, p.full.slots * 4,
        int64_t{heldExperts(d)} * 4, rows * 4, blocks * 4, rows * d.inter * elem, p.full.slots * d.hidden * elem};
    int64_t* const offsets[8] = {&p.logitsOffset, &p.idsOffset, &p.weightsOffset, &p.countsOffset, &p.sortedOffset,
        &p.blockExpertOffset, &p.actOffset, &p.yOffset};
    int64_t at = 0;
    for (int32_t i = 0; i < 8; ++i)
    {
        *offsets[i] = at;
        at += alignUp(sizes[i]);
    }
    p.workspaceBytes = at;
    return ok;
}

} // namespace plan
} // namespace moe
} // namespace kernels
} // namespace mla
