/*
 * The launch plan of the AOT kernels (mlaKernelsPlan.h): mla_export/kernels/attention/plan.py's formula in C++,
 * over the tables the AOT build generates from plan.py (mla_kernels_tables.h). No CUDA calls, so tests
 * compile it alone and compare its plans with the Python ones (tests/test_kernels_aot.py).
 */
#include "mlaKernelsPlan.h"

#include "mla_kernels_tables.h"

#include <algorithm>
#include <iterator>

namespace mla
{
namespace kernels
{
namespace plan
{
namespace
{
using namespace tables;

static_assert(kNumKernels <= Module::kMaxFunctions, "kernel table larger than Module::kMaxFunctions");

int64_t cdiv(int64_t a, int64_t b) noexcept
{
    return a >= 0 ? (a + b - 1) / b : -((-a) / b);
}

int64_t alignUp(int64_t n) noexcept
{
    return cdiv(n, kWorkspaceAlign) * kWorkspaceAlign;
}

//! Index of the AOT family of these dims, or -1.
int32_t findFamily(int32_t kvLoraRank, int32_t ropeDim) noexcept
{
    for (int32_t i = 0; i < static_cast<int32_t>(std::size(kFamilies)); ++i)
    {
        if (kFamilies[i].aot && kFamilies[i].kvLoraRank == kvLoraRank && kFamilies[i].ropeDim == ropeDim)
        {
            return i;
        }
    }
    return -1;
}

//! Index of the kernel table entry, or -1 (plan.kernel_indices): `cacheV2`/`kvCacheDtype` pick contract version
//! 1's kernels (0, 0) or a contract-2 cache kernel (1, dtype).
int32_t findKernel(
    int32_t family, int32_t dtype, int32_t kind, int32_t blockM, int32_t cacheV2, int32_t kvCacheDtype) noexcept
{
    for (int32_t i = 0; i < kNumKernels; ++i)
    {
        KernelEntry const& k = kKernels[i];
        if (k.family == family && k.dtype == dtype && k.kind == kind && k.blockM == blockM
            && kKernelCacheV2[i] == cacheV2 && kKernelKvCacheDtype[i] == kvCacheDtype)
        {
            return i;
        }
    }
    return -1;
}

//! True when the table holds contract-2 cache kernels for `kvCacheDtype` (plan.AOT_V2_KV_CACHE_DTYPES).
bool hasCacheKernels(int32_t kvCacheDtype) noexcept
{
    for (int32_t i = 0; i < kNumKernels; ++i)
    {
        if (kKernelCacheV2[i] == 1 && kKernelKvCacheDtype[i] == kvCacheDtype)
        {
            return true;
        }
    }
    return false;
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

//! plan.choose_splits
int64_t chooseSplits(int64_t batch, int64_t newTokens, int64_t numHeads, int64_t maxSeqLen, int64_t blockM,
    int64_t blockN, int64_t numSms) noexcept
{
    int64_t const mBlocks = cdiv(newTokens * numHeads, blockM);
    int64_t const base = batch * mBlocks;
    if (base <= 0 || numSms <= 0)
    {
        return 1;
    }
    int64_t const want = cdiv(numSms, base);
    int64_t const byLength = std::max<int64_t>(1, cdiv(maxSeqLen, blockN * kMinBlocksPerSplit));
    return std::max<int64_t>(1, std::min(std::min(want, byLength), kMaxSplits));
}
} // namespace

int32_t numKernels() noexcept
{
    return kNumKernels;
}

// plan.unsupported_reason
char const* unsupportedReason(Dims const& d) noexcept
{
    int32_t const dtype = static_cast<int32_t>(d.dtype);
    if (std::find(std::begin(kAotDtypes), std::end(kAotDtypes), dtype) == std::end(kAotDtypes))
    {
        return kReasonDtype;
    }
    if (findFamily(d.kvLoraRank, d.ropeDim) < 0)
    {
        return kReasonDims;
    }
    if (std::min(std::min(d.batch, d.newTokens), std::min(d.numHeads, d.maxSeqLen)) < 0)
    {
        return kReasonNegative;
    }
    if (d.batch > 65535)
    {
        return kReasonBatch;
    }
    if (static_cast<int64_t>(d.newTokens) * d.numHeads * kMaxSplits * d.kvLoraRank >= (int64_t{1} << 31))
    {
        return kReasonRows;
    }
    int32_t const page = d.pageSize;
    if (page < 0 || (page & (page - 1)) != 0 || (d.cacheV2() && !hasCacheKernels(d.kvCacheDtype)))
    {
        return kReasonCache;
    }
    return nullptr;
}

// plan.make_plan
bool makePlan(Dims const& d, int32_t numSms, LaunchPlan& p) noexcept
{
    if (unsupportedReason(d) != nullptr)
    {
        return false;
    }
    int32_t const fi = findFamily(d.kvLoraRank, d.ropeDim);
    Family const& f = kFamilies[fi];
    int32_t const dtype = static_cast<int32_t>(d.dtype);
    int64_t const rows = static_cast<int64_t>(d.newTokens) * d.numHeads;
    int64_t const blockM = rows <= kSmallM ? kSmallM : f.blockMLarge;
    int64_t const mBlocks = cdiv(rows, blockM);
    int64_t const splits = chooseSplits(d.batch, d.newTokens, d.numHeads, d.maxSeqLen, blockM, f.blockN, numSms);
    int64_t const qRotBytes = static_cast<int64_t>(d.batch) * rows * d.ropeDim * elementBytes(dtype);
    int64_t const oPartBytes = splits > 1 ? static_cast<int64_t>(d.batch) * rows * splits * d.kvLoraRank * 4 : 0;
    int64_t const lseBytes = splits > 1 ? static_cast<int64_t>(d.batch) * rows * splits * 4 : 0;
    p.family = fi;
    p.blockM = static_cast<int32_t>(blockM);
    p.mBlocks = static_cast<int32_t>(mBlocks);
    p.numSplits = static_cast<int32_t>(splits);
    p.attnNumWarps = blockM == kSmallM ? kSmallMNumWarps : f.numWarps;
    int32_t const cacheV2 = d.cacheV2() ? 1 : 0;
    p.ropeKernel = findKernel(fi, dtype, kRopeAppend, 0, cacheV2, d.kvCacheDtype);
    p.attnKernel = findKernel(fi, dtype, kAttention, p.blockM, cacheV2, d.kvCacheDtype);
    p.combineKernel = findKernel(fi, dtype, kCombine, 0, 0, 0); // combine serves every cache layout
    p.ropeGrid[0] = static_cast<uint32_t>(static_cast<int64_t>(d.batch) * d.newTokens);
    p.ropeGrid[1] = 1;
    p.ropeGrid[2] = 1;
    p.attnGrid[0] = static_cast<uint32_t>(mBlocks);
    p.attnGrid[1] = static_cast<uint32_t>(splits);
    p.attnGrid[2] = static_cast<uint32_t>(d.batch);
    p.combineGrid[0] = splits > 1 ? static_cast<uint32_t>(d.batch * rows) : 0U;
    p.combineGrid[1] = 1;
    p.combineGrid[2] = 1;
    p.qRotOffset = 0;
    p.oPartOffset = alignUp(qRotBytes);
    p.lseOffset = p.oPartOffset + alignUp(oPartBytes);
    p.workspaceBytes = p.lseOffset + alignUp(lseBytes);
    return p.ropeKernel >= 0 && p.attnKernel >= 0 && p.combineKernel >= 0;
}

} // namespace plan
} // namespace kernels
} // namespace mla
