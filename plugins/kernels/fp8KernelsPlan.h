/*
 * The launch plan of the BlockFp8MatMul AOT kernels: the C++ side of mla_export/kernels/fp8/plan.py.
 *
 * Implemented by fp8KernelsPlan.cpp (hand-written: fp8_plan.py's formula) over fp8_plan.py's table, which the
 * AOT build generates as fp8_kernels_tables.h. No CUDA calls, so tests compile it alone and compare it with the
 * Python plan (tests/test_fp8_kernels_aot.py).
 */
#pragma once

#include "fp8Kernels.h"

#include <cstdint>

namespace mla
{
namespace kernels
{
namespace fp8
{
namespace plan
{

//! Every launch decision of one call (fp8_plan.Fp8Plan). Grids are (x, y, z), in KernelKind order; a kind not
//! launched has grid {0, 0, 0}. act_quant's grid is set for the prefill config, launched on the native path only.
struct LaunchPlan
{
    int32_t config; //!< GEMM config index (0 decode, 1 prefill)
    int64_t mTiles;
    int64_t nTiles;
    int64_t kBlocks;
    int32_t splits;
    int32_t kBlocksPerSplit;
    int32_t kernels[3]; //!< kernel table index per KernelKind (Module::function)
    uint32_t grids[3][3];
    int64_t xqOffset;       //!< workspace byte offsets: act_quant's codes [G*M, K] u8, scales [G*M, kBlocks] f32,
    int64_t sxOffset;       //!< then the split partials [splits, G, M, N] f32
    int64_t partialOffset;
    int64_t callBytes;      //!< this call's workspace
    int64_t workspaceBytes; //!< the largest callBytes over rows <= dims.rows
};

//! nullptr when the AOT kernels handle `dims`, else the reason (fp8_plan.unsupported_reason's text).
char const* unsupportedReason(Dims const& dims) noexcept;

//! The plan for `dims`; false when unsupported.
bool makePlan(Dims const& dims, LaunchPlan& out) noexcept;

//! Number of kernels in the table (<= Module::kMaxFunctions).
int32_t numKernels() noexcept;

} // namespace plan
} // namespace fp8
} // namespace kernels
} // namespace mla
