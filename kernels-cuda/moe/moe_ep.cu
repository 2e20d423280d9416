// Expert-parallel exchange kernels (moe_ep_params.h): the routing mapped to ranks, the
// local expert id of each send row, the received FP8 rows into the masked layout, and the
// expert outputs back into message order. Pure gathers: each output element has one
// writer, so the results are deterministic.
#include <stdint.h>

#include "moe_ep_params.h"

namespace {
constexpr int kThreads = DSA_MOE_EP_THREADS;
constexpr int kWarps = kThreads / 32;
}  // namespace

extern "C" __global__ void __launch_bounds__(kThreads) dsa_moe_ep_rank_ids(const DsaMoeEpIdsParams p) {
    for (int i = blockIdx.x * kThreads + threadIdx.x; i < p.slots; i += gridDim.x * kThreads) {
        const int e = p.ids[i];
        p.rank_ids[i] = (e >= 0 && e < p.experts) ? e / p.experts_per_rank : -1;
    }
}

extern "C" __global__ void __launch_bounds__(kThreads) dsa_moe_ep_send_experts(const DsaMoeEpIdsParams p) {
    for (int r = blockIdx.x * kThreads + threadIdx.x; r < p.send_rows; r += gridDim.x * kThreads) {
        const int s = p.send_src[r];
        int local = -1;
        if (s >= 0 && s < p.slots) {
            const int e = p.ids[s];
            if (e >= 0 && e < p.experts) local = e - (r / p.capacity) * p.experts_per_rank;
        }
        p.send_experts[r] = local;
    }
}

extern "C" __global__ void __launch_bounds__(kThreads) dsa_moe_ep_gather_fp8(const DsaMoeEpGatherParams p) {
    const int lane = threadIdx.x % 32;
    const int kb_count = p.cols / 128;
    const int chunks = p.cols / 16;  // uint4 per row
    const int total = p.groups * p.max_m;
    for (int m = blockIdx.x * kWarps + threadIdx.x / 32; m < total; m += gridDim.x * kWarps) {
        const int g = m / p.max_m;
        const int i = m - g * p.max_m;
        const int valid = min(max(p.masked_m[g], 0), p.max_m);
        const int padded = min((valid + p.align - 1) / p.align * p.align, p.max_m);
        if (i >= padded) continue;
        const int s = i < valid ? p.src[m] : -1;
        uint4 *dst = reinterpret_cast<uint4 *>(p.codes + (size_t)m * p.cols);
        float *sdst = p.scales + (size_t)g * kb_count * p.max_m + i;
        if (s >= 0 && s < p.recv_rows) {
            const uint4 *from = reinterpret_cast<const uint4 *>(p.recv_codes + (size_t)s * p.cols);
            for (int c = lane; c < chunks; c += 32) dst[c] = __ldg(from + c);
            const int msg = s / p.capacity;
            const float *sfrom = p.recv_scales + (size_t)msg * kb_count * p.capacity + (s - msg * p.capacity);
            for (int kb = lane; kb < kb_count; kb += 32) sdst[(size_t)kb * p.max_m] = __ldg(sfrom + (size_t)kb * p.capacity);
        } else {
            for (int c = lane; c < chunks; c += 32) dst[c] = make_uint4(0, 0, 0, 0);
            for (int kb = lane; kb < kb_count; kb += 32) sdst[(size_t)kb * p.max_m] = 0.0f;
        }
    }
}

extern "C" __global__ void __launch_bounds__(kThreads) dsa_moe_ep_gather_rows(const DsaMoeEpRowsParams p) {
    const int lane = threadIdx.x % 32;
    const int chunks = p.cols / 8;  // uint4 of 8 bf16
    for (int r = blockIdx.x * kWarps + threadIdx.x / 32; r < p.rows; r += gridDim.x * kWarps) {
        const int s = p.index[r];
        uint4 *dst = reinterpret_cast<uint4 *>(p.out + (size_t)r * p.cols);
        if (s >= 0 && s < p.in_rows) {
            const uint4 *from = reinterpret_cast<const uint4 *>(p.in + (size_t)s * p.cols);
            for (int c = lane; c < chunks; c += 32) dst[c] = __ldg(from + c);
        } else {
            for (int c = lane; c < chunks; c += 32) dst[c] = make_uint4(0, 0, 0, 0);
        }
    }
}
