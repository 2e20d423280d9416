// Split-KV combine of the MLA decodes (dense and sparse): out = sum_i exp(lse_i - lse) out_i
// with lse = log sum_i exp(lse_i), then the optional attention-sink factor. Layout and
// the split rule in mla_combine_params.h.
//
// One warp per output row; each lane owns 16 of the 512 columns as four float4, so every
// split is read with fully coalesced 512-byte warp accesses. Splits are merged in order
// by a loop, so a row may have any number of them. The weights use the fast exponential:
// its error is common to numerator and denominator and cancels in the normalization; the
// sink factor, which is not normalized away, uses the accurate one.
#include "dense_mla_params.h"
#include "device.cuh"
#include "mla_combine_params.h"

extern "C" __global__ void __launch_bounds__(32 * DSA_MLA_COMBINE_WARPS) dsa_mla_combine(const DsaMlaCombineParams p) {
    const int lane = threadIdx.x & 31;
    const int64_t row = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int64_t rows_per_group = p.rows_per_group;
    if (row >= (int64_t)p.groups * rows_per_group) return;
    const int g = (int)(row / rows_per_group);
    const int r = (int)(row % rows_per_group);
    int base = 0, n = p.num_splits;
    if (p.plan != nullptr) {
        const int32_t *seqs = p.plan + DSA_DENSE_PLAN_HEADER + DSA_DENSE_PLAN_PART_INTS * p.num_parts;
        base = seqs[DSA_DENSE_PLAN_SEQ_INTS * g + 2];
        n = seqs[DSA_DENSE_PLAN_SEQ_INTS * g + 3];
    }
    // Untrusted split range: never read past the partials.
    if (base < 0 || n < 0 || (int64_t)base + n > (int64_t)p.max_splits) n = 0;

    float mx = -INFINITY;
    for (int i = lane; i < n; i += 32) mx = fmaxf(mx, p.partial_lse[(int64_t)(base + i) * rows_per_group + r]);
    mx = dsa::warp_max_xor(mx, 16);

    float4 acc[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) acc[k] = make_float4(0.f, 0.f, 0.f, 0.f);
    float sum = 0.f;
    if (mx != -INFINITY) {
        for (int i = 0; i < n; ++i) {
            const int64_t pr = (int64_t)(base + i) * rows_per_group + r;
            const float w = __expf(p.partial_lse[pr] - mx);  // 0 for an empty split
            sum += w;
            if (w == 0.f) continue;
            const float4 *src = reinterpret_cast<const float4 *>(p.partial_out + pr * DSA_KV_LORA_RANK);
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                const float4 v = src[lane + 32 * k];
                acc[k].x += w * v.x;
                acc[k].y += w * v.y;
                acc[k].z += w * v.z;
                acc[k].w += w * v.w;
            }
        }
    }
    const bool empty = !(sum > 0.f);  // lonely query: out 0, lse +inf
    const float lse = mx + logf(sum);
    float inv = empty ? 0.f : 1.f / sum;
    if (p.attn_sink != nullptr && !empty) inv /= 1.f + expf(p.attn_sink[r % p.h_q] - lse);
    __nv_bfloat16 *out = static_cast<__nv_bfloat16 *>(p.out) + row * DSA_KV_LORA_RANK;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        uint2 w;
        w.x = dsa::pack_bf16(acc[k].x * inv, acc[k].y * inv);
        w.y = dsa::pack_bf16(acc[k].z * inv, acc[k].w * inv);
        reinterpret_cast<uint2 *>(out)[lane + 32 * k] = w;
    }
    if (lane == 0) p.lse[row] = empty ? INFINITY : lse;
}
