/* Parameters of dense paged MLA decode: the split-KV plan and the split kernel
 * (kernels-cuda/mla/dense_mla_decode.cu); the MLA combine (mla_combine_params.h) merges
 * the partials.
 * Mirrored in Rust by bindgen into src/sys/dense_mla.rs. */
#ifndef DSA_DENSE_MLA_PARAMS_H
#define DSA_DENSE_MLA_PARAMS_H
#include "common_params.h"

/* Heads handled by one CTA of the split kernel (the wgmma M dimension), and its threads
 * (two warpgroups). */
#define DSA_DENSE_HEADS_PER_CTA 64
#define DSA_DENSE_THREADS 256
/* Tokens per KV block: one cache page. */
#define DSA_DENSE_BLOCK_N 64
/* Fixed cost, in KV blocks, charged by the plan for every piece of work a CTA starts
 * (loading q, writing a partial result, merging it), as FlashMLA's scheduler does. */
#define DSA_DENSE_PIECE_OVERHEAD 4
/* Smallest number of cost units a part gets, so short contexts are not split into
 * pieces whose partials cost more to merge than to compute. */
#define DSA_DENSE_MIN_PART_COST 8
/* Plan workspace (int32): a header, then 2 ints per part, then 4 ints per sequence. */
#define DSA_DENSE_PLAN_HEADER 4
#define DSA_DENSE_PLAN_PART_INTS 2
#define DSA_DENSE_PLAN_SEQ_INTS 4
/* Dynamic shared memory of the split kernels (bytes, including 1 KB of alignment slack). */
#define DSA_DENSE_SMEM_BF16 231424
#define DSA_DENSE_SMEM_FP8 199680
/* Largest batch the single-CTA plan kernel handles (its shared-memory prefix array). */
#define DSA_DENSE_PLAN_MAX_BATCH 32768

/* Plan layout, int32:
 *   [0] part_cost  L: cost units per part;  [1] parts actually used;  [2] total splits;
 *   [3] reserved;
 *   part p (at 4 + 2p): first sequence, one past the last sequence it touches;
 *   sequence b (at 4 + 2P + 4b): cost_start, kv_blocks, split_base, num_splits.
 * Sequence b occupies cost units [cost_start, cost_start + cost) with
 * cost = kv_blocks + PIECE_OVERHEAD (0 when empty); part p owns units [pL, (p+1)L). */
typedef struct DsaDenseMlaPlanParams {
    const int32_t *seq_lens; /* [batch] */
    int32_t *plan;           /* workspace, see above */
    int32_t batch;
    int32_t max_pages;       /* kv_blocks of a sequence is clamped to the block table width */
    int32_t num_parts;
    int32_t reserved;
} DsaDenseMlaPlanParams;

/* The split kernel: grid (num_parts, s_q * head_groups). CTA (p, y) computes, for query
 * j = y / head_groups and heads [64 g, 64 g + 64) with g = y % head_groups, the attention
 * of every piece of part p, each normalized over its own keys, into
 *   partial_out [splits, s_q, h_q, 512] f32 and partial_lse [splits, s_q, h_q] f32
 * (natural log; -inf and zeros for a piece with no visible key). */
typedef struct DsaDenseMlaDecodeParams {
    const void *q;             /* bf16 [batch, s_q, h_q, 576] */
    const void *kv;            /* MLA cache: bf16 [pages, 64, 576] or FP8 656 B/token */
    const int32_t *block_table;/* [batch, max_pages] */
    const int32_t *seq_lens;   /* [batch] */
    /* Untrusted: any content yields wrong numbers but no access outside the buffers (every
     * value read from it is clamped, split indices to [0, batch + num_parts)). */
    const int32_t *plan;
    float *partial_out;
    float *partial_lse;
    int32_t batch;
    int32_t s_q;
    int32_t h_q;
    int32_t head_groups;
    int32_t max_pages;
    int32_t num_pages;         /* cache pages: block-table entries outside [0, num_pages) are skipped */
    int32_t num_parts;
    float scale_log2;          /* softmax scale * log2(e) */
} DsaDenseMlaDecodeParams;

#endif
