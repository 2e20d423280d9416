// Combine (DsaMoeCombineParams): each thread owns 8 columns of one token and gathers its
// top_k expert rows in slot order, so the sum has one fixed order and no atomics.
#include <cuda_bf16.h>

#include "numeric.cuh"
#include "moe_params.h"

extern "C" __global__ void __launch_bounds__(DSA_MOE_COMBINE_THREADS)
    dsa_moe_combine(const DsaMoeCombineParams p) {
    const int t = blockIdx.y;
    const int col = (blockIdx.x * DSA_MOE_COMBINE_THREADS + threadIdx.x) * 8;
    if (col >= p.hidden) return;
    float acc[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[j] = 0.0f;
    for (int j = 0; j < p.top_k; ++j) {
        const int row = p.row_of[(size_t)t * p.top_k + j];
        if (row < 0 || row >= p.rows) continue;
        const float w = p.weights[(size_t)t * p.top_k + j];
        float y[8];
        dsa::bf16x8_to_f32(__ldg(reinterpret_cast<const uint4 *>(p.y + (size_t)row * p.hidden + col)), y);
#pragma unroll
        for (int q = 0; q < 8; ++q) acc[q] = __fmaf_rn(w, y[q], acc[q]);
    }
    if (p.shared) {
        float s[8];
        dsa::bf16x8_to_f32(__ldg(reinterpret_cast<const uint4 *>(p.shared + (size_t)t * p.hidden + col)), s);
#pragma unroll
        for (int q = 0; q < 8; ++q) acc[q] = __fadd_rn(acc[q], s[q]);
    }
    uint4 o;
    __nv_bfloat162 *h = reinterpret_cast<__nv_bfloat162 *>(&o);
#pragma unroll
    for (int q = 0; q < 4; ++q) h[q] = __floats2bfloat162_rn(acc[2 * q], acc[2 * q + 1]);
    *reinterpret_cast<uint4 *>(p.out + (size_t)t * p.hidden + col) = o;
}
