//! `dsa-reference`: a pure, safe Rust forward pass of DeepSeek-V3.2 (MLA + DeepSeek
//! Sparse Attention + MoE) and the exact oracle of every kernel of `dsa-kernels`.
//!
//! Kernel-level oracles (byte layouts of spec section 2, semantics of section 3):
//! * [`fp8`]: e4m3 conversion bit-exact with CUDA's saturating round-to-nearest-even,
//!   block quantization;
//! * [`cache`]: the MLA FP8 (656 B/token), MLA bf16 and indexer (132 B/token, per-page)
//!   cache layouts;
//! * [`indexer`]: q/k preparation, weight folding, prefill and paged decode logits;
//! * [`topk`]: top-k with `-1` padding and block-table translation;
//! * [`attention`]: sparse MLA decode and prefill, dense paged MLA decode, split-KV combine;
//! * [`rope`], [`hadamard`]: YaRN tables and the two RoPE layouts, the Hadamard transform;
//! * [`linear`]: the FP8 block-scaled linear (1x128 activations, 128x128 weights);
//! * [`moe`]: gate routing, permutation layouts, grouped GEMM, SwiGLU + quant, combine.
//!
//! The model: [`config`] (Hugging Face `config.json`, presets), [`weights`] (named
//! tensors, seeded weights), [`loader`] (safetensors), [`nn`], [`mla`] (both MLA forms),
//! [`model`] (prefill and incremental decode over paged caches).

// The oracles mirror the kernels' argument lists (shapes passed as scalars, like the
// C entry points they check), so long parameter lists are deliberate.
#![allow(clippy::too_many_arguments)]
#![warn(missing_docs)]

pub mod attention;
pub mod cache;
pub mod config;
pub mod error;
pub mod fp8;
pub mod hadamard;
pub mod indexer;
pub mod linear;
pub mod loader;
pub mod mla;
pub mod model;
pub mod moe;
pub mod nn;
pub mod rope;
pub mod topk;
pub mod weights;

pub use config::Config;
pub use error::{ConfigError, ModelError};
pub use model::{
    AttentionForm, CacheDtype, ForwardOptions, ForwardStats, ForwardTrace, KvCache, Model, Sequence,
};
