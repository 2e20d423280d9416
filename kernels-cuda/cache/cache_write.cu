// Cache-write kernels: scatter new tokens into the paged MLA (FP8 or bf16) and indexer
// caches through a slot mapping. One warp per token; every access is 16 bytes wide except
// the indexer's 8-byte rows (128 values over 32 lanes).
#include "cache_params.h"
#include "device.cuh"

namespace {

__device__ __forceinline__ bool slot_ok(int64_t slot, int64_t capacity) {
    return slot >= 0 && slot < capacity;
}

}  // namespace

// MLA FP8 cache, 656 B/token: [512 e4m3 | 4 x fp32 scale | 64 x bf16 rope].
// Lane l quantizes latent values 16l..16l+15; the 8 lanes of a 128-value block share a scale.
extern "C" __global__ void __launch_bounds__(128)
dsa_cache_write_mla_fp8(const DsaCacheWriteParams p) {
    const int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (warp >= p.num_tokens) return;
    const int64_t slot = p.slots[warp];
    if (!slot_ok(slot, p.capacity_tokens)) return;
    const __nv_bfloat16 *src = static_cast<const __nv_bfloat16 *>(p.src) + (int64_t)warp * p.src_row_stride;
    uint8_t *dst = static_cast<uint8_t *>(p.cache) + slot * DSA_MLA_FP8_BYTES_PER_TOKEN;

    const uint4 *s4 = reinterpret_cast<const uint4 *>(src);
    uint4 a = s4[2 * lane], b = s4[2 * lane + 1];
    uint4 rope = lane < 8 ? s4[64 + lane] : make_uint4(0, 0, 0, 0);
    float f[16];
    dsa::bf16x8_to_f32(a, *reinterpret_cast<float(*)[8]>(&f[0]));
    dsa::bf16x8_to_f32(b, *reinterpret_cast<float(*)[8]>(&f[8]));
    float amax = 0.f;
#pragma unroll
    for (int i = 0; i < 16; ++i) amax = fmaxf(amax, fabsf(f[i]));
    amax = dsa::warp_max_xor(amax, 4);  // reduce over the 8 lanes of this block
    const float scale = dsa::fp8_block_scale(amax, p.pow2_scale != 0);
    uint32_t w[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        w[i] = (uint32_t)dsa::fp8_quant(f[4 * i], scale) | ((uint32_t)dsa::fp8_quant(f[4 * i + 1], scale) << 8) |
               ((uint32_t)dsa::fp8_quant(f[4 * i + 2], scale) << 16) |
               ((uint32_t)dsa::fp8_quant(f[4 * i + 3], scale) << 24);
    }
    reinterpret_cast<uint4 *>(dst)[lane] = make_uint4(w[0], w[1], w[2], w[3]);
    if ((lane & 7) == 0) reinterpret_cast<float *>(dst + 512)[lane >> 3] = scale;
    if (lane < 8) reinterpret_cast<uint4 *>(dst + 528)[lane] = rope;
}

// MLA bf16 cache, [pages, 64, 576] bf16: a plain 1152-byte row copy per token.
extern "C" __global__ void __launch_bounds__(128)
dsa_cache_write_mla_bf16(const DsaCacheWriteParams p) {
    const int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (warp >= p.num_tokens) return;
    const int64_t slot = p.slots[warp];
    if (!slot_ok(slot, p.capacity_tokens)) return;
    const uint4 *src = reinterpret_cast<const uint4 *>(static_cast<const __nv_bfloat16 *>(p.src) +
                                                       (int64_t)warp * p.src_row_stride);
    uint4 *dst = reinterpret_cast<uint4 *>(static_cast<__nv_bfloat16 *>(p.cache) + slot * DSA_QK_DIM);
    constexpr int kChunks = DSA_QK_DIM * 2 / 16;  // 72
    uint4 v[3];
#pragma unroll
    for (int i = 0; i < 3; ++i) {
        const int c = lane + 32 * i;
        if (c < kChunks) v[i] = src[c];
    }
#pragma unroll
    for (int i = 0; i < 3; ++i) {
        const int c = lane + 32 * i;
        if (c < kChunks) dst[c] = v[i];
    }
}

// Indexer K cache: per page 64 x 128 e4m3, then 64 fp32 scales (8448 B). Lane l
// quantizes values 4l..4l+3; one scale per token (power of two when pow2_scale).
extern "C" __global__ void __launch_bounds__(128)
dsa_cache_write_indexer_k(const DsaCacheWriteParams p) {
    const int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (warp >= p.num_tokens) return;
    const int64_t slot = p.slots[warp];
    if (!slot_ok(slot, p.capacity_tokens)) return;
    const __nv_bfloat16 *src = static_cast<const __nv_bfloat16 *>(p.src) + (int64_t)warp * p.src_row_stride;
    const uint2 raw = reinterpret_cast<const uint2 *>(src)[lane];
    const __nv_bfloat162 *h = reinterpret_cast<const __nv_bfloat162 *>(&raw);
    const float2 x01 = __bfloat1622float2(h[0]), x23 = __bfloat1622float2(h[1]);
    float amax = fmaxf(fmaxf(fabsf(x01.x), fabsf(x01.y)), fmaxf(fabsf(x23.x), fabsf(x23.y)));
    amax = dsa::warp_max_xor(amax, 16);
    const float scale = dsa::fp8_block_scale(amax, p.pow2_scale != 0);
    const uint32_t w = (uint32_t)dsa::fp8_quant(x01.x, scale) | ((uint32_t)dsa::fp8_quant(x01.y, scale) << 8) |
                       ((uint32_t)dsa::fp8_quant(x23.x, scale) << 16) |
                       ((uint32_t)dsa::fp8_quant(x23.y, scale) << 24);
    const int64_t page = slot / DSA_PAGE_SIZE, off = slot % DSA_PAGE_SIZE;
    uint8_t *base = static_cast<uint8_t *>(p.cache) + page * DSA_INDEXER_PAGE_BYTES;
    reinterpret_cast<uint32_t *>(base + off * DSA_INDEXER_DIM)[lane] = w;
    if (lane == 0) reinterpret_cast<float *>(base + DSA_PAGE_SIZE * DSA_INDEXER_DIM)[off] = scale;
}
