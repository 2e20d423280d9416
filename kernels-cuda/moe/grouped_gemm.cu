// FP8 block-scaled grouped GEMM for the MoE experts (and, with one group, the dense FP8
// linear): e4m3 activations with one fp32 scale per row per 128 of K, e4m3 weights with
// one fp32 scale per 128x128 block, bf16 out. Layouts and the math: grouped_gemm_params.h.
//
// Design (the DeepGEMM sm90 "1D2D" scheme, written from its published description):
// * persistent: one CTA per SM walks the tile list blockIdx.x, + gridDim.x, ...; tiles are
//   ordered in bands of kBand M-blocks (M fastest inside a band) so the CTAs running at
//   the same time share A rows and weight tiles in L2;
// * warp specialised: warpgroup 0 is the producer (one thread issues TMA loads of A and B
//   and a bulk copy of the tile's activation scales per 128-K block into a ring of
//   stages guarded by full/empty mbarriers; registers given back with setmaxnreg);
//   warpgroups 1 and 2 are the math (setmaxnreg up): 64 rows x WN columns each;
// * per 128-K block four wgmma m64nWNk32 go into a fresh fp32 fragment, which CUDA cores
//   promote into the accumulator with sa[row] * sb[n-block, k-block]: the two-level
//   accumulation of the spec (the MMA's fp32 accumulation is not exact over long K);
// * tiles with no group (first row -1, or past masked_m) load nothing and store zeros; a
//   64-row slice whose first row is not the tile's group loads no A and issues no MMA.
#include <cuda_bf16.h>
#include <stdint.h>

#include "device.cuh"
#include "grouped_gemm_params.h"

namespace {

using namespace dsa;

constexpr int kBK = DSA_GG_BLOCK_K;
constexpr int kBand = 8;  // M-blocks per swizzle band

// ---- tile list ----

struct Tile {
    int g;        // group (expert) whose weights the tile uses
    int row0;     // first row of the tile in A / D (global row index)
    int nb;       // N-block
    int row_end;  // rows >= row_end are outside this layout's part (never stored)
    int row_lim;  // rows >= row_lim are zeros (masked: group start + masked_m)
    int sfa_off;  // offset of (first row, k-block 0) in sfa
    int sfa_kstride;
    int sfa_rows; // scales copied per stage
    bool compute; // false: store zeros, load nothing
    bool upper;   // BLOCK_M 128: the second 64-row slice holds rows of the group
};

// Whether any row of the upper 64-row slice of the 128-row tile at `row0` has id `e` (the
// tile's group). A plan's segment fills a prefix of its block, so row 64 alone decides for
// every layout the plan writes; the rest is scanned only when row 64 is not of the group,
// so that the documented rule (a row holds a result when its id equals the id of its
// block's first row) holds for any ids, e.g. a stray value on row 64 before rows of e.
__device__ __forceinline__ bool upper_holds_group(const int *__restrict__ ids, int row0, int m_rows, int e) {
    if (row0 + 64 >= m_rows) return false;
    if (__ldg(ids + row0 + 64) == e) return true;
    const int end = min(row0 + 128, m_rows);
    bool any = false;
#pragma unroll 16
    for (int r = row0 + 65; r < end; ++r) any |= __ldg(ids + r) == e;
    return any;
}

template <int BM, int BN>
__device__ __forceinline__ Tile tile_at(const DsaGroupedGemmParams &p, int t) {
    const int nbs = p.n / BN;
    const int mbs = p.masked ? p.m_rows / BM : (p.m_rows + BM - 1) / BM;
    int g = 0, local = t;
    if (p.masked) {
        g = t / (mbs * nbs);
        local = t - g * mbs * nbs;
    }
    const int band = local / (kBand * nbs);
    const int rem = local - band * kBand * nbs;
    const int rows = min(kBand, mbs - band * kBand);
    const int mb = band * kBand + rem % rows;
    Tile tl;
    tl.nb = rem / rows;
    const int kbs = p.k / kBK;
    if (p.masked) {
        const int mm = min(max(p.masked_m[g], 0), p.m_rows);
        tl.g = g;
        tl.row0 = g * p.m_rows + mb * BM;
        tl.row_end = (g + 1) * p.m_rows;
        tl.row_lim = g * p.m_rows + mm;
        tl.sfa_off = g * kbs * p.m_rows + mb * BM;
        tl.sfa_kstride = p.m_rows;
        tl.sfa_rows = BM;
        tl.compute = mb * BM < mm;
        tl.upper = mb * BM + 64 < mm;
    } else {
        tl.row0 = mb * BM;
        tl.row_end = p.m_rows;
        tl.row_lim = p.m_rows;
        tl.sfa_off = tl.row0;
        tl.sfa_kstride = p.sfa_ld;
        tl.sfa_rows = min(BM, p.sfa_ld - tl.row0);
        if (p.m_indices) {
            const int e = __ldg(p.m_indices + tl.row0);
            tl.g = e;
            tl.compute = e >= 0 && e < p.groups;
            tl.upper = BM == 128 && tl.compute && upper_holds_group(p.m_indices, tl.row0, p.m_rows, e);
        } else {
            tl.g = 0;
            tl.compute = true;
            tl.upper = tl.row0 + 64 < p.m_rows;
        }
    }
    return tl;
}

template <int BM, int BN>
__device__ __forceinline__ int tile_count(const DsaGroupedGemmParams &p) {
    const int nbs = p.n / BN;
    return p.masked ? p.groups * (p.m_rows / BM) * nbs : ((p.m_rows + BM - 1) / BM) * nbs;
}

// Whether row `row` of tile `tl` holds a result (else it is written as zero).
__device__ __forceinline__ bool row_valid(const DsaGroupedGemmParams &p, const Tile &tl, int row) {
    if (row >= tl.row_lim) return false;
    if (!p.masked && p.m_indices) return __ldg(p.m_indices + row) == tl.g;
    return true;
}

template <int BM, int BN>
struct Config {
    static constexpr int kWN = BN * BM / 128;  // columns per math warpgroup
    // A warpgroup's columns go through the MMA in chunks of at most 128 (one weight-scale
    // block each): a chunk's fresh fragment is promoted before the next chunk reuses its
    // registers, so a 256-wide warpgroup needs 128 + 64 accumulator registers, not 256.
    static constexpr int kChunkN = kWN < 128 ? kWN : 128;
    static constexpr int kChunks = kWN / kChunkN;
    static constexpr int kABytes = BM * kBK;
    static constexpr int kBBytes = BN * kBK;
    static constexpr int kStageBytes = kABytes + kBBytes + BM * 4;
    // Epilogue staging: per math warpgroup 64 rows x 64 columns of bf16 (one pass).
    static constexpr int kEpiBytes = 64 * 64 * 2;
    static constexpr int kRoom = DSA_SM90_SMEM_PER_CTA_MAX - 1024 - 256 - 2 * kEpiBytes;
    static constexpr int kStages = kRoom / kStageBytes > 8 ? 8 : kRoom / kStageBytes;
    static constexpr int kSmem = 1024 + kStages * kStageBytes + 2 * kEpiBytes + kStages * 16;
};

template <int BM, int BN>
__device__ __forceinline__ void gemm_body(const DsaGroupedGemmParams &p) {
    using C = Config<BM, BN>;
    constexpr int S = C::kStages;
    constexpr int WN = C::kWN;
    extern __shared__ __align__(1024) uint8_t smem_raw[];
    uint8_t *smem = align_1024(smem_raw);
    uint8_t *sa_base = smem;
    uint8_t *sb_base = smem + S * C::kABytes;
    float *ssfa = reinterpret_cast<float *>(sb_base + S * C::kBBytes);
    uint8_t *sepi = reinterpret_cast<uint8_t *>(ssfa + S * BM);
    uint64_t *full = reinterpret_cast<uint64_t *>(sepi + 2 * C::kEpiBytes);
    uint64_t *empty = full + S;

    if (threadIdx.x == 0) {
        for (int s = 0; s < S; ++s) {
            mbar_init(full + s, 1);
            mbar_init(empty + s, 8);  // one arrival per math warp
        }
        fence_mbar_init();
    }
    __syncthreads();

    const int tiles = tile_count<BM, BN>(p);
    const int kbs = p.k / kBK;
    const int wg = threadIdx.x / 128;

    if (wg == 0) {
        setmaxnreg_dec<40>();
        if (threadIdx.x == 0) {
            prefetch_tmap(&p.a_desc);
            prefetch_tmap(&p.b_desc);
            int stage = 0;
            uint32_t phase = 0;
            for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
                const Tile tl = tile_at<BM, BN>(p, t);
                if (!tl.compute) continue;
                const bool two_a = BM == 128 && tl.upper;
                const uint32_t a_bytes = (BM == 128 && !tl.upper) ? 64 * kBK : BM * kBK;
                const uint32_t sfa_bytes = (uint32_t)tl.sfa_rows * 4;
                const int b_row = tl.g * p.n + tl.nb * BN;
                for (int kb = 0; kb < kbs; ++kb) {
                    mbar_wait(empty + stage, phase ^ 1);
                    mbar_arrive_expect_tx(full + stage, a_bytes + C::kBBytes + sfa_bytes);
                    uint8_t *sa = sa_base + stage * C::kABytes;
                    tma_load_2d(smem_u32(sa), &p.a_desc, full + stage, kb * kBK, tl.row0);
                    if (two_a) tma_load_2d(smem_u32(sa + 64 * kBK), &p.a_desc, full + stage, kb * kBK, tl.row0 + 64);
                    tma_load_2d(smem_u32(sb_base + stage * C::kBBytes), &p.b_desc, full + stage, kb * kBK, b_row);
                    tma_load_1d(smem_u32(ssfa + stage * BM), p.sfa + (int64_t)tl.sfa_off + (int64_t)kb * tl.sfa_kstride, sfa_bytes,
                              full + stage);
                    if (++stage == S) {
                        stage = 0;
                        phase ^= 1;
                    }
                }
            }
        }
        return;
    }

    setmaxnreg_inc<232>();
    const int mw = wg - 1;
    const int wm = BM == 128 ? mw : 0;  // 64-row slice of this warpgroup
    const int wn = BM == 128 ? 0 : mw;  // WN-column slice of this warpgroup
    const int tid = threadIdx.x % 128;
    const int warp = tid / 32, lane = tid % 32;
    const int r_in = warp * 16 + lane / 4;  // fragment rows r_in and r_in + 8 of the slice
    const int nsb = p.n / 128;
    int stage = 0;
    uint32_t phase = 0;
    float acc[WN / 2], frag[C::kChunkN / 2];

    // The next tile's description is loaded before the current epilogue and the epilogue's
    // row ids before the mainloop, so no global-load latency sits between two tiles' MMAs.
    Tile next = tile_at<BM, BN>(p, blockIdx.x);
    for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
        const Tile tl = next;
        const int slice_row0 = tl.row0 + wm * 64;
        const int col0 = tl.nb * BN + wn * WN;
        if (!tl.compute) {
            // No group: zeros, 16-byte stores, coalesced along the row.
            constexpr int kChunks = WN / 8;
            for (int i = tid; i < 64 * kChunks; i += 128) {
                const int r = slice_row0 + i / kChunks;
                if (r < tl.row_end)
                    *reinterpret_cast<uint4 *>(p.d + (int64_t)r * p.n + col0 + (i % kChunks) * 8) =
                        make_uint4(0, 0, 0, 0);
            }
            if (t + (int)gridDim.x < tiles) next = tile_at<BM, BN>(p, t + gridDim.x);
            continue;
        }
        const bool active = BM != 128 || wm == 0 || tl.upper;
        const int ra = slice_row0 + r_in, rb = ra + 8;
        const bool va = active && row_valid(p, tl, ra), vb = active && row_valid(p, tl, rb);
#pragma unroll
        for (int i = 0; i < WN / 2; ++i) acc[i] = 0.f;
        // Weight scales of this warpgroup's chunks (128 columns each share one), prefetched
        // one k-block ahead.
        const float *sfb_row = p.sfb + ((int64_t)tl.g * nsb + col0 / 128) * kbs;
        float sb[C::kChunks];
#pragma unroll
        for (int c = 0; c < C::kChunks; ++c) sb[c] = active ? __ldg(sfb_row + c * kbs) : 0.f;
        for (int kb = 0; kb < kbs; ++kb) {
            mbar_wait(full + stage, phase);
            if (active) {
                float sb_next[C::kChunks];
#pragma unroll
                for (int c = 0; c < C::kChunks; ++c) sb_next[c] = kb + 1 < kbs ? __ldg(sfb_row + c * kbs + kb + 1) : 0.f;
                const float *sa = ssfa + stage * BM + wm * 64;
                const float sa0 = sa[r_in], sa1 = sa[r_in + 8];
                const uint64_t da = smem_desc<Swizzle::B128>(smem_u32(sa_base + stage * C::kABytes + wm * 64 * kBK), 16, 1024);
#pragma unroll
                for (int c = 0; c < C::kChunks; ++c) {
                    const uint64_t db =
                        smem_desc<Swizzle::B128>(smem_u32(sb_base + stage * C::kBBytes + (wn * WN + c * C::kChunkN) * kBK), 16, 1024);
                    wgmma_fence();
#pragma unroll
                    for (int k4 = 0; k4 < kBK / 32; ++k4) {
                        if constexpr (C::kChunkN == 128)
                            wgmma_e4m3_ss<128>(frag, da + 2 * k4, db + 2 * k4, k4);
                        else
                            wgmma_e4m3_ss<64>(frag, da + 2 * k4, db + 2 * k4, k4);
                    }
                    wgmma_commit();
                    wgmma_wait<0>();
                    fence_operands(frag);
                    if (c == C::kChunks - 1) {
                        __syncwarp();
                        if (lane == 0) mbar_arrive(empty + stage);
                    }
                    const float s0 = sa0 * sb[c], s1 = sa1 * sb[c];
                    float *ac = acc + c * (C::kChunkN / 2);
#pragma unroll
                    for (int j = 0; j < C::kChunkN / 8; ++j) {
                        ac[4 * j + 0] = fmaf(frag[4 * j + 0], s0, ac[4 * j + 0]);
                        ac[4 * j + 1] = fmaf(frag[4 * j + 1], s0, ac[4 * j + 1]);
                        ac[4 * j + 2] = fmaf(frag[4 * j + 2], s1, ac[4 * j + 2]);
                        ac[4 * j + 3] = fmaf(frag[4 * j + 3], s1, ac[4 * j + 3]);
                    }
                }
#pragma unroll
                for (int c = 0; c < C::kChunks; ++c) sb[c] = sb_next[c];
            } else {
                __syncwarp();
                if (lane == 0) mbar_arrive(empty + stage);
            }
            if (++stage == S) {
                stage = 0;
                phase ^= 1;
            }
        }
        if (t + (int)gridDim.x < tiles) next = tile_at<BM, BN>(p, t + gridDim.x);
        // Epilogue, in passes of 64 columns through a swizzled shared-memory tile (16-byte
        // chunk c of row r stored at chunk c ^ (r & 7): conflict-free both ways), so global
        // stores are whole 128-byte rows rather than 4-byte pieces. Rows outside the group
        // are zeros.
        uint8_t *epi = sepi + mw * C::kEpiBytes;
        const int q = lane % 4;
#pragma unroll
        for (int ps = 0; ps < WN / 64; ++ps) {
            named_bar_sync(1 + mw, 128);  // the previous pass has been read
#pragma unroll
            for (int cj = 0; cj < 8; ++cj) {
                const int j = ps * 8 + cj;
                const int ia = r_in, ib = r_in + 8;
                *reinterpret_cast<uint32_t *>(epi + ia * 128 + ((cj ^ (ia & 7)) << 4) + 4 * q) =
                    va ? pack_bf16(acc[4 * j], acc[4 * j + 1]) : 0u;
                *reinterpret_cast<uint32_t *>(epi + ib * 128 + ((cj ^ (ib & 7)) << 4) + 4 * q) =
                    vb ? pack_bf16(acc[4 * j + 2], acc[4 * j + 3]) : 0u;
            }
            named_bar_sync(1 + mw, 128);
#pragma unroll
            for (int u = 0; u < 4; ++u) {
                const int idx = tid + 128 * u;
                const int row = idx / 8, ch = idx % 8;
                const int grow = slice_row0 + row;
                const uint4 v = *reinterpret_cast<const uint4 *>(epi + row * 128 + ((ch ^ (row & 7)) << 4));
                if (grow < tl.row_end)
                    *reinterpret_cast<uint4 *>(p.d + (int64_t)grow * p.n + col0 + ps * 64 + ch * 8) = v;
            }
        }
    }
}

}  // namespace

#define DSA_GG_KERNEL(BM, BN)                                                                              \
    extern "C" __global__ void __launch_bounds__(DSA_GG_THREADS, 1)                                         \
        dsa_grouped_gemm_##BM##x##BN(const __grid_constant__ DsaGroupedGemmParams p) {                        \
        gemm_body<BM, BN>(p);                                                                               \
    }                                                                                                       \
    static_assert(Config<BM, BN>::kSmem == DSA_GG_SMEM_##BM##x##BN, "smem size mirror out of date");

DSA_GG_KERNEL(128, 128)
DSA_GG_KERNEL(128, 256)
DSA_GG_KERNEL(64, 128)
DSA_GG_KERNEL(64, 256)
