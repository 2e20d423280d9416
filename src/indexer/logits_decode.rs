//! Paged decode logits and their schedule (kernels-cuda/indexer/indexer_logits.cu,
//! `dsa_indexer_decode_plan`, `dsa_indexer_logits_decode_h*_q*`).
use cudarc::driver::{DevicePtr, DevicePtrMut};

use super::{check_heads, MAX_NEXT_N};
use crate::cache::{IndexerKCache, PAGE_SIZE};
use crate::check;
use crate::error::{DsaError, Result};
use crate::paged_batch::{PagedBatch, PagedBatchShape};
use crate::runtime::{linear, DsaKernels};
use crate::sys::common as csys;
use crate::sys::indexer::{self as isys, DsaIndexerDecodeParams, DsaIndexerPlanParams};

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
        // The kernel forms key columns in 32 bits a page of 64 keys (plus a tile of 64) at a
        // time, and prefix-sums pages per sequence in 32 bits: both must stay below 2^31.
        let max_ctx_limit = i32::MAX as usize - 127;
        if self.max_ctx > max_ctx_limit {
            return Err(DsaError::Capacity {
                what: "decode max_ctx",
                needed: self.max_ctx,
                capacity: max_ctx_limit,
            });
        }
        let pages = batch.max_pages.min(self.max_ctx.div_ceil(PAGE_SIZE));
        let total = batch.batch.saturating_mul(pages);
        check::fits_i32("decode plan pages (batch x pages per sequence)", total)?;
        check::span("decode logits", batch.rows(), self.out_stride, self.max_ctx)
    }
}

/// i32 entries of the decode plan workspace for `batch` sequences (`batch + 1`).
pub fn decode_plan_len(batch: usize) -> usize {
    batch.saturating_add(1)
}

/// Dynamic shared memory of the decode kernel computing `n` columns (heads x queries).
fn smem_bytes(n: usize) -> u32 {
    isys::DSA_INDEXER_DECODE_SMEM_BASE + isys::DSA_INDEXER_DECODE_SMEM_PER_COLUMN * n as u32
}

/// CTAs per SM: as many as shared memory holds, at most
/// `DSA_INDEXER_DECODE_MAX_CTAS_PER_SM`; more CTAs hide more of each page's MMA and
/// reduction latency.
fn ctas_per_sm(smem: u32) -> u32 {
    (csys::DSA_SM90_SMEM_PER_SM / (smem + csys::DSA_SM90_SMEM_RESERVED_PER_CTA))
        .clamp(1, isys::DSA_INDEXER_DECODE_MAX_CTAS_PER_SM)
}

/// `dsa_indexer_logits_decode_h{H}_q{Q}` for every supported head count and Q in
/// 1..=MAX_NEXT_N: the kernels' naming rule. Which of them exist is the header's business
/// (`DSA_INDEXER_DECODE_QUERIES_H*`).
macro_rules! decode_kernel_names {
    ($($h:literal),*) => {
        [$([
            concat!("dsa_indexer_logits_decode_h", $h, "_q1"),
            concat!("dsa_indexer_logits_decode_h", $h, "_q2"),
            concat!("dsa_indexer_logits_decode_h", $h, "_q3"),
            concat!("dsa_indexer_logits_decode_h", $h, "_q4"),
        ]),*]
    };
}
const DECODE_KERNELS: [[&str; MAX_NEXT_N]; 3] = decode_kernel_names!(16, 32, 64);

/// The decode kernel for `heads` (a supported count) and `next_n` (1..=MAX_NEXT_N), and
/// its queries per CTA: the built kernel with the fewest queries that holds `next_n`.
fn kernel_for(heads: usize, next_n: usize) -> (&'static str, usize) {
    let (i, built) = match heads {
        16 => (0, isys::DSA_INDEXER_DECODE_QUERIES_H16),
        32 => (1, isys::DSA_INDEXER_DECODE_QUERIES_H32),
        _ => (2, isys::DSA_INDEXER_DECODE_QUERIES_H64),
    };
    let q = (next_n.max(1)..=MAX_NEXT_N)
        .find(|q| built >> (q - 1) & 1 == 1)
        .unwrap_or(MAX_NEXT_N);
    (DECODE_KERNELS[i][q - 1], q)
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
    /// fixed grid (three to six CTAs per SM, by the kernel's shared memory), and each page
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
        unsafe {
            a.launch(
                "indexer_logits",
                kernel,
                linear(splits, isys::DSA_INDEXER_LOGITS_THREADS, smem),
                &params,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_kernel_choice_follows_the_built_variants() {
        let pick = |h, n| kernel_for(h, n);
        assert_eq!(pick(16, 1), ("dsa_indexer_logits_decode_h16_q1", 1));
        assert_eq!(pick(16, 2), ("dsa_indexer_logits_decode_h16_q2", 2));
        // No 48-column kernel: three queries of 16 heads run on the 4-query kernel.
        assert_eq!(pick(16, 3), ("dsa_indexer_logits_decode_h16_q4", 4));
        assert_eq!(pick(16, 4), ("dsa_indexer_logits_decode_h16_q4", 4));
        for (h, name) in [(32, "h32"), (64, "h64")] {
            for n in 1..=MAX_NEXT_N {
                let (k, q) = pick(h, n);
                assert_eq!(q, n);
                assert_eq!(k, format!("dsa_indexer_logits_decode_{name}_q{n}"));
            }
        }
    }

    #[test]
    fn decode_smem_matches_the_kernel_layout() {
        // A ring of stages of (8 KB keys + 256 B scales + 16 B page record), 1 KB slack,
        // then per column a 128-byte q row and a 4-byte weight.
        let stages = isys::DSA_INDEXER_DECODE_STAGES;
        assert_eq!(
            smem_bytes(256),
            1024 + 256 * 128 + stages * (8192 + 256 + 16) + 256 * 4
        );
        assert_eq!(stages, 3);
        assert_eq!(ctas_per_sm(smem_bytes(64)), 6);
        assert_eq!(ctas_per_sm(smem_bytes(128)), 5);
        assert_eq!(ctas_per_sm(smem_bytes(256)), 3);
    }
}
