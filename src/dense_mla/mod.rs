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
//! * `q`: bf16 `[batch, s_q, h_q, 576]` (absorbed form: 512 latent then 64 rope),
//!   contiguous, 16-byte aligned;
//! * cache: [`crate::cache::MlaBf16Cache`] or [`crate::cache::MlaFp8Cache`] (FP8 values are
//!   dequantized to bf16 with their block scale, once per token and CTA, then multiplied
//!   on bf16 tensor cores with f32 accumulation);
//! * `block_table`: i32 `[batch, max_pages]`, entry `i` of sequence `b` is the cache page of
//!   its tokens `64 i .. 64 i + 63`;
//! * `seq_lens`: i32 `[batch]`, counting the `s_q` new tokens (already in the cache);
//! * `out`: bf16 `[batch, s_q, h_q, 512]`; `lse`: f32 `[batch, s_q, h_q]`, natural log.
//!
//! # Semantics
//! Query `j` of sequence `b` sees tokens `0 ..= seq_lens[b] - s_q + j` (causal for
//! `s_q > 1`); scores are `softmax_scale * q . k` over all 576 dims, the value is the first
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

pub use decode::DenseMlaArgs;

use crate::error::{DsaError, Result};
use crate::sys::dense_mla as sys;

/// Heads per CTA of the split kernel (the MMA's M): `h_q` is processed in groups of 64
/// (a partial group costs as much as a full one).
pub const HEADS_PER_CTA: usize = sys::DSA_DENSE_HEADS_PER_CTA as usize;
/// Largest batch a plan supports.
pub const MAX_BATCH: usize = sys::DSA_DENSE_PLAN_MAX_BATCH as usize;

/// Geometry of one dense decode step, shared by the plan and every layer's decode.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DenseMlaConfig {
    /// Sequences.
    pub batch: usize,
    /// New tokens (queries) per sequence, `>= 1`.
    pub s_q: usize,
    /// Query heads, `>= 1` (64 and 128 are the model's; any count works, in groups of 64).
    pub h_q: usize,
    /// Width of the block table (pages per sequence).
    pub max_pages: usize,
    /// Parts the KV work is split into; [`DenseMlaConfig::new`] picks
    /// `max(1, SMs / (s_q * ceil(h_q / 64)))` so one wave of CTAs fills the GPU.
    pub num_parts: usize,
    /// Softmax scale (DeepSeek-V3.2: 0.135234); always explicit.
    pub softmax_scale: f32,
}

impl DenseMlaConfig {
    /// A configuration with the part count that fills `sm_count` SMs with one wave.
    pub fn new(
        sm_count: usize,
        batch: usize,
        s_q: usize,
        h_q: usize,
        max_pages: usize,
        softmax_scale: f32,
    ) -> Self {
        let ctas_per_part = s_q.max(1) * h_q.max(1).div_ceil(HEADS_PER_CTA);
        Self {
            batch,
            s_q,
            h_q,
            max_pages,
            num_parts: (sm_count / ctas_per_part).max(1),
            softmax_scale,
        }
    }

    /// Head groups of 64 (the second grid dimension is `s_q * head_groups`).
    pub fn head_groups(&self) -> usize {
        self.h_q.div_ceil(HEADS_PER_CTA)
    }

    /// `i32` elements of the plan workspace.
    pub fn plan_len(&self) -> usize {
        (sys::DSA_DENSE_PLAN_HEADER
            + sys::DSA_DENSE_PLAN_PART_INTS * self.num_parts as u32
            + sys::DSA_DENSE_PLAN_SEQ_INTS * self.batch as u32) as usize
    }

    /// Upper bound on the pieces (splits) of a step: each part starts at most one piece
    /// per sequence it touches, so at most `num_parts + batch`.
    pub fn max_splits(&self) -> usize {
        self.num_parts + self.batch
    }

    /// `f32` elements of the split workspace: partial outputs
    /// `[max_splits, s_q, h_q, 512]`, then partial lse `[max_splits, s_q, h_q]`.
    pub fn workspace_len(&self) -> usize {
        self.max_splits() * self.s_q * self.h_q * (crate::cache::KV_LORA_RANK + 1)
    }

    /// Checks the geometry against the kernels' limits (32-bit indexing, grid size).
    pub(crate) fn validate(&self) -> Result<()> {
        let unsupported = |what, detail: String| Err(DsaError::Unsupported { what, detail });
        if self.batch == 0 || self.batch > MAX_BATCH {
            return unsupported(
                "dense MLA batch",
                format!("{} is outside 1..={MAX_BATCH}", self.batch),
            );
        }
        if self.s_q == 0 || self.h_q == 0 || self.max_pages == 0 {
            return unsupported(
                "dense MLA shape",
                format!(
                    "s_q {}, h_q {} and max_pages {} must all be >= 1",
                    self.s_q, self.h_q, self.max_pages
                ),
            );
        }
        if self.num_parts == 0 || self.num_parts > 65535 {
            return unsupported(
                "dense MLA num_parts",
                format!("{} is outside 1..=65535", self.num_parts),
            );
        }
        if self.s_q * self.head_groups() > 65535 {
            return unsupported(
                "dense MLA s_q x head groups",
                format!(
                    "{} exceeds the grid limit 65535",
                    self.s_q * self.head_groups()
                ),
            );
        }
        if !self.softmax_scale.is_finite() {
            return unsupported(
                "dense MLA softmax scale",
                format!("{} is not finite", self.softmax_scale),
            );
        }
        // Cost units (blocks + overhead) and token counts are 32-bit on the device.
        let cost =
            self.batch as u128 * (self.max_pages as u128 + sys::DSA_DENSE_PIECE_OVERHEAD as u128);
        let tokens = self.max_pages as u128 * crate::cache::PAGE_SIZE as u128;
        if cost > i32::MAX as u128 || tokens > i32::MAX as u128 {
            return Err(DsaError::Capacity {
                what: "dense MLA batch x max_pages",
                needed: cost.max(tokens) as usize,
                capacity: i32::MAX as usize,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_wave_of_parts() {
        // 132 SMs: two head groups at h_q = 128, four CTAs per part at s_q = 2.
        assert_eq!(
            DenseMlaConfig::new(132, 128, 1, 128, 512, 0.1).num_parts,
            66
        );
        assert_eq!(
            DenseMlaConfig::new(132, 128, 2, 128, 512, 0.1).num_parts,
            33
        );
        assert_eq!(DenseMlaConfig::new(132, 1, 1, 64, 1, 0.1).num_parts, 132);
        assert_eq!(DenseMlaConfig::new(132, 1, 4, 2200, 1, 0.1).num_parts, 1);
    }

    #[test]
    fn workspace_sizes() {
        let c = DenseMlaConfig::new(132, 3, 2, 96, 10, 0.1);
        assert_eq!(c.head_groups(), 2);
        assert_eq!(c.plan_len(), 4 + 2 * c.num_parts + 4 * 3);
        assert_eq!(c.max_splits(), c.num_parts + 3);
        assert_eq!(c.workspace_len(), c.max_splits() * 2 * 96 * 513);
    }

    #[test]
    fn validation_rejects_bad_geometry() {
        let ok = DenseMlaConfig::new(132, 4, 1, 128, 100, 0.135);
        assert!(ok.validate().is_ok());
        for bad in [
            DenseMlaConfig { batch: 0, ..ok },
            DenseMlaConfig {
                batch: MAX_BATCH + 1,
                ..ok
            },
            DenseMlaConfig { s_q: 0, ..ok },
            DenseMlaConfig { h_q: 0, ..ok },
            DenseMlaConfig { max_pages: 0, ..ok },
            DenseMlaConfig { num_parts: 0, ..ok },
            DenseMlaConfig {
                softmax_scale: f32::NAN,
                ..ok
            },
        ] {
            assert!(
                matches!(bad.validate(), Err(DsaError::Unsupported { .. })),
                "{bad:?}"
            );
        }
        let huge = DenseMlaConfig {
            batch: 30000,
            max_pages: 1 << 20,
            ..ok
        };
        assert!(matches!(huge.validate(), Err(DsaError::Capacity { .. })));
    }
}
