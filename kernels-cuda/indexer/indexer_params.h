/* Parameters of the lightning-indexer kernels (kernels-cuda/indexer/indexer_prep.cu,
 * kernels-cuda/indexer/indexer_logits.cu). Mirrored in Rust by bindgen into src/sys/indexer.rs. */
#ifndef DSA_INDEXER_PARAMS_H
#define DSA_INDEXER_PARAMS_H
#include "common_params.h"

/* Logits kernels: one warpgroup per CTA; a key tile is 64 keys (one cache page). */
#define DSA_INDEXER_LOGITS_THREADS 128
/* Largest next_n (tokens per sequence per decode step) of the decode logits. */
#define DSA_INDEXER_MAX_NEXT_N 4

/* Prefill logits kernels dsa_indexer_logits_prefill_h{16,32,64}: a CTA holds GROUPS
 * groups of 256 / heads queries (COLUMNS = 256 head rows each) and streams key tiles.
 * Dynamic shared memory = SMEM_BASE + SMEM_PER_QUERY * (queries per CTA). */
#define DSA_INDEXER_PREFILL_GROUPS 2
#define DSA_INDEXER_PREFILL_COLUMNS 256
#define DSA_INDEXER_PREFILL_SMEM_BASE 102400
#define DSA_INDEXER_PREFILL_SMEM_PER_QUERY 8

/* Decode logits kernels dsa_indexer_logits_decode_h{H}_q{Q}: Q queries of H heads per CTA
 * (N = H * Q columns). The instantiation list is DSA_INDEXER_DECODE_VARIANTS; its
 * bindgen-visible form is one mask per head count, bit Q - 1 set when the Q-query kernel
 * exists (checked equal to the list where the kernels are built). next_n runs on the
 * kernel with the smallest Q >= next_n. 16 x 3 = 48 columns has no kernel: next_n = 3 at
 * 16 heads runs the 4-query kernel with its last query empty.
 * Dynamic shared memory = SMEM_BASE + SMEM_PER_COLUMN * N, SMEM_BASE = 1024 + STAGES * 8464
 * (a ring of STAGES pages: 8 KB keys, 256 B scales, 16 B of page record, plus 1 KB of
 * alignment slack); the host launches as many CTAs per SM as that allows, at most
 * MAX_CTAS_PER_SM. */
#define DSA_INDEXER_DECODE_VARIANTS(X) \
    X(16, 1) X(16, 2) X(16, 4) X(32, 1) X(32, 2) X(32, 3) X(32, 4) X(64, 1) X(64, 2) X(64, 3) X(64, 4)
#define DSA_INDEXER_DECODE_QUERIES_H16 0xB
#define DSA_INDEXER_DECODE_QUERIES_H32 0xF
#define DSA_INDEXER_DECODE_QUERIES_H64 0xF
#define DSA_INDEXER_DECODE_STAGES 3
#define DSA_INDEXER_DECODE_MAX_CTAS_PER_SM 6
#define DSA_INDEXER_DECODE_SMEM_BASE 26416
#define DSA_INDEXER_DECODE_SMEM_PER_COLUMN 132

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
    /* [batch + 1], from the plan kernel. Untrusted: any content (stale, another batch's,
     * not monotonic) yields wrong logits but no access outside q8, w, context_lens,
     * block_table, cache or out's rows [0, batch * next_n) x columns [0, max_ctx). */
    const int32_t *plan;
    float *out;                  /* [batch * next_n, out_stride] */
    int64_t out_stride;
    int64_t num_pages;           /* pages in the cache; other ids read as -inf keys */
    int32_t batch;
    int32_t next_n;
    int32_t max_pages;
    int32_t max_ctx;
} DsaIndexerDecodeParams;

#endif
