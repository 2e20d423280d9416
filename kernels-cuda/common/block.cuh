// CTA-wide cooperative helpers.
#pragma once

namespace dsa {

// Inclusive prefix sum over the CTA in thread order (blockDim.x a multiple of 32, at most
// 1024). `warp_sums` is 32 elements of shared memory; callers separate two calls by a
// barrier, since the second call overwrites it.
template <class T>
__device__ __forceinline__ T block_inclusive_scan(T v, T *warp_sums) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const T n = __shfl_up_sync(0xffffffffu, v, o);
        if (lane >= o) v += n;
    }
    if (lane == 31) warp_sums[warp] = v;
    __syncthreads();
    if (warp == 0) {
        // Entries of warps past blockDim.x / 32 are stale, but only ever added into the
        // scan of higher lanes, which no warp reads.
        T w = warp_sums[lane];
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const T n = __shfl_up_sync(0xffffffffu, w, o);
            if (lane >= o) w += n;
        }
        warp_sums[lane] = w;
    }
    __syncthreads();
    if (warp > 0) v += warp_sums[warp - 1];
    return v;
}

}  // namespace dsa
