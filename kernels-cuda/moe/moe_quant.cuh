// The row walker shared by the permutation and the SwiGLU quantizers (DsaMoeQuantParams):
// one warp per row over a grid-stride loop of the rows the plan puts in use, one half-warp
// per 128-column block (8 values per lane, 16-byte loads, 8-byte code stores).
#pragma once
#include <cuda_bf16.h>
#include <stdint.h>

#include "dsa_device.cuh"
#include "moe_params.h"

namespace dsa {
namespace moe {

// Walks the rows to write and quantizes each: `load(row, col, vals)` fills 8 f32 values of
// the row at columns [col, col + 8) (called only for rows with data).
template <typename Load>
__device__ __forceinline__ void quantize_rows(const DsaMoeQuantParams &p, Load load) {
    const int lane = threadIdx.x & 31;
    const int half = lane >> 4, hl = lane & 15;
    const int kb_count = p.cols / DSA_MOE_BLOCK;
    const bool masked = p.masked_m != nullptr;
    const int rows_used = masked ? p.rows : (p.offsets ? min(p.offsets[p.experts], p.rows) : p.rows);
    const int warps = gridDim.x * (blockDim.x >> 5);
    for (int r = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); r < rows_used; r += warps) {
        int g = 0, i = r;
        if (masked) {
            g = r / p.max_m;
            i = r - g * p.max_m;
            const int m = p.masked_m[g];
            const int lim = min((m + p.align - 1) / p.align * p.align, p.max_m);
            if (i >= lim) continue;  // warp-uniform
        }
        const bool data = p.src == nullptr || p.src[r] >= 0;
        for (int kb0 = 0; kb0 < kb_count; kb0 += 2) {
            const int kb = kb0 + half;
            const bool active = kb < kb_count;
            const int col = kb * DSA_MOE_BLOCK + hl * 8;
            float v[8];
#pragma unroll
            for (int j = 0; j < 8; ++j) v[j] = 0.0f;
            if (active && data) load(r, col, v);
            float amax = 0.0f;
#pragma unroll
            for (int j = 0; j < 8; ++j) amax = fmaxf(amax, fabsf(v[j]));
            amax = warp_max_xor(amax, 8);  // the 16 lanes of this half-warp
            if (!active) continue;
            const float s = fp8_block_scale(amax, p.pow2 != 0);
            uint32_t lo = 0, hi = 0;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                lo |= (uint32_t)fp8_quant(v[j], s) << (8 * j);
                hi |= (uint32_t)fp8_quant(v[j + 4], s) << (8 * j);
            }
            *reinterpret_cast<uint2 *>(p.codes + (size_t)r * p.cols + col) = make_uint2(lo, hi);
            if (hl == 0) {
                const size_t at = masked ? ((size_t)g * kb_count + kb) * p.max_m + i
                                         : (size_t)kb * p.scale_stride + r;
                p.scales[at] = s;
            }
        }
    }
}

}  // namespace moe
}  // namespace dsa
