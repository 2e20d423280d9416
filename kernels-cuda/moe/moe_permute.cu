// Permutation of token rows into the grouped-GEMM row space with the FP8 1x128
// quantization fused (DsaMoeQuantParams): row r reads token src[r] / top_k of x.
#include "moe_quant.cuh"

extern "C" __global__ void __launch_bounds__(DSA_MOE_QUANT_THREADS)
    dsa_moe_permute_quant(const DsaMoeQuantParams p) {
    dsa::moe::quantize_rows(p, [&](int r, int col, float (&v)[8]) {
        const int64_t token = p.src ? p.src[r] / p.top_k : r;
        const uint4 u = __ldg(reinterpret_cast<const uint4 *>(p.x + token * p.x_stride + col));
        dsa::bf16x8_to_f32(u, v);
    });
}
