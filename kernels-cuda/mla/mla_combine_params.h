/* Parameters of the split-KV combine shared by the dense and the sparse MLA decode
 * (kernels-cuda/mla/mla_combine.cu). Mirrored in Rust by bindgen into src/sys/mla_combine.rs. */
#ifndef DSA_MLA_COMBINE_PARAMS_H
#define DSA_MLA_COMBINE_PARAMS_H
#include "common_params.h"

/* Warps (rows) per CTA of the combine kernel. */
#define DSA_MLA_COMBINE_WARPS 8

/* Merge of split partials into the final output: one warp per output row.
 *
 * Output rows are grouped: row r of group g is (g, r) for r < rows_per_group, at
 * out[(g * rows_per_group + r) * 512] and lse[g * rows_per_group + r]. Split i of that row
 * is partial row (base_g + i) * rows_per_group + r, i < n_g, of
 *   partial_out f32 [max_splits, rows_per_group, 512] and partial_lse f32 [max_splits, rows_per_group]
 * (each partial normalized over its own keys, lse natural log, -inf when it saw none).
 *  - plan != NULL (dense decode): base_g and n_g are sequence g's split_base and
 *    num_splits in the dense plan (dense_mla_params.h), which has num_parts parts.
 *  - plan == NULL (sparse decode): one group, base 0, n = num_splits.
 * A group whose splits are not inside [0, max_splits) counts as having none, so a plan of
 * another geometry never sends a read past the partials.
 *
 * out = sum_i exp(lse_i - lse) out_i with lse = ln sum_i exp(lse_i); with attn_sink
 * (f32 [h_q], row r's head is r % h_q) out is further scaled by 1 / (1 + exp(sink - lse)),
 * and lse excludes the sink. A row with no non-empty split gets out 0 and lse +inf. */
typedef struct DsaMlaCombineParams {
    const float *partial_out;
    const float *partial_lse;
    const int32_t *plan;        /* dense plan or NULL */
    const float *attn_sink;     /* [h_q] or NULL */
    void *out;                  /* bf16 */
    float *lse;
    int32_t groups;
    int32_t rows_per_group;
    int32_t h_q;
    int32_t num_parts;          /* plan != NULL: the plan's parts (its layout) */
    int32_t num_splits;         /* plan == NULL: splits of every row */
    int32_t max_splits;         /* partial rows in the workspace */
} DsaMlaCombineParams;

#endif
