// Lightning-indexer q/k preparation, fused: rotate-half YaRN RoPE on dims 0..63, the
// scaled Hadamard transform over 128 dims, FP8 e4m3 quantization with one power-of-two
// scale per 128 values; q's scale is folded into its head weight, k goes straight into
// the paged indexer cache.
//
// One warp per 128-value row; lane l holds dims l, l+32, l+64, l+96, so every RoPE pair
// (i, i+32) sits in one lane and the Hadamard butterflies of strides 1..16 are lane
// shuffles, 32 and 64 in-lane. The arithmetic mirrors the reference bit for bit: RoPE in
// float with no contraction into FMA, the butterflies in double in the same stage order
// (each stage's a+b / a-b is exact-order independent), one rounding to float after the
// scale, then the shared FP8 helpers.
#include "indexer_params.h"
#include "device.cuh"

namespace {

struct Row {
    float y[4];   // prepared values of dims lane + 32 m
    float scale;  // power-of-two FP8 scale of the row
};

__device__ __forceinline__ Row prepare_row(const __nv_bfloat16 *src, const float *cos_row, const float *sin_row,
                                           double hscale, int lane) {
    float x[4];
#pragma unroll
    for (int m = 0; m < 4; ++m) x[m] = __bfloat162float(src[lane + 32 * m]);
    // RoPE pair (lane, lane + 32); separate roundings as in the reference (x*c - y*s).
    const float c = cos_row[lane], s = sin_row[lane];
    const float a = x[0], b = x[1];
    x[0] = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
    x[1] = __fadd_rn(__fmul_rn(a, s), __fmul_rn(b, c));

    double v[4];
#pragma unroll
    for (int m = 0; m < 4; ++m) v[m] = (double)x[m];
#pragma unroll
    for (int h = 1; h < 32; h <<= 1) {
        const bool upper = (lane & h) != 0;
#pragma unroll
        for (int m = 0; m < 4; ++m) {
            const double o = __shfl_xor_sync(0xffffffffu, v[m], h);
            // lower index j keeps x[j] + x[j+h]; upper keeps x[j] - x[j+h]
            v[m] = upper ? __dsub_rn(o, v[m]) : __dadd_rn(v[m], o);
        }
    }
    {
        const double a0 = v[0], a1 = v[1], a2 = v[2], a3 = v[3];  // stride 32: (0,1), (2,3)
        v[0] = __dadd_rn(a0, a1);
        v[1] = __dsub_rn(a0, a1);
        v[2] = __dadd_rn(a2, a3);
        v[3] = __dsub_rn(a2, a3);
    }
    {
        const double a0 = v[0], a1 = v[1], a2 = v[2], a3 = v[3];  // stride 64: (0,2), (1,3)
        v[0] = __dadd_rn(a0, a2);
        v[2] = __dsub_rn(a0, a2);
        v[1] = __dadd_rn(a1, a3);
        v[3] = __dsub_rn(a1, a3);
    }
    Row r;
    float amax = 0.f;
#pragma unroll
    for (int m = 0; m < 4; ++m) {
        r.y[m] = __double2float_rn(__dmul_rn(v[m], hscale));
        amax = fmaxf(amax, fabsf(r.y[m]));
    }
    amax = dsa::warp_max_xor(amax, 16);
    r.scale = dsa::fp8_block_scale(amax, true);
    return r;
}

__device__ __forceinline__ bool position_ok(int pos, int max_pos) { return pos >= 0 && pos < max_pos; }

}  // namespace

// q: rows = num_tokens * heads. Codes to q8[row, 128]; w_out[row] = (w[row] * scale) * w_fold.
// A position outside the tables yields zero codes and a zero weight (the row adds nothing).
extern "C" __global__ void __launch_bounds__(128) dsa_indexer_prep_q(const DsaIndexerPrepParams p) {
    const int64_t row = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (row >= (int64_t)p.num_tokens * p.heads) return;
    const int64_t t = row / p.heads, h = row % p.heads;
    const int pos = p.positions[t];
    uint8_t *dst = p.q8 + row * DSA_INDEXER_DIM;
    if (!position_ok(pos, p.max_pos)) {
#pragma unroll
        for (int m = 0; m < 4; ++m) dst[lane + 32 * m] = 0;
        if (lane == 0) p.w_out[row] = 0.f;
        return;
    }
    const __nv_bfloat16 *src =
        static_cast<const __nv_bfloat16 *>(p.x) + t * p.x_token_stride + h * DSA_INDEXER_DIM;
    const Row r = prepare_row(src, p.rope_cos + (int64_t)pos * 32, p.rope_sin + (int64_t)pos * 32,
                              p.hadamard_scale, lane);
#pragma unroll
    for (int m = 0; m < 4; ++m) dst[lane + 32 * m] = dsa::fp8_quant(r.y[m], r.scale);
    if (lane == 0) p.w_out[row] = __fmul_rn(__fmul_rn(p.w[row], r.scale), p.w_fold);
}

// k: one row per token, written to the indexer cache at slots[t] (page = slot / 64:
// codes at page * 8448 + off * 128, scale at page * 8448 + 8192 + off * 4). Tokens with an
// out-of-range slot or position are skipped.
extern "C" __global__ void __launch_bounds__(128) dsa_indexer_prep_k(const DsaIndexerPrepParams p) {
    const int64_t t = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (t >= p.num_tokens) return;
    const int64_t slot = p.slots[t];
    const int pos = p.positions[t];
    if (slot < 0 || slot >= p.capacity_tokens || !position_ok(pos, p.max_pos)) return;
    const __nv_bfloat16 *src = static_cast<const __nv_bfloat16 *>(p.x) + t * p.x_token_stride;
    const Row r = prepare_row(src, p.rope_cos + (int64_t)pos * 32, p.rope_sin + (int64_t)pos * 32,
                              p.hadamard_scale, lane);
    uint8_t *page = p.cache + (slot / DSA_PAGE_SIZE) * DSA_INDEXER_PAGE_BYTES;
    const int64_t off = slot % DSA_PAGE_SIZE;
    uint8_t *dst = page + off * DSA_INDEXER_DIM;
#pragma unroll
    for (int m = 0; m < 4; ++m) dst[lane + 32 * m] = dsa::fp8_quant(r.y[m], r.scale);
    if (lane == 0) reinterpret_cast<float *>(page + DSA_PAGE_SIZE * DSA_INDEXER_DIM)[off] = r.scale;
}
