// Interleaved RoPE of MLA's 64 rope dims (query heads and the shared key), bf16 in and
// out, f32 rotation with each product rounded as the reference computes it.
#include <cuda_bf16.h>

#include "device.cuh"
#include "layers_params.h"

// One warp per (token, head), lane i rotates pair (2i, 2i + 1).
extern "C" __global__ void __launch_bounds__(128) dsa_mla_rope(const DsaMlaRopeParams p) {
    const int64_t w = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (w >= (int64_t)p.tokens * p.heads) return;
    const int t = (int)(w / p.heads), h = (int)(w % p.heads);
    const __nv_bfloat162 *src = reinterpret_cast<const __nv_bfloat162 *>(
        static_cast<const __nv_bfloat16 *>(p.src) + t * p.src_token_stride + (int64_t)h * p.src_head_stride);
    __nv_bfloat162 *dst = reinterpret_cast<__nv_bfloat162 *>(
        static_cast<__nv_bfloat16 *>(p.dst) + t * p.dst_token_stride + (int64_t)h * p.dst_head_stride);
    const int pos = p.positions[t];
    if (pos < 0 || pos >= p.max_pos) {  // device data: checked here
        dst[lane] = __floats2bfloat162_rn(0.f, 0.f);
        return;
    }
    const float2 v = __bfloat1622float2(src[lane]);
    const float c = p.cos[(int64_t)pos * 32 + lane], s = p.sin[(int64_t)pos * 32 + lane];
    const float a = __fsub_rn(__fmul_rn(v.x, c), __fmul_rn(v.y, s));
    const float b = __fadd_rn(__fmul_rn(v.x, s), __fmul_rn(v.y, c));
    dst[lane] = __floats2bfloat162_rn(a, b);
}
