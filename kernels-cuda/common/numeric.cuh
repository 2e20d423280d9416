// Numeric helpers shared by the kernel families: fast exp2, bf16 packing, FP8 e4m3
// conversion, and the FP8 block-scale rule. The scale rule and the quantization are
// mirrored bit for bit by src/fp8.rs on the host; change both or neither.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <stdint.h>

#include "common_params.h"

namespace dsa {

// 2^x with the hardware approximation (flush-to-zero), the softmax's exponential.
__device__ __forceinline__ float ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// Two floats rounded to nearest-even bf16, `a` in the low half.
__device__ __forceinline__ uint32_t pack_bf16(float a, float b) {
    __nv_bfloat162 v = __floats2bfloat162_rn(a, b);
    return *reinterpret_cast<uint32_t *>(&v);
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

__device__ __forceinline__ float warp_max_xor(float v, int width_mask) {
#pragma unroll
    for (int o = width_mask; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// ----------------------------------------------------------------------- FP8 e4m3
constexpr float kAmaxFloor = DSA_FP8_AMAX_FLOOR;
constexpr float kFp8Max = DSA_FP8_E4M3_MAX;

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

// Two e4m3 values (low byte first) as floats; exact (e4m3 -> f16 -> f32 lose nothing).
__device__ __forceinline__ float2 e4m3x2_to_f32(uint32_t pair) {
    const __half2_raw hr = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)pair, __NV_E4M3);
    return __half22float2(*reinterpret_cast<const __half2 *>(&hr));
}

// 16 e4m3 values (one 16-byte load) times `scale` -> 16 bf16 packed in pairs (eight
// words, two 16-byte units). The conversion to f32 is exact, so the single rounding is the
// final one to bf16: the same bf16 as rounding the host's f32 dequantized value.
__device__ __forceinline__ void dequant16(uint4 raw, float scale, uint32_t (&o)[8]) {
    const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int k = 0; k < 2; ++k) {
            const float2 f = e4m3x2_to_f32(w[i] >> (16 * k));
            o[2 * i + k] = pack_bf16(f.x * scale, f.y * scale);
        }
    }
}

}  // namespace dsa
