// Top-k selection over fp32 rows: a radix (histogram) select, not a sort.
//
// One CTA of 1024 threads per row. Every value maps to an order-preserving 32-bit key;
// appending the complemented index (relative to the range start, `nbits` wide) gives a
// composite key that is unique per element and orders "larger value, then smaller
// index" first, so the exact tie rule falls out of the selection itself.
//
// Fast path, one read of the row: a stratified sample (2048 values) gives a key t_lo
// with about 2k of the row at or above it; one pass over the row appends every valid
// element with key >= t_lo to a shared-memory candidate buffer (rows that fit the buffer
// take every valid element, no sample). If at least k candidates came (or the whole
// row did) and they fit, the top k are among them and are selected there.
//
// The selection is a radix select in 11-bit digits of the composite key: a
// shared-memory histogram of the digit among the elements matching the prefix so far,
// the bin holding the k-th largest, descend into it, until a bin is taken whole. Digits
// start right below the bits all candidates share (from their min and max), so the
// first histogram spreads instead of piling onto one bin.
//
// Full path, when the sample misled (too few or too many candidates, as for rows made
// of a handful of distinct values): the same radix select with the first digit counted
// over the row in global memory; once the threshold bin fits, one more pass moves it to
// the candidate buffer (higher bins go straight to the output) and the rest runs there.
// Until then each level is another pass over the row.
//
// Global passes read 16-byte vectors, four per thread in flight. The candidate pass
// compares floats against the threshold, counts per thread, and takes one warp scan and
// one shared atomic per warp per step; candidates are stored raw (column, float bits) and
// become composite keys afterwards. Other appends to the candidate and output buffers
// take one shared atomic per warp and element (ballot + popc).
#include "block.cuh"
#include "topk_params.h"

#include <stdint.h>

namespace {

constexpr int kThreads = DSA_TOPK_THREADS;
constexpr int kWarps = kThreads / 32;
constexpr int kBits = 11;
constexpr int kBins = 1 << kBits;
constexpr int kMaxK = DSA_TOPK_MAX_K;
constexpr int kCandCap = DSA_TOPK_CAND_CAP;
// The sample: 64 runs of 32 consecutive values (one 128-byte line each) spread evenly
// over the row. With r ~ 2k * 2048 / n sampled keys above t_lo, fewer than k or more
// than DSA_TOPK_CAND_CAP candidates are many standard deviations away for any k and n.
constexpr int kRuns = 64, kRun = 32, kSamples = kRuns * kRun, kSamplesPerThread = kSamples / kThreads;
static_assert(kBins == 2 * kThreads, "find_bin gives each thread two bins");
static_assert(kCandCap >= kSamples, "sampled rows must be longer than one sample");

typedef unsigned long long u64;

// Phase timestamps of CTA 0 for tuning builds (-DDSA_TOPK_PROBES); nothing otherwise.
#ifdef DSA_TOPK_PROBES
__device__ u64 dsa_topk_probe[16];
#define TOPK_PROBE(i, v)                                                           \
    do {                                                                           \
        if (blockIdx.x == 0 && threadIdx.x == 0) {                                 \
            u64 t_;                                                                \
            asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t_));                 \
            dsa_topk_probe[i] = t_;                                                \
            dsa_topk_probe[8 + (i)] = (u64)(v);                                    \
        }                                                                          \
    } while (0)
#else
#define TOPK_PROBE(i, v) \
    do {                 \
    } while (0)
#endif
// Tuning knobs of the candidate pass for scripts/topk_probe.sh; the defaults measured
// fastest on the H100 (see BENCHMARKS.md, Top-k). PRELOAD: issue the first step's loads
// before the sample (more registers live across it: spills, slower). PIPELINE: load
// step i+1 before filtering step i.
#ifndef DSA_TOPK_PRELOAD
#define DSA_TOPK_PRELOAD 0
#endif
#ifndef DSA_TOPK_PIPELINE
#define DSA_TOPK_PIPELINE 0
#endif
// Float4 loads per thread per step in the passes that touch every element.
#ifndef DSA_TOPK_UNROLL
#define DSA_TOPK_UNROLL 4
#endif
constexpr int kMainUnroll = DSA_TOPK_UNROLL;

struct Smem {
    u64 out[kMaxK];      // composite keys of the selected elements
    u64 cand[kCandCap];  // composite keys of the candidates
    uint32_t hist[kBins];
    uint32_t warp_sums[kWarps];
    u64 part_min[kWarps], part_max[kWarps];
    uint32_t total;
    uint32_t sel_bin, sel_above, sel_count;
    int n_out, n_cand;
};
static_assert(sizeof(Smem) <= DSA_TOPK_SMEM_BYTES, "DSA_TOPK_SMEM_BYTES too small");

// Order-preserving key: a > b as floats iff key(a) > key(b). -0 is folded onto +0 so the
// two compare equal (tie broken by index), as they do as floats.
__device__ __forceinline__ uint32_t ord_key(float x) {
    uint32_t b = __float_as_uint(x);
    b = (b == 0x80000000u) ? 0u : b;
    return b ^ ((uint32_t)((int32_t)b >> 31) | 0x80000000u);
}

// key(-inf) = 0x007fffff, key(+inf) = 0xff800000; NaNs map below the first or above the
// second, so this one range test drops NaN and -inf and keeps +inf.
__device__ __forceinline__ bool key_valid(uint32_t key) {
    return key - 0x00800000u <= 0xff800000u - 0x00800000u;
}

// Calls f(value, column) for every column of [s, e): a scalar head up to 16-byte
// alignment, then float4 vectors, kUnroll per thread in flight, then a scalar tail.
template <int kUnroll = 4, class F>
__device__ __forceinline__ void for_each_in_row(const float *__restrict__ row, int s, int e, F &&f) {
    const int tid = threadIdx.x;
    const int n = e - s;
    const int misalign = (int)((reinterpret_cast<uintptr_t>(row + s) >> 2) & 3);
    const int head = min((4 - misalign) & 3, n);
    const int a = s + head;
    const int nvec = (e - a) >> 2;
    const int tail0 = a + 4 * nvec;
    if (tid < head) f(__ldg(row + s + tid), s + tid);
    if (tid < e - tail0) f(__ldg(row + tail0 + tid), tail0 + tid);
    const float4 *v = reinterpret_cast<const float4 *>(row + a);
    constexpr int kPerIter = kUnroll * kThreads;
    const int iters = nvec / kPerIter;
    for (int it = 0; it < iters; ++it) {
        const int base = it * kPerIter + tid;
        float4 x[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) x[u] = __ldg(v + base + u * kThreads);
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            const int c = a + 4 * (base + u * kThreads);
            f(x[u].x, c);
            f(x[u].y, c + 1);
            f(x[u].z, c + 2);
            f(x[u].w, c + 3);
        }
    }
    for (int i = iters * kPerIter + tid; i < nvec; i += kThreads) {
        const float4 x = __ldg(v + i);
        const int c = a + 4 * i;
        f(x.x, c);
        f(x.y, c + 1);
        f(x.z, c + 2);
        f(x.w, c + 3);
    }
}

// The candidate pass of the fast path. An element is a candidate iff x >= tf as floats
// (tf from the sampled key; NaN and -inf never pass, see main). Candidates are stored raw,
// (column << 32) | float bits, and turned into composite keys afterwards (to_composite):
// the store is then a few predicated instructions per element, since every element pays
// for them whether or not it is a candidate.
__device__ __forceinline__ u64 raw_cand(float x, int col) {
    return ((u64)(uint32_t)col << 32) | __float_as_uint(x);
}

// Loads step `it` of kU float4 vectors per thread; vectors past nvec read as NaN, which
// no comparison takes.
template <int kU>
__device__ __forceinline__ void load_step(const float4 *__restrict__ v, int nvec, int it, float4 (&x)[kU]) {
    const int base = it * kU * kThreads + threadIdx.x;
    if ((it + 1) * kU * kThreads <= nvec) {
#pragma unroll
        for (int u = 0; u < kU; ++u) x[u] = __ldg(v + base + u * kThreads);
    } else {
        const float q = __int_as_float(0x7fffffff);
#pragma unroll
        for (int u = 0; u < kU; ++u) {
            const int i = base + u * kThreads;
            x[u] = i < nvec ? __ldg(v + i) : make_float4(q, q, q, q);
        }
    }
}

// Appends the step's candidates: per-thread counts, one warp scan and one shared atomic
// per warp, then each thread writes its own candidates at consecutive slots. The
// counter keeps counting past the capacity. Column of x[u] component j is
// c0 + 4 * u * kThreads + j.
// Dense rows (every valid element a candidate, the unsampled path): the per-thread
// slots above would put a warp's stores 32 elements apart, all in one bank, so here each
// element gets its slot from a warp ballot instead (lanes in order, consecutive slots).
template <int kU>
__device__ __forceinline__ void filter_step_dense(Smem &sm, const float4 (&x)[kU], float tf, int c0) {
    int total = 0;
#pragma unroll
    for (int u = 0; u < kU; ++u)
        total += __popc(__ballot_sync(0xffffffffu, x[u].x >= tf)) + __popc(__ballot_sync(0xffffffffu, x[u].y >= tf)) +
                 __popc(__ballot_sync(0xffffffffu, x[u].z >= tf)) + __popc(__ballot_sync(0xffffffffu, x[u].w >= tf));
    if (total == 0) return;
    const int lane = threadIdx.x & 31;
    const unsigned lt = (1u << lane) - 1u;
    int base = 0;
    if (lane == 0) base = atomicAdd(&sm.n_cand, total);
    base = __shfl_sync(0xffffffffu, base, 0);
    const bool fits = base + total <= kCandCap;
    auto put = [&](float y, int c) {
        const bool pred = y >= tf;
        const unsigned b = __ballot_sync(0xffffffffu, pred);
        const int j = base + __popc(b & lt);
        if (pred && (fits || j < kCandCap)) sm.cand[j] = raw_cand(y, c);
        base += __popc(b);
    };
#pragma unroll
    for (int u = 0; u < kU; ++u) {
        const int c = c0 + 4 * u * kThreads;
        put(x[u].x, c);
        put(x[u].y, c + 1);
        put(x[u].z, c + 2);
        put(x[u].w, c + 3);
    }
}

template <int kU>
__device__ __forceinline__ void filter_step(Smem &sm, const float4 (&x)[kU], float tf, int c0) {
    int cnt = 0;
#pragma unroll
    for (int u = 0; u < kU; ++u)
        cnt += (x[u].x >= tf) + (x[u].y >= tf) + (x[u].z >= tf) + (x[u].w >= tf);
    const int lane = threadIdx.x & 31;
    int incl = cnt;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const int t = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += t;
    }
    const int total = __shfl_sync(0xffffffffu, incl, 31);
    if (total == 0) return;
    int base = 0;
    if (lane == 31) base = atomicAdd(&sm.n_cand, total);
    base = __shfl_sync(0xffffffffu, base, 31);
    int pos = base + incl - cnt;
    if (base + total <= kCandCap) {
        u64 *dst = sm.cand + pos;
#pragma unroll
        for (int u = 0; u < kU; ++u) {
            const int c = c0 + 4 * u * kThreads;
            if (x[u].x >= tf) *dst++ = raw_cand(x[u].x, c);
            if (x[u].y >= tf) *dst++ = raw_cand(x[u].y, c + 1);
            if (x[u].z >= tf) *dst++ = raw_cand(x[u].z, c + 2);
            if (x[u].w >= tf) *dst++ = raw_cand(x[u].w, c + 3);
        }
    } else {
        auto put = [&](float y, int c) {
            if (y >= tf) {
                if (pos < kCandCap) sm.cand[pos] = raw_cand(y, c);
                ++pos;
            }
        };
#pragma unroll
        for (int u = 0; u < kU; ++u) {
            const int c = c0 + 4 * u * kThreads;
            put(x[u].x, c);
            put(x[u].y, c + 1);
            put(x[u].z, c + 2);
            put(x[u].w, c + 3);
        }
    }
}

// Finds the bin holding the `needed`-th largest element of the histogram: the one with
// (count of higher bins) < needed <= (that count + its own). Thread t owns bins
// kBins-1-2t and kBins-2-2t, so thread order is descending bin order and an inclusive
// scan over threads gives the counts above. Also stores the histogram total.
__device__ __forceinline__ void find_bin(Smem &sm, uint32_t needed) {
    const int t = threadIdx.x;
    const int b0 = kBins - 1 - 2 * t, b1 = b0 - 1;
    const uint32_t h0 = sm.hist[b0], h1 = sm.hist[b1];
    const uint32_t incl = dsa::block_inclusive_scan(h0 + h1, sm.warp_sums);
    const uint32_t above0 = incl - h0 - h1, above1 = above0 + h0;
    if (above0 < needed && needed <= above1) {
        sm.sel_bin = b0;
        sm.sel_above = above0;
        sm.sel_count = h0;
    }
    if (above1 < needed && needed <= incl) {
        sm.sel_bin = b1;
        sm.sel_above = above1;
        sm.sel_count = h1;
    }
    if (t == kThreads - 1) sm.total = incl;
    __syncthreads();
}

__device__ __forceinline__ void warp_min_max(u64 &mn, u64 &mx) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        mn = min(mn, __shfl_xor_sync(0xffffffffu, mn, o));
        mx = max(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    }
}

// Minimum and maximum over the CTA (every thread gets both): warp partials in shared
// memory, then every warp reduces the 32 partials itself (no second barrier round).
__device__ __forceinline__ void block_min_max(Smem &sm, u64 &mn, u64 &mx) {
    static_assert(kWarps == 32, "one partial per lane");
    warp_min_max(mn, mx);
    const int lane = threadIdx.x & 31;
    if (lane == 0) {
        sm.part_min[threadIdx.x >> 5] = mn;
        sm.part_max[threadIdx.x >> 5] = mx;
    }
    __syncthreads();
    mn = sm.part_min[lane];
    mx = sm.part_max[lane];
    warp_min_max(mn, mx);
    __syncthreads();
}

// Number of low bits in which values within [mn, mx] can differ (mn < mx).
__device__ __forceinline__ int varying_bits(u64 mn, u64 mx) { return 64 - __clzll(mn ^ mx); }

__device__ __forceinline__ void clear_hist(Smem &sm) {
    for (int i = threadIdx.x; i < kBins; i += kThreads) sm.hist[i] = 0;
}

// Appends make() of the lanes with `pred` to buf (counter *n, capacity CAP) with one
// shared atomic per warp: per-lane atomics on one counter would serialize. Lanes that
// diverged take part with whichever lanes run beside them. The counter keeps counting
// past the capacity.
template <int CAP, class C>
__device__ __forceinline__ void push_warp(u64 *buf, int *n, bool pred, C &&make) {
    const unsigned active = __activemask();
    const unsigned ballot = __ballot_sync(active, pred);
    if (!pred) return;
    const int lane = threadIdx.x & 31;
    const int leader = __ffs(ballot) - 1;
    int base = 0;
    if (lane == leader) base = atomicAdd(n, __popc(ballot));
    base = __shfl_sync(ballot, base, leader);
    const int j = base + __popc(ballot & ((1u << lane) - 1u));
    if (j < CAP) buf[j] = make();
}

template <class C>
__device__ __forceinline__ void push_cand(Smem &sm, bool pred, C &&make) {
    push_warp<kCandCap>(sm.cand, &sm.n_cand, pred, make);
}

template <class C>
__device__ __forceinline__ void push_out(Smem &sm, bool pred, C &&make) {
    push_warp<kMaxK>(sm.out, &sm.n_out, pred, make);
}

// A key t such that about 2k of the row's valid keys are >= t: the rank-r key of a
// stratified sample, found by a radix select over the sample held in registers (r
// scaled from 2k, plus a margin). Only the speed depends on the estimate: the caller
// checks the candidate count. Returns 0xffffffff (no candidates) when the sample holds
// no valid value. Needs n >= kSamples.
__device__ uint32_t sample_threshold(Smem &sm, const float *__restrict__ row, int s, int n, int k) {
    const int gap = n / kRuns;
    uint32_t keys[kSamplesPerThread];
    u64 mn = ~0ull, mx = 0;
#pragma unroll
    for (int j = 0; j < kSamplesPerThread; ++j) {
        const int q = threadIdx.x + j * kThreads;
        keys[j] = ord_key(__ldg(row + s + (q / kRun) * gap + (q % kRun)));
        if (key_valid(keys[j])) {
            mn = min(mn, (u64)keys[j]);
            mx = max(mx, (u64)keys[j]);
        } else {
            keys[j] = 0;  // below every valid key: never counted
        }
    }
    block_min_max(sm, mn, mx);
    if (mx < mn) return 0xffffffffu;
    if (mx == mn) return (uint32_t)mn;
    uint32_t r = (uint32_t)((int64_t)2 * k * kSamples / n) + 16;
    int top = varying_bits(mn, mx);
    u64 prefix = (mx >> top) << top;
    for (bool first = true;; first = false) {
        const int shift = max(top - kBits, 0);
        const u64 dmask = (1ull << (top - shift)) - 1;
        const u64 pk = prefix >> top;
        clear_hist(sm);
        __syncthreads();
#pragma unroll
        for (int j = 0; j < kSamplesPerThread; ++j)
            if (keys[j] != 0 && ((u64)keys[j] >> top) == pk) atomicAdd(&sm.hist[((u64)keys[j] >> shift) & dmask], 1u);
        __syncthreads();
        if (first) {
            find_bin(sm, r);
            r = min(r, sm.total);  // fewer valid samples than the rank: take the smallest
        }
        find_bin(sm, r);
        prefix |= (u64)sm.sel_bin << shift;
        r -= sm.sel_above;
        const bool done = sm.sel_count == r || shift == 0;
        __syncthreads();
        if (done) return (uint32_t)prefix;
        top = shift;
    }
}

// Descending bitonic sort of out[0, m), m a power of two; padding entries are 0, below
// every real composite key (a valid key is at least 0x00800000). Pair i is always
// handled by thread i % kThreads, so the pairs of a stage with stride <= 32 stay inside
// one 64-element block that one warp owns: between two such stages a warp barrier is
// enough.
__device__ void sort_out_desc(Smem &sm, int m) {
    for (int size = 2; size <= m; size <<= 1) {
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            for (int i = threadIdx.x; i < (m >> 1); i += kThreads) {
                const int lo = 2 * i - (i & (stride - 1));
                const int hi = lo + stride;
                const bool desc = (lo & size) == 0;
                const u64 x = sm.out[lo], y = sm.out[hi];
                if ((x < y) == desc) {
                    sm.out[lo] = y;
                    sm.out[hi] = x;
                }
            }
            const int next = stride > 1 ? stride >> 1 : size;  // next stage's stride
            if (stride >= 64 || next >= 64 || (stride == 1 && size == m)) __syncthreads();
            else __syncwarp();
        }
    }
}

// Cluster primitives for the split candidate pass (the CTAs of one row form a cluster).
__device__ __forceinline__ void cluster_sync() {
    asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;" ::: "memory");
}
// The address of this CTA's shared variable `p` in the shared memory of cluster CTA `rank`.
__device__ __forceinline__ uint32_t peer_smem(const void *p, uint32_t rank) {
    uint32_t out;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(out) : "r"((uint32_t)__cvta_generic_to_shared(p)), "r"(rank));
    return out;
}
__device__ __forceinline__ int ld_peer_s32(uint32_t addr) {
    int v;
    asm volatile("ld.shared::cluster.s32 %0, [%1];" : "=r"(v) : "r"(addr) : "memory");
    return v;
}
__device__ __forceinline__ u64 ld_peer_u64(uint32_t addr) {
    u64 v;
    asm volatile("ld.shared::cluster.u64 %0, [%1];" : "=l"(v) : "r"(addr) : "memory");
    return v;
}

}  // namespace

extern __shared__ __align__(16) unsigned char smem_raw[];

// One row per cluster of kSplit CTAs (kSplit = 1: one CTA per row, no cluster). With
// kSplit > 1, sampled rows split their candidate pass: every CTA of the cluster derives
// the same threshold from the same sample, filters its own contiguous share of the row's
// vector steps into its own candidate buffer, and CTA 0 gathers the others' candidates
// through distributed shared memory and selects among them as a lone CTA would; when
// the gathered count misses (fewer than k, or more than the buffer holds) CTA 0 runs the
// full select over the whole row alone. Unsampled rows (at most DSA_TOPK_CAND_CAP keys,
// or at most k) are CTA 0's alone.
template <int kSplit>
__device__ __forceinline__ void topk_body(const DsaTopkParams &p) {
    Smem &sm = *reinterpret_cast<Smem *>(smem_raw);
    const int r = blockIdx.x / kSplit;
    const int rank = kSplit > 1 ? (int)(blockIdx.x % kSplit) : 0;
    const int tid = threadIdx.x;
    const float *__restrict__ row = p.logits + (int64_t)r * p.row_stride;
    int s = p.starts ? p.starts[r] : 0;
    int e;
    if (p.seq_lens) {
        // 64-bit: the lengths are device data, any value must clamp, not wrap.
        const int64_t len = (int64_t)p.seq_lens[r / p.next_n] - (p.next_n - 1 - r % p.next_n);
        e = len <= 0 ? 0 : (len >= p.cols ? p.cols : (int)len);
    } else {
        e = p.ends[r];
    }
    s = min(max(s, 0), p.cols);
    e = max(min(e, p.cols), s);
    const int n = e - s;
    const int k = p.k;
    // The index part of the composite key: just wide enough for n distinct columns.
    const int nbits = n > 1 ? 32 - __clz(n - 1) : 1;
    const u64 lo_mask = (1ull << nbits) - 1;
    const int total_bits = 32 + nbits;
    auto composite = [&](uint32_t key, int col) -> u64 {
        return ((u64)key << nbits) | (lo_mask - (u64)(uint32_t)(col - s));
    };

    if (tid == 0) {
        sm.n_out = 0;
        sm.n_cand = 0;
    }
    clear_hist(sm);
    __syncthreads();
    TOPK_PROBE(0, n);

    // Selection rule at the end: composite C is taken iff (C >> thr_shift) >= (thr >>
    // thr_shift). Shift 63 with thr 0 takes every valid element (composites are < 2^63).
    u64 thr = 0;
    int thr_shift = 63;
    bool in_smem = false;

    // Uniform over the cluster: every CTA of a row takes the same branches up to the
    // cluster barriers below.
    const bool split = kSplit > 1 && n > k && n > kCandCap;
    if (kSplit > 1 && !split && rank != 0) return;

    if (n > k) {
        // Rows that fit the candidate buffer skip the sample: on 4096 x 8K keys sampling
        // them cost more (451 us) than refining every valid key (337 us).
        const bool sampled = n > kCandCap;
        // Row split as in for_each_in_row: scalar head to 16-byte alignment, float4
        // vectors in steps of kMainUnroll per thread, scalar tail.
        const int head = min((4 - (int)((reinterpret_cast<uintptr_t>(row + s) >> 2) & 3)) & 3, n);
        const int a = s + head;
        const int nvec = (e - a) >> 2;
        const int tail0 = a + 4 * nvec;
        const float4 *v = reinterpret_cast<const float4 *>(row + a);
        constexpr int kU = kMainUnroll;
        const int all_steps = (nvec + kU * kThreads - 1) / (kU * kThreads);
        // This CTA's steps [step0, step0 + steps) of the row's; the scalar head and tail
        // are CTA 0's.
        const int step0 = split ? (int)((int64_t)all_steps * rank / kSplit) : 0;
        const int steps = split ? (int)((int64_t)all_steps * (rank + 1) / kSplit) - step0 : all_steps;
        const bool ends = rank == 0;
        float4 x[kU];
        if (DSA_TOPK_PRELOAD && steps > 0) load_step(v, nvec, step0, x);
        const uint32_t t_lo = sampled ? sample_threshold(sm, row, s, n, k) : 0u;
        if (!DSA_TOPK_PRELOAD && steps > 0) load_step(v, nvec, step0, x);
        TOPK_PROBE(1, t_lo);
        // The float at the threshold key: for non-NaN x, x >= tf iff key(x) >= lo_key
        // (the key is order-preserving, -0 == +0 both ways); lo_key >= key(-FLT_MAX)
        // keeps -inf out, and NaN fails every comparison. t_lo = 0xffffffff (no
        // valid sample) gives tf = NaN: no candidates, the full select runs.
        const uint32_t lo_key = max(t_lo, 0x00800000u);
        const float tf = __uint_as_float((lo_key & 0x80000000u) ? (lo_key ^ 0x80000000u) : ~lo_key);
        if (ends && tid < head) {
            const float y = __ldg(row + s + tid);
            push_cand(sm, y >= tf, [&] { return raw_cand(y, s + tid); });
        }
        if (ends && tid < e - tail0) {
            const float y = __ldg(row + tail0 + tid);
            push_cand(sm, y >= tf, [&] { return raw_cand(y, tail0 + tid); });
        }
        for (int it = step0; it < step0 + steps; ++it) {
            const int c0 = a + 4 * (it * kU * kThreads + tid);
            if (DSA_TOPK_PIPELINE) {
                float4 y[kU];
                if (it + 1 < step0 + steps) load_step(v, nvec, it + 1, y);
                if (sampled) filter_step(sm, x, tf, c0);
                else filter_step_dense(sm, x, tf, c0);
#pragma unroll
                for (int u = 0; u < kU; ++u) x[u] = y[u];
            } else {
                if (sampled) filter_step(sm, x, tf, c0);
                else filter_step_dense(sm, x, tf, c0);
                if (it + 1 < step0 + steps) load_step(v, nvec, it + 1, x);
            }
        }
        __syncthreads();
        int nc = sm.n_cand;
        if constexpr (kSplit > 1) {
            if (split) {
                // Every CTA's count is final at the first cluster barrier; CTA 0 appends
                // the others' candidates after its own when they all fit, and the second
                // barrier keeps the others' shared memory alive until it has read them.
                cluster_sync();
                if (rank == 0) {
                    int counts[kSplit];
                    int all = nc;
                    bool lost = nc > kCandCap;
#pragma unroll
                    for (int q = 1; q < kSplit; ++q) {
                        counts[q] = ld_peer_s32(peer_smem(&sm.n_cand, q));
                        lost |= counts[q] > kCandCap;
                        all += counts[q];
                    }
                    if (lost || all > kCandCap) {
                        nc = kCandCap + 1;  // the full select
                    } else if (all >= k) {
                        int at = nc;
#pragma unroll
                        for (int q = 1; q < kSplit; ++q) {
                            const uint32_t src = peer_smem(sm.cand, q);
                            for (int j = tid; j < counts[q]; j += kThreads) sm.cand[at + j] = ld_peer_u64(src + 8 * j);
                            at += counts[q];
                        }
                        nc = all;
                        if (tid == 0) sm.n_cand = all;
                    } else {
                        nc = all;  // fewer than k: the full select
                    }
                }
                cluster_sync();
                if (rank != 0) return;
            }
        }
        __syncthreads();
        TOPK_PROBE(2, nc);
        uint32_t needed = (uint32_t)k;
        bool refine;
        // Radix state: elements with (C >> top) == (prefix >> top) are still open; the
        // current digit is bits [shift, top).
        u64 prefix = 0;
        int top = 0, shift = 0;
        if (nc <= kCandCap && (nc >= k || !sampled)) {
            in_smem = true;
            refine = nc > k;
            // Raw candidates to composite keys; each thread later reads back only the
            // slots it wrote here until a barrier has passed.
            u64 mn = ~0ull, mx = 0;
            for (int j = tid; j < nc; j += kThreads) {
                const u64 rc = sm.cand[j];
                const u64 c = composite(ord_key(__uint_as_float((uint32_t)rc)), (int)(rc >> 32));
                sm.cand[j] = c;
                mn = min(mn, c);
                mx = max(mx, c);
            }
            if (refine) {
                clear_hist(sm);
                block_min_max(sm, mn, mx);
                top = varying_bits(mn, mx);
                shift = max(top - kBits, 0);
                prefix = (mx >> top) << top;
                const u64 dmask = (1ull << (top - shift)) - 1;
                for (int j = tid; j < nc; j += kThreads) atomicAdd(&sm.hist[(sm.cand[j] >> shift) & dmask], 1u);
                __syncthreads();
                find_bin(sm, needed);
            }
        } else {
            // Full select: the first digit is counted over the row in global memory.
            if (tid == 0) sm.n_cand = 0;
            clear_hist(sm);
            __syncthreads();
            for_each_in_row<kMainUnroll>(row, s, e, [&](float x, int) {
                const uint32_t key = ord_key(x);
                if (key_valid(key)) atomicAdd(&sm.hist[key >> 21], 1u);
            });
            __syncthreads();
            find_bin(sm, needed);
            refine = sm.total > needed;
            top = total_bits;
            shift = total_bits - kBits;
        }
        if (refine) {
            for (;;) {
                const uint32_t bin = sm.sel_bin, above = sm.sel_above, count = sm.sel_count;
                prefix |= (u64)bin << shift;
                needed -= above;
                if (count == needed) {
                    thr = prefix;
                    thr_shift = shift;
                    break;
                }
                if (!in_smem && count <= (uint32_t)kCandCap) {
                    // Higher bins go to the output, the threshold bin to the candidates.
                    if (shift >= nbits) {
                        const int kshift = shift - nbits;
                        const uint32_t pk = (uint32_t)(prefix >> shift);
                        for_each_in_row(row, s, e, [&](float x, int col) {
                            const uint32_t key = ord_key(x);
                            if (!key_valid(key)) return;
                            const uint32_t hi = key >> kshift;
                            push_out(sm, hi > pk, [&] { return composite(key, col); });
                            push_cand(sm, hi == pk, [&] { return composite(key, col); });
                        });
                    } else {
                        const u64 pk = prefix >> shift;
                        for_each_in_row(row, s, e, [&](float x, int col) {
                            const uint32_t key = ord_key(x);
                            if (!key_valid(key)) return;
                            const u64 c = composite(key, col);
                            const u64 hi = c >> shift;
                            push_out(sm, hi > pk, [&] { return c; });
                            push_cand(sm, hi == pk, [&] { return c; });
                        });
                    }
                    in_smem = true;
                }
                // Next digit, among the elements matching the prefix down to `shift`.
                top = shift;
                shift = max(top - kBits, 0);
                const u64 dmask = (1ull << (top - shift)) - 1;
                const u64 pk = prefix >> top;
                __syncthreads();
                clear_hist(sm);
                __syncthreads();
                if (in_smem) {
                    const int ncand = sm.n_cand;
                    for (int j = tid; j < ncand; j += kThreads) {
                        const u64 c = sm.cand[j];
                        if ((c >> top) == pk) atomicAdd(&sm.hist[(c >> shift) & dmask], 1u);
                    }
                } else {
                    for_each_in_row(row, s, e, [&](float x, int col) {
                        const uint32_t key = ord_key(x);
                        if (!key_valid(key)) return;
                        const u64 c = composite(key, col);
                        if ((c >> top) == pk) atomicAdd(&sm.hist[(c >> shift) & dmask], 1u);
                    });
                }
                __syncthreads();
                find_bin(sm, needed);
            }
        }
    }

    TOPK_PROBE(3, in_smem);
    // Final collection of the selected elements into sm.out.
    const u64 tk = thr >> thr_shift;
    if (in_smem) {
        const int nc = sm.n_cand;
        for (int j = tid; j < nc; j += kThreads) {
            const u64 c = sm.cand[j];
            push_out(sm, (c >> thr_shift) >= tk, [&] { return c; });
        }
    } else if (thr_shift >= nbits) {
        const int kshift = min(thr_shift - nbits, 31);
        const uint32_t pk = (uint32_t)tk;
        for_each_in_row(row, s, e, [&](float x, int col) {
            const uint32_t key = ord_key(x);
            push_out(sm, key_valid(key) && (key >> kshift) >= pk, [&] { return composite(key, col); });
        });
    } else {
        for_each_in_row(row, s, e, [&](float x, int col) {
            const uint32_t key = ord_key(x);
            const u64 c = composite(key, col);
            push_out(sm, key_valid(key) && (c >> thr_shift) >= tk, [&] { return c; });
        });
    }
    __syncthreads();
    const int count = min(sm.n_out, k);
    TOPK_PROBE(4, count);

    if (p.sorted && count > 1) {
        int m = 1;
        while (m < count) m <<= 1;
        for (int j = count + tid; j < m; j += kThreads) sm.out[j] = 0;
        __syncthreads();
        sort_out_desc(sm, m);
    }
    TOPK_PROBE(5, 0);

    const int off = p.offsets ? p.offsets[r] : 0;
    const int32_t *bt = p.block_table ? p.block_table + (int64_t)(r / p.next_n) * p.max_pages : nullptr;
    int32_t *out = p.out + (int64_t)r * k;
    for (int j = tid; j < k; j += kThreads) {
        int v = -1;
        if (j < count) {
            const u64 c = sm.out[j];
            // 64-bit: offsets and table entries are caller data and may hold any value.
            const int64_t col = (int64_t)s + (int64_t)(lo_mask - (c & lo_mask)) + off;
            v = (int)col;
            if (bt) {
                const int64_t page = col >> 6;
                const int entry = (col >= 0 && page < p.max_pages) ? bt[page] : -1;
                // An entry whose slot would not fit an int32 is as unusable as a negative one.
                v = (entry >= 0 && entry <= INT32_MAX / DSA_PAGE_SIZE - 1)
                        ? entry * DSA_PAGE_SIZE + (int)(col & (DSA_PAGE_SIZE - 1)) : -1;
            }
        }
        out[j] = v;
    }
    TOPK_PROBE(6, 0);
}

extern "C" __global__ void __launch_bounds__(kThreads, 1) dsa_topk_f32(const DsaTopkParams p) { topk_body<1>(p); }

#define DSA_TOPK_SPLIT(C)                                                                              \
    extern "C" __global__ void __cluster_dims__(C, 1, 1) __launch_bounds__(kThreads, 1)               \
        dsa_topk_f32_split##C(const DsaTopkParams p) {                                                 \
        topk_body<C>(p);                                                                               \
    }
DSA_TOPK_SPLIT(2)
DSA_TOPK_SPLIT(4)
DSA_TOPK_SPLIT(8)
