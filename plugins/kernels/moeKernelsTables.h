/*
 * The shapes of the data the AOT build generates for the DeepseekMoE kernels' host code.
 *
 * `python -m mla_export.kernels.aot --out-dir DIR` writes (data only, no logic):
 *   DIR/moe_kernels_tables.h   constexpr tables of mla_export/kernels/moe/plan.py: GEMM configs, the kernel
 *                              table, plan constants, the reasons of unsupportedReason, each kernel kind's
 *                              runtime-argument count (included by moeKernelsPlan.cpp and moeKernels.cpp);
 *   DIR/moe_kernels_images.cpp the compiled images (cubins per arch, PTX), entry names and shared-memory sizes,
 *                              defining the arrays declared at the end of this file.
 * The logic that reads them is hand-written: moeKernelsPlan.cpp (the plan) and moeKernels.cpp (launching).
 */
#pragma once

#include "mlaKernelsTables.h"

#include <cstdint>

namespace mla
{
namespace kernels
{
namespace moe_tables
{
using tables::ArchImage;
using tables::ElementBytes;

//! Kernel kinds, in launch order (moe_plan.KERNEL_KINDS).
enum KernelKind : int32_t
{
    kRouterLogits = 0,
    kTopk = 1,
    kCount = 2,
    kAlign = 3,
    kGateUp = 4,
    kDown = 5,
    kCombine = 6,
    kNumKinds = 7,
};

//! Block sizes of the expert GEMMs (moe_plan.GemmConfig); index 0 "decode", 1 "prefill".
struct GemmConfig
{
    int32_t blockM;
    int32_t blockN;
    int32_t blockK;
    int32_t numWarps;
};

//! One AOT-compiled specialization (moe_plan.KernelSpec); its position is its index in Module::function.
struct KernelEntry
{
    int32_t kind;    //!< KernelKind
    int32_t dtype;   //!< DataType value, -1 for kernels that read no T tensor (topk, count, align)
    int32_t variant; //!< GEMM config index (gate_up, down), padded expert count (topk), else 0
    int32_t numWarps;
};

// Defined by the generated moe_kernels_images.cpp.
extern ArchImage const kImages[];
extern int32_t const kNumImages;
extern char const* const kEntryNames[]; //!< [numKernels]

} // namespace moe_tables
} // namespace kernels
} // namespace mla
