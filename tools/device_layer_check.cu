// Compile check of the device layer: one kernel that issues every wrapper of
// kernels-cuda/common/, so ptxas sees each instruction form, including those no
// production kernel uses yet (TMA, multicast, elect-one, the other wgmma shapes).
// Never launched.   tools/device_layer_check.sh
#include <cuda.h>

#include "device.cuh"

template <int N>
__device__ void bf16_shape(uint64_t da, uint64_t db) {
    float d[N / 2] = {};
    dsa::wgmma_bf16_ss<N>(d, da, db, 0);
    dsa::wgmma_bf16_ss<N, 1>(d, da, db, 1);
    dsa::fence_operands(d);
}
template <int N>
__device__ void e4m3_shape(uint64_t da, uint64_t db, float *out) {
    float d[N / 2] = {};
    dsa::wgmma_e4m3_ss<N>(d, da, db, 1);
    dsa::wgmma_commit();
    dsa::wgmma_wait<0>();
    dsa::fence_operands(d);
    for (int i = 0; i < N / 2; ++i) out[i] += d[i];
}

extern "C" __global__ void __launch_bounds__(128) device_layer_check(const __grid_constant__ CUtensorMap tmap,
                                                                     const uint8_t *src, float *out) {
    extern __shared__ uint8_t raw[];
    uint8_t *smem = dsa::align_1024(raw);
    uint64_t *bar = reinterpret_cast<uint64_t *>(smem + 65536);
    const uint32_t s = dsa::smem_u32(smem);
    if (dsa::elect_one()) {
        dsa::mbar_init(bar, 1);
        dsa::fence_mbar_init();
        dsa::prefetch_tmap(&tmap);
    }
    __syncthreads();
    dsa::cp_async16(s, src);
    dsa::cp_async16_zfill(s + 16, src, 0);
    dsa::cp_async_commit();
    dsa::cp_async_wait_group<0>();
    dsa::cp_async_wait_all();
    dsa::cp_async_mbar_arrive_noinc(bar);
    dsa::mbar_arrive_expect_tx(bar, 4096);
    dsa::mbar_expect_tx(bar, 4096);
    dsa::tma_load_1d(s, src, 1024, bar);
    dsa::tma_load_2d(s, &tmap, bar, 0, 0);
    dsa::tma_load_3d(s, &tmap, bar, 0, 0, 0);
    dsa::tma_load_2d_multicast(s, &tmap, bar, 0x3, 0, 0);
    dsa::tma_load_3d_multicast(s, &tmap, bar, 0x3, 0, 0, 0);
    dsa::mbar_arrive(bar);
    dsa::mbar_wait(bar, 0);
    dsa::fence_async_smem();
    dsa::tma_store_2d(&tmap, s, 0, 0);
    dsa::tma_store_commit();
    dsa::tma_store_wait_read<0>();
    dsa::prefetch_l2(src, 256);
    dsa::named_bar_arrive(1, 128);
    dsa::named_bar_sync(1, 128);
    dsa::st_shared_u32(s, 1);
    dsa::st_shared_v4(s, dsa::ld_global_nc_v4(src));
    if (threadIdx.x < 128) dsa::setmaxnreg_inc<240>();
    else dsa::setmaxnreg_dec<40>();

    const uint64_t da = dsa::smem_desc(s, 16, 1024), db = dsa::smem_desc<dsa::Swizzle::B64>(s + 8192, 16, 512);
    dsa::wgmma_fence();
    bf16_shape<32>(da, db);
    bf16_shape<64>(da, db);
    bf16_shape<128>(da, db);
    bf16_shape<256>(da, db);
    e4m3_shape<16>(da, db, out);
    e4m3_shape<32>(da, db, out);
    e4m3_shape<64>(da, db, out);
    e4m3_shape<96>(da, db, out);
    e4m3_shape<128>(da, db, out);
    e4m3_shape<192>(da, db, out);
    e4m3_shape<256>(da, db, out);

    uint32_t w[8];
    dsa::dequant16(dsa::ld_global_nc_v4(src + 16), 0.5f, w);
    const float sc = dsa::fp8_block_scale(dsa::warp_max_xor(out[threadIdx.x], 16), true);
    __shared__ int sums[32];
    const int incl = dsa::block_inclusive_scan((int)w[threadIdx.x & 7], sums);
    out[threadIdx.x] = dsa::ex2(sc) + dsa::fp8_quant(out[1], sc) + dsa::smem_u32(dsa::align_1024_generic(raw)) + incl +
                       dsa::sw128_offset(threadIdx.x, 3);
}
