// The Hopper device layer, all of it: PTX wrappers, warpgroup MMA, numeric helpers.
#pragma once
#include "block.cuh"
#include "numeric.cuh"
#include "ptx.cuh"
#include "wgmma.cuh"

// Layout constants of common_params.h that are derived from others.
static_assert(DSA_QK_DIM == DSA_KV_LORA_RANK + DSA_ROPE_DIM, "MLA key = latent + rope");
static_assert(DSA_MLA_FP8_BYTES_PER_TOKEN == DSA_KV_LORA_RANK + 4 * (DSA_KV_LORA_RANK / 128) + 2 * DSA_ROPE_DIM,
              "MLA FP8 token: e4m3 latent, one f32 scale per 128 values, bf16 rope");
static_assert(DSA_INDEXER_PAGE_BYTES == DSA_PAGE_SIZE * (DSA_INDEXER_DIM + 4),
              "indexer page: 64 x 128 e4m3, then 64 f32 scales");
