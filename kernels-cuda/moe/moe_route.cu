// Routing of the DeepSeek-V3 gate: one warp per token (see DsaMoeRouteParams).
//
// Every selection step is a warp argmax over (score, index) keys: a larger score wins and
// equal scores go to the smaller index, which is the reference's stable sort by score
// descending. NaN scores rank below every number (as -inf, then by index), so a token
// always gets top_k distinct in-range experts whatever its logits hold.
#include "moe_math.cuh"
#include "moe_params.h"

namespace {

struct Key {
    float v;
    int i;
};

__device__ __forceinline__ bool better(Key a, Key b) {
    return a.v > b.v || (a.v == b.v && a.i < b.i);
}

// Sentinel key: loses to every candidate (a real -inf candidate has a smaller index).
__device__ __forceinline__ Key none() { return Key{-__int_as_float(0x7f800000), 0x7fffffff}; }

__device__ __forceinline__ Key key_of(float v, int i) {
    return Key{v != v ? -__int_as_float(0x7f800000) : v, i};
}

__device__ __forceinline__ Key warp_best(Key k) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        Key other{__shfl_xor_sync(0xffffffffu, k.v, o), __shfl_xor_sync(0xffffffffu, k.i, o)};
        if (better(other, k)) k = other;
    }
    return k;
}

}  // namespace

extern "C" __global__ void __launch_bounds__(DSA_MOE_ROUTE_WARPS * 32)
    dsa_moe_route(const DsaMoeRouteParams p) {
    extern __shared__ float smem[];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int t = blockIdx.x * DSA_MOE_ROUTE_WARPS + warp;
    if (t >= p.tokens) return;  // whole warps leave; only warp-level syncs follow
    const int E = p.experts;
    float *s = smem + (size_t)warp * 2 * E;  // unbiased scores
    float *b = s + E;                        // biased scores (selection)
    const float *lg = p.logits + (size_t)t * E;
    for (int e = lane; e < E; e += 32) {
        const float sv = dsa::moe::sigmoid_f32(lg[e]);
        s[e] = sv;
        b[e] = __fadd_rn(sv, p.bias[e]);
    }
    __syncwarp();

    // Group scores: lane g sums the two largest biased scores of group g.
    const int per = E / p.n_group;
    Key g = none();
    if (lane < p.n_group) {
        float v1 = -__int_as_float(0x7f800000), v2 = v1;
        for (int e = lane * per; e < (lane + 1) * per; ++e) {
            const float x = b[e];
            if (x > v1) {
                v2 = v1;
                v1 = x;
            } else if (x > v2) {
                v2 = x;
            }
        }
        g = key_of(per >= 2 ? __fadd_rn(v1, v2) : v1, lane);
    }
    uint32_t kept = 0;
    for (int r = 0; r < p.topk_group; ++r) {
        const Key w = warp_best(g);
        kept |= 1u << w.i;
        if (lane == w.i) g = none();
    }

    // Experts: lane l owns e = l + 32 j; `taken` marks its experts already selected.
    uint32_t taken = 0;
    int my_id = 0;
    for (int r = 0; r < p.top_k; ++r) {
        Key best = none();
        for (int j = 0, e = lane; e < E; ++j, e += 32) {
            if ((taken >> j) & 1u) continue;
            if (!((kept >> (e / per)) & 1u)) continue;
            const Key c = key_of(b[e], e);
            if (better(c, best)) best = c;
        }
        const Key w = warp_best(best);
        if (w.i >= E) break;  // no candidate left: the host rejects such shapes
        if (lane == (w.i & 31)) taken |= 1u << (w.i >> 5);
        if (lane == r) my_id = w.i;
    }

    // Weights: unbiased scores, normalised by their sum taken in selection order.
    const float w = lane < p.top_k ? s[my_id] : 0.0f;
    float out = w;
    if (p.renormalize) {
        float sum = 0.0f;
        for (int r = 0; r < p.top_k; ++r) sum = __fadd_rn(sum, __shfl_sync(0xffffffffu, w, r));
        out = __fdiv_rn(w, sum);
    }
    out = __fmul_rn(out, p.route_scale);
    if (lane < p.top_k) {
        p.ids[(size_t)t * p.top_k + lane] = my_id;
        p.weights[(size_t)t * p.top_k + lane] = out;
    }
}
