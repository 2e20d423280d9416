//! The lightning indexer on the GPU (spec section 1.2): fused q/k preparation, FP8 logits
//! for ragged prefill and paged decode, and the device-side decode schedule.
//!
//! Data flow of one layer:
//! 1. [`DsaKernels::indexer_prepare_q`](crate::DsaKernels::indexer_prepare_q): bf16 `q_I [tokens, H, 128]` + positions ->
//!    e4m3 codes `q8 [tokens, H, 128]` and folded head weights `w' [tokens, H]` (f32,
//!    `w' = (w * qscale) * 128^-0.5`, where `w` already includes `H^-0.5`).
//! 2. [`DsaKernels::indexer_prepare_k`](crate::DsaKernels::indexer_prepare_k): bf16 `k_I [tokens, 128]` + positions -> the paged
//!    [`IndexerKCache`](crate::cache::IndexerKCache) through a slot mapping.
//! 3. Logits `I[t, s] = kscale[s] * sum_h w'[t, h] * relu(q8[t, h] . k8[s])` (fp32):
//!    [`DsaKernels::indexer_logits_prefill`](crate::DsaKernels::indexer_logits_prefill) over a flat key array with per-row ranges, or
//!    [`DsaKernels::indexer_decode_plan`](crate::DsaKernels::indexer_decode_plan) once per decode step and
//!    [`DsaKernels::indexer_logits_decode`](crate::DsaKernels::indexer_logits_decode) per layer over the paged cache.
//!
//! FP8 codes travel as `u8` buffers (e4m3, the bit pattern of `float8::F8E4M3`).
//! Supported head counts: 16, 32, 64 (tensor-parallel shards of the 64-head indexer).
mod logits_decode;
mod logits_prefill;
mod prep;
mod rope;

pub use logits_decode::{decode_plan_len, DecodeLogitsShape};
pub use logits_prefill::{prefill_out_stride, PrefillLogitsShape};
pub(crate) use prep::check_rope_tables;
pub use prep::{IndexerPrepShape, RopeTablesRef};
pub use rope::{rope_tables, YarnRope, INDEXER_ROPE_PAIRS};

use crate::error::{DsaError, Result};

/// Head counts the logits kernels are built for.
pub const SUPPORTED_HEADS: [usize; 3] = [16, 32, 64];
/// Largest `next_n` (tokens per sequence per decode step) the decode kernel supports.
pub const MAX_NEXT_N: usize = crate::sys::indexer::DSA_INDEXER_MAX_NEXT_N as usize;

pub(crate) fn check_heads(heads: usize) -> Result<()> {
    if SUPPORTED_HEADS.contains(&heads) {
        Ok(())
    } else {
        Err(DsaError::Unsupported {
            what: "indexer heads",
            detail: format!("{heads} heads; supported: 16, 32, 64"),
        })
    }
}
