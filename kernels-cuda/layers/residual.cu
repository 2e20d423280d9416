// The residual stream: the embedding gather that starts it and the add of each block's
// bf16 output into it (f32, as the reference keeps it).
#include <cuda_bf16.h>

#include "device.cuh"
#include "layers_params.h"

// One block per row; 4 floats per thread per step (dim is a multiple of 4, checked on the host).
extern "C" __global__ void __launch_bounds__(DSA_LAYERS_ROW_THREADS)
dsa_embedding(const DsaEmbeddingParams p) {
    const int r = blockIdx.x;
    if (r >= p.rows) return;
    const int tok = p.tokens[r];
    const bool ok = tok >= 0 && tok < p.vocab;  // device data: checked here
    float4 *out = reinterpret_cast<float4 *>(p.out + (int64_t)r * p.dim);
    const float4 *row = reinterpret_cast<const float4 *>(p.table + (int64_t)(ok ? tok : 0) * p.dim);
    for (int i = threadIdx.x; i < p.dim / 4; i += blockDim.x)
        out[i] = ok ? row[i] : make_float4(0.f, 0.f, 0.f, 0.f);
}

extern "C" __global__ void __launch_bounds__(256) dsa_residual_add(const DsaResidualAddParams p) {
    const __nv_bfloat16 *y = static_cast<const __nv_bfloat16 *>(p.y);
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < p.n; i += (int64_t)gridDim.x * blockDim.x)
        p.x[i] = __fadd_rn(p.x[i], __bfloat162float(y[i]));
}
