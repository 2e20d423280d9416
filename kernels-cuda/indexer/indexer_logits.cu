// Lightning-indexer logits on FP8 tensor cores (wgmma, sm_90a): ragged prefill over a flat
// key array and paged decode over the indexer K cache, plus the decode scheduling plan.
//
// Shape of the work: one warpgroup per CTA, two CTAs per SM (three to six for decode) so
// one CTA's epilogue hides under another's tensor-core work. Keys are the A operand (M = 64 keys = one tile, or
// one cache page), the queries' head rows the B operand (N = queries x H, up to 256), so
// the accumulator's rows are keys and its columns (query, head) pairs. The head reduction
// then stays almost entirely inside a thread: a thread holds 2 key rows and, per query,
// H/4 of its heads; two shuffles finish the sum over the 4 lanes of a quad.
//
// Shared-memory tiles use the 128-byte swizzle that wgmma's K-major descriptors read: a
// tile row is the 128 bytes of one key (or head row), 16-byte chunk c of row r sits at
// r * 128 + ((c ^ (r % 8)) * 16), and 8-row groups are 1024 bytes apart. Tiles are filled
// with cp.async (16-byte chunks, zero-filled out of range) in a ring of stages, so several
// tiles are in flight while the tensor cores work on an earlier one.
#include <climits>

#include "device.cuh"
#include "indexer_params.h"

namespace {

constexpr int kKeys = DSA_PAGE_SIZE;     // keys per tile = tokens per page
constexpr int kRow = DSA_INDEXER_DIM;    // bytes per key / head row
constexpr int kTile = kKeys * kRow;      // 8192
constexpr int kThreads = DSA_INDEXER_LOGITS_THREADS;
static_assert(kKeys == 64 && kRow == 128 && kThreads == 128, "one warpgroup, m64 tiles of 128-byte rows");
static_assert(kTile + kKeys * 4 == DSA_INDEXER_PAGE_BYTES, "a cache page is one key tile and its scales");

// acc[64 keys x N] = keys(a_tile) . rows(b_tile)^T over the 128 bytes of K.
template <int N>
__device__ __forceinline__ void tile_mma(uint32_t a_tile, uint32_t b_tile, float (&acc)[N / 2]) {
    dsa::fence_operands(acc);
    dsa::wgmma_fence();
    // K-major operands with the 128-byte swizzle; tiles are 1024-aligned.
    const uint64_t da = dsa::smem_desc(a_tile, 16, 1024), db = dsa::smem_desc(b_tile, 16, 1024);
#pragma unroll
    for (int kk = 0; kk < 4; ++kk)  // 32 bytes of K per step = 2 descriptor units
        dsa::wgmma_e4m3_ss<N>(acc, da + 2 * kk, db + 2 * kk, kk > 0);
    dsa::wgmma_commit();
    dsa::wgmma_wait<0>();
    dsa::fence_operands(acc);
}

// sum_h w[q, h] * relu(acc[key, (q, h)]) for the thread's two key rows (r0 and r0 + 8),
// reduced over the quad so every lane of it holds all 2 * NQ sums.
template <int H, int NQ>
__device__ __forceinline__ void head_reduce(const float (&acc)[H * NQ / 2], const float *w_smem, int lane,
                                            float (&s0)[NQ], float (&s1)[NQ]) {
    const float2 *w2 = reinterpret_cast<const float2 *>(w_smem);
#pragma unroll
    for (int q = 0; q < NQ; ++q) {
        float a0 = 0.f, a1 = 0.f;
#pragma unroll
        for (int ii = 0; ii < H / 8; ++ii) {
            const int i = q * (H / 8) + ii;
            const float2 wv = w2[(q * H + 8 * ii + 2 * (lane & 3)) >> 1];
            a0 = fmaf(wv.x, fmaxf(acc[4 * i + 0], 0.f), a0);
            a0 = fmaf(wv.y, fmaxf(acc[4 * i + 1], 0.f), a0);
            a1 = fmaf(wv.x, fmaxf(acc[4 * i + 2], 0.f), a1);
            a1 = fmaf(wv.y, fmaxf(acc[4 * i + 3], 0.f), a1);
        }
        s0[q] = a0;
        s1[q] = a1;
    }
#pragma unroll
    for (int q = 0; q < NQ; ++q) {
        s0[q] += __shfl_xor_sync(0xffffffffu, s0[q], 1);
        s1[q] += __shfl_xor_sync(0xffffffffu, s1[q], 1);
        s0[q] += __shfl_xor_sync(0xffffffffu, s0[q], 2);
        s1[q] += __shfl_xor_sync(0xffffffffu, s1[q], 2);
    }
}

// Loads the N head rows of a query group (row i at src + i * 128, rows >= valid_rows
// zero-filled) into a swizzled tile with cp.async.
template <int N>
__device__ __forceinline__ void load_rows_async(uint32_t tile, const uint8_t *src, int valid_rows, int tid) {
#pragma unroll 4
    for (int id = tid; id < N * 8; id += kThreads) {
        const int r = id >> 3, c = id & 7;
        const bool ok = r < valid_rows;
        dsa::cp_async16_zfill(tile + dsa::sw128_offset(r, c), ok ? src + (int64_t)r * kRow + c * 16 : src, ok ? 16 : 0);
    }
}

extern __shared__ uint8_t dyn_smem[];

// ---------------------------------------------------------------------------------------
// Prefill. A CTA owns G groups of NQ = 256 / H consecutive queries (their q rows stay in
// shared memory) and streams the key tiles that intersect the union of its rows' ranges;
// every column outside that union is written -inf directly. G = 2, two CTAs per SM (each
// key tile feeds two MMAs). G = 1 (three CTAs per SM, one more warpgroup to hide another's
// MMA) measured 2-6% slower at S_kv >= 32K, 1% faster at 8K (BENCHMARKS.md, indexer v3).
constexpr int kPrefillStages = 4;
constexpr int kPrefillGroups = DSA_INDEXER_PREFILL_GROUPS;

template <int H, int G>
struct PrefillCfg {
    static constexpr int NQ = 256 / H;
    static constexpr int N = DSA_INDEXER_PREFILL_COLUMNS;
    static constexpr int QPC = NQ * G;  // queries per CTA
    static constexpr int kQBytes = G * N * kRow;
    static constexpr int kKBytes = kPrefillStages * kTile;
    static constexpr int kCtas = G == 1 ? 3 : 2;
    // + 1024 alignment slack, kscale stages, weights, row ranges.
    static constexpr int kSmem = 1024 + kQBytes + kKBytes + kPrefillStages * kKeys * 4 + G * N * 4 + 2 * QPC * 4;
    static_assert(kSmem == DSA_INDEXER_PREFILL_SMEM_BASE + DSA_INDEXER_PREFILL_SMEM_PER_QUERY * QPC,
                  "indexer_params.h prefill shared memory is stale");
    static_assert(kCtas * (kSmem + DSA_SM90_SMEM_RESERVED_PER_CTA) <= DSA_SM90_SMEM_PER_SM, "CTAs per SM must fit");
};

template <int H, int G>
__device__ __forceinline__ void prefill_body(const DsaIndexerPrefillParams &p) {
    using C = PrefillCfg<H, G>;
    constexpr int NQ = C::NQ, N = C::N, QPC = C::QPC, S = kPrefillStages;
    uint8_t *base = dsa::align_1024(dyn_smem);
    uint8_t *q_s = base;
    uint8_t *k_s = q_s + C::kQBytes;
    float *ksc_s = reinterpret_cast<float *>(k_s + C::kKBytes);
    float *w_s = ksc_s + S * kKeys;
    int *lo_s = reinterpret_cast<int *>(w_s + G * N);
    int *hi_s = lo_s + QPC;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int t0 = blockIdx.x * QPC;
    const int s_kv = p.s_kv;

    if (tid < QPC) {
        const int t = t0 + tid;
        int lo = 0, hi = 0;
        if (t < p.s) {
            lo = min(max(p.ks[t], 0), s_kv);
            hi = min(max(p.ke[t], 0), s_kv);
            if (hi < lo) hi = lo;
        }
        lo_s[tid] = lo;
        hi_s[tid] = hi;
    }
    for (int i = tid; i < G * N; i += kThreads) {
        const int64_t row = (int64_t)t0 * H + i;
        w_s[i] = row < (int64_t)p.s * H ? p.w[row] : 0.f;
    }
    {
        const int64_t rows_left = (int64_t)p.s * H - (int64_t)t0 * H;
        const int valid = rows_left < (int64_t)G * N ? (int)rows_left : G * N;
        // G * N rows are contiguous in q8 and in q_s (group g at g * N rows)
        load_rows_async<G * N>(dsa::smem_u32(q_s), p.q8 + (int64_t)t0 * H * kRow, valid, tid);
        dsa::cp_async_commit();
    }
    __syncthreads();

    int tlo = INT_MAX, thi = 0, glo[G], ghi[G];
#pragma unroll
    for (int g = 0; g < G; ++g) {
        glo[g] = INT_MAX;
        ghi[g] = 0;
        for (int q = 0; q < NQ; ++q) {
            const int lo = lo_s[g * NQ + q], hi = hi_s[g * NQ + q];
            if (hi > lo) {
                glo[g] = min(glo[g], lo);
                ghi[g] = max(ghi[g], hi);
            }
        }
        tlo = min(tlo, glo[g]);
        thi = max(thi, ghi[g]);
    }
    // Tiles inside every row's range (all rows valid and non-empty) need no masking: the
    // epilogue then stores each lane's values without per-element checks.
    int full_lo = 0, full_hi = INT_MAX;
    for (int q = 0; q < QPC; ++q) {
        full_lo = max(full_lo, lo_s[q]);
        full_hi = min(full_hi, hi_s[q]);
    }
    if (t0 + QPC > p.s) full_hi = 0;
    const int tile_lo_all = thi > 0 ? tlo / kKeys : 0;
    const int tile_hi = thi > 0 ? (thi + kKeys - 1) / kKeys : 0;
    // gridDim.y CTAs share the query block, each a contiguous part of its tiles (keys are
    // independent: no combine), so the grid fills the last wave when blocks are few.
    const int nall = tile_hi - tile_lo_all;
    const int tile_lo = tile_lo_all + (int)((int64_t)nall * blockIdx.y / gridDim.y);
    const int ntiles = tile_lo_all + (int)((int64_t)nall * (blockIdx.y + 1) / gridDim.y) - tile_lo;

    // Columns no tile covers (once per query block).
    if (blockIdx.y == 0) {
        const int c0 = tile_lo_all * kKeys, c1 = min(tile_hi * kKeys, s_kv);
        for (int q = 0; q < QPC; ++q) {
            const int t = t0 + q;
            if (t >= p.s) break;
            float *o = p.out + (int64_t)t * p.out_stride;
            for (int c = tid; c < c0; c += kThreads) o[c] = -INFINITY;
            for (int c = c1 + tid; c < s_kv; c += kThreads) o[c] = -INFINITY;
        }
    }

    auto issue = [&](int i) {
        if (i < ntiles) {
            const int tile = tile_lo + i, st = i % S;
            const uint32_t dst = dsa::smem_u32(k_s + st * kTile);
#pragma unroll
            for (int j = 0; j < kTile / 16 / kThreads; ++j) {
                const int id = tid + j * kThreads, r = id >> 3, c = id & 7;
                const int key = tile * kKeys + r;
                const bool ok = key < s_kv;
                dsa::cp_async16_zfill(dst + dsa::sw128_offset(r, c), ok ? p.k8 + (int64_t)key * kRow + c * 16 : p.k8, ok ? 16 : 0);
            }
            if (tid < kKeys / 4) {
                const int key = tile * kKeys + tid * 4;
                float *dst_sc = ksc_s + st * kKeys + tid * 4;
                if (key + 4 <= s_kv) {
                    dsa::cp_async16_zfill(dsa::smem_u32(dst_sc), p.kscale + key, 16);
                } else {
                    // The array's ragged end: a 16-byte copy would read past it. Plain
                    // stores, published by the barrier before this stage is read.
#pragma unroll
                    for (int e = 0; e < 4; ++e) dst_sc[e] = key + e < s_kv ? p.kscale[key + e] : 0.f;
                }
            }
        }
        dsa::cp_async_commit();
    };
#pragma unroll
    for (int i = 0; i < S - 1; ++i) issue(i);

    const int r0 = 16 * warp + (lane >> 2);
    // Fast-path store mapping: lane quad position L holds row r0 + 8 * (L & 1) of queries
    // (L >> 1) + 2j, j < NQ / 2, of each group; one store per (group, j) covers two runs of
    // 16 consecutive keys (64 bytes) per warp.
    const int lq = lane & 3;
    const bool row_hi = lq & 1, q_odd = lq & 2;
    float *out_lane = p.out + (int64_t)(t0 + (lq >> 1)) * p.out_stride + r0 + (row_hi ? 8 : 0);
    float acc[N / 2];
    for (int i = 0; i < ntiles; ++i) {
        dsa::cp_async_wait_group<S - 2>();
        dsa::fence_async_smem();
        __syncthreads();
        issue(i + S - 1);
        const int st = i % S, tile = tile_lo + i, k0 = tile * kKeys;
        const float ks0 = ksc_s[st * kKeys + r0], ks1 = ksc_s[st * kKeys + r0 + 8];
        if (k0 >= full_lo && k0 + kKeys <= full_hi) {
            const float ksv = row_hi ? ks1 : ks0;
#pragma unroll
            for (int g = 0; g < G; ++g) {
                float s0[NQ], s1[NQ];
                tile_mma<N>(dsa::smem_u32(k_s + st * kTile), dsa::smem_u32(q_s + g * N * kRow), acc);
                head_reduce<H, NQ>(acc, w_s + g * N, lane, s0, s1);
#pragma unroll
                for (int j = 0; j < NQ / 2; ++j) {
                    const float a = row_hi ? s1[2 * j] : s0[2 * j];
                    const float b = row_hi ? s1[2 * j + 1] : s0[2 * j + 1];
                    out_lane[(int64_t)(g * NQ + 2 * j) * p.out_stride + k0] = (q_odd ? b : a) * ksv;
                }
            }
            continue;
        }
#pragma unroll
        for (int g = 0; g < G; ++g) {
            const bool live = glo[g] < k0 + kKeys && ghi[g] > k0;
            float s0[NQ], s1[NQ];
            if (live) {
                tile_mma<N>(dsa::smem_u32(k_s + st * kTile), dsa::smem_u32(q_s + g * N * kRow), acc);
                head_reduce<H, NQ>(acc, w_s + g * N, lane, s0, s1);
            }
#pragma unroll
            for (int idx = 0; idx < 2 * NQ; ++idx) {
                if ((idx & 3) != (lane & 3)) continue;
                const int q = idx >> 1, rr = idx & 1;
                const int t = t0 + g * NQ + q;
                const int key = k0 + r0 + 8 * rr;
                if (t >= p.s || key >= s_kv) continue;
                const int lo = lo_s[g * NQ + q], hi = hi_s[g * NQ + q];
                float v = -INFINITY;
                if (live && key >= lo && key < hi) v = (rr ? s1[q] : s0[q]) * (rr ? ks1 : ks0);
                p.out[(int64_t)t * p.out_stride + key] = v;
            }
        }
    }
    dsa::cp_async_wait_group<0>();
}

// ---------------------------------------------------------------------------------------
// Decode. The plan's prefix sums lay every batch's pages end to end; CTA c takes the
// global pages [c * P / grid, (c + 1) * P / grid), which may span several batches, so
// work is even whatever the lengths. The q rows of the current batch (next_n x H, all
// sharing each loaded page) stay in shared memory until the batch changes. The producer
// records each stage's (batch, page, page valid) in shared memory, so the consumer's path
// has no global loads, and it locates each page (plan walk, block-table entry) one
// iteration before issuing its copies, so the table load's latency never stalls the
// issue. The host launches as many CTAs per SM as shared memory allows (up to
// DSA_INDEXER_DECODE_MAX_CTAS_PER_SM): a CTA's page loop is a serial chain of barrier,
// MMA, reduction and stores, and more CTAs overlap more of those chains.
constexpr int kDecodeStages = DSA_INDEXER_DECODE_STAGES;
constexpr int kStageBytes = kTile + kKeys * 4 + 16;  // keys, scales, meta

template <int H, int NQ, int S = kDecodeStages>
struct DecodeCfg {
    static_assert(NQ >= 1 && NQ <= DSA_INDEXER_MAX_NEXT_N, "queries per CTA");
    static_assert(S >= 3, "a stage in flight besides the one read and the one refilled");
    static constexpr int N = H * NQ;
    static constexpr int kQBytes = N * kRow;
    static constexpr int kKBytes = S * kTile;
    static constexpr int kSmem = 1024 + kQBytes + kKBytes + S * kKeys * 4 + N * 4 + S * 16;
    // The host's rule (src/indexer/logits_decode.rs, ctas_per_sm).
    static constexpr int kCtasBySmem = DSA_SM90_SMEM_PER_SM / (kSmem + DSA_SM90_SMEM_RESERVED_PER_CTA);
    static constexpr int kCtasPerSm =
        kCtasBySmem < DSA_INDEXER_DECODE_MAX_CTAS_PER_SM ? kCtasBySmem : DSA_INDEXER_DECODE_MAX_CTAS_PER_SM;
    static_assert(kCtasPerSm >= 2, "two CTAs per SM");
    static_assert(S * kStageBytes + 1024 == 1024 + kKBytes + S * kKeys * 4 + S * 16, "stage layout");
};
static_assert(DecodeCfg<64, 1>::kSmem == DSA_INDEXER_DECODE_SMEM_BASE + DSA_INDEXER_DECODE_SMEM_PER_COLUMN * 64,
              "indexer_params.h decode shared memory is stale");

// Start-up of a CTA. Every CTA starts at once with the memory system idle, so what it
// reads before its first copy is on everyone's critical path: it finds the sequence of
// its first page with one parallel pass over the plan (each thread compares its entries,
// a block count) rather than a binary search of ~log2(batch) dependent loads, and the
// first sequence's q rows and weights ride the first page's cp.async group. Later
// sequences' q rows, weights and length are prefetched into L1 when the producer reaches
// their first page (S - 1 pages before the consumer needs them; the page copies bypass
// L1, so they stay), and the row of the -inf tail pass is read in the prologue: a
// sequence switch waits on L1, and the kernel's end on no load at all.
template <int H, int NQ, int S = kDecodeStages>
__device__ __forceinline__ void decode_body(const DsaIndexerDecodeParams &p) {
    using C = DecodeCfg<H, NQ, S>;
    constexpr int N = C::N;
    uint8_t *base = dsa::align_1024(dyn_smem);
    uint8_t *q_s = base;
    uint8_t *k_s = q_s + C::kQBytes;
    float *ksc_s = reinterpret_cast<float *>(k_s + C::kKBytes);
    float *w_s = ksc_s + S * kKeys;
    int *meta_s = reinterpret_cast<int *>(w_s + N);  // [S][4]: batch, local page, page ok

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int batch = p.batch, next_n = p.next_n;
    // The plan is device data of unchecked provenance (stale, of another geometry, not
    // monotonic): nothing read from it may send an access outside a buffer. The total is
    // clamped to [0, batch * cap] (a batch has at most `cap` pages; the host checks that
    // product fits an int32); since it is at most plan[batch], the walk below stops at
    // batch - 1 whatever the entries before it. A page's local index outside [0, cap)
    // becomes the first page past max_ctx: every key of it fails the store's bound check
    // (and the table lookup checks it against max_pages). The -inf tail of a row starts
    // at a page count clamped to [0, cap]. A bad plan gives wrong logits, never an
    // out-of-bounds access.
    const int past_ctx = (int)(((int64_t)p.max_ctx + kKeys - 1) / kKeys);  // first page past max_ctx
    const int cap = min(p.max_pages, past_ctx);
    const int total = (int)min(max((int64_t)p.plan[batch], (int64_t)0), (int64_t)batch * cap);
    const int lo = (int)((int64_t)total * blockIdx.x / gridDim.x);
    const int ntiles = (int)((int64_t)total * (blockIdx.x + 1) / gridDim.x) - lo;

    // Producer state: the next page to issue, already located. pf_start / pf_end are
    // plan[pf_b] / plan[pf_b + 1], kept in registers so locating a page is a compare.
    int pf_b = 0, pf_start = 0, pf_end = 0;
    {
        // pf_b = (entries b < batch with plan[b] <= lo) - 1: the binary search's answer
        // for a monotonic plan; clamped to [0, batch) for any other, which keeps the walk
        // below inside the plan (it stops at batch - 1 since every page is below plan[batch]).
        // Four entries a thread per pass so their loads are in flight together.
        int count = 0;
        for (int b0 = 0; b0 < batch; b0 += 4 * kThreads) {
            int pred[4];
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int b = b0 + j * kThreads + tid;
                pred[j] = ntiles > 0 && b < batch ? p.plan[b] <= lo : 0;
            }
#pragma unroll
            for (int j = 0; j < 4; ++j) count += __syncthreads_count(pred[j]);
        }
        if (ntiles > 0) {
            pf_b = min(max(count - 1, 0), batch - 1);
            pf_start = p.plan[pf_b];
            pf_end = p.plan[pf_b + 1];
        }
    }
    // What the consumer's switch to sequence b (< batch) reads, into L1. A q
    // row is one 128-byte line; the weights' lines are touched at 32-float steps and at
    // their last element (their start need not be line-aligned).
    auto prefetch_q = [&](int b) {
        const int valid = next_n * H;
        const uint8_t *src = p.q8 + (int64_t)b * valid * kRow;
        for (int r = tid; r < valid; r += kThreads) dsa::prefetch_l1(src + (int64_t)r * kRow);
        if (tid <= (valid + 31) / 32) dsa::prefetch_l1(p.w + (int64_t)b * valid + min(tid * 32, valid - 1));
        if (tid == kThreads - 1) dsa::prefetch_l1(p.context_lens + b);
    };
    int nx_b = 0, nx_lp = 0, nx_id = -1;
    auto locate = [&](int i) {
        if (i >= ntiles) return;
        const int gp = lo + i;
        const int was_b = pf_b;
        while (pf_end <= gp) {
            ++pf_b;
            pf_start = pf_end;
            pf_end = p.plan[pf_b + 1];
        }
        if (pf_b != was_b) prefetch_q(pf_b);
        int lp = gp - pf_start;
        if ((unsigned)lp >= (unsigned)cap) lp = past_ctx;  // only from a corrupt plan
        nx_b = pf_b;
        nx_lp = lp;
        // The entry's load is consumed by the next issue, an iteration later. An id
        // outside [0, num_pages) reads as -inf keys.
        nx_id = lp < p.max_pages ? p.block_table[(int64_t)pf_b * p.max_pages + lp] : -1;
    };
    // This thread's 16-byte chunks of a tile: chunk id tid + 128 j is row id / 8, column
    // id % 8, at the same swizzled offset in every stage.
    uint32_t sw[kTile / 16 / kThreads];
#pragma unroll
    for (int j = 0; j < kTile / 16 / kThreads; ++j) {
        const int cid = tid + j * kThreads;
        sw[j] = dsa::sw128_offset(cid >> 3, cid & 7);
    }
    const uint32_t k_u32 = dsa::smem_u32(k_s), ksc_u32 = dsa::smem_u32(ksc_s);
    int pf_st = 0;
    auto issue = [&](int i) {
        if (i < ntiles) {
            const bool ok = nx_id >= 0 && (int64_t)nx_id < p.num_pages;
            const uint8_t *page = p.cache + (ok ? (int64_t)nx_id * DSA_INDEXER_PAGE_BYTES : 0) + tid * 16;
            const int bytes = ok ? 16 : 0;
            const uint32_t dst = k_u32 + pf_st * kTile;
#pragma unroll
            for (int j = 0; j < kTile / 16 / kThreads; ++j)
                dsa::cp_async16_zfill(dst + sw[j], page + j * kThreads * 16, bytes);
            if (tid < kKeys / 4) dsa::cp_async16_zfill(ksc_u32 + pf_st * kKeys * 4 + tid * 16, page + kTile, bytes);
            if (tid == 0) {
                meta_s[pf_st * 4 + 0] = nx_b;
                meta_s[pf_st * 4 + 1] = nx_lp;
                meta_s[pf_st * 4 + 2] = ok;
            }
            pf_st = pf_st + 1 == S ? 0 : pf_st + 1;
            locate(i + 1);
        }
        dsa::cp_async_commit();
    };
    locate(0);
    const int r0 = 16 * warp + (lane >> 2);
    int loaded_b = -1, len = 0;
    float *out_b = p.out;
    // The tail pass's first row, read now rather than after the page loop.
    int64_t tail_row0_pages = 0;
    {
        if ((int64_t)blockIdx.x < (int64_t)batch * next_n) {
            const int b = (int)((int64_t)blockIdx.x / next_n);
            tail_row0_pages = min(max((int64_t)p.plan[b + 1] - p.plan[b], (int64_t)0), (int64_t)cap);
        }
        if (ntiles > 0) {
            // The first page's sequence (locate(0) may have walked past empty ones):
            // its q rows and weights join the first page's copy group.
            const int b = nx_b;
            const uint8_t *src = p.q8 + (int64_t)b * next_n * H * kRow;
            const int valid = next_n * H;
            const uint32_t q_u32 = dsa::smem_u32(q_s);
            for (int id = tid; id < C::N * 8; id += kThreads) {
                const int r = id >> 3, c = id & 7;
                dsa::cp_async16_zfill(q_u32 + dsa::sw128_offset(r, c), src + (r < valid ? (int64_t)r * kRow + c * 16 : 0),
                                      r < valid ? 16 : 0);
            }
            for (int i2 = tid; i2 < C::N; i2 += kThreads) w_s[i2] = i2 < valid ? p.w[(int64_t)b * next_n * H + i2] : 0.f;
            len = p.context_lens[b];
            out_b = p.out + (int64_t)b * next_n * p.out_stride;
            loaded_b = b;
        }
    }
#pragma unroll
    for (int i = 0; i < S - 1; ++i) issue(i);

    float acc[N / 2];
    int st = 0;
    for (int i = 0; i < ntiles; ++i) {
        dsa::cp_async_wait_group<S - 2>();
        dsa::fence_async_smem();
        __syncthreads();
        issue(i + S - 1);
        const int cb = meta_s[st * 4 + 0], lp = meta_s[st * 4 + 1];
        const bool page_ok = meta_s[st * 4 + 2] != 0;
        if (cb != loaded_b) {
            const uint8_t *src = p.q8 + (int64_t)cb * next_n * H * kRow;
            const int valid = next_n * H;
            for (int id = tid; id < N * 8; id += kThreads) {
                const int r = id >> 3, c = id & 7;
                uint4 v = make_uint4(0, 0, 0, 0);
                if (r < valid) v = *reinterpret_cast<const uint4 *>(src + (int64_t)r * kRow + c * 16);
                *reinterpret_cast<uint4 *>(q_s + dsa::sw128_offset(r, c)) = v;
            }
            for (int i2 = tid; i2 < N; i2 += kThreads) w_s[i2] = i2 < valid ? p.w[(int64_t)cb * next_n * H + i2] : 0.f;
            len = p.context_lens[cb];
            out_b = p.out + (int64_t)cb * next_n * p.out_stride;
            dsa::fence_async_smem();
            __syncthreads();
            loaded_b = cb;
        }
        float s0[NQ], s1[NQ];
        tile_mma<N>(k_u32 + st * kTile, dsa::smem_u32(q_s), acc);
        head_reduce<H, NQ>(acc, w_s, lane, s0, s1);
        const float ks0 = ksc_s[st * kKeys + r0], ks1 = ksc_s[st * kKeys + r0 + 8];
#pragma unroll
        for (int idx = 0; idx < 2 * NQ; ++idx) {
            if ((idx & 3) != (lane & 3)) continue;
            const int j = idx >> 1, rr = idx & 1;
            const int key = lp * kKeys + r0 + 8 * rr;
            if (j >= next_n || key >= p.max_ctx) continue;
            const int64_t end = (int64_t)len - next_n + j + 1;
            float v = -INFINITY;
            if (page_ok && key < end) v = (rr ? s1[j] : s0[j]) * (rr ? ks1 : ks0);
            out_b[(int64_t)j * p.out_stride + key] = v;
        }
        st = st + 1 == S ? 0 : st + 1;
    }
    dsa::cp_async_wait_group<0>();

    const int64_t rows = (int64_t)batch * next_n;
    for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
        const int b = (int)(row / next_n);
        const int64_t pages = row == blockIdx.x
                                  ? tail_row0_pages
                                  : min(max((int64_t)p.plan[b + 1] - p.plan[b], (int64_t)0), (int64_t)cap);
        const int64_t start = pages * kKeys;
        float *o = p.out + row * p.out_stride;
        for (int64_t c = start + tid; c < p.max_ctx; c += kThreads) o[c] = -INFINITY;
    }
}

}  // namespace

#define DSA_PREFILL(H)                                                                              \
    extern "C" __global__ void __launch_bounds__(kThreads, PrefillCfg<H, kPrefillGroups>::kCtas)    \
        dsa_indexer_logits_prefill_h##H(const __grid_constant__ DsaIndexerPrefillParams p) {        \
        prefill_body<H, kPrefillGroups>(p);                                                         \
    }
DSA_PREFILL(16)
DSA_PREFILL(32)
DSA_PREFILL(64)

// Each decode kernel declares the CTAs per SM the host launches for it (shared memory
// allows them, at most DSA_INDEXER_DECODE_MAX_CTAS_PER_SM), so its registers fit them too.
#define DSA_DECODE(H, NQ)                                                                           \
    extern "C" __global__ void __launch_bounds__(kThreads, DecodeCfg<H, NQ>::kCtasPerSm)            \
        dsa_indexer_logits_decode_h##H##_q##NQ(const __grid_constant__ DsaIndexerDecodeParams p) {  \
        decode_body<H, NQ>(p);                                                                      \
    }
DSA_INDEXER_DECODE_VARIANTS(DSA_DECODE)

// The per-head masks the host reads must name exactly the kernels built above.
#define DSA_DECODE_BIT(H, NQ) | (H == kMaskHeads ? 1 << (NQ - 1) : 0)
template <int kMaskHeads>
constexpr int decode_mask() {
    return 0 DSA_INDEXER_DECODE_VARIANTS(DSA_DECODE_BIT);
}
static_assert(decode_mask<16>() == DSA_INDEXER_DECODE_QUERIES_H16 && decode_mask<32>() == DSA_INDEXER_DECODE_QUERIES_H32 &&
                  decode_mask<64>() == DSA_INDEXER_DECODE_QUERIES_H64,
              "DSA_INDEXER_DECODE_QUERIES_H* disagree with DSA_INDEXER_DECODE_VARIANTS");

// Plan: plan[0] = 0, plan[b + 1] = plan[b] + pages of batch b. One CTA of 1024 threads,
// a block scan per 1024 batches.
extern "C" __global__ void __launch_bounds__(1024) dsa_indexer_decode_plan(const DsaIndexerPlanParams p) {
    __shared__ int warp_sums[32];
    __shared__ int carry;
    const int tid = threadIdx.x;
    const int cap_ctx = (p.max_ctx + kKeys - 1) / kKeys;
    const int cap = min(p.max_pages, cap_ctx);
    if (tid == 0) {
        carry = 0;
        p.plan[0] = 0;
    }
    __syncthreads();
    for (int base = 0; base < p.batch; base += 1024) {
        const int b = base + tid;
        int v = 0;
        if (b < p.batch) {
            const int64_t len = max(p.context_lens[b], 0);
            v = (int)min((len + kKeys - 1) / kKeys, (int64_t)cap);
        }
        const int incl = dsa::block_inclusive_scan(v, warp_sums) + carry;
        if (b < p.batch) p.plan[b + 1] = incl;
        __syncthreads();
        if (tid == 1023) carry = incl;
        __syncthreads();
    }
}
