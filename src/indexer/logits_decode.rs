//! Paged decode logits and their schedule (kernels-cuda/indexer/indexer_logits.cu,
//! `dsa_indexer_decode_plan`, `dsa_indexer_logits_decode_h*_q*`).
use cudarc::driver::{DevicePtr, DevicePtrMut};

use super::{check_heads, MAX_NEXT_N};
use crate::cache::IndexerKCache;
use crate::check;
use crate::error::{DsaError, Result};
use crate::paged_batch::{PagedBatch, PagedBatchShape};
use crate::runtime::{linear, DsaKernels};
use crate::sys::indexer::{DsaIndexerDecodeParams, DsaIndexerPlanParams};

/// The logits side of a paged decode step (the batch side is a [`PagedBatch`]).
///
/// * `q8`: e4m3 `[batch, next_n, heads, 128]`; `w`: f32 `[batch * next_n, heads]`;
/// * `out`: f32 `[batch * next_n, out_stride]`, `out_stride >= max_ctx`. Row `b * next_n +
///   j` holds logical keys `0 ..= seq_lens[b] - next_n + j`; every other column of
///   `[0, max_ctx)` is `-inf`, and columns `[max_ctx, out_stride)` are left untouched.
///   Keys at or past `max_ctx` or past `max_pages` pages are not represented.
///
/// The block table stays on the device and is bounds-checked there: a page id outside
/// `[0, cache pages)` makes that page's 64 keys `-inf`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLogitsShape {
    /// Indexer heads (16, 32 or 64).
    pub heads: usize,
    /// Logits columns per row.
    pub max_ctx: usize,
    /// Elements between the starts of consecutive rows of `out`.
    pub out_stride: usize,
}

impl DecodeLogitsShape {
    /// `max_ctx` columns, contiguous rows.
    pub fn new(heads: usize, max_ctx: usize) -> Self {
        Self {
            heads,
            max_ctx,
            out_stride: max_ctx,
        }
    }

    /// The rules of a decode logits call over `batch`, pure: supported heads and `next_n`,
    /// `out_stride >= max_ctx` within i64, `max_ctx` within i32. Returns the elements of
    /// `out` the call spans (checked arithmetic).
    pub fn validate(&self, batch: &PagedBatchShape) -> Result<usize> {
        batch.validate()?;
        check_heads(self.heads)?;
        if batch.next_n > MAX_NEXT_N {
            return Err(DsaError::Unsupported {
                what: "decode next_n",
                detail: format!("next_n {} must be in 1..={MAX_NEXT_N}", batch.next_n),
            });
        }
        if self.out_stride < self.max_ctx {
            return Err(DsaError::Unsupported {
                what: "decode logits out_stride",
                detail: format!(
                    "row stride {} is below max_ctx {}",
                    self.out_stride, self.max_ctx
                ),
            });
        }
        check::fits_i64("decode logits out_stride", self.out_stride)?;
        check::fits_i32("decode max_ctx", self.max_ctx)?;
        check::span("decode logits", batch.rows(), self.out_stride, self.max_ctx)
    }
}

/// i32 entries of the decode plan workspace for `batch` sequences (`batch + 1`).
pub fn decode_plan_len(batch: usize) -> usize {
    batch.saturating_add(1)
}

const STAGES: usize = 6;

/// Mirror of `DecodeCfg::kSmem`.
fn smem_bytes(n: usize) -> u32 {
    (1024 + n * 128 + STAGES * 8192 + STAGES * 64 * 4 + n * 4 + STAGES * 16) as u32
}

/// CTAs per SM: as many as shared memory holds (228 KB per SM, 1 KB of it reserved per
/// CTA), at most 3; more CTAs hide more of each page's MMA and reduction latency.
fn ctas_per_sm(smem: u32) -> u32 {
    ((228 * 1024) / (smem + 1024)).clamp(1, 3)
}

fn kernel_for(heads: usize, next_n: usize) -> (&'static str, usize) {
    match (heads, next_n) {
        (16, 1) => ("dsa_indexer_logits_decode_h16_q1", 1),
        (16, 2) => ("dsa_indexer_logits_decode_h16_q2", 2),
        // 16 x 3 = 48 columns has no wgmma of its own here; the 4-query kernel runs with
        // its last query empty.
        (16, _) => ("dsa_indexer_logits_decode_h16_q4", 4),
        (32, 1) => ("dsa_indexer_logits_decode_h32_q1", 1),
        (32, 2) => ("dsa_indexer_logits_decode_h32_q2", 2),
        (32, 3) => ("dsa_indexer_logits_decode_h32_q3", 3),
        (32, _) => ("dsa_indexer_logits_decode_h32_q4", 4),
        (_, 1) => ("dsa_indexer_logits_decode_h64_q1", 1),
        (_, 2) => ("dsa_indexer_logits_decode_h64_q2", 2),
        (_, 3) => ("dsa_indexer_logits_decode_h64_q3", 3),
        _ => ("dsa_indexer_logits_decode_h64_q4", 4),
    }
}

impl DsaKernels {
    /// Computes the decode schedule into `plan` (i32, [`decode_plan_len`] entries): the
    /// prefix sums of each sequence's page count. Run it once per decode step, after
    /// the batch's `seq_lens` are final, and pass the same `plan` to every layer's
    /// [`Self::indexer_logits_decode`] with the same batch and `shape`. Entirely on the
    /// device (no host sync), so it can be captured in a CUDA graph.
    pub fn indexer_decode_plan<B: DevicePtr<i32>, L: DevicePtr<i32>, P: DevicePtrMut<i32>>(
        &self,
        batch: &PagedBatch<'_, B, L>,
        shape: DecodeLogitsShape,
        plan: &mut P,
    ) -> Result<()> {
        let b = batch.shape();
        crate::validate::indexer_decode_plan(&b, shape, plan.len())?;
        let mut a = self.args();
        let params = DsaIndexerPlanParams {
            context_lens: a.read("seq_lens", batch.seq_lens(), 4)?,
            plan: a.write("decode plan", plan, 4)?,
            batch: b.batch as i32,
            max_pages: b.max_pages as i32,
            max_ctx: shape.max_ctx as i32,
            _pad: 0,
        };
        // SAFETY: plan holds batch + 1 entries and seq_lens batch (checked above).
        unsafe {
            a.launch(
                "indexer_logits",
                "dsa_indexer_decode_plan",
                linear(1, 1024, 0),
                &params,
            )
        }
    }

    /// Indexer logits of one decode step over the paged K cache (layouts in
    /// [`DecodeLogitsShape`] and [`PagedBatchShape`]), scheduled by `plan` from
    /// [`Self::indexer_decode_plan`]: the pages of all sequences are split evenly over a
    /// fixed grid (two or three CTAs per SM, by the kernel's shared memory), and each page
    /// is read once for all `next_n * heads` query rows of its sequence.
    ///
    /// `q8` must be 16-byte aligned. The plan is device data: the kernel re-checks pages
    /// against `max_pages` and the block table against the cache, so a stale or foreign
    /// plan gives wrong logits, never an access outside the buffers.
    #[allow(clippy::too_many_arguments)]
    pub fn indexer_logits_decode<
        B: DevicePtr<i32>,
        L: DevicePtr<i32>,
        Q: DevicePtr<u8>,
        W: DevicePtr<f32>,
        P: DevicePtr<i32>,
        O: DevicePtrMut<f32>,
    >(
        &self,
        batch: &PagedBatch<'_, B, L>,
        shape: DecodeLogitsShape,
        q8: &Q,
        w: &W,
        cache: &IndexerKCache,
        plan: &P,
        out: &mut O,
    ) -> Result<()> {
        let b = batch.shape();
        crate::validate::indexer_logits_decode(
            &b,
            shape,
            q8.len(),
            w.len(),
            plan.len(),
            out.len(),
        )?;
        let heads = shape.heads;
        let num_pages = check::fits_i64("indexer cache pages", cache.num_pages())?;
        if shape.max_ctx == 0 {
            return Ok(());
        }
        let mut a = self.args();
        let params = DsaIndexerDecodeParams {
            q8: a.read("q8", q8, 16)?,
            w: a.read("head weights", w, 4)?,
            cache: a.read("indexer K cache", cache.data(), 16)?,
            context_lens: a.read("seq_lens", batch.seq_lens(), 4)?,
            block_table: a.read("block table", batch.block_table(), 4)?,
            plan: a.read("decode plan", plan, 4)?,
            out: a.write("decode logits", out, 4)?,
            out_stride: shape.out_stride as i64,
            num_pages,
            batch: b.batch as i32,
            next_n: b.next_n as i32,
            max_pages: b.max_pages as i32,
            max_ctx: shape.max_ctx as i32,
        };
        let (kernel, nq) = kernel_for(heads, b.next_n);
        let smem = smem_bytes(heads * nq);
        let splits = ctas_per_sm(smem) * self.sm_count() as u32;
        // SAFETY: every buffer holds what the kernel indexes for this batch and shape
        // (checked arithmetic above); block-table entries, page counts and the plan are
        // bounds-checked in the kernel.
        unsafe { a.launch("indexer_logits", kernel, linear(splits, 128, smem), &params) }
    }
}
