// Device helpers shared by the kernel families. The FP8 scale rules here are mirrored
// bit for bit by src/fp8.rs on the host; change both or neither.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <stdint.h>

namespace dsa {

// Smallest amax a block is scaled by, so an all-zero block gets a finite scale.
constexpr float kAmaxFloor = 1e-4f;
constexpr float kFp8Max = 448.0f;

// amax/448, optionally rounded up to a power of two (UE8M0). Bit manipulation rather
// than exp2f(ceilf(log2f())) so the host can reproduce it exactly.
__device__ __forceinline__ float fp8_block_scale(float amax, bool pow2) {
    float s = fmaxf(amax, kAmaxFloor) / kFp8Max;
    if (pow2) {
        uint32_t b = __float_as_uint(s);
        if (b & 0x007fffffu) b = (b & 0xff800000u) + 0x00800000u;
        s = __uint_as_float(b);
    }
    return s;
}

// Saturating round-to-nearest-even e4m3 of x / scale (IEEE division, as on the host).
__device__ __forceinline__ uint8_t fp8_quant(float x, float scale) {
    return (uint8_t)__nv_cvt_float_to_fp8(x / scale, __NV_SATFINITE, __NV_E4M3);
}

__device__ __forceinline__ float warp_max_xor(float v, int width_mask) {
#pragma unroll
    for (int o = width_mask; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

__device__ __forceinline__ void bf16x8_to_f32(uint4 u, float (&f)[8]) {
    const __nv_bfloat162 *h = reinterpret_cast<const __nv_bfloat162 *>(&u);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        float2 t = __bfloat1622float2(h[i]);
        f[2 * i] = t.x;
        f[2 * i + 1] = t.y;
    }
}

}  // namespace dsa
