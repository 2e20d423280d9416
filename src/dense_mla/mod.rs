//! Dense paged MLA decode (the attention DSA replaces): every query attends to every
//! cached token of its sequence, over the paged MLA cache, split across the SMs.
//!
//! A decode step is three launches, all on the handle's stream, none allocating or
//! synchronizing with the host (so the step can be captured in a CUDA graph):
//!
//! 1. [`DsaKernels::dense_mla_plan`](crate::DsaKernels::dense_mla_plan), once per step: from the device-resident sequence
//!    lengths, a small kernel decides which SM-sized *part* handles which contiguous
//!    range of (sequence, 64-token block) work, balanced by total tokens (FlashMLA's
//!    scheduler idea), and writes that plan into caller-owned `i32` workspace of
//!    [`DenseMlaConfig::plan_len`] elements. Every layer of the step reuses it.
//! 2. [`DsaKernels::dense_mla_decode`](crate::DsaKernels::dense_mla_decode), per layer: the split kernel computes, for each
//!    piece of a sequence, the attention normalized over that piece's keys (f32 partial
//!    out and lse) into caller-owned `f32` workspace of [`DenseMlaConfig::workspace_len`]
//!    elements; then the combine kernel merges the pieces of each sequence, weighted by
//!    their lse, into the bf16 output and f32 lse.
//! 3. (inside 2) [`DsaKernels::dense_mla_combine`](crate::DsaKernels::dense_mla_combine), also callable alone.
//!
//! # Layouts
//! * the batch: a [`PagedBatch`] (block table i32 `[batch, max_pages]`, entry `i` of
//!   sequence `b` is the cache page of its tokens `64 i .. 64 i + 63`; `seq_lens` i32
//!   `[batch]`, counting the `next_n` new tokens, already in the cache);
//! * `q`: bf16 `[batch, next_n, heads, 576]` (absorbed form: 512 latent then 64 rope),
//!   contiguous, 16-byte aligned;
//! * cache: [`crate::cache::MlaBf16Cache`] or [`crate::cache::MlaFp8Cache`] (FP8 values are
//!   dequantized to bf16 with their block scale, once per token and CTA, then multiplied
//!   on bf16 tensor cores with f32 accumulation);
//! * `out`: bf16 `[batch, next_n, heads, 512]`; `lse`: f32 `[batch, next_n, heads]`, natural log.
//!
//! # Semantics
//! Query `j` of sequence `b` sees tokens `0 ..= seq_lens[b] - next_n + j` (causal for
//! `next_n > 1`); scores are `softmax_scale * q . k` over all 576 dims, the value is the first
//! 512 dims of the key. A query that sees no token (an empty sequence) gets out 0 and
//! lse `+inf`. Negative lengths count as 0; a length past `64 * max_pages` is cut there.
//!
//! **Device-resident indices are bounds-checked in the kernel**: a block-table entry
//! outside `[0, num_pages)` of the cache marks its 64 tokens as masked (they are not read
//! and contribute nothing); the call does not fail, because checking would need a host
//! synchronization. Validate block tables where they are built.
mod combine;
mod decode;
mod plan;

use crate::check;
use crate::error::{DsaError, Result};
#[allow(unused_imports)] // named by the docs
use crate::paged_batch::PagedBatch;
use crate::paged_batch::PagedBatchShape;
use crate::runtime::DsaKernels;
use crate::sys::dense_mla as sys;

/// Heads per CTA of the split kernel (the MMA's M): `heads` is processed in groups of 64
/// (a partial group costs as much as a full one).
pub const HEADS_PER_CTA: usize = sys::DSA_DENSE_HEADS_PER_CTA as usize;
/// Largest batch a plan supports.
pub const MAX_BATCH: usize = sys::DSA_DENSE_PLAN_MAX_BATCH as usize;

/// The attention side of a dense decode step (the batch side is a [`PagedBatch`]): query
/// heads, the part count of the split-KV schedule and the softmax scale. Shared by the
/// plan and every layer's decode.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DenseMlaConfig {
    /// Query heads, `>= 1` (64 and 128 are the model's; any count works, in groups of 64).
    pub heads: usize,
    /// Parts the KV work is split into; [`DsaKernels::dense_mla_config`] picks
    /// `max(1, SMs / (next_n * ceil(heads / 64)))` so one wave of CTAs fills the GPU.
    pub num_parts: usize,
    /// Softmax scale (DeepSeek-V3.2: 0.135234); always explicit.
    pub softmax_scale: f32,
}

/// Parts that fill `sm_count` SMs with one wave of `next_n * ceil(heads / 64)` CTAs each.
pub(crate) fn one_wave_parts(sm_count: usize, next_n: usize, heads: usize) -> usize {
    let ctas_per_part = next_n
        .max(1)
        .saturating_mul(heads.max(1).div_ceil(HEADS_PER_CTA));
    (sm_count / ctas_per_part).max(1)
}

impl DsaKernels {
    /// The configuration of a dense decode over batches of `batch`'s `next_n`, with the
    /// part count that fills this device's SMs with one wave.
    pub fn dense_mla_config(
        &self,
        batch: &PagedBatchShape,
        heads: usize,
        softmax_scale: f32,
    ) -> DenseMlaConfig {
        DenseMlaConfig {
            heads,
            num_parts: one_wave_parts(self.sm_count(), batch.next_n, heads),
            softmax_scale,
        }
    }
}

impl DenseMlaConfig {
    /// Head groups of 64 (the second grid dimension is `next_n * head_groups`).
    pub fn head_groups(&self) -> usize {
        self.heads.div_ceil(HEADS_PER_CTA)
    }

    /// `i32` elements of the plan workspace for `batch` (saturating; exact once
    /// [`Self::validate`] passed).
    pub fn plan_len(&self, batch: &PagedBatchShape) -> usize {
        (sys::DSA_DENSE_PLAN_HEADER as usize)
            .saturating_add((sys::DSA_DENSE_PLAN_PART_INTS as usize).saturating_mul(self.num_parts))
            .saturating_add((sys::DSA_DENSE_PLAN_SEQ_INTS as usize).saturating_mul(batch.batch))
    }

    /// Upper bound on the pieces (splits) of a step: each part starts at most one piece
    /// per sequence it touches, so at most `num_parts + batch`.
    pub fn max_splits(&self, batch: &PagedBatchShape) -> usize {
        self.num_parts.saturating_add(batch.batch)
    }

    /// `f32` elements of the split workspace: partial outputs
    /// `[max_splits, next_n, heads, 512]`, then partial lse `[max_splits, next_n, heads]`
    /// (saturating; exact once [`Self::validate`] passed).
    pub fn workspace_len(&self, batch: &PagedBatchShape) -> usize {
        self.workspace_elems(batch).unwrap_or(usize::MAX)
    }

    fn workspace_elems(&self, batch: &PagedBatchShape) -> Result<usize> {
        check::product(
            "dense MLA workspace",
            &[
                self.max_splits(batch),
                batch.next_n,
                self.heads,
                crate::cache::KV_LORA_RANK + 1,
            ],
        )
    }

    /// Checks the configuration with `batch` against the kernels' limits (32-bit
    /// indexing, grid size, the plan kernel's batch). Pure.
    pub fn validate(&self, batch: &PagedBatchShape) -> Result<()> {
        batch.validate()?;
        let unsupported = |what, detail: String| Err(DsaError::Unsupported { what, detail });
        if batch.batch > MAX_BATCH {
            return unsupported(
                "dense MLA batch",
                format!("{} is outside 1..={MAX_BATCH}", batch.batch),
            );
        }
        if self.heads == 0 {
            return unsupported("dense MLA heads", "heads must be >= 1".into());
        }
        if self.num_parts == 0 || self.num_parts > 65535 {
            return unsupported(
                "dense MLA num_parts",
                format!("{} is outside 1..=65535", self.num_parts),
            );
        }
        let y = batch.next_n.saturating_mul(self.head_groups());
        if y > 65535 {
            return unsupported(
                "dense MLA next_n x head groups",
                format!("{y} exceeds the grid limit 65535"),
            );
        }
        if !self.softmax_scale.is_finite() {
            return unsupported(
                "dense MLA softmax scale",
                format!("{} is not finite", self.softmax_scale),
            );
        }
        // Cost units (blocks + overhead) are 32-bit on the device.
        let cost =
            batch.batch as u128 * (batch.max_pages as u128 + sys::DSA_DENSE_PIECE_OVERHEAD as u128);
        if cost > i32::MAX as u128 {
            return Err(DsaError::Capacity {
                what: "dense MLA batch x max_pages",
                needed: cost as usize,
                capacity: i32::MAX as usize,
            });
        }
        check::fits_i32("dense MLA plan", self.plan_len(batch))?;
        let rows = check::product("dense MLA rows", &[batch.rows(), self.heads])?;
        check::fits_i32("dense MLA rows", rows)?;
        // The workspace's bytes must be addressable too.
        check::product("dense MLA workspace", &[self.workspace_elems(batch)?, 4])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(batch: usize, next_n: usize, max_pages: usize) -> PagedBatchShape {
        PagedBatchShape {
            batch,
            next_n,
            max_pages,
        }
    }

    #[test]
    fn one_wave_of_parts() {
        // 132 SMs: two head groups at 128 heads, four CTAs per part at next_n = 2.
        assert_eq!(one_wave_parts(132, 1, 128), 66);
        assert_eq!(one_wave_parts(132, 2, 128), 33);
        assert_eq!(one_wave_parts(132, 1, 64), 132);
        assert_eq!(one_wave_parts(132, 4, 2200), 1);
    }

    #[test]
    fn workspace_sizes() {
        let c = DenseMlaConfig {
            heads: 96,
            num_parts: 66,
            softmax_scale: 0.1,
        };
        let b = shape(3, 2, 10);
        assert_eq!(c.head_groups(), 2);
        assert_eq!(c.plan_len(&b), 4 + 2 * 66 + 4 * 3);
        assert_eq!(c.max_splits(&b), 66 + 3);
        assert_eq!(c.workspace_len(&b), 69 * 2 * 96 * 513);
    }

    #[test]
    fn validation_rejects_bad_geometry() {
        let ok = DenseMlaConfig {
            heads: 128,
            num_parts: 66,
            softmax_scale: 0.135,
        };
        let b = shape(4, 1, 100);
        assert!(ok.validate(&b).is_ok());
        assert!(ok.validate(&shape(MAX_BATCH + 1, 1, 1)).is_err());
        for bad in [
            DenseMlaConfig { heads: 0, ..ok },
            DenseMlaConfig { num_parts: 0, ..ok },
            DenseMlaConfig {
                softmax_scale: f32::NAN,
                ..ok
            },
        ] {
            assert!(
                matches!(bad.validate(&b), Err(DsaError::Unsupported { .. })),
                "{bad:?}"
            );
        }
        assert!(matches!(
            ok.validate(&shape(20000, 1, 1 << 17)),
            Err(DsaError::Capacity { .. })
        ));
    }
}
