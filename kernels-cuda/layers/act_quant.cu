// FP8 1x128 quantization of f32 activations (the input of a block-scaled FP8 linear when
// the activation is kept in f32, as the reference's normalized residual stream is), with
// the crate's one scale rule and an IEEE division per value.
#include "device.cuh"
#include "layers_params.h"

// One warp per (row, 128-column block), 4 values per lane.
extern "C" __global__ void __launch_bounds__(128) dsa_act_quant_f32(const DsaActQuantParams p) {
    const int kbs = p.cols / 128;
    const int64_t w = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (w >= (int64_t)p.rows * kbs) return;
    const int r = (int)(w / kbs), kb = (int)(w % kbs);
    const float4 v = reinterpret_cast<const float4 *>(p.x + r * p.x_stride + kb * 128)[lane];
    float amax = fmaxf(fmaxf(fabsf(v.x), fabsf(v.y)), fmaxf(fabsf(v.z), fabsf(v.w)));
    amax = dsa::warp_max_xor(amax, 16);
    const float s = dsa::fp8_block_scale(amax, p.pow2 != 0);
    const uint32_t c = (uint32_t)dsa::fp8_quant(v.x, s) | ((uint32_t)dsa::fp8_quant(v.y, s) << 8) |
                       ((uint32_t)dsa::fp8_quant(v.z, s) << 16) | ((uint32_t)dsa::fp8_quant(v.w, s) << 24);
    reinterpret_cast<uint32_t *>(p.codes + (int64_t)r * p.cols + kb * 128)[lane] = c;
    if (lane == 0) p.scales[(int64_t)kb * p.scale_stride + r] = s;
}
