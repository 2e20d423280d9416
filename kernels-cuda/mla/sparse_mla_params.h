/* Parameters of the sparse MLA attention kernels (kernels-cuda/mla/sparse_mla_decode.cu and
 * kernels-cuda/mla/sparse_mla_prefill.cu). Mirrored in Rust by bindgen into src/sys/sparse_mla.rs. */
#ifndef DSA_SPARSE_MLA_PARAMS_H
#define DSA_SPARSE_MLA_PARAMS_H
#include "common_params.h"

/* Heads per CTA (the wgmma M dimension), indices per pipeline block, threads per CTA
 * (two consumer warpgroups and one producer warpgroup). */
#define DSA_SPARSE_HEADS_PER_CTA 64
#define DSA_SPARSE_BLOCK 64
#define DSA_SPARSE_THREADS 384
/* Dynamic shared memory of the attention kernels (bytes, including 1 KB of alignment
 * slack; the layout is in sparse_mla_fwd.cuh). */
#define DSA_SPARSE_SMEM_BYTES 231456
/* Most splits the decode makes of one query's index list. */
#define DSA_SPARSE_MAX_SPLITS 32

/* One launch attends `rows` query tokens (decode: batch * s_q, row = b * s_q + j;
 * prefill: s_q), each with h_q heads, over the key rows named by its own `topk` indices.
 *
 * A CTA owns (64-head group, row, split); split s covers index blocks (64 indices each)
 * [s * blocks_per_split, (s + 1) * blocks_per_split). With num_splits == 1 the kernel
 * writes out / lse / max_logits directly; otherwise it writes per-split partials (out
 * normalized over its split, lse natural log, -inf for an empty split) that the combine
 * kernel (mla_combine_params.h) merges. */
typedef struct DsaSparseMlaParams {
    /* bf16 [rows, h_q, 576]: query (512 latent then 64 rope). */
    const void *q;
    /* Key/value rows. FP8 kernel: MLA FP8 cache, 656 B per slot. bf16 kernel: 576 bf16 per
     * slot/row (the MLA bf16 cache, or prefill's flat kv). */
    const void *kv;
    /* int32 [rows, topk]: slot / row per index; negative or >= kv_rows means unused. */
    const int32_t *indices;
    /* int32 [rows / s_q] or NULL: indices at positions >= topk_length[row / s_q] are
     * unused (values clamped to [0, topk]). */
    const int32_t *topk_length;
    /* f32 [h_q] or NULL: attention sink per head (adds exp(sink) to the denominator only). */
    const float *attn_sink;
    /* bf16 [rows, h_q, 512] */
    void *out;
    /* f32 [rows, h_q], natural log, sink not included; +inf for a query with no valid index. */
    float *lse;
    /* f32 [rows, h_q] or NULL: max of scale * q.k over valid indices, -inf when none. */
    float *max_logits;
    /* f32 [num_splits, rows, h_q, 512] and [num_splits, rows, h_q]; used when num_splits > 1. */
    float *partial_out;
    float *partial_lse;
    /* Rows of kv (decode: cache capacity in tokens; prefill: s_kv). */
    int64_t kv_rows;
    int32_t rows;
    int32_t s_q;
    int32_t h_q;
    int32_t topk;
    int32_t num_splits;
    int32_t blocks_per_split;
    /* softmax scale, and the same times log2(e) (scores go through exp2). */
    float scale;
    float scale_log2;
} DsaSparseMlaParams;

#endif
