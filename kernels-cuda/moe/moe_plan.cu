// The plan of a routing (see DsaMoePlanParams): a counting sort of the slots by expert
// that keeps slot order inside each expert, so the layout is a pure function of the ids.
//
// dsa_moe_plan_count (one CTA): per-expert counts (integer shared atomics: their order
// does not change the counts), aligned offsets by a block scan, masked_m, status, and
// row_of = -1 for dropped slots.
// dsa_moe_plan_scatter (one CTA per expert, plus one for the contiguous tail): expert e's
// CTA walks the slots in order in tiles of 4096 and ranks its matches with a block-wide
// prefix sum, so a slot's row is offsets[e] + (matches before it): deterministic, no
// atomic slot claims. It also writes the padding of its segment. Work per CTA is bounded
// by the slots, and an expert with no slot returns at once.
#include <stdint.h>

#include "block.cuh"
#include "moe_params.h"

namespace {

constexpr int kThreads = DSA_MOE_PLAN_THREADS;
constexpr int kWarps = kThreads / 32;
static_assert(kWarps == 32, "the scan total is the last of 32 warp sums");
constexpr int kPerThread = 4;
constexpr int kTile = kThreads * kPerThread;

// Exclusive prefix sum over the CTA; `total` gets the sum. Uses `warp_sums[32]`.
__device__ __forceinline__ int block_exclusive_scan(int v, int *warp_sums, int &total) {
    const int incl = dsa::block_inclusive_scan(v, warp_sums);
    total = warp_sums[kWarps - 1];
    __syncthreads();  // the next call overwrites warp_sums
    return incl - v;
}

__device__ __forceinline__ int round_up(int x, int a) { return (x + a - 1) / a * a; }

}  // namespace

extern "C" __global__ void __launch_bounds__(kThreads) dsa_moe_plan_count(const DsaMoePlanParams p) {
    __shared__ int hist[DSA_MOE_MAX_EXPERTS];
    __shared__ int scratch[32];
    const int E = p.experts;
    for (int e = threadIdx.x; e < E; e += kThreads) hist[e] = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < p.slots; i += kThreads) {
        const int e = p.ids[i];
        if (e >= 0 && e < E) {
            atomicAdd(&hist[e], 1);
        } else {
            p.row_of[i] = -1;
        }
    }
    __syncthreads();
    // E <= kThreads: one expert per thread.
    const int e = threadIdx.x;
    const int c = e < E ? hist[e] : 0;
    const int len = e < E ? (p.masked ? p.max_m : round_up(c, p.align)) : 0;
    int total = 0;
    const int off = block_exclusive_scan(len, scratch, total);
    const int over = __syncthreads_or(p.masked && c > p.max_m);
    if (e < E) {
        p.counts[e] = c;
        p.offsets[e] = off;
        if (p.masked) p.masked_m[e] = min(c, p.max_m);
    }
    if (threadIdx.x == 0) {
        p.offsets[E] = total;
        p.status[0] = over ? 1 : 0;
        p.status[1] = total;
    }
}

extern "C" __global__ void __launch_bounds__(kThreads) dsa_moe_plan_scatter(const DsaMoePlanParams p) {
    __shared__ int scratch[32];
    const int E = p.experts;
    const int e = blockIdx.x;
    if (e == E) {
        // The contiguous tail past the last segment: padding for the GEMM's row space.
        if (p.masked) return;
        for (int r = p.offsets[E] + threadIdx.x; r < p.rows; r += kThreads) {
            p.src[r] = -1;
            p.m_indices[r] = -1;
        }
        return;
    }
    const int c = p.counts[e];
    const int off = p.offsets[e];
    const int seg = p.masked ? p.max_m : round_up(c, p.align);
    const int keep = p.masked ? min(c, p.max_m) : c;
    // Segments never pass the row capacity (the host sizes it for the worst case); the
    // bound is kept so a corrupted count cannot write outside src.
    const int seg_end = min(off + seg, p.rows);
    for (int r = off + keep + threadIdx.x; r < seg_end; r += kThreads) {
        p.src[r] = -1;
        if (!p.masked) p.m_indices[r] = -1;
    }
    if (!p.masked) {
        for (int r = off + threadIdx.x; r < min(off + keep, p.rows); r += kThreads) p.m_indices[r] = e;
    }
    if (c == 0) return;
    int found = 0;  // matches in earlier tiles (uniform over the CTA)
    for (int base = 0; base < p.slots && found < c; base += kTile) {
        const int first = base + threadIdx.x * kPerThread;
        bool hit[kPerThread];
        int mine = 0;
#pragma unroll
        for (int q = 0; q < kPerThread; ++q) {
            hit[q] = first + q < p.slots && p.ids[first + q] == e;
            mine += hit[q];
        }
        int tile_total = 0;
        int rank = found + block_exclusive_scan(mine, scratch, tile_total);
#pragma unroll
        for (int q = 0; q < kPerThread; ++q) {
            if (!hit[q]) continue;
            const int slot = first + q;
            if (rank < keep && off + rank < p.rows) {
                p.src[off + rank] = slot;
                p.row_of[slot] = off + rank;
            } else {
                p.row_of[slot] = -1;  // past max_m: flagged in status[0] by the count
            }
            ++rank;
        }
        found += tile_total;
    }
}
