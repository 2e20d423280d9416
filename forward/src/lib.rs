//! A whole DeepSeek-V3.2 forward on the GPU from the `dsa-kernels` operations: the
//! reference's model (`dsa_reference::model::Model`, same weights, same quantization
//! points) with prefill and paged decode of a batch of sequences of different lengths, and
//! the decode step captured in a CUDA graph. Read [`forward`] first: one layer is the list
//! of launches an engine makes.
//!
//! * [`weights::GpuWeights`]: the checkpoint's tensors on the device, FP8 projections with
//!   128x128 scales (the three projections of the normalized input fused into one GEMM),
//!   the absorbed `kv_b_proj` as bf16 per head, MoE experts stacked `[E, 2I, H]` / `[E, H, I]`.
//! * [`forward::GpuModel`]: the caches (FP8 MLA 656 B/token, indexer 132 B/token, one pair
//!   per layer), the [`dsa_kernels::DsaDecodeStep`] and cuBLAS; [`forward::Rows`] holds
//!   the buffers of one batch of new tokens (a prefill's `sum(len)` rows, or a decode
//!   step's `B`), so a decode step allocates nothing and can be captured once and replayed.
//!
//! **Prefill = decode with one row per token.** Every new token is a query row of a paged
//! batch whose length is its position + 1 and whose block table is its sequence's: the
//! indexer scores exactly its causal keys, the top-k comes out as cache slots, and sparse
//! MLA reads the selected rows from the (already written) cache. This is the reference's
//! own definition (its prefill scores keys read back from the cache), so prefill and decode
//! see identical keys; it also serves chunked prefill onto existing context unchanged.
pub mod blas;
pub mod compare;
pub mod forward;
pub mod weights;

pub use forward::{GpuModel, Rows, Trace};
pub use weights::GpuWeights;

/// Errors of the forward: the kernels', cuBLAS's and the reference's.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error(transparent)]
    Kernels(#[from] dsa_kernels::DsaError),
    #[error(transparent)]
    Driver(#[from] cudarc::driver::DriverError),
    #[error("cuBLAS: {0}")]
    Blas(#[from] cudarc::cublas::result::CublasError),
    #[error(transparent)]
    Model(#[from] dsa_reference::ModelError),
    #[error("{0}")]
    Input(String),
}

pub type Result<T> = std::result::Result<T, ForwardError>;
