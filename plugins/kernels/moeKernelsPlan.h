/*
 * The launch plan of the DeepseekMoE AOT kernels: the C++ side of mla_export/kernels/moe/plan.py.
 *
 * Implemented by moeKernelsPlan.cpp (hand-written: moe_plan.py's formula) over moe_plan.py's table, which
 * the AOT build generates as moe_kernels_tables.h. No CUDA calls, so tests compile it alone and compare it
 * with the Python plan (tests/test_moe_kernels_aot.py).
 */
#pragma once

#include "moeKernels.h"

#include <cstdint>

namespace mla
{
namespace kernels
{
namespace moe
{
namespace plan
{

//! Launches of one chunk (moe_plan.ChunkPlan). Grids are (x, y, z), in KernelKind order.
struct ChunkPlan
{
    int64_t tokens;
    int32_t config;    //!< GEMM config index (0 decode, 1 prefill; + kFp8ConfigOffset for FP8 experts)
    int64_t slots;     //!< tokens * top_k
    int64_t maxBlocks; //!< padded BLOCK_M-row blocks the GEMM grids cover
    int32_t kernels[7];  //!< kernel table index per KernelKind (Module::function)
    uint32_t grids[7][3];
};

//! Every launch decision of one call (moe_plan.MoePlan): chunks and the workspace layout (byte offsets).
struct LaunchPlan
{
    int64_t chunkTokens;
    int64_t numChunks;
    int32_t topkBlockE;
    ChunkPlan full; //!< every chunk but the last
    ChunkPlan last; //!< the last chunk
    int64_t logitsOffset;
    int64_t idsOffset;
    int64_t weightsOffset;
    int64_t countsOffset;
    int64_t sortedOffset;
    int64_t blockExpertOffset;
    int64_t actOffset;
    int64_t yOffset;
    int64_t workspaceBytes;
};

//! nullptr when the AOT kernels handle `dims`, else the reason (moe_plan.unsupported_reason's text).
char const* unsupportedReason(Dims const& dims) noexcept;

//! The plan for `dims`; false when unsupported.
bool makePlan(Dims const& dims, LaunchPlan& out) noexcept;

//! Number of kernels in the table (<= Module::kMaxFunctions).
int32_t numKernels() noexcept;

} // namespace plan
} // namespace moe
} // namespace kernels
} // namespace mla
