//! Paged caches and the kernels that write new tokens into them.
//!
//! Every cache is paged with [`PAGE_SIZE`] = 64 tokens; a token's physical slot is
//! `page * 64 + offset`, and block tables are `i32 [batch, max_pages]`. The byte layouts
//! match FlashMLA, DeepGEMM and vLLM:
//!
//! | cache | per token | per page |
//! |---|---|---|
//! | [`MlaFp8Cache`] | 656 B: 512 e4m3 latent, 4 x f32 scale (one per 128 values, dequant = value x scale), 64 x bf16 rope | 64 x 656 B contiguous |
//! | [`MlaBf16Cache`] | 576 x bf16: 512 latent then 64 rope | `[64, 576]` bf16 |
//! | [`IndexerKCache`] | 128 e4m3 + one f32 scale (132 B) | 64 x 128 e4m3 (8192 B), then 64 f32 scales (256 B): 8448 B |
mod encode;
mod paged;
mod slots;
mod write;

pub use encode::{encode_indexer_k_token, encode_mla_fp8_token, write_host_token};
pub use paged::{
    CacheKind, CacheLayout, IndexerK, IndexerKCache, MlaBf16, MlaBf16Cache, MlaCacheKind, MlaFp8,
    MlaFp8Cache, PagedCache,
};
pub use slots::SlotMapping;
pub use write::{check_cache_rows, CacheRows};

/// Tokens per page of every paged cache.
pub const PAGE_SIZE: usize = 64;
/// Bytes per token of the MLA FP8 cache.
pub const MLA_FP8_BYTES_PER_TOKEN: usize = 656;
/// MLA latent (value) dimension.
pub const KV_LORA_RANK: usize = 512;
/// MLA RoPE key dimension.
pub const ROPE_DIM: usize = 64;
/// MLA key dimension: latent + rope.
pub const QK_DIM: usize = 576;
/// Indexer key dimension.
pub const INDEXER_DIM: usize = 128;
/// Bytes per page of the indexer K cache.
pub const INDEXER_PAGE_BYTES: usize = PAGE_SIZE * (INDEXER_DIM + 4);
