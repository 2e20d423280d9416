/* Parameters of the top-k selection kernel (kernels-cuda/topk/topk.cu).
 * Mirrored in Rust by bindgen into src/sys/topk.rs. */
#ifndef DSA_TOPK_PARAMS_H
#define DSA_TOPK_PARAMS_H
#include "common_params.h"

/* Largest k the kernel selects (its shared-memory output buffer holds this many). */
#define DSA_TOPK_MAX_K 4096
/* Threads per CTA; one CTA per row. */
#define DSA_TOPK_THREADS 1024
/* Candidates of the threshold bin held in shared memory; a larger bin is narrowed by
 * further passes over the row in global memory until it fits. */
#define DSA_TOPK_CAND_CAP 16384
/* Dynamic shared memory per CTA (>= the kernel's layout, checked by a static_assert). */
#define DSA_TOPK_SMEM_BYTES 173056

/* Top-k of each fp32 row over its valid range.
 *
 * Row r is logits[r * row_stride + c] for c in [0, cols). Its valid range is
 * [start_r, end_r) with start_r = starts ? starts[r] : 0 and end_r = ends[r], clamped to
 * [0, cols]. With seq_lens (paged decode, ends unused), row r is query j = r % next_n of
 * sequence b = r / next_n and end_r = seq_lens[b] - next_n + 1 + j: the causal rule of the
 * decode logits, derived here from the per-sequence lengths. NaN and -inf never compete; +inf does. Output row r is out[r * k .. r * k + k]:
 * the column indices of the k largest values (ties: smaller index first), -1 padding past
 * the number of selected values. sorted != 0: by value descending, then index ascending;
 * otherwise in no particular order (the padding is always last).
 *
 * Fused outputs, applied to every selected index i in this order:
 *   offsets: i += offsets[r];
 *   block_table: i -> block_table[(r / next_n) * max_pages + i / 64] * 64 + i % 64, and -1
 *   where i < 0, i / 64 >= max_pages, or the table entry is negative or too large for the
 *   slot to fit an int32.
 * Offsets and table entries may hold any value: the arithmetic is 64-bit, the table is
 * read only inside its row, and without a table an out-of-int32 result is returned wrapped
 * (never used to address memory here; consumers bounds-check slots). */
typedef struct DsaTopkParams {
    const float *logits;
    int64_t row_stride;
    const int32_t *starts;      /* [rows] or NULL */
    const int32_t *ends;        /* [rows], unused with seq_lens */
    const int32_t *offsets;     /* [rows] or NULL */
    const int32_t *block_table; /* [batch, max_pages] or NULL */
    int32_t *out;               /* [rows, k] */
    int32_t rows;
    int32_t cols;
    int32_t k;
    int32_t sorted;
    int32_t max_pages;
    int32_t next_n;
    const int32_t *seq_lens;    /* [rows / next_n] or NULL */
} DsaTopkParams;

#endif
