/* Shared by every kernel family and mirrored in Rust (src/sys/common.rs, by bindgen).
 * Plain C: no CUDA types, so bindgen and nvcc read the same definitions. */
#ifndef DSA_COMMON_PARAMS_H
#define DSA_COMMON_PARAMS_H
#include <stdint.h>

/* Tokens per page of every paged cache (FlashMLA / DeepGEMM / vLLM use 64). */
#define DSA_PAGE_SIZE 64
/* MLA latent + rope dimensions (absorbed MQA form). */
#define DSA_KV_LORA_RANK 512
#define DSA_ROPE_DIM 64
#define DSA_QK_DIM 576
/* MLA FP8 cache: 512 e4m3 + 4 fp32 scales + 64 bf16 = 656 bytes per token. */
#define DSA_MLA_FP8_BYTES_PER_TOKEN 656
/* Indexer K cache: per page 64 x 128 e4m3, then 64 fp32 scales. */
#define DSA_INDEXER_DIM 128
#define DSA_INDEXER_PAGE_BYTES 8448

/* FP8 e4m3: the largest finite value, and the smallest amax a block is scaled by (so an
 * all-zero block gets a finite scale). The scale rule built on them is in
 * common/numeric.cuh and src/fp8.rs. */
#define DSA_FP8_E4M3_MAX 448.0f
#define DSA_FP8_AMAX_FLOOR 1e-4f

/* sm_90 shared memory: per SM, the most one CTA may opt in to, and what the driver
 * reserves per resident CTA (bytes). */
#define DSA_SM90_SMEM_PER_SM 233472
#define DSA_SM90_SMEM_PER_CTA_MAX 232448
#define DSA_SM90_SMEM_RESERVED_PER_CTA 1024

#endif
