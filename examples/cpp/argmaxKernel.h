/*
 * The greedy pick on the device: for each of B rows, the index of the largest of V logits at the last of S
 * positions ([B, S, V], row-major), ties to the lower index (as torch.argmax), written as int64 into
 * `ids` [B] (the engine's input_ids buffer for the next step, so the id never leaves the device to be
 * fed back). argmaxKernel.cu, compiled where CMake finds nvcc (MLA_HAVE_ARGMAX_KERNEL).
 */
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace mla
{
namespace runtime
{

enum class LogitsType
{
    kFloat32,
    kFloat16,
    kBFloat16,
};

cudaError_t launchLastTokenArgmax(void const* logits, LogitsType type, int32_t batch, int32_t positions,
    int32_t vocab, int64_t* ids, cudaStream_t stream);

} // namespace runtime
} // namespace mla
