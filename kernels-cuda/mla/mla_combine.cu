// Split-KV combine of dense MLA decode: out = sum_i exp(lse_i - lse) out_i with
// lse = log sum_i exp(lse_i), over the splits the plan gave each sequence. One warp per
// (sequence, query, head) row; each lane owns 16 of the 512 columns as four float4, so
// every split is read with fully coalesced 512-byte warp accesses.
#include "dense_mla_params.h"
#include "device.cuh"

extern "C" __global__ void __launch_bounds__(256) dsa_mla_combine(const DsaMlaCombineParams p) {
    const int lane = threadIdx.x & 31;
    const int64_t row = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int64_t rows_per_seq = (int64_t)p.s_q * p.h_q;
    if (row >= (int64_t)p.batch * rows_per_seq) return;
    const int b = (int)(row / rows_per_seq);
    const int jh = (int)(row % rows_per_seq);  // j * h_q + h
    const int32_t *seqs = p.plan + DSA_DENSE_PLAN_HEADER + DSA_DENSE_PLAN_PART_INTS * p.num_parts;
    const int base = seqs[4 * b + 2];
    int n = seqs[4 * b + 3];
    // A plan of another geometry must not send reads past the workspace.
    if (base < 0 || n < 0 || (int64_t)base + n > (int64_t)p.batch + p.num_parts) n = 0;

    float mx = -INFINITY;
    for (int i = lane; i < n; i += 32) mx = fmaxf(mx, p.partial_lse[(int64_t)(base + i) * rows_per_seq + jh]);
    mx = dsa::warp_max_xor(mx, 16);

    float4 acc[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) acc[k] = make_float4(0.f, 0.f, 0.f, 0.f);
    float sum = 0.f;
    if (mx != -INFINITY) {
        for (int i = 0; i < n; ++i) {
            const int64_t r = (int64_t)(base + i) * rows_per_seq + jh;
            const float w = __expf(p.partial_lse[r] - mx);  // 0 for an empty split
            sum += w;
            if (w == 0.f) continue;
            const float4 *src = reinterpret_cast<const float4 *>(p.partial_out + r * DSA_KV_LORA_RANK);
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
    const float inv = empty ? 0.f : 1.f / sum;
    __nv_bfloat16 *out = static_cast<__nv_bfloat16 *>(p.out) + row * DSA_KV_LORA_RANK;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        const __nv_bfloat162 lo = __floats2bfloat162_rn(acc[k].x * inv, acc[k].y * inv);
        const __nv_bfloat162 hi = __floats2bfloat162_rn(acc[k].z * inv, acc[k].w * inv);
        uint2 w;
        w.x = *reinterpret_cast<const uint32_t *>(&lo);
        w.y = *reinterpret_cast<const uint32_t *>(&hi);
        reinterpret_cast<uint2 *>(out)[lane + 32 * k] = w;
    }
    if (lane == 0) p.lse[row] = empty ? INFINITY : mx + logf(sum);
}
