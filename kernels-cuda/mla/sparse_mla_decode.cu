// Sparse MLA decode over the paged MLA cache (FP8 656 B/token, or bf16 576 x bf16/token),
// and the combine kernel that merges split-KV partials. The attention itself is the shared
// warp-specialized wgmma kernel of sparse_mla_fwd.cuh.
#include "sparse_mla_fwd.cuh"

extern "C" __global__ void __launch_bounds__(dsa_sparse::kThreads, 1)
dsa_sparse_mla_decode_fp8(const DsaSparseMlaParams p) {
    dsa_sparse::sparse_mla_fwd<true>(p);
}

extern "C" __global__ void __launch_bounds__(dsa_sparse::kThreads, 1)
dsa_sparse_mla_decode_bf16(const DsaSparseMlaParams p) {
    dsa_sparse::sparse_mla_fwd<false>(p);
}

// One warp per (row, head): lse = ln sum_s exp(lse_s), out = sum_s exp(lse_s - lse) out_s,
// then the sink factor 1 / (1 + exp(sink - lse)). Every split empty: out 0, lse +inf.
extern "C" __global__ void __launch_bounds__(256)
dsa_sparse_mla_combine(const DsaSparseMlaCombineParams p) {
    const int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    const int64_t n = (int64_t)p.rows * p.h_q;
    if (warp >= n) return;
    const float my_lse = lane < p.num_splits ? p.partial_lse[(int64_t)lane * n + warp] : -CUDART_INF_F;
    float mx = my_lse;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    __nv_bfloat16 *out = static_cast<__nv_bfloat16 *>(p.out) + (int64_t)warp * 512;
    if (mx == -CUDART_INF_F) {
#pragma unroll
        for (int i = 0; i < 4; ++i) reinterpret_cast<uint2 *>(out)[lane + 32 * i] = make_uint2(0, 0);
        if (lane == 0) p.lse[warp] = CUDART_INF_F;
        return;
    }
    const float wgt = lane < p.num_splits ? expf(my_lse - mx) : 0.f;
    float sum = wgt;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    const float lse = mx + logf(sum);
    float scale = 1.f / sum;
    if (p.attn_sink != nullptr) scale /= 1.f + expf(p.attn_sink[warp % p.h_q] - lse);
    float4 acc[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[i] = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int s = 0; s < p.num_splits; ++s) {
        const float ws = __shfl_sync(0xffffffffu, wgt, s);
        if (ws == 0.f) continue;
        const float4 *src = reinterpret_cast<const float4 *>(p.partial_out + ((int64_t)s * n + warp) * 512);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float4 v = src[lane + 32 * i];
            acc[i].x += ws * v.x;
            acc[i].y += ws * v.y;
            acc[i].z += ws * v.z;
            acc[i].w += ws * v.w;
        }
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const uint32_t a = dsa::pack_bf16(acc[i].x * scale, acc[i].y * scale);
        const uint32_t b = dsa::pack_bf16(acc[i].z * scale, acc[i].w * scale);
        reinterpret_cast<uint2 *>(out)[lane + 32 * i] = make_uint2(a, b);
    }
    if (lane == 0) p.lse[warp] = lse;
}
