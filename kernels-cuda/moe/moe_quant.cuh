// The row walker shared by the permutation and the SwiGLU quantizers (DsaMoeQuantParams):
// one warp per 512-column chunk of a row, over a grid-stride loop of the chunks of the rows
// the plan puts in use, one half-warp per 128-column block (8 values per lane, 16-byte
// loads, 8-byte code stores).
#pragma once
#include <cuda_bf16.h>
#include <stdint.h>

#include "numeric.cuh"
#include "moe_params.h"

namespace dsa {
namespace moe {

// e4m3 code of x / s, equal to the code of the IEEE quotient RN(x / s) (the rule of
// fp8_quant and the host), without a division per value. From the block's reciprocal
// rs = RN(1 / s): q = RN(x rs) is within 2 ulps of x / s, and the fused correction
// q + (x - s q) rs (Markstein) leaves it within ~0.51 ulp, so q and RN(x / s) are at most
// one ulp apart. The two can give different e4m3 codes only when an e4m3 rounding midpoint
// (mantissa bit 19 set, bits 0-18 clear, in the normal e4m3 range) lies within an ulp of
// q; those values, the e4m3 subnormal range (|q| < 2^-6) and non-finite quotients take the
// division itself.
__device__ __forceinline__ uint8_t quantize_div(float x, float s, float rs) {
    float q = __fmul_rn(x, rs);
    const float e = __fmaf_rn(-q, s, x);
    q = __fmaf_rn(e, rs, q);
    const uint32_t a = __float_as_uint(q) & 0x7fffffffu;
    const uint32_t near_mid = ((a & 0xfffffu) - 0x7fffeu) <= 4u;  // within 2 ulps of a midpoint
    if (near_mid || a < 0x3c800000u /* 2^-6 */ || a >= 0x7f800000u /* inf, NaN */)
        q = __fdiv_rn(x, s);
    return (uint8_t)__nv_cvt_float_to_fp8(q, __NV_SATFINITE, __NV_E4M3);
}

// Walks the rows to write and quantizes each: `load(row, col, vals)` fills 8 f32 values of
// the row at columns [col, col + 8) (called only for rows with data). The unit of work is
// one warp on one 512-column chunk of a row (4 blocks, 2 per half-warp), not a whole row:
// a row of 7168 columns walked by one warp is a chain of 14 dependent load rounds, which
// made a 1-row quantization as slow as a 128-row one; chunks put every round in flight at
// once on as many warps as the grid holds.
template <typename Load>
__device__ __forceinline__ void quantize_rows(const DsaMoeQuantParams &p, Load load) {
    const int lane = threadIdx.x & 31;
    const int half = lane >> 4, hl = lane & 15;
    const int kb_count = p.cols / DSA_MOE_BLOCK;
    constexpr int kChunkBlocks = 4;
    const int chunks = (kb_count + kChunkBlocks - 1) / kChunkBlocks;
    const bool masked = p.masked_m != nullptr;
    const int rows_used = masked ? p.rows : (p.offsets ? min(p.offsets[p.experts], p.rows) : p.rows);
    const int64_t units = (int64_t)rows_used * chunks;
    const int64_t warps = (int64_t)gridDim.x * (blockDim.x >> 5);
    for (int64_t unit = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); unit < units;
         unit += warps) {
        const int r = (int)(unit / chunks);
        const int kb0 = (int)(unit - (int64_t)r * chunks) * kChunkBlocks;
        int g = 0, i = r;
        if (masked) {
            g = r / p.max_m;
            i = r - g * p.max_m;
            const int m = p.masked_m[g];
            const int lim = min((m + p.align - 1) / p.align * p.align, p.max_m);
            if (i >= lim) continue;  // warp-uniform
        }
        // The plan is device data: a slot outside [0, slots) is padding, never an address.
        const bool data = p.src == nullptr || (unsigned)p.src[r] < (unsigned)p.slots;
        const int kb_end = min(kb0 + kChunkBlocks, kb_count);
        if (!data) {
            // Padding row: zero codes and the scale of a zero block, stored without the
            // quantizer's arithmetic (most rows of a small batch are padding).
            const uint4 zero = make_uint4(0, 0, 0, 0);
            for (int c = kb0 * DSA_MOE_BLOCK + lane * 16; c < kb_end * DSA_MOE_BLOCK; c += 32 * 16)
                *reinterpret_cast<uint4 *>(p.codes + (size_t)r * p.cols + c) = zero;
            const float s = fp8_block_scale(0.0f, p.pow2 != 0);
            const int kb = kb0 + lane;
            if (kb < kb_end) {
                const size_t at = masked ? ((size_t)g * kb_count + kb) * p.max_m + i
                                         : (size_t)kb * p.scale_stride + r;
                p.scales[at] = s;
            }
            continue;
        }
        // Two blocks per half-warp, loads first, so each lane has two 16-byte loads in
        // flight before the first reduction waits on them.
        {
            float v[2][8];
            bool active[2];
            int col[2];
#pragma unroll
            for (int u = 0; u < 2; ++u) {
                const int kb = kb0 + 2 * u + half;
                active[u] = kb < kb_count;
                col[u] = kb * DSA_MOE_BLOCK + hl * 8;
#pragma unroll
                for (int j = 0; j < 8; ++j) v[u][j] = 0.0f;
                if (active[u]) load(r, col[u], v[u]);
            }
#pragma unroll
            for (int u = 0; u < 2; ++u) {
                float amax = 0.0f;
#pragma unroll
                for (int j = 0; j < 8; ++j) amax = fmaxf(amax, fabsf(v[u][j]));
                amax = warp_max_xor(amax, 8);  // the 16 lanes of this half-warp
                if (!active[u]) continue;
                const float s = fp8_block_scale(amax, p.pow2 != 0);
                const float rs = __frcp_rn(s);
                uint32_t lo = 0, hi = 0;
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    lo |= (uint32_t)quantize_div(v[u][j], s, rs) << (8 * j);
                    hi |= (uint32_t)quantize_div(v[u][j + 4], s, rs) << (8 * j);
                }
                *reinterpret_cast<uint2 *>(p.codes + (size_t)r * p.cols + col[u]) = make_uint2(lo, hi);
                if (hl == 0) {
                    const int kb = kb0 + 2 * u + half;
                    const size_t at = masked ? ((size_t)g * kb_count + kb) * p.max_m + i
                                             : (size_t)kb * p.scale_stride + r;
                    p.scales[at] = s;
                }
            }
        }
    }
}

}  // namespace moe
}  // namespace dsa
