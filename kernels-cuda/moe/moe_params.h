/* Parameters of the MoE routing, plan, permutation + quantization, SwiGLU + quantization
 * and combine kernels (kernels-cuda/moe/moe_*.cu). Mirrored in Rust by bindgen into
 * src/sys/moe.rs. The grouped GEMM has its own header (grouped_gemm_params.h).
 *
 * Row spaces (the layouts of src/moe/mod.rs):
 *   contiguous: rows [0, rows) with rows = round_up(slots + experts * (align - 1), align),
 *     expert e's segment [offsets[e], offsets[e + 1]) is a multiple of align long;
 *   masked: rows [0, experts * max_m), expert e owns [e * max_m, (e + 1) * max_m).
 * A slot is (token, j) with index token * top_k + j. */
#ifndef DSA_MOE_PARAMS_H
#define DSA_MOE_PARAMS_H
#include "common_params.h"

/* Largest expert count (the routing keeps two floats per expert per token in shared
 * memory; the plan holds one count per expert per CTA thread). */
#define DSA_MOE_MAX_EXPERTS 1024
/* Largest number of expert groups (one group per lane of a warp). */
#define DSA_MOE_MAX_GROUPS 32
/* Largest top_k (one selected expert per lane of a warp). */
#define DSA_MOE_MAX_TOP_K 32
/* Tokens per routing CTA, one warp each. */
#define DSA_MOE_ROUTE_WARPS 4
/* Threads of the plan kernels (one CTA counts; one CTA per expert scatters). */
#define DSA_MOE_PLAN_THREADS 1024
/* Threads of the quantizing kernels (one warp per row, one half-warp per 128 columns). */
#define DSA_MOE_QUANT_THREADS 256
/* Threads of the combine kernel (8 columns each, one token per grid row). */
#define DSA_MOE_COMBINE_THREADS 128
/* FP8 block width of activations (1x128). */
#define DSA_MOE_BLOCK 128

/* Routing of each token from fp32 gate logits (DeepSeek-V3 gate, "noaux_tc"):
 * s = sigmoid(logit), selection by s + bias: groups of experts / n_group experts, group
 * score = sum of its top-2 biased scores, keep topk_group groups, pick top_k experts in
 * them; ties to the smaller group / expert index. weights = s of the chosen experts,
 * divided by their sum in selection order when renormalize, times route_scale. */
typedef struct DsaMoeRouteParams {
    const float *logits; /* [tokens, experts] */
    const float *bias;   /* [experts] */
    int32_t *ids;        /* [tokens, top_k], selection order */
    float *weights;      /* [tokens, top_k] */
    int32_t tokens;
    int32_t experts;
    int32_t n_group;
    int32_t topk_group;
    int32_t top_k;
    int32_t renormalize;
    float route_scale;
    int32_t reserved;
} DsaMoeRouteParams;

/* The plan of a routing (two launches: count, then scatter). ids outside [0, experts) are
 * dropped slots. Rows of an expert are in slot order (token, then j).
 *   counts[e]      slots routed to e (before the masked cap)
 *   offsets[e]     first row of e's segment, offsets[experts] = rows in use
 *   row_of[slot]   row of the slot, -1 when dropped (or past max_m in the masked layout)
 *   src[row]       slot of the row, -1 on padding rows (every row of a segment is written;
 *                  contiguous rows past offsets[experts] too)
 *   m_indices[row] contiguous only: expert of the row, -1 on padding rows and the tail
 *   masked_m[e]    masked only: min(counts[e], max_m)
 *   status[0]      1 when some expert got more than max_m slots (masked), else 0
 *   status[1]      offsets[experts] */
typedef struct DsaMoePlanParams {
    const int32_t *ids; /* [slots] */
    int32_t *counts;
    int32_t *offsets;
    int32_t *row_of;
    int32_t *src;
    int32_t *m_indices; /* NULL in the masked layout */
    int32_t *masked_m;  /* NULL in the contiguous layout */
    int32_t *status;
    int32_t slots;
    int32_t experts;
    int32_t align;
    int32_t masked;
    int32_t max_m;
    int32_t rows; /* row capacity of src / m_indices */
} DsaMoePlanParams;

/* FP8 1x128 quantization of rows into a grouped-GEMM operand:
 *   permute (moe_permute_quant): value(row, c) = x[(src[row] / top_k) * x_stride + c];
 *     src == NULL means row r reads x row r (the shared expert's rows);
 *   SwiGLU (moe_swiglu_quant): value(row, c) = bf16(silu(h[row, c]) * h[row, cols + c])
 *     with h rows of x_stride = 2 * cols elements.
 * Rows with src[row] outside [0, slots) (padding) get codes 0 and the scale of a zero block, and read
 * nothing. Which rows are written: contiguous [0, offsets[experts]) (or [0, rows) when
 * offsets is NULL); masked, for group g, rows [0, min(round_up(masked_m[g], align),
 * max_m)). Scales are MN-major: contiguous scales[kb * scale_stride + row], masked
 * scales[(g * cols / 128 + kb) * max_m + row - g * max_m]. scale = max(amax, 1e-4) / 448
 * (rounded up to a power of two when pow2), code = e4m3(value / scale). */
typedef struct DsaMoeQuantParams {
    const uint16_t *x;      /* bf16 */
    const int32_t *src;     /* [rows] or NULL */
    const int32_t *offsets; /* [experts + 1] or NULL (contiguous) */
    const int32_t *masked_m; /* [experts] (masked) or NULL */
    uint8_t *codes;          /* [rows, cols] e4m3 */
    float *scales;
    int64_t x_stride;
    int32_t rows;
    int32_t cols;
    int32_t top_k;
    int32_t experts;
    int32_t max_m;
    int32_t scale_stride;
    int32_t align;
    int32_t pow2;
    int32_t slots; /* src values outside [0, slots) are treated as padding */
    int32_t reserved;
} DsaMoeQuantParams;

/* Combine: out[t, c] = bf16(sum_j weights[t, j] * y[row_of[t * top_k + j], c] (+ shared[t, c])),
 * in slot order j with fp32 fused multiply-adds, the shared term added last; slots with
 * row_of < 0 (or >= rows) contribute nothing. No atomics: the same inputs give the same
 * bits. */
typedef struct DsaMoeCombineParams {
    const uint16_t *y;      /* bf16 [rows, hidden] */
    const int32_t *row_of;  /* [tokens, top_k] */
    const float *weights;   /* [tokens, top_k] */
    const uint16_t *shared; /* bf16 [tokens, hidden] or NULL */
    uint16_t *out;          /* bf16 [tokens, hidden] */
    int32_t tokens;
    int32_t hidden;
    int32_t top_k;
    int32_t rows;
} DsaMoeCombineParams;

#endif
