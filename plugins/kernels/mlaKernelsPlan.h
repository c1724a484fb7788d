/*
 * The launch plan of the AOT kernels: the C++ side of mla_export/kernels/attention/plan.py.
 *
 * Implemented by mlaKernelsPlan.cpp (hand-written: plan.py's formula) over plan.py's table (families,
 * block sizes, split constants, kernel table) that the AOT build generates as mla_kernels_tables.h
 * (`python -m mla_export.kernels.aot`). It makes no CUDA calls, so tests compile it alone and compare it with the Python plan.
 */
#pragma once

#include "mlaKernels.h"

#include <cstdint>

namespace mla
{
namespace kernels
{
namespace plan
{

//! Every launch decision for one call (fields as in plan.Plan). Grids are (x, y, z).
struct LaunchPlan
{
    int32_t family;        //!< index into plan.FAMILIES
    int32_t blockM;        //!< (token, head) rows per attention program
    int32_t mBlocks;       //!< ceil(S*H / blockM)
    int32_t numSplits;     //!< cache splits per sequence (1: no combine kernel)
    int32_t attnNumWarps;
    int32_t ropeKernel;    //!< index into the kernel table (Module::function)
    int32_t attnKernel;
    int32_t combineKernel;
    uint32_t ropeGrid[3];    //!< (B*S, 1, 1)
    uint32_t attnGrid[3];    //!< (mBlocks, numSplits, B)
    uint32_t combineGrid[3]; //!< (B*S*H, 1, 1), or x = 0 when numSplits == 1
    int64_t qRotOffset;      //!< workspace byte offsets: rotated q_pe [B,S,H,Dr] T
    int64_t oPartOffset;     //!< split partials [B,S*H,splits,Dc] float32
    int64_t lseOffset;       //!< split log2-sum-exp [B,S*H,splits] float32
    int64_t workspaceBytes;
};

//! nullptr when the AOT kernels handle `dims`, else the reason (plan.unsupported_reason's text).
char const* unsupportedReason(Dims const& dims) noexcept;

//! The plan for `dims` on a device with `numSms` SMs; false when unsupported.
bool makePlan(Dims const& dims, int32_t numSms, LaunchPlan& out) noexcept;

//! Number of kernels in the table (<= Module::kMaxFunctions).
int32_t numKernels() noexcept;

} // namespace plan
} // namespace kernels
} // namespace mla
