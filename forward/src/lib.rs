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
//! ```no_run
//! use dsa_forward::{compare::graph_ready_kernels, GpuModel, GpuWeights};
//! use dsa_reference::{weights, Config};
//!
//! # fn main() -> dsa_forward::Result<()> {
//! let cfg = Config::mini();
//! let k = graph_ready_kernels()?; // GPU 0, a capturable stream, kernels loaded
//! let w = GpuWeights::upload(k.stream(), &cfg, &weights::seeded(&cfg, 7))?;
//! // 64 cache pages per layer; batches of up to 512 new tokens, block tables of 8 pages.
//! let mut model = GpuModel::new(k, w, 64, 512, 8)?;
//! let table: Vec<i32> = (0..8).collect(); // this sequence's pages
//!
//! // Prefill a 100-token prompt: one row per token, at positions 0..100.
//! let prompt: Vec<u32> = (0..100).collect();
//! let positions: Vec<usize> = (0..100).collect();
//! let mut prefill = model.rows(100)?;
//! model.set(&mut prefill, &prompt, &positions, &vec![table.as_slice(); 100])?;
//! model.forward(&mut prefill, None)?;
//! let logits = model.logits(&prefill)?; // [100, vocab]
//!
//! // Decode: capture the step once; then per step set() the new token and replay.
//! let mut step = model.rows(1)?;
//! model.set(&mut step, &[7], &[100], &[table.as_slice()])?;
//! let graph = model.capture(&mut step)?; // records, does not run
//! graph.launch()?;
//! let next = model.logits(&step)?; // [1, vocab]
//! # let _ = (logits, next);
//! # Ok(())
//! # }
//! ```
//!
//! **Prefill = decode with one row per token.** Every new token is a query row of a paged
//! batch whose length is its position + 1 and whose block table is its sequence's: the
//! indexer scores exactly its causal keys, the top-k comes out as cache slots, and sparse
//! MLA reads the selected rows from the (already written) cache. This is the reference's
//! own definition (its prefill scores keys read back from the cache), so prefill and decode
//! see identical keys; it also serves chunked prefill onto existing context unchanged.
//!
//! **Per layer** ([`GpuModel::forward`]): RMSNorm (f32 residual in) -> FP8 quantization of
//! the f32 rows -> one FP8 GEMM for `q_a | kv_a | indexer k` -> q_norm -> FP8 `q_b` and the
//! indexer's `wq_b` from one quantization -> kv_norm + interleaved RoPE into the 576-wide
//! cache row -> the indexer key's LayerNorm and the head weights (f32 cuBLAS GEMM) -> query
//! RoPE into `q[.., 512..]` and `q_nope W_UK` (cuBLAS, bf16, per head) into `q[.., ..512]` ->
//! [`dsa_kernels::DsaDecodeStep::layer`] (indexer prep and cache writes, indexer logits,
//! top-k to slots, sparse MLA decode) -> `o_lat W_UV^T` (cuBLAS) -> FP8 `o_proj` ->
//! residual add -> RMSNorm -> dense FP8 SwiGLU MLP or [`dsa_kernels::moe::MoeLayer`] with
//! f32 gate logits (cuBLAS) -> residual add. Then the final norm and the f32 LM head.
//!
//! **Agreement with the reference** (`tests/mini_forward.rs` states the tolerances and
//! their reasons): every quantization point is the reference's; the remaining differences
//! are bf16-size roundings (fp32 accumulation, bf16 `kv_b_proj`, the MoE's bf16 input and
//! output), which the seeded mini model amplifies exactly as much as it amplifies one
//! such rounding inside the reference itself: [`compare::Report`] measures that floor.
pub mod blas;
/// The mini model against the reference (the GPU test and `examples/mini_forward.rs`).
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
