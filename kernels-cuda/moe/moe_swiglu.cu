// SwiGLU + FP8 1x128 quantization of the w13 GEMM output (DsaMoeQuantParams): row r of
// h holds [gate | up]; a = bf16(silu(gate) * up) with the reference's f32 steps, then
// quantized for the w2 GEMM. Padding rows are not read, so whatever the GEMM left there
// cannot reach the codes (zero codes, floor scale).
#include "moe_math.cuh"
#include "moe_quant.cuh"

extern "C" __global__ void __launch_bounds__(DSA_MOE_QUANT_THREADS)
    dsa_moe_swiglu_quant(const DsaMoeQuantParams p) {
    dsa::moe::quantize_rows(p, [&](int r, int col, float (&v)[8]) {
        const uint16_t *row = p.x + (int64_t)r * p.x_stride;
        float g[8], u[8];
        dsa::bf16x8_to_f32(__ldg(reinterpret_cast<const uint4 *>(row + col)), g);
        dsa::bf16x8_to_f32(__ldg(reinterpret_cast<const uint4 *>(row + p.cols + col)), u);
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const float a = __fmul_rn(dsa::moe::silu_f32(g[j]), u[j]);
            v[j] = __bfloat162float(__float2bfloat16_rn(a));
        }
    });
}
