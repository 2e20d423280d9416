/* Parameters of the cache-write kernels (kernels-cuda/cache/cache_write.cu).
 * Mirrored in Rust by bindgen into src/sys/cache.rs. */
#ifndef DSA_CACHE_PARAMS_H
#define DSA_CACHE_PARAMS_H
#include "common_params.h"

/* Write `num_tokens` new tokens into a paged cache. Token i goes to physical slot
 * slots[i] = page * 64 + offset; a negative slot, or one at or past capacity_tokens, is
 * skipped (vLLM's padding convention, and the guard that keeps a bad slot from writing
 * out of bounds). */
typedef struct DsaCacheWriteParams {
    /* bf16 source rows, row i at src + i * src_row_stride (elements). MLA: 576 values
     * (512 latent, 64 rope); indexer: 128 values. */
    const void *src;
    int64_t src_row_stride;
    const int32_t *slots;
    /* Cache base: MLA FP8 656 B/token, MLA bf16 576 x bf16/token, indexer 8448 B/page. */
    void *cache;
    int32_t num_tokens;
    int32_t pow2_scale; /* 1: round each FP8 scale up to a power of two (UE8M0) */
    int64_t capacity_tokens;
} DsaCacheWriteParams;

#endif
