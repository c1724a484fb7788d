/*
 * What the DeepseekMoE and BlockFp8MatMul launchers share (moeKernels.cpp, fp8Kernels.cpp): pointer checks and
 * one kernel launch on a grid, given the kernel's warp count from its family's generated table.
 */
#pragma once

#include "mlaKernels.h"

#include <cuda.h>

#include <cstdint>

namespace mla
{
namespace kernels
{
namespace launch_util
{

//! A non-null device pointer aligned to 16 bytes (what the kernels' vector loads need).
inline bool aligned16(void const* p) noexcept
{
    return p != nullptr && (reinterpret_cast<uintptr_t>(p) & 15U) == 0;
}

inline CUdeviceptr devicePtr(void const* p) noexcept
{
    return reinterpret_cast<CUdeviceptr>(p);
}

//! One launch of `module`'s kernel `index` (`numWarps` warps per block, `sharedBytes` of dynamic shared memory)
//! with `args` (pointers to each argument's value, scratch pointers last); a grid with a zero extent launches
//! nothing.
inline CUresult launchOnGrid(Module const& module, int32_t index, int32_t numWarps, int64_t sharedBytes,
    uint32_t const grid[3], CUstream stream, void** args) noexcept
{
    if (grid[0] == 0 || grid[1] == 0 || grid[2] == 0)
    {
        return CUDA_SUCCESS;
    }
    unsigned const threads = static_cast<unsigned>(numWarps) * 32U;
    return cuLaunchKernel(module.function(index), grid[0], grid[1], grid[2], threads, 1, 1,
        static_cast<unsigned>(sharedBytes), stream, args, nullptr);
}

} // namespace launch_util
} // namespace kernels
} // namespace mla
