// The residual stream: the embedding gather that starts it and the add of each block's
// bf16 output into it (f32, as the reference keeps it).
#include <cuda_bf16.h>
#include <stdint.h>

#include "device.cuh"
#include "layers_params.h"

// One block per row; 4 floats per thread per step (dim is a multiple of 4, checked on the host).
extern "C" __global__ void __launch_bounds__(DSA_LAYERS_ROW_THREADS)
dsa_embedding(const DsaEmbeddingParams p) {
    const int r = blockIdx.x;
    if (r >= p.rows) return;
    const int tok = p.tokens[r];
    const bool ok = tok >= 0 && tok < p.vocab;  // device data: checked here
    float4 *__restrict__ out = reinterpret_cast<float4 *>(p.out + (int64_t)r * p.dim);
    const float4 *__restrict__ row = reinterpret_cast<const float4 *>(p.table + (int64_t)(ok ? tok : 0) * p.dim);
    // All of a thread's loads before its stores: a few rows per call, so the row must
    // be in flight at once.
    constexpr int kUnroll = 4;
    const int n = p.dim / 4;
    for (int i0 = threadIdx.x; i0 < n; i0 += blockDim.x * kUnroll) {
        float4 v[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            const int i = i0 + u * (int)blockDim.x;
            v[u] = (ok && i < n) ? row[i] : make_float4(0.f, 0.f, 0.f, 0.f);
        }
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            const int i = i0 + u * (int)blockDim.x;
            if (i < n) out[i] = v[u];
        }
    }
}

extern "C" __global__ void __launch_bounds__(256) dsa_residual_add(const DsaResidualAddParams p) {
    const __nv_bfloat16 *y = static_cast<const __nv_bfloat16 *>(p.y);
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    int64_t i0 = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    // 16-byte x and 8-byte y accesses when both buffers allow them (views may start
    // anywhere), four elements per thread per step; the scalar loop takes the rest.
    int64_t done = 0;
    if (((reinterpret_cast<uintptr_t>(p.x) & 15) | (reinterpret_cast<uintptr_t>(y) & 7)) == 0) {
        const int64_t n4 = p.n / 4;
        float4 *x4 = reinterpret_cast<float4 *>(p.x);
        const uint2 *y4 = reinterpret_cast<const uint2 *>(y);
        for (int64_t i = i0; i < n4; i += stride) {
            float4 a = x4[i];
            const uint2 b = y4[i];
            const float2 lo = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&b.x));
            const float2 hi = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(&b.y));
            a.x = __fadd_rn(a.x, lo.x);
            a.y = __fadd_rn(a.y, lo.y);
            a.z = __fadd_rn(a.z, hi.x);
            a.w = __fadd_rn(a.w, hi.y);
            x4[i] = a;
        }
        done = n4 * 4;
    }
    for (int64_t i = done + i0; i < p.n; i += stride) p.x[i] = __fadd_rn(p.x[i], __bfloat162float(y[i]));
}
