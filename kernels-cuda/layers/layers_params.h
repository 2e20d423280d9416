/* Parameters of the model-layer kernels (kernels-cuda/layers/*.cu): the small ops a
 * DeepSeek-V3.2 forward needs around the attention and MoE families (embedding, residual
 * add, RMSNorm, LayerNorm, MLA RoPE, FP8 quantization of f32 activations).
 * Mirrored in Rust by bindgen into src/sys/layers.rs. bf16 buffers are `void *` (plain C). */
#ifndef DSA_LAYERS_PARAMS_H
#define DSA_LAYERS_PARAMS_H
#include "common_params.h"

/* Threads per block of the row kernels (one block per row). */
#define DSA_LAYERS_ROW_THREADS 1024

/* out[r, :] = table[tokens[r], :] (f32 rows of `dim`); a token outside [0, vocab) gives a
 * zero row. */
typedef struct DsaEmbeddingParams {
    const float *table;
    const int32_t *tokens;
    float *out;
    int32_t rows;
    int32_t dim;
    int32_t vocab;
} DsaEmbeddingParams;

/* x[i] += y[i] for i < n: the f32 residual stream plus a bf16 block output. */
typedef struct DsaResidualAddParams {
    float *x;
    const void *y;
    int64_t n;
} DsaResidualAddParams;

/* RMSNorm of `rows` rows of `dim` values: input row r at x + r * x_stride (f32 when x_f32
 * is set, else bf16 x_bf16); out = (x * inv) * weight in f32 with inv = 1 / sqrt(mean(x^2)
 * + eps) computed in f64 and rounded to f32 once. Outputs (either may be null): f32 rows at
 * out_f32 + r * dim, bf16 rows at out_bf16 + r * out_bf16_stride. */
typedef struct DsaRmsNormParams {
    const float *x_f32;
    const void *x_bf16;
    const float *weight;
    float *out_f32;
    void *out_bf16;
    int64_t x_stride;
    int64_t out_bf16_stride;
    int32_t rows;
    int32_t dim;
    float eps;
} DsaRmsNormParams;

/* LayerNorm (biased variance) of bf16 rows at x + r * x_stride: mean, variance and
 * (x - mean) * inv in f64, then f32 `* weight + bias`, rounded to bf16 into out[r, dim]. */
typedef struct DsaLayerNormParams {
    const void *x;
    const float *weight;
    const float *bias;
    void *out;
    int64_t x_stride;
    int32_t rows;
    int32_t dim;
    float eps;
} DsaLayerNormParams;

/* Interleaved RoPE (pairs (2i, 2i+1), 32 pairs) of the 64 rope values of each (token,
 * head): read bf16 at src + t * src_token_stride + h * src_head_stride, write bf16 at
 * dst + t * dst_token_stride + h * dst_head_stride; rotation in f32 (`a c - b s`,
 * `a s + b c`, each product rounded) with cos/sin f32 [max_pos, 32] at positions[t].
 * A position outside [0, max_pos) writes zeros. */
typedef struct DsaMlaRopeParams {
    const void *src;
    void *dst;
    const int32_t *positions;
    const float *cos;
    const float *sin;
    int64_t src_token_stride;
    int64_t dst_token_stride;
    int32_t src_head_stride;
    int32_t dst_head_stride;
    int32_t tokens;
    int32_t heads;
    int32_t max_pos;
} DsaMlaRopeParams;

/* FP8 1x128 quantization of f32 rows (x + r * x_stride, `cols` a multiple of 128):
 * codes e4m3 [rows, cols], scales f32 MN-major [cols / 128, scale_stride] (element (r, kb)
 * at kb * scale_stride + r), scale = max(amax, 1e-4) / 448 (rounded up to a power of two
 * when pow2), code = e4m3(x / scale). */
typedef struct DsaActQuantParams {
    const float *x;
    uint8_t *codes;
    float *scales;
    int64_t x_stride;
    int32_t rows;
    int32_t cols;
    int32_t scale_stride;
    int32_t pow2;
} DsaActQuantParams;

#endif
