/* Parameters of the lightning-indexer kernels (kernels-cuda/indexer/indexer_prep.cu,
 * kernels-cuda/indexer/indexer_logits.cu). Mirrored in Rust by bindgen into src/sys/indexer.rs. */
#ifndef DSA_INDEXER_PARAMS_H
#define DSA_INDEXER_PARAMS_H
#include "common_params.h"

/* Fused q/k preparation: rotate-half RoPE on dims 0..63 (pairs (i, i+32)), Hadamard over
 * 128 dims (in double, rounded to float once), FP8 e4m3 with one power-of-two scale per
 * 128 values. One row = 128 bf16 values; token t, head h reads x + t * x_token_stride +
 * h * 128 (k: heads = 1). */
typedef struct DsaIndexerPrepParams {
    const void *x;              /* bf16 */
    int64_t x_token_stride;     /* elements */
    const int32_t *positions;   /* [num_tokens] */
    const float *rope_cos;      /* [max_pos, 32] */
    const float *rope_sin;      /* [max_pos, 32] */
    int32_t max_pos;
    int32_t num_tokens;
    int32_t heads;
    float w_fold;               /* 128^-0.5 as float (q only) */
    double hadamard_scale;      /* 128^-0.5 as double */
    /* q: codes [num_tokens, heads, 128]; w_out[t, h] = (w[t, h] * qscale) * w_fold */
    uint8_t *q8;
    const float *w;
    float *w_out;
    /* k: token t goes to physical slot slots[t] of the indexer cache (skipped when
     * negative or >= capacity_tokens) */
    const int32_t *slots;
    uint8_t *cache;
    int64_t capacity_tokens;
} DsaIndexerPrepParams;

/* Ragged prefill logits: out[t, s] for s in [0, s_kv), -inf outside [ks[t], ke[t]). */
typedef struct DsaIndexerPrefillParams {
    const uint8_t *q8;          /* [s, heads, 128] e4m3 */
    const float *w;             /* [s, heads] folded weights */
    const uint8_t *k8;          /* [s_kv, 128] e4m3 */
    const float *kscale;        /* [s_kv] */
    const int32_t *ks;          /* [s] */
    const int32_t *ke;          /* [s] */
    float *out;                 /* [s, out_stride] */
    int64_t out_stride;
    int32_t s;
    int32_t s_kv;
} DsaIndexerPrefillParams;

/* Decode schedule: plan[b] = pages of batches 0..b-1 (b = 0..batch), where a batch's
 * pages are ceil(max(len, 0) / 64) clamped to max_pages and to ceil(max_ctx / 64). */
typedef struct DsaIndexerPlanParams {
    const int32_t *context_lens; /* [batch] */
    int32_t *plan;               /* [batch + 1] */
    int32_t batch;
    int32_t max_pages;
    int32_t max_ctx;
    int32_t _pad;
} DsaIndexerPlanParams;

/* Paged decode logits: row b * next_n + j sees logical keys [0, len_b - next_n + j]. */
typedef struct DsaIndexerDecodeParams {
    const uint8_t *q8;           /* [batch, next_n, heads, 128] e4m3 */
    const float *w;              /* [batch * next_n, heads] folded weights */
    const uint8_t *cache;        /* indexer K cache, 8448 B per page */
    const int32_t *context_lens; /* [batch] */
    const int32_t *block_table;  /* [batch, max_pages] */
    const int32_t *plan;         /* [batch + 1], from the plan kernel */
    float *out;                  /* [batch * next_n, out_stride] */
    int64_t out_stride;
    int64_t num_pages;           /* pages in the cache; other ids read as -inf keys */
    int32_t batch;
    int32_t next_n;
    int32_t max_pages;
    int32_t max_ctx;
} DsaIndexerDecodeParams;

#endif
