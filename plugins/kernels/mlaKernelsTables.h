/*
 * The shapes of the data the AOT build generates for the kernels' host code.
 *
 * `python -m mla_export.kernels.aot --out-dir DIR` writes two files of data (no logic):
 *   DIR/mla_kernels_tables.h   constexpr tables of mla_export/kernels/attention/plan.py: families, the kernel
 *                              table, plan constants, the reasons of unsupportedReason, and each
 *                              kernel kind's runtime-argument count (included by mlaKernelsPlan.cpp and
 *                              mlaKernels.cpp);
 *   DIR/mla_kernels_images.cpp the compiled images (cubins per arch, PTX), their entry names and
 *                              shared-memory sizes, defining the arrays declared at the end of this file.
 * The logic that reads them is hand-written: mlaKernelsPlan.cpp (the plan) and mlaKernels.cpp (loading
 * and launching).
 */
#pragma once

#include <cstdint>

namespace mla
{
namespace kernels
{
namespace tables
{

//! Kernel kinds, in launch order (plan.KERNEL_KINDS).
enum KernelKind : int32_t
{
    kRopeAppend = 0,
    kAttention = 1,
    kCombine = 2,
    kNumKinds = 3,
};

//! Compile-time constants of one (kv_lora_rank, qk_rope_head_dim) pair (plan.Family).
struct Family
{
    int32_t kvLoraRank;
    int32_t ropeDim;
    int32_t blockN;
    int32_t blockMLarge;
    int32_t numWarps;
    int32_t aot; //!< 1 when compiled for the plugin
};

//! One AOT-compiled specialization (plan.KernelSpec); its position is its index in Module::function.
struct KernelEntry
{
    int32_t family; //!< index into kFamilies
    int32_t dtype;  //!< DataType value
    int32_t kind;   //!< KernelKind
    int32_t blockM; //!< 0 for kinds without one
    int32_t numWarps;
};

struct ElementBytes
{
    int32_t dtype;
    int32_t bytes;
};

//! The images of one arch: one per kernel of the table (Triton emits one image per kernel).
struct ArchImage
{
    int32_t arch;                       //!< compute capability, e.g. 90
    bool isPtx;                         //!< PTX (JIT-compiled by the driver) rather than a cubin
    unsigned char const* const* images; //!< [numKernels] cubin, or NUL-terminated PTX
    int32_t const* sharedBytes;         //!< [numKernels] dynamic shared memory at launch
};

// Defined by the generated mla_kernels_images.cpp.
extern ArchImage const kImages[];
extern int32_t const kNumImages;
extern char const* const kEntryNames[]; //!< [numKernels] entry point of each kernel (the same in every image)

} // namespace tables
} // namespace kernels
} // namespace mla
