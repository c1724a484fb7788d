/*
 * Host-side API of the AOT-compiled Triton kernels for MlaAttention.
 *
 * Hand-written and committed; implemented by the generated source `mla_kernels_aot.cpp`
 * (`make kernels`, from mla_export/kernels/aot.py), which embeds a cubin per GPU arch plus PTX for
 * newer ones. The plugin (plugins/mlaAttentionPlugin) calls only this API. Every choice of
 * specialization, grid and split count made here is the choice the Python API
 * (mla_export.kernels) makes for the same shapes: both read one table.
 *
 * Contract: mla_export/contract.py (mirrored in plugins/mlaAttentionPlugin/mlaContract.h).
 */
#pragma once

#include <cuda.h>

#include <cstddef>
#include <cstdint>

namespace mla
{
namespace kernels
{

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
};

//! True when a kernel specialization exists for these dims; otherwise `why` names the reason.
bool supported(Dims const& dims, char const** why) noexcept;

//! Scratch bytes that `launch` needs for these dims on a device with `numSms` SMs (split partials).
size_t workspaceBytes(Dims const& dims, int32_t numSms) noexcept;

//! The kernels of one CUDA context: the image for the current device's arch (cubin, or PTX for
//! archs newer than any cubin) loaded once with cuModuleLoadData and unloaded by `unload`.
class Module
{
public:
    CUresult load() noexcept;   //!< reads the current context's device arch; idempotent
    void unload() noexcept;
    bool loaded() const noexcept { return mModule != nullptr; }
    CUmodule handle() const noexcept { return mModule; }
    int32_t arch() const noexcept { return mArch; } //!< e.g. 90 for sm_90
    int32_t numSms() const noexcept { return mNumSms; }

    static constexpr int32_t kMaxFunctions = 64;
    //! Function handles filled by load(), indexed by the generated kernel table.
    CUfunction function(int32_t index) const noexcept { return mFunctions[index]; }

private:
    CUmodule mModule{nullptr};
    CUfunction mFunctions[kMaxFunctions]{};
    int32_t mArch{0};
    int32_t mNumSms{0};
};

//! Launch RoPE + cache append, then attention (decode or prefill, split + combine) on `stream`.
//! `workspace` holds at least workspaceBytes(dims, module.numSms()) bytes.
CUresult launch(Module const& module, Dims const& dims, Tensors const& tensors, void* workspace,
    CUstream stream) noexcept;

} // namespace kernels
} // namespace mla
