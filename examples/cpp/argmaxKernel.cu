/*
 * launchLastTokenArgmax (argmaxKernel.h): one block of 256 threads per row; each thread scans a strided
 * slice of the V logits keeping (value, index), then a shared-memory tree reduction keeps the larger value,
 * the lower index on ties. NaN never wins (comparisons with NaN are false), as long as one logit is a number.
 */
#include "argmaxKernel.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace mla
{
namespace runtime
{
namespace
{

constexpr int kThreads = 256;

__device__ inline float toFloat(float x) { return x; }
__device__ inline float toFloat(__half x) { return __half2float(x); }
__device__ inline float toFloat(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__global__ void lastTokenArgmax(T const* logits, int32_t positions, int32_t vocab, int64_t* ids)
{
    __shared__ float values[kThreads];
    __shared__ int32_t indices[kThreads];
    T const* row = logits + (static_cast<int64_t>(blockIdx.x) * positions + positions - 1) * vocab; // [V]
    float best = -INFINITY;
    int32_t bestIndex = vocab; // past the end: loses to any real index
    for (int32_t v = threadIdx.x; v < vocab; v += kThreads)
    {
        float const x = toFloat(row[v]);
        if (x > best || (bestIndex == vocab && x == x))
        {
            best = x;
            bestIndex = v;
        }
    }
    values[threadIdx.x] = best;
    indices[threadIdx.x] = bestIndex;
    __syncthreads();
    for (int stride = kThreads / 2; stride > 0; stride /= 2)
    {
        if (threadIdx.x < stride)
        {
            float const other = values[threadIdx.x + stride];
            int32_t const otherIndex = indices[threadIdx.x + stride];
            bool const better = otherIndex < vocab
                && (indices[threadIdx.x] == vocab || other > values[threadIdx.x]
                    || (other == values[threadIdx.x] && otherIndex < indices[threadIdx.x]));
            if (better)
            {
                values[threadIdx.x] = other;
                indices[threadIdx.x] = otherIndex;
            }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0)
        ids[blockIdx.x] = indices[0] == vocab ? 0 : indices[0];
}

} // namespace

cudaError_t launchLastTokenArgmax(void const* logits, LogitsType type, int32_t batch, int32_t positions,
    int32_t vocab, int64_t* ids, cudaStream_t stream)
{
    if (batch < 1 || positions < 1 || vocab < 1)
        return cudaErrorInvalidValue;
    switch (type)
    {
    case LogitsType::kFloat32:
        lastTokenArgmax<<<batch, kThreads, 0, stream>>>(static_cast<float const*>(logits), positions, vocab, ids);
        break;
    case LogitsType::kFloat16:
        lastTokenArgmax<<<batch, kThreads, 0, stream>>>(static_cast<__half const*>(logits), positions, vocab, ids);
        break;
    case LogitsType::kBFloat16:
        lastTokenArgmax<<<batch, kThreads, 0, stream>>>(
            static_cast<__nv_bfloat16 const*>(logits), positions, vocab, ids);
        break;
    }
    return cudaGetLastError();
}

} // namespace runtime
} // namespace mla
