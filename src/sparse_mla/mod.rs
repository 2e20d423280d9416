//! Sparse MLA attention: the attention half of DeepSeek Sparse Attention, where every query
//! token attends only to the `topk` key rows its indexer selected.
//!
//! Both operations use the absorbed (MQA) form of MLA: a query row is 576 bf16 values
//! (512 latent, then 64 rope), a key row is the cache's 576 values (`c_kv` then `k_rope`),
//! the value is the first 512 of them, and one index set per query token is shared by all
//! its heads. Scores are `softmax_scale * q . k` (the scale is always explicit; DeepSeek-V3.2
//! uses 0.135234), accumulated in fp32 on bf16 tensor cores, softmax online in the exp2
//! domain.
//!
//! * [`DsaKernels::sparse_mla_decode`](crate::DsaKernels::sparse_mla_decode): queries `[batch, next_n, heads, 576]` over a paged MLA
//!   cache ([`crate::cache::MlaFp8Cache`] or [`crate::cache::MlaBf16Cache`]), indices are
//!   physical slots (`page * 64 + offset`). The FP8 cache is dequantized once per gathered
//!   token into shared memory and shared by all heads of a CTA.
//! * [`DsaKernels::sparse_mla_prefill`](crate::DsaKernels::sparse_mla_prefill): queries `[s_q, heads, 576]` over a flat bf16 kv
//!   `[s_kv, 576]`, indices are kv rows; also returns the max logit per (query, head).
//!
//! **FP8 cache**: each latent value is dequantized as `bf16(e4m3 * scale)` (the product in
//! f32, one rounding to bf16, the same bf16 the host gets from the reference decoder's f32
//! value) once per gathered token, and the bf16 tile feeds the tensor cores; the rope part
//! is bf16 already.
//!
//! **Edge rules** (FlashMLA's): an index is unused when it is negative, when it is at or
//! past the number of kv rows (the cache's capacity for decode, `s_kv` for prefill; such
//! rows are never read: the kernel bounds-checks every index), or, for decode, when its
//! position is at or past `topk_length[b]`. A query with no used index gets output 0,
//! lse `+inf` and max_logits `-inf`. A duplicated index is attended twice.
//!
//! **Attention sink** (optional, f32 `[heads]`): adds `exp(sink[h])` to the softmax
//! denominator only, so the output is the sink-free output times `1 / (1 + exp(sink[h] -
//! lse))`; the returned lse does not include it.
//!
//! **Head counts**: a CTA computes 64 heads (the wgmma M). `heads` = 64 and 128 are the
//! designed cases; any other `heads` (16 and 32 for tensor-parallel shards) runs with its last
//! head group padded to 64 rows: the same time per CTA as 64 heads, so 16 heads cost 4x the
//! tensor-core work per head (decode at small batch is bound by the gather, not the MMA, so
//! the wall-clock cost is far smaller than 4x).
mod decode;
mod prefill;

pub use decode::SparseDecodeConfig;
pub use prefill::SparsePrefillConfig;

use cudarc::driver::CudaSlice;

/// Optional inputs of the sparse attention calls, generic like every other argument
/// (`CudaSlice` or `CudaView`); `SparseExtras::default()` has none.
#[derive(Debug)]
pub struct SparseExtras<'a, T = CudaSlice<i32>, S = CudaSlice<f32>> {
    /// Decode only: i32 `[batch]`; index positions at or past `topk_length[b]` are unused
    /// (values are clamped to `[0, topk]`).
    pub topk_length: Option<&'a T>,
    /// f32 `[heads]`: attention sink per head (module docs).
    pub attn_sink: Option<&'a S>,
}

impl Default for SparseExtras<'_> {
    fn default() -> Self {
        Self {
            topk_length: None,
            attn_sink: None,
        }
    }
}

impl<T, S> Clone for SparseExtras<'_, T, S> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T, S> Copy for SparseExtras<'_, T, S> {}

/// Heads per CTA (the wgmma M dimension).
pub(crate) const HEADS_PER_CTA: usize = 64;
/// Indices per pipeline block.
pub(crate) const BLOCK: usize = 64;
/// Threads per CTA: two consumer warpgroups and one producer warpgroup.
pub(crate) const THREADS: u32 = 384;
/// Dynamic shared memory of the attention kernel (`kSmemBytes` in sparse_mla_fwd.cuh).
pub(crate) const SMEM_BYTES: u32 = 73728 * 3 + 8192 + 512 + 512 + 32 + 1024;
/// Most splits of one query's index list (the combine kernel reads one lse per lane).
pub(crate) const MAX_SPLITS: usize = 32;
