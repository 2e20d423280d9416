// Sparse MLA attention forward shared by the decode (paged FP8 / bf16 cache) and prefill
// (flat bf16 kv) kernels: one CTA per (64-head group, query row, split of the index list).
//
// Roles (384 threads, one CTA per SM: shared memory is ~226 KB):
//  * warpgroup 2, the producer: gathers 64 key rows per block (the rows named by 64
//    indices) into a bf16 tile in shared memory, two stages deep. bf16 rows go straight in
//    with cp.async, completing on the stage's barrier, so the next block's gather is issued
//    while this one is in flight; FP8 latents (512 B) are loaded into registers one round
//    ahead and dequantized once per token, so all heads share one conversion. Index reads
//    run three blocks ahead, L2 prefetches two.
//  * paired FP8 (kPair: an even number of head groups): the CTAs of the two head groups
//    of a (row, split) form a 2-CTA cluster. Each producer gathers and dequantizes 32 of a
//    block's 64 tokens and writes them into both tiles, its own with st.shared and the
//    peer's with st.async (completing transaction bytes on the peer's full barrier); a
//    stage is released by both CTAs' consumers (the peer's once per warp, remotely). With
//    8 tokens a warp, the loads run a whole block ahead. Per block and SM this halves the
//    gathered bytes and the FP8 conversions, which the measurements below say bound the
//    unpaired FP8 decode.
//  * warpgroups 0 and 1, the consumers: S = Q K^T with wgmma (M = 64 heads, each
//    warpgroup 32 of the 64 tokens, K = 576), an online softmax in the exp2 domain whose
//    row maxima and probabilities are exchanged through shared memory, then
//    O += P V with wgmma (M = 64, N = 256: warpgroup w owns output columns 256w..256w+255,
//    K = 64 tokens). fp32 accumulation throughout.
//
// Tiles are stored as 128-byte-swizzled, K-major chunks of 64 columns (8 KB per 64 rows),
// the layout wgmma reads directly: Q and K as K-major operands, the same key tile as the
// MN-major (transposed) V operand, P as a K-major operand.
//
// Measured on the H200 (2026-12-02, FP8, h_q 128, top-2048, B 128, s_q 2; each group of
// numbers from one process): unpaired 526 us, its producer alone (consumers release at
// once) 375 us, its consumers alone (producer gathers nothing) 337 us, raw bits stored
// without the dequantization 431 us; then unpaired 530 us, paired 505 us, the paired
// producer alone 327 us. An earlier pairing (2026-11-22, H100, commit 6e329c6) forwarded
// each half with shared::cluster bulk copies after its own barrier and was 3-6% slower
// than two independent gathers.
//
// Tried and dropped (2026-11-22, H100): a pair schedule for bf16 rows (each consumer
// warpgroup takes every other block whole: one m64n64 QK^T chain, so Q is read once per
// block, P from registers for its own columns, running max chained between the
// warpgroups, P exchanged through the block's rope chunk), which lets one warpgroup's
// softmax overlap the other's tensor-core work: correct, but prefill unchanged (314 vs
// 315 TFLOP/s) and bf16 decode 4% slower, so the consumers' chain is not what bounds a
// block (commit 6bc14e4 has it).
#pragma once
#include <math_constants.h>

#include "device.cuh"
#include "sparse_mla_params.h"

#ifndef DSA_SPARSE_PRODUCER_REGS
#define DSA_SPARSE_PRODUCER_REGS 120
#endif

namespace dsa_sparse {

constexpr int kHeads = DSA_SPARSE_HEADS_PER_CTA;  // wgmma M
constexpr int kBlock = DSA_SPARSE_BLOCK;          // indices per block
constexpr int kChunks = 9;     // 576 / 64 columns
constexpr int kChunkBytes = 64 * 128;  // 64 rows x 128 B
constexpr int kTileBytes = kChunks * kChunkBytes;  // 73728
constexpr int kThreads = DSA_SPARSE_THREADS;
// Register split of the 64K-entry file: 2 x 128 consumer threads and 128 producer threads.
constexpr int kProducerRegs = DSA_SPARSE_PRODUCER_REGS;
constexpr int kConsumerRegs = (65536 / 128 - kProducerRegs) / 2 / 8 * 8;
static_assert(kConsumerRegs <= 256 && kConsumerRegs >= 184, "consumers need the 128-float O tile");
// setmaxnreg only moves registers within what the CTA got at launch (168 per thread at 384
// threads): asking for more makes setmaxnreg.inc wait forever.
static_assert(kProducerRegs + 2 * kConsumerRegs <= 3 * (65536 / kThreads / 8 * 8), "register pool of the launch");

// Shared memory map (offsets from a 1024-byte aligned base).
constexpr int kSmemQ = 0;
constexpr int kSmemKV = kSmemQ + kTileBytes;          // two stages
constexpr int kSmemP = kSmemKV + 2 * kTileBytes;      // 64 x 64 bf16, one swizzled chunk
constexpr int kSmemMax = kSmemP + kChunkBytes;        // f32 [2][64]
constexpr int kSmemValid = kSmemMax + 2 * 64 * 4;     // i32 [2 stages][64]: slot, -1 unused
constexpr int kSmemBar = kSmemValid + 2 * 64 * 4;     // full[2], empty[2]
constexpr int kSmemUsed = kSmemBar + 4 * 8;
constexpr int kSmemBytes = kSmemUsed + 1024;          // slack for aligning the base
static_assert(kSmemBytes <= DSA_SM90_SMEM_PER_CTA_MAX, "exceeds the opt-in shared memory of sm_90");
static_assert(kSmemBytes == DSA_SPARSE_SMEM_BYTES, "DSA_SPARSE_SMEM_BYTES is stale");
static_assert(kThreads == 3 * 128, "two consumer warpgroups and one producer");

// kPair (FP8 only, an even number of head groups): the CTAs of the two head groups of a
// (row, split) form a 2-CTA cluster; each gathers and dequantizes half of every block's
// tokens and writes the result into both tiles, its own with st.shared and the peer's
// with st.async completing transaction bytes on the peer's full barrier.
template <bool kFp8, bool kPair = false>
__device__ __forceinline__ void sparse_mla_fwd(const DsaSparseMlaParams &p) {
    static_assert(!kPair || kFp8, "the paired gather is the FP8 one");
    // QK^T descriptors stepped by addition, and the FP8 stores in the bank-conflict-free
    // order: measured on the H200 (2026-12-02, h_q 128, top-2048) the two made the bf16
    // decode 2.5% and the paired FP8 decode 1.5-2% faster, but the unpaired FP8 decode 4%
    // slower (553 vs 530 us at B 128, s_q 2), so that one keeps the per-MMA descriptors.
    constexpr bool kDescStep = !kFp8 || kPair;
    constexpr bool kSwapStore = kPair;
    constexpr int kOwn = kPair ? kBlock / 2 : kBlock;  // tokens of a block gathered here
    constexpr int kTokW = kOwn / 4;  // tokens of a block per producer warp
    // Bytes the peer writes into this CTA's tile per block (latent and rope of its half).
    constexpr uint32_t kPeerBytes = (kBlock - kOwn) * DSA_QK_DIM * 2;
    constexpr uint32_t kRowBytes = kFp8 ? DSA_MLA_FP8_BYTES_PER_TOKEN : DSA_QK_DIM * 2;
    extern __shared__ uint8_t smem_raw[];
    uint8_t *smem = dsa::align_1024_generic(smem_raw);
    const int tid = threadIdx.x;
    const int hgroups = (p.h_q + kHeads - 1) / kHeads;
    const int hg = blockIdx.x % hgroups;
    const int rest = blockIdx.x / hgroups;
    const int row = rest % p.rows;
    const int split = rest / p.rows;
    const int heads_here = min(kHeads, p.h_q - hg * kHeads);

    int limit = p.topk;
    if (p.topk_length != nullptr) limit = min(max(p.topk_length[row / p.s_q], 0), p.topk);
    const int total_blocks = (limit + kBlock - 1) / kBlock;
    const int blk_begin = split * p.blocks_per_split;
    const int blk_end = min(total_blocks, blk_begin + p.blocks_per_split);
    const int nblk = max(0, blk_end - blk_begin);

    uint64_t *full = reinterpret_cast<uint64_t *>(smem + kSmemBar);
    uint64_t *empty = full + 2;
    float *smax = reinterpret_cast<float *>(smem + kSmemMax);
    int *svalid = reinterpret_cast<int *>(smem + kSmemValid);
    const uint32_t sQ = dsa::smem_u32(smem + kSmemQ);
    const uint32_t sKV = dsa::smem_u32(smem + kSmemKV);
    const uint32_t sP = dsa::smem_u32(smem + kSmemP);
    const uint32_t rank = kPair ? dsa::cluster_ctarank() : 0;

    if (tid == 0) {
        // full: each producer thread arrives twice (its cp.async copies landing, and its own
        // stores: slot entries, dequantized values); empty: one arrival per consumer thread,
        // so each thread's own reads of the stage (slot entries, and the tile through its
        // finished wgmma) are released by its own arrive rather than through a warp sync.
        // Paired: full takes one arrival per producer thread (one of them also expects the
        // peer's bytes), empty also one per peer consumer warp.
        for (int s = 0; s < 2; ++s) {
            dsa::mbar_init(&full[s], kPair ? 128 : 256);
            dsa::mbar_init(&empty[s], kPair ? 256 + 8 : 256);
        }
        if (kPair) dsa::fence_mbar_init();
    }
    {
        // Q tile; rows past h_q (h_q = 16, 32) are zero and never written out.
        const __nv_bfloat16 *q =
            static_cast<const __nv_bfloat16 *>(p.q) + ((int64_t)row * p.h_q + hg * kHeads) * DSA_QK_DIM;
        for (int i = tid; i < kHeads * 72; i += kThreads) {
            const int r = i / 72, u = i % 72;
            const uint32_t dst = sQ + (u >> 3) * kChunkBytes + dsa::sw128_offset(r, u & 7);
            if (r < heads_here)
                dsa::cp_async16(dst, q + r * DSA_QK_DIM + u * 8);
            else
                dsa::st_shared_v4(dst, make_uint4(0, 0, 0, 0));
        }
        dsa::cp_async_wait_all();
        dsa::fence_async_smem();
    }
    // Paired: the peer's barriers must be initialized before anything reaches them.
    if constexpr (kPair)
        dsa::cluster_sync();
    else
        __syncthreads();

    const int wg = tid >> 7;
    if (wg == 2) {
        // ---------------------------------------------------------------- producer
        dsa::setmaxnreg_dec<kProducerRegs>();
        const int pt = tid - 256;
        const int pw = pt >> 5, lane = pt & 31;
        const int32_t *idx_row = p.indices + (int64_t)row * p.topk;
        const uint8_t *kv = static_cast<const uint8_t *>(p.kv);
        // Warp pw gathers tokens row_base + j (j < kTokW) of every block, on its own (no
        // barrier among producer warps); lane l < kTokW holds the slot of token j = l.
        const int own_base = kPair ? kOwn * (int)rank : 0;
        const int row_base = own_base + kTokW * pw;  // first tile row of this warp
        // Paired: lanes kTokW..2 kTokW-1 hold the slots of the peer's tokens of the same
        // rows, only for the validity mask.
        const int my_tok = lane < kTokW ? row_base + lane
                           : (kPair && lane < 2 * kTokW) ? kOwn * (1 - (int)rank) + kTokW * pw + (lane - kTokW)
                                                           : -1;
        // Paired: the peer's tile base and full barriers as shared::cluster addresses.
        const uint32_t peer_delta = kPair ? dsa::mapa_shared(sKV, rank ^ 1u) - sKV : 0u;
        const uint32_t peer_full0 = kPair ? dsa::mapa_shared(dsa::smem_u32(&full[0]), rank ^ 1u) : 0u;
        // Slot of this lane's token in block b; -1 when unused. Out-of-range slots are
        // treated as unused, never read.
        auto load_idx = [&](int b) -> int {
            if (my_tok < 0 || b >= blk_end) return -1;
            const int pos = b * kBlock + my_tok;
            return pos < limit ? idx_row[pos] : -1;
        };
        auto valid_slot = [&](int s) -> int { return (s >= 0 && (int64_t)s < p.kv_rows) ? s : -1; };
        auto prefetch_row = [&](int s) {
            if (lane < kTokW && s >= 0) dsa::prefetch_l2(kv + (int64_t)s * kRowBytes, kRowBytes);
        };
        // Index loads run three blocks ahead in registers, so neither the L2 prefetch (two
        // blocks ahead) nor the gather ever waits on an index read.
        int cur = valid_slot(load_idx(blk_begin));
        int s1 = valid_slot(load_idx(blk_begin + 1));
        int s2raw = load_idx(blk_begin + 2);
        prefetch_row(cur);
        prefetch_row(s1);
        // FP8: the e4m3 latent of a token (512 B) is one 16-byte load per lane, so a warp
        // reads whole consecutive lines; the lane dequantizes its 16 values with the token's
        // scale (lane / 8). Loads run one round ahead of the dequantization in a second
        // register set, across block boundaries too, so a block's first loads are in flight
        // while the producer waits for its stage. Rope (and bf16 rows) go in with cp.async.
        // Paired: a warp's 8 tokens of a block are one round, loaded a whole block ahead
        // (the next block's loads go out before this block is dequantized), which the
        // unpaired gather (16 tokens a warp) has not the registers for.
        constexpr int kPer = kPair ? kTokW : kTokW / 2;
        auto load = [&](int sv, int r, uint4(&raw)[kPer], float(&sc)[kPer]) {
#pragma unroll
            for (int i = 0; i < kPer; ++i) {
                const int s = __shfl_sync(0xffffffffu, sv, kPer * r + i);
                raw[i] = make_uint4(0, 0, 0, 0);
                sc[i] = 0.f;
                if (s >= 0) {
                    const uint8_t *src = kv + (int64_t)s * kRowBytes;
                    raw[i] = dsa::ld_global_nc_v4(src + 16 * lane);
                    sc[i] = __ldg(reinterpret_cast<const float *>(src + 512) + (lane >> 3));
                }
            }
        };
        const uint32_t lane_off = (lane >> 2) * kChunkBytes + row_base * 128;
        auto store = [&](uint32_t tile, uint32_t pbar, int r, const uint4(&raw)[kPer], const float(&sc)[kPer]) {
#pragma unroll
            for (int i = 0; i < kPer; ++i) {
                const int j = kPer * r + i;  // tile row row_base + j; its swizzle row is j & 7
                uint32_t o[8];
                uint4 rw = raw[i];
                // The warp's 8 four-lane groups write the same row of 8 chunks 8 KB apart,
                // so the same banks: with kSwapStore odd groups store their second unit
                // first, and each store of the warp covers all 8 bank slots (4 wavefronts,
                // not 8).
                const int odd = kSwapStore ? (lane >> 2) & 1 : 0;
                const int u0 = 2 * (lane & 3) + odd, u1 = 2 * (lane & 3) + 1 - odd;
                {
                    const uint32_t x = rw.x, y = rw.y;
                    rw.x = odd ? rw.z : x;
                    rw.y = odd ? rw.w : y;
                    rw.z = odd ? x : rw.z;
                    rw.w = odd ? y : rw.w;
                }
                // Unused tokens load zeros: P is 0 there, but 0 * NaN would poison O.
                dsa::dequant16(rw, sc[i], o);
                const uint32_t base = tile + lane_off + j * 128;
                const uint32_t a0 = base + ((u0 ^ (j & 7)) << 4), a1 = base + ((u1 ^ (j & 7)) << 4);
                dsa::st_shared_v4(a0, make_uint4(o[0], o[1], o[2], o[3]));
                dsa::st_shared_v4(a1, make_uint4(o[4], o[5], o[6], o[7]));
                if constexpr (kPair) {
                    dsa::st_async_v4(a0 + peer_delta, make_uint4(o[0], o[1], o[2], o[3]), pbar);
                    dsa::st_async_v4(a1 + peer_delta, make_uint4(o[4], o[5], o[6], o[7]), pbar);
                }
            }
        };
        uint4 ra[kPer], rb[kPer];
        float sa[kPer], sb[kPer];
        if constexpr (kFp8) {
            if (nblk > 0) load(cur, 0, ra, sa);
        }
        for (int it = 0; it < nblk; ++it) {
            const int b = blk_begin + it;
            const int stage = it & 1;
            const int s3raw = load_idx(b + 3);
            const int s2 = valid_slot(s2raw);
            prefetch_row(s2);
            // Paired: the rope of this warp's tokens goes through registers to both tiles;
            // its loads are issued before the wait.
            uint4 rope[kPair ? kTokW / 4 : 1];
            if constexpr (kPair) {
#pragma unroll
                for (int i = 0; i < kTokW / 4; ++i) {
                    const int s = __shfl_sync(0xffffffffu, cur, 4 * i + (lane >> 3));
                    rope[i] = s >= 0 ? dsa::ld_global_nc_v4(kv + (int64_t)s * kRowBytes + 528 + 16 * (lane & 7))
                                     : make_uint4(0, 0, 0, 0);
                }
            }
            if (it >= 2) dsa::mbar_wait<kPair>(&empty[stage], ((it >> 1) + 1) & 1);
            // The block's slots (-1 = unused) go to shared memory for the consumers' mask.
            if (my_tok >= 0) svalid[stage * kBlock + my_tok] = cur;
            const uint32_t tile = sKV + stage * kTileBytes;
            const uint32_t pbar = peer_full0 + stage * 8;
            if constexpr (kPair) {
                const bool more = it + 1 < nblk;
                if (more) load(s1, 0, rb, sb);
                store(tile, pbar, 0, ra, sa);
#pragma unroll
                for (int i = 0; i < kTokW / 4; ++i) {
                    const uint32_t dst = tile + 8 * kChunkBytes + dsa::sw128_offset(row_base + 4 * i + (lane >> 3), lane & 7);
                    dsa::st_shared_v4(dst, rope[i]);
                    dsa::st_async_v4(dst + peer_delta, rope[i], pbar);
                }
                if (more) {
#pragma unroll
                    for (int i = 0; i < kPer; ++i) {
                        ra[i] = rb[i];
                        sa[i] = sb[i];
                    }
                }
            } else if constexpr (kFp8) {
#pragma unroll
                for (int i = 0; i < kTokW / 4; ++i) {
                    const int tl = 4 * i + (lane >> 3), u = lane & 7;
                    const int s = __shfl_sync(0xffffffffu, cur, tl);
                    const uint8_t *src = s >= 0 ? kv + (int64_t)s * kRowBytes + 528 + 16 * u : kv;
                    dsa::cp_async16_zfill(tile + 8 * kChunkBytes + dsa::sw128_offset(row_base + tl, u), src, s >= 0 ? 16u : 0u);
                }
                const bool more = it + 1 < nblk;
                load(cur, 1, rb, sb);
                store(tile, 0u, 0, ra, sa);
                if (more) load(s1, 0, ra, sa);
                store(tile, 0u, 1, rb, sb);
            } else {
                // Consecutive lanes take consecutive 16-byte units of a row, so a warp's loads
                // touch a few whole cache lines.
#pragma unroll 6
                for (int k = 0; k < kTokW * 72 / 32; ++k) {
                    const int q = 32 * k + lane;
                    const int tl = q / 72, u = q % 72;
                    const int s = __shfl_sync(0xffffffffu, cur, tl);
                    const uint32_t dst = tile + (u >> 3) * kChunkBytes + dsa::sw128_offset(row_base + tl, u & 7);
                    // Unused rows are zero-filled (source size 0, nothing read): P is 0 there,
                    // but 0 * garbage NaN would poison O.
                    const uint8_t *src = s >= 0 ? kv + (int64_t)s * kRowBytes + 16 * u : kv;
                    dsa::cp_async16_zfill(dst, src, s >= 0 ? 16u : 0u);
                }
            }
            if constexpr (kPair) {
                // One arrival per thread after its own stores (made visible to the async
                // proxy first); thread 0 also expects the bytes the peer writes here.
                dsa::fence_async_smem();
                if (pt == 0)
                    dsa::mbar_arrive_expect_tx(&full[stage], kPeerBytes);
                else
                    dsa::mbar_arrive(&full[stage]);
            } else {
                // Two arrivals per thread: its cp.async copies landing, and its own stores
                // (slot entries, dequantized values), made visible to the async proxy first.
                dsa::cp_async_mbar_arrive_noinc(&full[stage]);
                dsa::fence_async_smem();
                dsa::mbar_arrive(&full[stage]);
            }
            cur = s1;
            s1 = s2;
            s2raw = s3raw;
        }
        dsa::cp_async_wait_all();
    } else {
        // ---------------------------------------------------------------- consumers
        dsa::setmaxnreg_inc<kConsumerRegs>();
        const uint32_t peer_empty0 = kPair ? dsa::mapa_shared(dsa::smem_u32(&empty[0]), rank ^ 1u) : 0u;
        const int w = wg;
        // The warpgroup index as a warp-uniform value (kept in uniform registers).
        const int wu = __shfl_sync(0xffffffffu, wg, 0);
        const int t = tid & 127;
        const int warp = t >> 5, lane = t & 31;
        const int r0 = warp * 16 + (lane >> 2);  // this thread's rows: r0 and r0 + 8
        // Releases a stage after this thread's last read of it (slot entries, and the tile
        // through its finished wgmma). Paired: the peer's producer writes this tile too,
        // so each warp also arrives on the peer's barrier (all lanes' reads are complete).
        auto release = [&](int stage) {
            dsa::mbar_arrive(&empty[stage]);
            if constexpr (kPair) {
                __syncwarp();
                if (lane == 0) dsa::mbar_arrive_cluster(peer_empty0 + stage * 8);
            }
        };
        const int c0 = (lane & 3) * 2;
        const float sl2 = p.scale_log2;
        float o[128];
#pragma unroll
        for (int i = 0; i < 128; ++i) o[i] = 0.f;
        float m0 = -CUDART_INF_F, m1 = -CUDART_INF_F, l0 = 0.f, l1 = 0.f;

        for (int it = 0; it < nblk; ++it) {
            const int stage = it & 1;
            dsa::mbar_wait<kPair>(&full[stage], (it >> 1) & 1);
            // The tile was written by cp.async (generic proxy) and is read by wgmma.
            dsa::fence_async_smem();
            const uint32_t kvs = sKV + stage * kTileBytes;
            float s[16];
#pragma unroll
            for (int i = 0; i < 16; ++i) s[i] = 0.f;
            dsa::wgmma_fence();
            if constexpr (!kDescStep) {
#pragma unroll
                for (int kk = 0; kk < 36; ++kk) {
                    const uint32_t koff = (kk >> 2) * kChunkBytes + (kk & 3) * 32;
                    dsa::wgmma_bf16_ss<32>(s, dsa::smem_desc(sQ + koff, 16, 1024), dsa::smem_desc(kvs + w * 32 * 128 + koff, 16, 1024), kk > 0);
                }
            } else {
                // Tiles start on 1 KB boundaries and stay below 256 KB, so stepping K is
                // adding bytes / 16 to the descriptors' address field, never carrying out:
                // one add per MMA instead of a descriptor built from the address each time
                // (~13 instructions per MMA in the SASS).
                const uint64_t dq = dsa::smem_desc(sQ, 16, 1024);
                const uint64_t dk = dsa::smem_desc(kvs + wu * 32 * 128, 16, 1024);
#pragma unroll
                for (int kk = 0; kk < 36; ++kk) {
                    const uint32_t koff = (kk >> 2) * kChunkBytes + (kk & 3) * 32;
                    dsa::wgmma_bf16_ss<32>(s, dq + (koff >> 4), dk + (koff >> 4), kk > 0);
                }
            }
            dsa::wgmma_commit();
            dsa::wgmma_wait<0>();
            dsa::fence_operands(s);

            const int *valid = svalid + stage * kBlock + w * 32;
            float mx0 = -CUDART_INF_F, mx1 = -CUDART_INF_F;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    if (valid[8 * j + c0 + e] < 0) {
                        s[4 * j + e] = -CUDART_INF_F;
                        s[4 * j + 2 + e] = -CUDART_INF_F;
                    }
                    mx0 = fmaxf(mx0, s[4 * j + e]);
                    mx1 = fmaxf(mx1, s[4 * j + 2 + e]);
                }
            }
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
            if ((lane & 3) == 0) {
                smax[w * 64 + r0] = mx0;
                smax[w * 64 + r0 + 8] = mx1;
            }
            dsa::named_bar_sync(1, 256);
            mx0 = fmaxf(mx0, smax[(1 - w) * 64 + r0]);
            mx1 = fmaxf(mx1, smax[(1 - w) * 64 + r0 + 8]);
            const float mn0 = fmaxf(m0, mx0 * sl2), mn1 = fmaxf(m1, mx1 * sl2);
            // A row with nothing valid yet keeps max -inf; subtracting 0 then keeps P = 0.
            const float mu0 = mn0 == -CUDART_INF_F ? 0.f : mn0;
            const float mu1 = mn1 == -CUDART_INF_F ? 0.f : mn1;
            const float a0 = dsa::ex2(m0 - mu0), a1 = dsa::ex2(m1 - mu1);
            m0 = mn0;
            m1 = mn1;
            float ps0 = 0.f, ps1 = 0.f;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    s[4 * j + e] = dsa::ex2(fmaf(s[4 * j + e], sl2, -mu0));
                    s[4 * j + 2 + e] = dsa::ex2(fmaf(s[4 * j + 2 + e], sl2, -mu1));
                    ps0 += s[4 * j + e];
                    ps1 += s[4 * j + 2 + e];
                }
            }
            l0 = l0 * a0 + ps0;
            l1 = l1 * a1 + ps1;
            // Once the running max settles most blocks leave it unchanged: skip the rescale.
            if (a0 != 1.f || a1 != 1.f) {
#pragma unroll
                for (int j = 0; j < 32; ++j) {
                    o[4 * j] *= a0;
                    o[4 * j + 1] *= a0;
                    o[4 * j + 2] *= a1;
                    o[4 * j + 3] *= a1;
                }
            }
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int tk = w * 32 + 8 * j + c0;
                dsa::st_shared_u32(sP + dsa::sw128_offset(r0, tk >> 3) + (tk & 7) * 2, dsa::pack_bf16(s[4 * j], s[4 * j + 1]));
                dsa::st_shared_u32(sP + dsa::sw128_offset(r0 + 8, tk >> 3) + (tk & 7) * 2, dsa::pack_bf16(s[4 * j + 2], s[4 * j + 3]));
            }
            dsa::fence_async_smem();
            dsa::named_bar_sync(2, 256);
            dsa::wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < 4; ++kk)
                dsa::wgmma_bf16_ss<256, 1>(o, dsa::smem_desc(sP + kk * 32, 16, 1024),
                                    dsa::smem_desc(kvs + 4 * w * kChunkBytes + kk * 16 * 128, kChunkBytes, 1024), 1);
            dsa::wgmma_commit();
            dsa::wgmma_wait<0>();
            dsa::fence_operands(o);
            release(stage);
        }

        // ---------------------------------------------------------------- epilogue
        l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
        l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
        l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
        l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
        // smax is free: the other warpgroup read it before the last P exchange barrier.
        if ((lane & 3) == 0) {
            smax[w * 64 + r0] = l0;
            smax[w * 64 + r0 + 8] = l1;
        }
        dsa::named_bar_sync(1, 256);
        const float L0 = l0 + smax[(1 - w) * 64 + r0];
        const float L1 = l1 + smax[(1 - w) * 64 + r0 + 8];
        constexpr float kLn2 = 0.6931471805599453f, kLog2e = 1.4426950408889634f;
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
            const int rr = r0 + 8 * hr;
            if (rr >= heads_here) continue;
            const int h = hg * kHeads + rr;
            const float L = hr ? L1 : L0, m = hr ? m1 : m0;
            const bool lonely = !(L > 0.f);
            const int64_t orow = (int64_t)row * p.h_q + h;
            if (p.num_splits == 1) {
                float denom = L;
                if (p.attn_sink != nullptr) denom += dsa::ex2(p.attn_sink[h] * kLog2e - m);
                const float inv = lonely ? 0.f : 1.f / denom;
                __nv_bfloat16 *out = static_cast<__nv_bfloat16 *>(p.out) + orow * 512 + 256 * w + c0;
#pragma unroll
                for (int j = 0; j < 32; ++j)
                    *reinterpret_cast<uint32_t *>(out + 8 * j) =
                        dsa::pack_bf16(o[4 * j + 2 * hr] * inv, o[4 * j + 2 * hr + 1] * inv);
                if (w == 0 && (lane & 3) == 0) {
                    p.lse[orow] = lonely ? CUDART_INF_F : (m + log2f(L)) * kLn2;
                    if (p.max_logits != nullptr) p.max_logits[orow] = lonely ? -CUDART_INF_F : m * kLn2;
                }
            } else {
                const float inv = lonely ? 0.f : 1.f / L;
                const int64_t prow = (int64_t)split * p.rows * p.h_q + orow;
                float *out = p.partial_out + prow * 512 + 256 * w + c0;
#pragma unroll
                for (int j = 0; j < 32; ++j)
                    *reinterpret_cast<float2 *>(out + 8 * j) =
                        make_float2(o[4 * j + 2 * hr] * inv, o[4 * j + 2 * hr + 1] * inv);
                if (w == 0 && (lane & 3) == 0) p.partial_lse[prow] = lonely ? -CUDART_INF_F : (m + log2f(L)) * kLn2;
            }
        }
    }
    // Paired: no CTA leaves while its peer may still arrive on its barriers.
    if constexpr (kPair) dsa::cluster_sync();
}

}  // namespace dsa_sparse
