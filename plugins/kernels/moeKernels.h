/*
 * Host-side API of the AOT-compiled Triton kernels for DeepseekMoE (the routed experts of a DeepSeek MoE MLP,
 * router included).
 *
 * Implemented by moeKernels.cpp (hand-written) over the images and tables that `make kernels`
 * (mla_export/kernels/aot.py) generates from mla_export/kernels/moe/plan.py. The plugin
 * (plugins/deepseekMoePlugin) calls only this API; every choice made here (chunks, GEMM config, grids,
 * workspace) is the one the Python API (mla_export.kernels.moe.api) makes for the same shapes.
 *
 * Contract: mla_export/common/contract.py MOE_* (mirrored in plugins/deepseekMoePlugin/moeContract.h); semantics:
 * mla_export/model/moe.py. What `launch` runs per chunk of at most kChunkTokens tokens (moeKernelsPlan.h):
 *   router_logits, topk (routing, float32, moe.route's tie rule), count, align (slots grouped by expert and
 *   padded to the GEMM block on the device: no host sync), gate_up (silu(gate) * up), down (times the routing
 *   weight), combine (sum over the token's top_k experts in order, float32). No atomics: deterministic.
 * A rank's slice (Dims::localExperts, firstExpert; contract version 3): routing over all numExperts, the
 * alignment keeps the slots of the held experts only, the combine sums those (the others contribute 0).
 * FP8 experts (Dims::fp8Experts): gate_up and down run their FP8 specializations (the image of each arch holds
 * the right path: FP8 x FP8 products on sm_89+, weight-only dequantization on sm_80/86; experts.py).
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
namespace moe
{

//! Shapes and routing of one DeepseekMoE call (attribute names as in contract.py). Host values only.
struct Dims
{
    int64_t tokens;      //!< T = B * S
    int32_t hidden;      //!< d
    int32_t inter;       //!< I, moe_intermediate_size
    int32_t numExperts;  //!< E (num_experts)
    int32_t topK;        //!< top_k
    int32_t nGroup;      //!< n_group
    int32_t topkGroup;   //!< topk_group
    int32_t scoringFunc; //!< 0 softmax, 1 sigmoid
    int32_t groupScore;  //!< 0 max, 1 sum of the top 2
    int32_t useBias;     //!< 0 or 1
    int32_t normalize;   //!< 0 or 1
    float weightScale;   //!< weight_scale
    DataType dtype;      //!< T
    int32_t fp8Experts;  //!< 0: experts in T, 1: FP8 (contract version 2: gate_up/down e4m3 + block scales)
    int32_t localExperts; //!< E_local, the experts the stacks hold (contract version 3); 0: all numExperts
    int32_t firstExpert;  //!< first_expert: global id of the stacks' expert 0 (0 on one device)
};

//! E_local: the experts the weight stacks hold (moe_plan.MoeDims.held_experts).
inline int32_t heldExperts(Dims const& d) noexcept
{
    return d.localExperts > 0 ? d.localExperts : d.numExperts;
}

//! Device pointers of one call (all 16-byte aligned).
struct Tensors
{
    void const* hidden;       //!< [T, d] T
    float const* routerWeight; //!< [E, d] float32
    float const* scoreBias;   //!< [E] float32 (read when useBias)
    void const* gateUp;       //!< [E_local, 2I, d] T: gate rows, then up rows (FP8: e4m3 bytes)
    void const* down;         //!< [E_local, d, I] T (FP8: e4m3 bytes)
    void* out;                //!< [T, d] T
    float const* gateUpScale; //!< [E_local, ceil(2I/128), ceil(d/128)] float32; nullptr unless fp8Experts
    float const* downScale;   //!< [E_local, ceil(d/128), ceil(I/128)] float32; nullptr unless fp8Experts
};

//! True when a kernel specialization exists for these dims; otherwise `why` names the reason.
bool supported(Dims const& dims, char const** why) noexcept;

//! Scratch bytes `launch` needs for these dims (one chunk's routing, alignment and expert outputs).
size_t workspaceBytes(Dims const& dims) noexcept;

//! Tokens per chunk: `launch` runs the kernels on at most this many tokens at a time.
int64_t chunkTokens() noexcept;

//! The DeepseekMoE kernels' images: load a Module with `module.load(moe::imageSet())`.
ImageSet imageSet() noexcept;

//! Launch every chunk's seven kernels on `stream`. `module` holds imageSet(); `workspace` holds at least
//! workspaceBytes(dims) bytes. Returns CUDA_ERROR_INVALID_VALUE for unsupported dims or misaligned pointers.
CUresult launch(Module const& module, Dims const& dims, Tensors const& tensors, void* workspace,
    CUstream stream) noexcept;

} // namespace moe
} // namespace kernels
} // namespace mla
