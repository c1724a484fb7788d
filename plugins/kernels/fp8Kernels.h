/*
 * Host-side API of the AOT-compiled Triton kernels for BlockFp8MatMul (a product with a block-scaled FP8 weight).
 *
 * Implemented by fp8Kernels.cpp (hand-written) over the images and tables that `make kernels`
 * (mla_export/kernels/aot.py) generates from mla_export/kernels/fp8/plan.py. The plugin
 * (plugins/blockFp8MatMulPlugin) calls only this API; every choice made here (GEMM config, split-K, grids,
 * workspace) is the one the Python API (mla_export.kernels.fp8.api) makes for the same shapes.
 *
 * Contract: mla_export/common/contract.py FP8_* (the FP8 block convention and the BlockFp8MatMul op):
 *   output[g] = input[g] @ dequantize(weight[g])^T, W[n, k] = float(q[n, k]) * scaleInv[n / 128, k / 128],
 *   float32 accumulation, rounded once to T. What `launch` runs (fp8KernelsPlan.h):
 *   1. act_quant, grid (cdiv(G*M, 16), kBlocks), native path and M > 16 only: the input quantized to e4m3 per
 *      [row, 128 columns] (DeepSeek's act_quant) into the workspace, once;
 *   2. gemm, grid (mTiles * nTiles, splits, G): native FP8 tensor cores on sm_89 and later (decode quantizes the
 *      input in the kernel), the weight decoded to T in registers on sm_80/86; with one split it writes the
 *      output, else float32 partials to the workspace;
 *   3. reduce, grid (cdiv(G*M*N, kReduceBlock)), only when splits > 1: the partials summed in split order.
 * The path is the loaded image's (Module::image()->arch >= 89: native).
 * No atomics: deterministic. The plan reads shapes only (the same on every GPU).
 */
#pragma once

#include "mlaKernels.h"

#include <cuda.h>

#include <cstddef>
#include <cstdint>

namespace mla
{
namespace kernels
{
namespace fp8
{

//! Shapes of one BlockFp8MatMul call. Host values only.
struct Dims
{
    int64_t groups;    //!< G (1 for 2-D weights)
    int64_t rows;      //!< M: product of input's leading dims per group
    int32_t n;         //!< N, output features (weight rows)
    int32_t k;         //!< K, input features (weight columns)
    int32_t blockSize; //!< the block_size attribute; supported() only for 128
    DataType dtype;    //!< T, of input and output
};

//! Device pointers of one call (all 16-byte aligned).
struct Tensors
{
    void const* input;     //!< [G, M, K] T
    void const* weight;    //!< [G, N, K] float8e4m3fn
    float const* scaleInv; //!< [G, ceil(N/128), ceil(K/128)] float32
    void* output;          //!< [G, M, N] T
};

//! True when a kernel specialization exists for these dims; otherwise `why` names the reason.
bool supported(Dims const& dims, char const** why) noexcept;

//! Scratch bytes `launch` needs for these dims and for every call with the same groups, n, k and fewer rows
//! (act_quant's codes and scales when M > 16, on any arch; the split-K partials): size it once at an engine
//! profile's largest rows. 0 for decode shapes that are not split.
size_t workspaceBytes(Dims const& dims) noexcept;

//! The BlockFp8MatMul kernels' images: load a Module with `module.load(fp8::imageSet())`.
ImageSet imageSet() noexcept;

//! Launch the GEMM (and the split-K reduction) on `stream`. `module` holds imageSet(); `workspace` holds at
//! least workspaceBytes(dims) bytes (may be null when that is 0). Returns CUDA_ERROR_INVALID_VALUE for
//! unsupported dims or null/misaligned pointers, CUDA_ERROR_NOT_INITIALIZED for an unloaded module.
CUresult launch(Module const& module, Dims const& dims, Tensors const& tensors, void* workspace,
    CUstream stream) noexcept;

} // namespace fp8
} // namespace kernels
} // namespace mla
