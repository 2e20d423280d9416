// Dense paged MLA decode, split-KV: the plan kernel (how each sequence's KV blocks are
// spread over the SMs) and the split kernel (attention of one piece of a sequence, for
// 64 heads of one query, into an f32 partial with its lse). kernels-cuda/mla/mla_combine.cu
// merges the partials.
//
// Split kernel design (one CTA of two warpgroups per (part, query, 64-head group)):
// * q [64 heads x 576] stays in shared memory for a whole piece; KV blocks of 64 tokens
//   (one page) stream through a double buffer with cp.async (bf16 cache) or through an
//   FP8 staging page that every thread dequantizes into the bf16 tile once (shared by all
//   64 heads of the CTA);
// * every operand tile is [64 rows x 64 dims] bf16 with the 128-byte swizzle that wgmma
//   reads without bank conflicts; a 576-wide row spans 9 such tiles;
// * S = q K^T: warpgroup w computes the 32 tokens [32w, 32w + 32) for all 64 heads
//   (wgmma m64n32k16, 36 steps); row maxima are exchanged through shared memory so both
//   warpgroups rescale with the same running max;
// * P (bf16) goes to shared memory; O += P V: warpgroup w owns output columns
//   [256w, 256w + 256) (wgmma m64n256k16 with V read N-major straight from the KV tile,
//   so no transposed copy of V exists), 128 fp32 accumulators per thread;
// * each warpgroup keeps the softmax denominator of its own tokens; they are summed once
//   at the end of a piece.
#include "dense_mla_params.h"
#include "device.cuh"

namespace {

constexpr int kThreads = DSA_DENSE_THREADS;
constexpr int kTileBytes = 64 * 64 * 2;            // [64 rows x 64 dims] bf16, swizzled
constexpr int kRowTiles = DSA_QK_DIM / 64;         // 9 tiles per 576-wide row block
constexpr int kBlockBytes = kRowTiles * kTileBytes;  // 73728: 64 rows x 576 bf16
constexpr int kFp8PageBytes = DSA_PAGE_SIZE * DSA_MLA_FP8_BYTES_PER_TOKEN;  // 41984
constexpr int kOverhead = DSA_DENSE_PIECE_OVERHEAD;

// Shared-memory map (offsets from a 1024-byte aligned base; the swizzle pattern wgmma
// assumes repeats every 1024 bytes, so every tile starts on such a boundary).
constexpr int kQOff = 0;
constexpr int kKvOff = kBlockBytes;
// bf16 cache: two KV buffers.
constexpr int kPOffBf16 = kKvOff + 2 * kBlockBytes;
// FP8 cache: one KV tile plus one raw staging page.
constexpr int kPOffFp8 = kKvOff + kBlockBytes;
constexpr int kRedBytes = 4 * 64 * 4;  // row max [2][64] and row sum [2][64], f32
constexpr int kStageOffFp8 = kPOffFp8 + kTileBytes + kRedBytes;
constexpr int kSmemBf16 = kPOffBf16 + kTileBytes + kRedBytes + 1024;
constexpr int kSmemFp8 = kStageOffFp8 + kFp8PageBytes + 1024;
static_assert(kSmemBf16 <= DSA_SM90_SMEM_PER_CTA_MAX, "bf16 split kernel exceeds the shared-memory limit");
static_assert(DSA_DENSE_HEADS_PER_CTA == 64 && kThreads == 2 * 128, "64 heads (wgmma M) on two warpgroups");
static_assert(DSA_DENSE_BLOCK_N == DSA_PAGE_SIZE, "a KV block is one cache page");
static_assert(kSmemBf16 == DSA_DENSE_SMEM_BF16 && kSmemFp8 == DSA_DENSE_SMEM_FP8, "host smem sizes are stale");
static_assert(kStageOffFp8 % 16 == 0, "staging page must be 16-byte aligned");

// Byte offset of 16-byte chunk c (0..71) of row `row` in a 9-tile row block.
__device__ __forceinline__ uint32_t row_chunk(int row, int c) {
    return (uint32_t)((c >> 3) * kTileBytes) + dsa::sw128_offset(row, c & 7);
}

struct Piece {
    int split;      // partial row block to write
    int blk0, blk1; // KV blocks [blk0, blk1) of the sequence, already clipped causally
    int n_vis;      // keys visible to this CTA's query
};

// Page of KV block `blk` of sequence `b`, or -1 when the block-table entry is outside the
// cache (or the block outside the table): such a block is read as masked tokens.
__device__ __forceinline__ int block_page(const DsaDenseMlaDecodeParams &p, int b, int blk) {
    if (blk >= p.max_pages) return -1;
    const int page = p.block_table[(int64_t)b * p.max_pages + blk];
    return (page >= 0 && page < p.num_pages) ? page : -1;
}

// Valid rows of block `blk` (0 for an invalid page).
__device__ __forceinline__ int block_rows(int page, int blk, int n_vis) {
    return page < 0 ? 0 : min(DSA_DENSE_BLOCK_N, n_vis - blk * DSA_DENSE_BLOCK_N);
}

// q rows [64 heads x 576] of (b, j, head group) into the 9-tile q block; heads past h_q
// are zero.
__device__ __forceinline__ void load_q(const DsaDenseMlaDecodeParams &p, uint32_t sq, int b, int j, int hg) {
    const __nv_bfloat16 *q = static_cast<const __nv_bfloat16 *>(p.q);
    for (int i = threadIdx.x; i < 64 * 72; i += kThreads) {
        const int row = i / 72, c = i % 72;
        const int h = hg * 64 + row;
        const bool ok = h < p.h_q;
        const __nv_bfloat16 *src = ok ? q + (((int64_t)b * p.s_q + j) * p.h_q + h) * DSA_QK_DIM + c * 8 : q;
        dsa::cp_async16_zfill(sq + row_chunk(row, c), src, ok ? 16 : 0);
    }
}

// bf16 cache: 64 tokens x 576 of one page; rows past `rows` are zero-filled (no read), so
// masked tokens hold no NaN that 0 * V could spread. Thread (row r0 = tid / 8, chunk
// cc = tid % 8) copies chunk cc of every tile for rows r0 and r0 + 32: both rows share
// r0 % 8 and so the swizzle, and every copy is one instruction with immediate offsets.
__device__ __forceinline__ void load_kv_bf16(const DsaDenseMlaDecodeParams &p, uint32_t dst, int page, int rows) {
    const int cc = threadIdx.x & 7, r0 = threadIdx.x >> 3;
    const uint32_t sdst = dst + dsa::sw128_offset(r0, cc);
    const uint8_t *kv = static_cast<const uint8_t *>(p.kv);
    const uint8_t *src0 = kv + ((int64_t)max(page, 0) * DSA_PAGE_SIZE + r0) * (DSA_QK_DIM * 2) + cc * 16;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const bool ok = r0 + 32 * h < rows;
#pragma unroll
        for (int c9 = 0; c9 < kRowTiles; ++c9)
            dsa::cp_async16_zfill(sdst + c9 * kTileBytes + h * 4096, ok ? src0 + h * 32 * (DSA_QK_DIM * 2) + c9 * 128 : kv,
                                  ok ? 16 : 0);
    }
}

// FP8 cache: the raw 64 x 656 bytes of one page into the staging buffer.
__device__ __forceinline__ void load_stage_fp8(const DsaDenseMlaDecodeParams &p, uint32_t dst, int page) {
    if (page < 0) return;
    const uint8_t *src = static_cast<const uint8_t *>(p.kv) + (int64_t)page * kFp8PageBytes;
    for (int i = threadIdx.x; i < kFp8PageBytes / 16; i += kThreads)
        dsa::cp_async16_zfill(dst + i * 16, src + i * 16, 16);
}

// Staging page -> bf16 KV tile: thread (token = tid / 4, quarter = tid % 4) converts the
// 16-value chunks 4k + quarter of the latent (value x its block scale, rounded to bf16)
// and copies two 16-byte chunks of the rope part. Rows past `rows` become zeros.
__device__ __forceinline__ void dequant_fp8(const uint8_t *stage, uint8_t *kv, int rows) {
    const int tok = threadIdx.x >> 2, qtr = threadIdx.x & 3;
    const bool ok = tok < rows;
    const uint8_t *src = stage + tok * DSA_MLA_FP8_BYTES_PER_TOKEN;
    const float *scales = reinterpret_cast<const float *>(src + 512);
#pragma unroll 2
    for (int k = 0; k < 8; ++k) {
        const int c = 4 * k + qtr;  // 16 values: dims 16c .. 16c + 15
        uint4 lo = make_uint4(0, 0, 0, 0), hi = lo;
        if (ok) {
            const uint4 raw = *reinterpret_cast<const uint4 *>(src + 16 * c);
            const float s = scales[c >> 3];
            uint32_t outw[8];
            dsa::dequant16(raw, s, outw);
            lo = make_uint4(outw[0], outw[1], outw[2], outw[3]);
            hi = make_uint4(outw[4], outw[5], outw[6], outw[7]);
        }
        *reinterpret_cast<uint4 *>(kv + row_chunk(tok, 2 * c)) = lo;
        *reinterpret_cast<uint4 *>(kv + row_chunk(tok, 2 * c + 1)) = hi;
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int c = 2 * qtr + r;  // rope chunk: dims 512 + 8c
        uint4 v = make_uint4(0, 0, 0, 0);
        if (ok) v = *reinterpret_cast<const uint4 *>(src + 528 + 16 * c);
        *reinterpret_cast<uint4 *>(kv + row_chunk(tok, 64 + c)) = v;
    }
}

template <bool kFp8>
__device__ __forceinline__ void split_kernel(const DsaDenseMlaDecodeParams &p) {
    extern __shared__ uint8_t smem_raw[];
    uint8_t *smem = dsa::align_1024_generic(smem_raw);
    const uint32_t sbase = dsa::smem_u32(smem);
    constexpr int kPOff = kFp8 ? kPOffFp8 : kPOffBf16;
    float *s_max = reinterpret_cast<float *>(smem + kPOff + kTileBytes);  // [2][64]
    float *s_sum = s_max + 128;                                            // [2][64]

    const int tid = threadIdx.x, wg = tid >> 7, warp = (tid >> 5) & 3, lane = tid & 31;
    const int wgu = __shfl_sync(0xffffffffu, wg, 0);  // warp-uniform copy, for descriptors
    const int g = lane >> 2, t = lane & 3;
    const int row0 = warp * 16 + g;  // this thread's rows: row0 and row0 + 8
    const int part = blockIdx.x;
    const int j = blockIdx.y / p.head_groups, hg = blockIdx.y % p.head_groups;

    const int32_t *plan = p.plan;
    // Everything read from the plan is clamped, so a plan of another geometry gives wrong
    // numbers but never an out-of-bounds access.
    const int L = plan[0];
    if (L <= 0) return;
    const int b_begin = max(plan[DSA_DENSE_PLAN_HEADER + 2 * part], 0);
    const int b_end = min(plan[DSA_DENSE_PLAN_HEADER + 2 * part + 1], p.batch);
    const int32_t *seqs = plan + DSA_DENSE_PLAN_HEADER + DSA_DENSE_PLAN_PART_INTS * p.num_parts;

    for (int b = b_begin; b < b_end; ++b) {
        const int cost_start = seqs[4 * b], nblk = seqs[4 * b + 1], split_base = seqs[4 * b + 2];
        if (nblk <= 0 || nblk > p.max_pages) continue;
        // 64-bit: a plan of another geometry may hold any values.
        const int64_t cost = nblk + kOverhead;
        const int64_t u0 = max((int64_t)part * L, (int64_t)cost_start) - cost_start;
        const int64_t u1 = min((int64_t)(part + 1) * L, (int64_t)cost_start + cost) - cost_start;
        if (u0 >= u1) continue;
        const int64_t split = (int64_t)split_base + part - cost_start / L;
        if (split < 0 || split >= p.batch + p.num_parts) continue;
        Piece pc;
        pc.split = (int)split;
        pc.blk0 = (int)min(max(u0 - kOverhead, (int64_t)0), (int64_t)nblk);
        const int len = min(max(p.seq_lens[b], 0), nblk * DSA_DENSE_BLOCK_N);
        pc.n_vis = min(max(len - p.s_q + j + 1, 0), len);
        pc.blk1 = (int)min(min(max(u1 - kOverhead, (int64_t)0), (int64_t)nblk),
                           (int64_t)(pc.n_vis + DSA_DENSE_BLOCK_N - 1) / DSA_DENSE_BLOCK_N);

        float o[128];
#pragma unroll
        for (int i = 0; i < 128; ++i) o[i] = 0.f;
        float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};

        if (pc.blk0 < pc.blk1) {
            load_q(p, sbase + kQOff, b, j, hg);
            const int pg0 = block_page(p, b, pc.blk0);
            if (kFp8) {
                load_stage_fp8(p, sbase + kStageOffFp8, pg0);
            } else {
                load_kv_bf16(p, sbase + kKvOff, pg0, block_rows(pg0, pc.blk0, pc.n_vis));
            }
            dsa::cp_async_commit();
            dsa::cp_async_wait_group<0>();
            dsa::fence_async_smem();
            __syncthreads();
            if (!kFp8 && pc.blk0 + 1 < pc.blk1) {
                const int pg1 = block_page(p, b, pc.blk0 + 1);
                load_kv_bf16(p, sbase + kKvOff + kBlockBytes, pg1, block_rows(pg1, pc.blk0 + 1, pc.n_vis));
            }
            dsa::cp_async_commit();
        }

        for (int blk = pc.blk0; blk < pc.blk1; ++blk) {
            const int it = blk - pc.blk0;
            const uint32_t kv_off = kFp8 ? (uint32_t)kKvOff : (uint32_t)(kKvOff + (it & 1) * kBlockBytes);
            const int rows = block_rows(block_page(p, b, blk), blk, pc.n_vis);
            if (kFp8) {
                dequant_fp8(smem + kStageOffFp8, smem + kKvOff, rows);
                dsa::fence_async_smem();
                __syncthreads();  // tile complete; staging page free
                if (blk + 1 < pc.blk1) load_stage_fp8(p, sbase + kStageOffFp8, block_page(p, b, blk + 1));
                dsa::cp_async_commit();
            }

            // S = q K^T for tokens [32 wg, 32 wg + 32).
            float s[16];
#pragma unroll
            for (int i = 0; i < 16; ++i) s[i] = 0.f;
            dsa::fence_operands(s);
            dsa::wgmma_fence();
            {
                // Tiles start on 1 KB boundaries below 256 KB: stepping K adds bytes / 16 to
                // the descriptors' address field without a carry, one add per MMA instead
                // of a descriptor built from the address each time.
                const uint64_t dq = dsa::smem_desc(sbase + kQOff, 16, 1024);
                const uint64_t dk = dsa::smem_desc(sbase + kv_off + wgu * 4096, 16, 1024);
#pragma unroll
                for (int c = 0; c < kRowTiles; ++c) {
#pragma unroll
                    for (int kk = 0; kk < 4; ++kk) {
                        const uint32_t off = (c * kTileBytes + kk * 32) >> 4;
                        dsa::wgmma_bf16_ss<32>(s, dq + off, dk + off, (c | kk) != 0);
                    }
                }
            }
            dsa::wgmma_commit();
            dsa::wgmma_wait<0>();
            dsa::fence_operands(s);

            // Scale into the log2 domain, mask tokens past `rows`, local row maxima.
            float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
            for (int i = 0; i < 4; ++i) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int col = wg * 32 + 8 * i + 2 * t + (e & 1);
                    float v = s[4 * i + e] * p.scale_log2;
                    if (rows < DSA_DENSE_BLOCK_N && col >= rows) v = -INFINITY;
                    s[4 * i + e] = v;
                    mx[e >> 1] = fmaxf(mx[e >> 1], v);
                }
            }
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
                mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
            }
            if (t == 0) {
                s_max[wg * 64 + row0] = mx[0];
                s_max[wg * 64 + row0 + 8] = mx[1];
            }
            __syncthreads();
            float alpha[2], mu[2];
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const float nm = fmaxf(m[r], fmaxf(s_max[row0 + 8 * r], s_max[64 + row0 + 8 * r]));
                mu[r] = nm == -INFINITY ? 0.f : nm;  // a fully masked row so far: p = 0, no NaN
                alpha[r] = dsa::ex2(m[r] - mu[r]);
                m[r] = nm;
                l[r] *= alpha[r];
            }
            uint8_t *sp = smem + kPOff;
#pragma unroll
            for (int i = 0; i < 4; ++i) {
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    const float p0 = dsa::ex2(s[4 * i + 2 * r] - mu[r]);
                    const float p1 = dsa::ex2(s[4 * i + 2 * r + 1] - mu[r]);
                    l[r] += p0 + p1;
                    const __nv_bfloat162 pv = __floats2bfloat162_rn(p0, p1);
                    const int row = row0 + 8 * r;
                    *reinterpret_cast<__nv_bfloat162 *>(sp + dsa::sw128_offset(row, wg * 4 + i) + 4 * t) = pv;
                }
            }
            // Once the running max settles most blocks leave it unchanged: skip the 128
            // multiplies when no row of the warp moved.
            if (__any_sync(0xffffffffu, alpha[0] != 1.f || alpha[1] != 1.f)) {
#pragma unroll
                for (int i = 0; i < 32; ++i) {
                    o[4 * i + 0] *= alpha[0];
                    o[4 * i + 1] *= alpha[0];
                    o[4 * i + 2] *= alpha[1];
                    o[4 * i + 3] *= alpha[1];
                }
            }
            dsa::fence_async_smem();
            __syncthreads();  // P complete

            // O[:, 256 wg .. +256] += P V.
            dsa::fence_operands(o);
            dsa::wgmma_fence();
            {
                const uint64_t dp = dsa::smem_desc(sbase + kPOff, 16, 1024);
                const uint64_t dv = dsa::smem_desc(sbase + kv_off + 4 * wgu * kTileBytes, kTileBytes, 1024);
#pragma unroll
                for (int kk = 0; kk < 4; ++kk)
                    dsa::wgmma_bf16_ss<256, 1>(o, dp + ((kk * 32) >> 4), dv + ((kk * 2048) >> 4), 1);
            }
            dsa::wgmma_commit();
            dsa::wgmma_wait<0>();
            dsa::fence_operands(o);

            dsa::cp_async_wait_group<0>();
            dsa::fence_async_smem();
            __syncthreads();  // this KV buffer, P and s_max are free; the next block is in
            if (!kFp8) {
                if (blk + 2 < pc.blk1) {
                    const int pg = block_page(p, b, blk + 2);
                    load_kv_bf16(p, sbase + kv_off, pg, block_rows(pg, blk + 2, pc.n_vis));
                }
                dsa::cp_async_commit();
            }
        }

        // Epilogue: total denominator, normalize, write the partial and its lse.
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
            l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
        }
        if (t == 0) {
            s_sum[wg * 64 + row0] = l[0];
            s_sum[wg * 64 + row0 + 8] = l[1];
        }
        __syncthreads();
        float inv[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const int row = row0 + 8 * r;
            const float tot = s_sum[row] + s_sum[64 + row];
            inv[r] = tot > 0.f ? 1.f / tot : 0.f;
            const int h = hg * 64 + row;
            if (wg == 0 && t == 0 && h < p.h_q) {
                const float lse = tot > 0.f ? m[r] * 0.69314718055994531f + logf(tot) : -INFINITY;
                p.partial_lse[((int64_t)pc.split * p.s_q + j) * p.h_q + h] = lse;
            }
        }
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const int h = hg * 64 + row0 + 8 * r;
            if (h < p.h_q) {
                float *dst = p.partial_out + (((int64_t)pc.split * p.s_q + j) * p.h_q + h) * DSA_KV_LORA_RANK +
                             wg * 256 + 2 * t;
#pragma unroll
                for (int i = 0; i < 32; ++i)
                    *reinterpret_cast<float2 *>(dst + 8 * i) =
                        make_float2(o[4 * i + 2 * r] * inv[r], o[4 * i + 2 * r + 1] * inv[r]);
            }
        }
        __syncthreads();  // s_sum and q reused by the next piece
    }
}

}  // namespace

// One CTA. Cost of sequence b: ceil(len/64) blocks (clamped to max_pages) plus a fixed
// overhead when non-empty; the total cost is cut into parts of equal cost L, and each part
// takes the contiguous (sequence, block) range under its cost interval: every pointer of
// the plan follows from prefix sums, so the kernel has no serial walk over the batch.
extern "C" __global__ void __launch_bounds__(1024) dsa_dense_mla_plan(const DsaDenseMlaPlanParams p) {
    extern __shared__ int s_incl[];  // inclusive prefix of cost, [batch]
    __shared__ int warp_tot[32];
    __shared__ int carry_s;
    const int tid = threadIdx.x, n = blockDim.x;
    int32_t *seqs = p.plan + DSA_DENSE_PLAN_HEADER + DSA_DENSE_PLAN_PART_INTS * p.num_parts;

    int carry = 0;
    for (int base = 0; base < p.batch; base += n) {
        const int b = base + tid;
        int nb = 0;
        if (b < p.batch) {
            const int64_t len = max(p.seq_lens[b], 0);
            nb = (int)min((len + DSA_DENSE_BLOCK_N - 1) / DSA_DENSE_BLOCK_N, (int64_t)p.max_pages);
        }
        const int cost = nb > 0 ? nb + DSA_DENSE_PIECE_OVERHEAD : 0;
        const int incl = dsa::block_inclusive_scan(cost, warp_tot) + carry;
        if (b < p.batch) {
            s_incl[b] = incl;
            seqs[4 * b + 1] = nb;
        }
        if (tid == n - 1) carry_s = incl;
        __syncthreads();
        carry = carry_s;
        __syncthreads();
    }
    const int total = carry;
    const int L = max((total + p.num_parts - 1) / p.num_parts, DSA_DENSE_MIN_PART_COST);
    const int used = (total + L - 1) / L;

    // Splits per sequence and their prefix.
    carry = 0;
    for (int base = 0; base < p.batch; base += n) {
        const int b = base + tid;
        int ns = 0, start = 0;
        if (b < p.batch) {
            const int end = s_incl[b];
            start = b > 0 ? s_incl[b - 1] : 0;
            if (end > start) ns = (end - 1) / L - start / L + 1;
        }
        const int incl = dsa::block_inclusive_scan(ns, warp_tot) + carry;
        if (b < p.batch) {
            seqs[4 * b] = start;
            seqs[4 * b + 2] = incl - ns;
            seqs[4 * b + 3] = ns;
        }
        if (tid == n - 1) carry_s = incl;
        __syncthreads();
        carry = carry_s;
        __syncthreads();
    }

    // Part q: first sequence whose cost interval reaches past qL, one past the sequence
    // holding its last unit.
    for (int q = tid; q < p.num_parts; q += n) {
        int first = 0, last = 0;
        if (q < used) {
            const int x0 = q * L, x1 = min((q + 1) * L, total) - 1;
            int lo = 0, hi = p.batch - 1;  // first b with s_incl[b] > x0
            while (lo < hi) {
                const int mid = (lo + hi) >> 1;
                if (s_incl[mid] > x0) hi = mid; else lo = mid + 1;
            }
            first = lo;
            lo = first, hi = p.batch - 1;  // first b with s_incl[b] > x1
            while (lo < hi) {
                const int mid = (lo + hi) >> 1;
                if (s_incl[mid] > x1) hi = mid; else lo = mid + 1;
            }
            last = lo + 1;
        }
        p.plan[DSA_DENSE_PLAN_HEADER + 2 * q] = first;
        p.plan[DSA_DENSE_PLAN_HEADER + 2 * q + 1] = last;
    }
    if (tid == 0) {
        p.plan[0] = L;
        p.plan[1] = used;
        p.plan[2] = carry;
        p.plan[3] = 0;
    }
}

extern "C" __global__ void __launch_bounds__(kThreads, 1) dsa_dense_mla_decode_bf16(const DsaDenseMlaDecodeParams p) {
    split_kernel<false>(p);
}

extern "C" __global__ void __launch_bounds__(kThreads, 1) dsa_dense_mla_decode_fp8(const DsaDenseMlaDecodeParams p) {
    split_kernel<true>(p);
}
