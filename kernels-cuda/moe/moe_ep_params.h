/* Parameters of the expert-parallel exchange kernels (kernels-cuda/moe/moe_ep.cu). Mirrored
 * in Rust by bindgen into src/sys/moe_ep.rs.
 *
 * The exchange (src/moe/expert_parallel.rs): every (source, destination) pair of ranks has
 * a message of `capacity` rows; the send buffer is [ranks, capacity] rows (the masked plan
 * over ranks of the routing), the receive buffer [ranks, capacity] rows, source-major.
 * Each row travels with its local expert id (-1 on a message's unused tail). */
#ifndef DSA_MOE_EP_PARAMS_H
#define DSA_MOE_EP_PARAMS_H
#include "common_params.h"

/* Threads of every exchange kernel (one warp per row in the row kernels). */
#define DSA_MOE_EP_THREADS 256

/* dsa_moe_ep_rank_ids: rank_ids[slot] = ids[slot] / experts_per_rank for ids in
 *   [0, experts), else -1 (the routing mapped to destination ranks).
 * dsa_moe_ep_send_experts: send_experts[r] = ids[send_src[r]] - (r / capacity) *
 *   experts_per_rank (the local expert id on the destination), -1 where send_src[r] is
 *   not a slot. */
typedef struct DsaMoeEpIdsParams {
    const int32_t *ids;      /* [slots] global expert ids */
    const int32_t *send_src; /* [ranks * capacity] slot of each send row, -1 on the tails */
    int32_t *rank_ids;       /* [slots] */
    int32_t *send_experts;   /* [ranks * capacity] */
    int32_t slots;
    int32_t experts;
    int32_t experts_per_rank;
    int32_t send_rows; /* ranks * capacity */
    int32_t capacity;
    int32_t reserved;
} DsaMoeEpIdsParams;

/* dsa_moe_ep_gather_fp8: the received FP8 rows into the masked grouped-GEMM layout. Masked
 * row (g, i) with i < masked_m[g] copies received row s = src[g * max_m + i]: codes
 * recv_codes[s * cols ..], scales recv_scales[((s / capacity) * cols / 128 + kb) *
 * capacity + s % capacity] (each message's scales MN-major, as the sender's masked
 * permutation wrote them) to scales[(g * cols / 128 + kb) * max_m + i]. Rows i in
 * [masked_m[g], round_up(masked_m[g], align)) get zero codes and zero scales; later rows
 * are not written (the GEMM writes their outputs as zeros). */
typedef struct DsaMoeEpGatherParams {
    const uint8_t *recv_codes; /* [recv_rows, cols] e4m3 */
    const float *recv_scales;  /* [recv_rows / capacity, cols / 128, capacity] */
    const int32_t *src;        /* [groups * max_m] */
    const int32_t *masked_m;   /* [groups] */
    uint8_t *codes;            /* [groups, max_m, cols] */
    float *scales;             /* [groups, cols / 128, max_m] */
    int32_t groups;
    int32_t max_m;
    int32_t cols;
    int32_t capacity;
    int32_t recv_rows;
    int32_t align;
} DsaMoeEpGatherParams;

/* dsa_moe_ep_gather_rows: out[r] = in[index[r]] for index[r] in [0, in_rows), else zeros;
 * bf16 rows of `cols` elements (a multiple of 8, rows 16-byte aligned). The return trip:
 * the expert outputs of the masked layout back into message order. */
typedef struct DsaMoeEpRowsParams {
    const uint16_t *in;   /* bf16 [in_rows, cols] */
    const int32_t *index; /* [rows] */
    uint16_t *out;        /* bf16 [rows, cols] */
    int32_t rows;
    int32_t in_rows;
    int32_t cols;
    int32_t reserved;
} DsaMoeEpRowsParams;

#endif
