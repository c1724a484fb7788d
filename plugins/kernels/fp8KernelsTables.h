/*
 * The shapes of the data the AOT build generates for the BlockFp8MatMul kernels' host code.
 *
 * `python -m mla_export.kernels.aot --out-dir DIR` writes (data only, no logic):
 *   DIR/fp8_kernels_tables.h   constexpr tables of mla_export/kernels/fp8/plan.py: GEMM configs, the kernel table,
 *                              plan constants, the reasons of unsupportedReason, each kernel kind's runtime-argument
 *                              count (included by fp8KernelsPlan.cpp and fp8Kernels.cpp);
 *   DIR/fp8_kernels_images.cpp the compiled images (cubins per arch, PTX), entry names and shared-memory sizes,
 *                              defining the arrays declared at the end of this file. The images of sm_89 and later
 *                              hold the native FP8 path, those below the weight-only one: same arguments and grids.
 * The logic that reads them is hand-written: fp8KernelsPlan.cpp (the plan) and fp8Kernels.cpp (launching).
 */
#pragma once

#include "mlaKernelsTables.h"

#include <cstdint>

namespace mla
{
namespace kernels
{
namespace fp8_tables
{
using tables::ArchImage;
using tables::ElementBytes;

//! Kernel kinds, in launch order (fp8_plan.KERNEL_KINDS).
enum KernelKind : int32_t
{
    kActQuant = 0,
    kGemm = 1,
    kReduce = 2,
    kNumKinds = 3,
};

//! Block sizes of the GEMM (fp8_plan.GemmConfig; BLOCK_K is kBlockK); index 0 "decode", 1 "prefill".
struct GemmConfig
{
    int32_t blockM;
    int32_t blockN;
    int32_t numWarps;
};

//! One AOT-compiled specialization (fp8_plan.KernelSpec); its position is its index in Module::function.
struct KernelEntry
{
    int32_t kind;    //!< KernelKind
    int32_t dtype;   //!< DataType value
    int32_t variant; //!< GEMM config index (gemm), else 0
    // The images of sm_89+ are the native path's: their prefill gemm reads act_quant's codes (x_fp8).
    int32_t numWarps;
};

// Defined by the generated fp8_kernels_images.cpp.
extern ArchImage const kImages[];
extern int32_t const kNumImages;
extern char const* const kEntryNames[]; //!< [numKernels]

} // namespace fp8_tables
} // namespace kernels
} // namespace mla
