/*
 * Host-side API of the AOT-compiled Triton kernels for MlaAttention.
 *
 * Implemented by mlaKernels.cpp (hand-written) over the images and tables that `make kernels`
 * (mla_export/kernels/aot.py) generates: a cubin per GPU arch plus PTX for the others. The plugin
 * (plugins/mlaAttentionPlugin) calls only this API. Every choice of specialization, grid and split count made here is the choice the Python API
 * (mla_export.kernels) makes for the same shapes: both read one table.
 *
 * Contract: mla_export/common/contract.py (mirrored in plugins/mlaAttentionPlugin/mlaContract.h).
 *
 * What `launch` runs (plan and kernel table: mlaKernelsPlan.h, over the table generated from plan.py):
 *   1. rope_append, grid (B*S): rotates q_pe into the workspace and writes [kv_latent ; rotated k_pe]
 *      into cache rows cache_seqlens[b] + i (only rows inside [0, Smax)). A paged or FP8 cache (contract
 *      version 2, Dims::cacheV2) runs the cache kernels of its kv cache dtype instead: rows addressed through
 *      the block table (page ids outside [0, numPages) never dereferenced), c_kv quantized on append.
 *   2. attention, grid (ceil(S*H / blockM), numSplits, B): split-KV over the cache, fp32 online softmax.
 *   3. combine, grid (B*S*H), only when numSplits > 1: log-sum-exp merge of the split partials.
 * numSplits depends only on (B, S, H, Smax, numSms), never on device data. Workspace: rotated q_pe
 * [B,S,H,Dr] T, then (numSplits > 1) partials [B,S*H,numSplits,Dc] and [B,S*H,numSplits] float32,
 * each region 256-byte aligned.
 */
#pragma once

#include <cuda.h>

#include <cstddef>
#include <cstdint>

namespace mla
{
namespace kernels
{
namespace tables
{
struct ArchImage;
} // namespace tables

enum class DataType : int32_t
{
    kFLOAT32 = 0,
    kFLOAT16 = 1,
    kBFLOAT16 = 2,
};

//! Shapes of one MlaAttention call (names as in contract.py). Host values only: no device data.
struct Dims
{
    int32_t batch;      //!< B
    int32_t newTokens;  //!< S, new tokens per sequence
    int32_t numHeads;   //!< H
    int32_t kvLoraRank; //!< Dc
    int32_t ropeDim;    //!< Dr
    int32_t maxSeqLen;  //!< Smax, rows of the cache
    DataType dtype;     //!< T
    float softmaxScale; //!< the softmax_scale attribute; supported() is false unless finite and > 0
    // Contract version 2 (a paged and/or FP8 cache); all 0: contract version 1's cache [B,Smax,Dc+Dr] T.
    int32_t pageSize{0};     //!< rows per page, a power of two; 0: contiguous. Paged: maxSeqLen = maxPages * pageSize
    int32_t kvCacheDtype{0}; //!< 0: rows in T, 1: FP8 (codes, scales and rope planes)
    int32_t numPages{0};     //!< P, the pool's pages (contiguous: B)
    int32_t maxPages{0};     //!< block_table columns (contiguous: 0, the table is not read)
    int32_t ropeRows{0};     //!< rope_cos_sin rows: the kernels' Smax of a paged call (contiguous: maxSeqLen)

    //! True when the contract-2 cache kernels run (a paged or FP8 cache).
    bool cacheV2() const noexcept { return pageSize != 0 || kvCacheDtype != 0; }
};

//! Device pointers of one call. `cache` is the present cache: the caller has already made it hold
//! the past cache (same buffer, or a copy), the kernels write only the new rows into it.
struct Tensors
{
    void const* qLatent;          //!< [B,S,H,Dc] T
    void const* qPe;              //!< [B,S,H,Dr] T
    void const* kvLatent;         //!< [B,S,Dc] T
    void const* kPe;              //!< [B,S,Dr] T
    void* cache;                  //!< [B,Smax,Dc+Dr] T
    int32_t const* cacheSeqlens;  //!< [B] int32
    float const* ropeCosSin;      //!< [Smax,Dr] float32
    void* attnLatent;             //!< [B,S,H,Dc] T
    // Contract version 2 (Dims::cacheV2): `cache` is the pool [P,page,Dc+Dr] T, or the FP8 codes [P,page,Dc].
    int32_t const* blockTable{nullptr}; //!< [B,maxPages] int32; paged only (contiguous: not read)
    float* cacheScale{nullptr};         //!< FP8 only: present scales [P,page,ceil(Dc/128)] float32
    void* cacheRope{nullptr};           //!< FP8 only: present rotated k_pe [P,page,Dr] T
};

//! True when a kernel specialization exists for these dims; otherwise `why` names the reason.
bool supported(Dims const& dims, char const** why) noexcept;

//! Scratch bytes that `launch` needs for these dims on a device with `numSms` SMs (split partials).
size_t workspaceBytes(Dims const& dims, int32_t numSms) noexcept;

//! One generated table of AOT-compiled kernels (MlaAttention's: mlaImageSet(); DeepseekMoE's:
//! moe::imageSet() in moeKernels.h): the images of every arch, one per kernel, and their entry names.
struct ImageSet
{
    tables::ArchImage const* images; //!< [numImages]
    int32_t numImages;
    int32_t numKernels;             //!< <= Module::kMaxFunctions
    char const* const* entryNames;  //!< [numKernels]
};

//! The MlaAttention kernels' images (what Module::load() loads).
ImageSet mlaImageSet() noexcept;

//! The image a device of compute capability `arch` runs from `set` (imageChoice's rule), or nullptr.
tables::ArchImage const* pickImage(ImageSet const& set, int32_t arch) noexcept;

//! The kernels of one CUDA context: the images for the current device's arch (imageChoice: a cubin,
//! or PTX where no cubin runs) loaded once with cuModuleLoadData and unloaded by `unload`.
//! Driver calls used: cuCtxGetDevice, cuDeviceGetAttribute, cuModuleLoadData, cuModuleGetFunction,
//! cuFuncSetAttribute, cuModuleUnload, cuLaunchKernel. Every device pointer passed to `launch`
//! (tensors and workspace) must be 16-byte aligned (launch returns CUDA_ERROR_INVALID_VALUE otherwise).
class Module
{
public:
    CUresult load() noexcept;   //!< load(mlaImageSet())
    CUresult load(ImageSet const& set) noexcept; //!< reads the current context's device arch; idempotent
    void unload() noexcept;
    bool loaded() const noexcept { return mModule != nullptr; }
    CUmodule handle() const noexcept { return mModule; }
    int32_t arch() const noexcept { return mArch; } //!< e.g. 90 for sm_90
    int32_t numSms() const noexcept { return mNumSms; }
    //! The loaded image of the set (its shared memory per kernel), nullptr before load.
    tables::ArchImage const* image() const noexcept { return mImage; }

    static constexpr int32_t kMaxFunctions = 64;
    //! Function handles filled by load(), indexed by the generated kernel table.
    CUfunction function(int32_t index) const noexcept { return mFunctions[index]; }

private:
    CUmodule mModule{nullptr}; //!< the module of function 0; non-null while loaded
    CUfunction mFunctions[kMaxFunctions]{};
    //! Triton emits one image per kernel, so each function has its own module (mModules[0] == mModule).
    CUmodule mModules[kMaxFunctions]{};
    tables::ArchImage const* mImage{nullptr};
    int32_t mArch{0};
    int32_t mNumSms{0};
};

//! The image Module::load picks on a device of compute capability `arch` (major*10+minor): its arch and
//! whether it is PTX (JIT-compiled by the driver). False when none runs there (before sm_80).
bool imageChoice(int32_t arch, int32_t& imageArch, bool& isPtx) noexcept;

//! Launch RoPE + cache append, then attention (decode or prefill, split + combine) on `stream`.
//! `workspace` holds at least workspaceBytes(dims, module.numSms()) bytes.
CUresult launch(Module const& module, Dims const& dims, Tensors const& tensors, void* workspace,
    CUstream stream) noexcept;

} // namespace kernels
} // namespace mla
