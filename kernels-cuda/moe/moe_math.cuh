// The f32 exponential of the MoE kernels, and the sigmoid / SiLU built on it.
//
// Why not expf(): the routing must choose exactly the experts the host reference chooses,
// and the reference computes sigmoid with the host libm's expf (glibc >= 2.27: a 32-entry
// table of 2^(i/32) and a cubic in double precision, rounded once to f32, 0.502 ulp). CUDA's
// expf differs from it by an ulp on a fraction of inputs, enough to flip near-tied expert
// scores and SwiGLU codes. This evaluates the same double-precision steps (with the fused
// multiply-adds glibc's x86-64 FMA build uses), so it returns the same f32 as the host for
// every input checked (1.4e9 finite floats, stride 3 over the bit patterns). The
// constants are the published table and polynomial of that algorithm (ARM optimized
// routines, exp2f_data). Double precision costs a few instructions per value, which these
// memory-bound kernels do not notice.
#pragma once
#include <stdint.h>

namespace dsa {
namespace moe {

// Global memory read through L1 (not __constant__): lanes index it divergently, which the
// constant cache would serialize 32 ways.
__device__ const uint64_t kExp2Table[32] = {
    0x3ff0000000000000ULL, 0x3fefd9b0d3158574ULL, 0x3fefb5586cf9890fULL, 0x3fef9301d0125b51ULL,
    0x3fef72b83c7d517bULL, 0x3fef54873168b9aaULL, 0x3fef387a6e756238ULL, 0x3fef1e9df51fdee1ULL,
    0x3fef06fe0a31b715ULL, 0x3feef1a7373aa9cbULL, 0x3feedea64c123422ULL, 0x3feece086061892dULL,
    0x3feebfdad5362a27ULL, 0x3feeb42b569d4f82ULL, 0x3feeab07dd485429ULL, 0x3feea47eb03a5585ULL,
    0x3feea09e667f3bcdULL, 0x3fee9f75e8ec5f74ULL, 0x3feea11473eb0187ULL, 0x3feea589994cce13ULL,
    0x3feeace5422aa0dbULL, 0x3feeb737b0cdc5e5ULL, 0x3feec49182a3f090ULL, 0x3feed503b23e255dULL,
    0x3feee89f995ad3adULL, 0x3feeff76f2fb5e47ULL, 0x3fef199bdd85529cULL, 0x3fef3720dcef9069ULL,
    0x3fef5818dcfba487ULL, 0x3fef7c97337b9b5fULL, 0x3fefa4afa2a490daULL, 0x3fefd0765b6e4540ULL,
};

// e^x in f32, bit-equal to the host libm's expf (see above).
__device__ __forceinline__ float exp_f32(float x) {
    if (x != x) return x + x;                              // NaN
    if (x > 0x1.62e42ep6f) return __int_as_float(0x7f800000);  // past log(2^128): +inf
    if (x < -0x1.9fe368p6f) return 0.0f;                   // below log(2^-150)
    constexpr double kInvLn2N = 0x1.71547652b82fep+0 * 32.0;
    constexpr double kShift = 0x1.8p+52;
    constexpr double kC0 = 0x1.c6af84b912394p-5 / 32.0 / 32.0 / 32.0;
    constexpr double kC1 = 0x1.ebfce50fac4f3p-3 / 32.0 / 32.0;
    constexpr double kC2 = 0x1.62e42ff0c52d6p-1 / 32.0;
    const double xd = (double)x;
    // x * 32 / ln2 = k + r, k an integer (round to nearest through the shift), |r| <= 1/2.
    double kd = __fma_rn(kInvLn2N, xd, kShift);
    const uint64_t ki = (uint64_t)__double_as_longlong(kd);
    kd = __dsub_rn(kd, kShift);
    const double r = __fma_rn(kInvLn2N, xd, -kd);
    // e^x = 2^(k/32) * 2^(r/32): the table gives 2^((k mod 32)/32), k / 32 goes into the
    // exponent field, and the cubic approximates 2^(r/32).
    const uint64_t t = __ldg(&kExp2Table[ki & 31]) + (ki << 47);
    const double s = __longlong_as_double((long long)t);
    const double z = __fma_rn(kC0, r, kC1);
    const double r2 = __dmul_rn(r, r);
    double y = __fma_rn(kC2, r, 1.0);
    y = __fma_rn(z, r2, y);
    return __double2float_rn(__dmul_rn(y, s));
}

// 1 / (1 + e^-x) with IEEE f32 steps, as the reference's sigmoid.
__device__ __forceinline__ float sigmoid_f32(float x) {
    return __fdiv_rn(1.0f, __fadd_rn(1.0f, exp_f32(-x)));
}

// x / (1 + e^-x) with IEEE f32 steps, as the reference's silu.
__device__ __forceinline__ float silu_f32(float x) {
    return __fdiv_rn(x, __fadd_rn(1.0f, exp_f32(-x)));
}

}  // namespace moe
}  // namespace dsa
