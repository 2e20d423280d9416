// RMSNorm and LayerNorm rows with the reference's arithmetic: statistics in f64 (so the
// summation order does not matter at f32 precision), the scaling in f32 with each product
// rounded (no FMA contraction), one block per row.
#include <cuda_bf16.h>

#include "device.cuh"
#include "layers_params.h"

namespace {

constexpr int kThreads = DSA_LAYERS_ROW_THREADS;
constexpr int kUnroll = 8;

// Sum of v over the block (every thread gets it).
__device__ double block_sum(double v, double *red) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    __syncthreads();  // red is reused by consecutive calls
    if (lane == 0) red[warp] = v;
    __syncthreads();
    double s = 0.0;
#pragma unroll
    for (int w = 0; w < kThreads / 32; ++w) s += red[w];
    return s;
}

__device__ __forceinline__ float load(const DsaRmsNormParams &p, int64_t at) {
    return p.x_f32 ? p.x_f32[at] : __bfloat162float(static_cast<const __nv_bfloat16 *>(p.x_bf16)[at]);
}

}  // namespace

extern "C" __global__ void __launch_bounds__(kThreads) dsa_rms_norm(const DsaRmsNormParams p) {
    __shared__ double red[kThreads / 32];
    const int r = blockIdx.x;
    if (r >= p.rows) return;
    const int64_t base = (int64_t)r * p.x_stride;
    if (p.dim <= kThreads * kUnroll) {
        // The row fits the block's registers (hidden 7168, q_a 1536, kv_a 512): one read.
        float v[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            const int i = threadIdx.x + u * kThreads;
            v[u] = i < p.dim ? load(p, base + i) : 0.0f;
        }
        double sq = 0.0;
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) sq += (double)v[u] * (double)v[u];
        sq = block_sum(sq, red);
        const float inv = (float)(1.0 / sqrt(sq / p.dim + (double)p.eps));
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            const int i = threadIdx.x + u * kThreads;
            if (i >= p.dim) break;
            const float o = __fmul_rn(__fmul_rn(v[u], inv), p.weight[i]);
            if (p.out_f32) p.out_f32[(int64_t)r * p.dim + i] = o;
            if (p.out_bf16)
                static_cast<__nv_bfloat16 *>(p.out_bf16)[(int64_t)r * p.out_bf16_stride + i] = __float2bfloat16_rn(o);
        }
        return;
    }
    // kUnroll loads per thread issued before their squares are summed: a decode batch is
    // a few rows, so each row's read must be in flight at once, not a chain of loads.
    double ss = 0.0;
    for (int i0 = threadIdx.x; i0 < p.dim; i0 += kThreads * kUnroll) {
        float v[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            const int i = i0 + u * kThreads;
            v[u] = i < p.dim ? load(p, base + i) : 0.0f;
        }
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) ss += (double)v[u] * (double)v[u];
    }
    ss = block_sum(ss, red);
    const float inv = (float)(1.0 / sqrt(ss / p.dim + (double)p.eps));
    for (int i = threadIdx.x; i < p.dim; i += kThreads) {
        const float o = __fmul_rn(__fmul_rn(load(p, base + i), inv), p.weight[i]);
        if (p.out_f32) p.out_f32[(int64_t)r * p.dim + i] = o;
        if (p.out_bf16)
            static_cast<__nv_bfloat16 *>(p.out_bf16)[(int64_t)r * p.out_bf16_stride + i] = __float2bfloat16_rn(o);
    }
}

extern "C" __global__ void __launch_bounds__(kThreads) dsa_layer_norm(const DsaLayerNormParams p) {
    __shared__ double red[kThreads / 32];
    const int r = blockIdx.x;
    if (r >= p.rows) return;
    const __nv_bfloat16 *x = static_cast<const __nv_bfloat16 *>(p.x) + (int64_t)r * p.x_stride;
    double s = 0.0;
    for (int i0 = threadIdx.x; i0 < p.dim; i0 += kThreads * kUnroll) {
        float v[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            const int i = i0 + u * kThreads;
            v[u] = i < p.dim ? __bfloat162float(x[i]) : 0.0f;
        }
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) s += (double)v[u];
    }
    const double mean = block_sum(s, red) / p.dim;
    double sq = 0.0;
    for (int i = threadIdx.x; i < p.dim; i += kThreads) {
        const double d = (double)__bfloat162float(x[i]) - mean;
        sq += d * d;
    }
    const double inv = 1.0 / sqrt(block_sum(sq, red) / p.dim + (double)p.eps);
    __nv_bfloat16 *out = static_cast<__nv_bfloat16 *>(p.out) + (int64_t)r * p.dim;
    for (int i = threadIdx.x; i < p.dim; i += kThreads) {
        const float n = (float)(((double)__bfloat162float(x[i]) - mean) * inv);
        out[i] = __float2bfloat16_rn(__fadd_rn(__fmul_rn(n, p.weight[i]), p.bias[i]));
    }
}
