//! The MoE family of DeepSeek-V3.2's FFN layers: routing, the permutation of token rows into
//! expert segments with FP8 1x128 quantization, the FP8 block-scaled grouped GEMM
//! (contiguous and masked layouts), SwiGLU + quantization, and the weighted combine.
//!
//! A layer is a fixed sequence of launches on one stream, none of which waits for the
//! host: [`DsaKernels::moe_route`] -> [`DsaKernels::moe_plan`] ->
//! [`DsaKernels::moe_permute_quant`] -> grouped GEMM (w13) -> [`DsaKernels::moe_swiglu_quant`]
//! -> grouped GEMM (w2) -> [`DsaKernels::moe_combine`]; [`MoeLayer`] runs it with the shared
//! expert. Every buffer is sized from a [`MoeShape`] for the worst case of any routing
//! (`T k + E (align - 1)` rows, contiguous), so the whole layer can be captured once in a
//! CUDA graph and replayed for every routing. Layouts follow MOE-CONTRACT.md (the grouped
//! GEMM's side) and spec section 2: e4m3 codes K-major, activation scales MN-major,
//! `m_indices` `-1` on padding rows, `masked_m` per expert.
//!
//! Determinism: rows inside an expert are in slot order (a counting sort, not atomic slot
//! claims), the combine gathers in slot order without atomics, so the same inputs give
//! the same bits on every run.

pub mod gemm;

mod combine;
mod layer;
mod plan;
mod quant;
mod route;
mod shape;

pub use layer::{Fp8Weights, MoeLayer, MoeWeights, SharedExpert};
pub use plan::MoePlan;
pub use route::RouteConfig;
pub use shape::{
    Align, MoeLayout, MoeShape, MOE_BLOCK, MOE_MAX_EXPERTS, MOE_MAX_GROUPS, MOE_MAX_TOP_K,
};
