//! Top-k selection over indexer logits (spec 1.2 step 8): for every fp32 row, the column
//! indices of the k largest values inside the row's valid range.
//!
//! # Semantics
//! * Row `r` is `logits[r * row_stride + c]` for `c` in `[0, cols)`. Its valid range is
//!   `[start_r, end_r)`, given per row on the device ([`TopkRanges`]) and clamped to
//!   `[0, cols]` by the kernel (so an out-of-range value never reads outside the row).
//! * Only finite values and `+inf` compete: NaN and `-inf` (the masked value of the
//!   logits kernels) are never selected. `-0.0` and `+0.0` are equal.
//! * Ties are broken by the smaller index, exactly: the selected set is the one
//!   `topk_row` of the reference crate (`dsa-reference`) returns.
//! * Output: int32 `[rows, topk]`, row `r` at `out[r * topk ..]`. When a row has fewer than `topk`
//!   selectable values, all of them are returned followed by `-1` padding. Without
//!   [`TopkOptions::sorted`] the selected indices come in no particular order (it may
//!   differ between runs); with it, by value descending, then index ascending.
//! * Fused offset ([`TopkOptions::row_offsets`]): `i += row_offsets[r]` for every selected
//!   index (ragged prefill, where rows index a flattened key space).
//! * Paged decode ([`DsaKernels::topk_paged`]): the rows are the query rows of a
//!   [`PagedBatch`]; row `b * next_n + j` has the range `[0, seq_lens[b] - next_n + 1 + j)`,
//!   derived on the device from the per-sequence lengths, and every selected index is
//!   translated through the block table to a physical slot of the paged caches
//!   (`block_table[b][i / 64] * 64 + i % 64`); an index whose page lies outside the table
//!   row or whose table entry is negative (or so large its slot would not fit an i32)
//!   becomes `-1`. Padding stays `-1` in every mode.
//!
//! # Algorithm and limits
//! A radix (histogram) select, not a sort, one CTA of 1024 threads per row. A stratified
//! sample of the row (2048 values in 64 runs) estimates a key with about 2k values above
//! it; one pass over the row (16-byte loads) moves every value at or above it into shared
//! memory, and an exact radix select in 11-bit digits of a composite (value, index) key
//! finishes there (the composite key makes the tie rule exact). Rows of at most 16384
//! keys skip the sample and take every valid value. When the estimate misses (fewer
//! than k or more than 16384 values above it, as in rows made of a few distinct values),
//! the full select runs: histograms of the row in global memory until the threshold bin
//! fits in shared memory, a few more passes over the row. `topk` may be anything in
//! `1..=4096`; rows may be of any length below 2^31. When the rows are few and long (a
//! decode batch: rows x 2 at most half the SM count, rows over 16384 keys) each row is a
//! cluster of 2, 4 or 8 CTAs that split the candidate pass and gather their candidates
//! in the first CTA's shared memory; otherwise one CTA per row (a row past ~200K keys is
//! then proportionally slower). No workspace is needed.
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig};

use crate::check;
use crate::error::{DsaError, Result};
use crate::paged_batch::PagedBatch;
use crate::runtime::{linear, DsaKernels};
use crate::sys::common::DSA_PAGE_SIZE;
use crate::sys::topk::{
    DsaTopkParams, DSA_TOPK_CAND_CAP, DSA_TOPK_MAX_K, DSA_TOPK_SMEM_BYTES, DSA_TOPK_THREADS,
};

/// The largest `topk` supported.
pub const TOPK_MAX: usize = DSA_TOPK_MAX_K as usize;
/// The indexer's `topk` (DeepSeek-V3.2 `index_topk`).
pub const TOPK_DEFAULT: usize = 2048;

/// Former name of [`TOPK_MAX`].
#[deprecated(note = "renamed TOPK_MAX")]
pub const TOPK_MAX_K: usize = TOPK_MAX;
/// Former name of [`TOPK_DEFAULT`].
#[deprecated(note = "renamed TOPK_DEFAULT")]
pub const TOPK_DEFAULT_K: usize = TOPK_DEFAULT;

/// Shape of one top-k call over row-major fp32 logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopkShape {
    /// Number of rows (one output row of `topk` indices each).
    pub rows: usize,
    /// Columns of a row: every range is clamped to `[0, cols)`.
    pub cols: usize,
    /// Elements between the starts of consecutive rows (`>= cols`; any value, the kernel
    /// handles unaligned rows).
    pub row_stride: usize,
    /// How many indices per row, `1..=4096`.
    pub topk: usize,
}

impl TopkShape {
    /// `rows` rows of `cols` contiguous values, [`TOPK_DEFAULT`] per row.
    pub fn new(rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            row_stride: cols,
            topk: TOPK_DEFAULT,
        }
    }

    /// Checks the scalars and returns the logits elements the call reads
    /// (`(rows - 1) * row_stride + cols`, 0 when there are no rows). Pure.
    pub fn validate(&self) -> Result<usize> {
        if self.topk == 0 || self.topk > TOPK_MAX {
            return Err(DsaError::Unsupported {
                what: "top-k topk",
                detail: format!("topk = {} must be in 1..={TOPK_MAX}", self.topk),
            });
        }
        if self.row_stride < self.cols {
            return Err(DsaError::Unsupported {
                what: "top-k row stride",
                detail: format!(
                    "row stride {} is smaller than the {} columns",
                    self.row_stride, self.cols
                ),
            });
        }
        check::fits_i32("top-k rows", self.rows)?;
        check::fits_i32("top-k columns", self.cols)?;
        check::fits_i64("top-k row stride", self.row_stride)?;
        check::product("top-k output", &[self.rows, self.topk])?;
        check::span("top-k logits", self.rows, self.row_stride, self.cols)
    }
}

/// Per-row valid ranges, int32 on the device, one entry per row.
#[derive(Debug)]
pub enum TopkRanges<'a, I> {
    /// `[starts[r], ends[r])` (ragged prefill: several sequences in one key space).
    Bounds { starts: &'a I, ends: &'a I },
    /// `[0, lengths[r])` (one length per row).
    Lengths(&'a I),
}

impl<I> Clone for TopkRanges<'_, I> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<I> Copy for TopkRanges<'_, I> {}

/// Output options of a top-k call (all off by default).
#[derive(Debug)]
pub struct TopkOptions<'a, I> {
    /// Emit each row by value descending, then index ascending (a bitonic sort of the
    /// selected `topk` in shared memory, some microseconds per row).
    pub sorted: bool,
    /// int32 `[rows]`: added to every selected index of row `r`.
    pub row_offsets: Option<&'a I>,
}

impl<I> Default for TopkOptions<'_, I> {
    fn default() -> Self {
        Self {
            sorted: false,
            row_offsets: None,
        }
    }
}

impl<I> Clone for TopkOptions<'_, I> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<I> Copy for TopkOptions<'_, I> {}

/// Logits of a paged decode step as top-k reads them: one row per query row of the batch,
/// `cols` columns (the logits' `max_ctx`), rows `row_stride` apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PagedTopkShape {
    pub cols: usize,
    pub row_stride: usize,
    pub topk: usize,
    /// As [`TopkOptions::sorted`].
    pub sorted: bool,
}

impl PagedTopkShape {
    /// The rules of a paged top-k over a batch of `rows` query rows and `max_pages` table
    /// columns, pure: the [`TopkShape`] rules, and the table's pages covering the
    /// columns (so every selectable index has a table entry).
    pub fn validate(&self, rows: usize, max_pages: usize) -> Result<usize> {
        let need = self.as_topk_shape(rows).validate()?;
        let covered = max_pages.saturating_mul(DSA_PAGE_SIZE as usize);
        if covered < self.cols {
            return Err(DsaError::Shape {
                what: "top-k block table (its pages must cover the logits columns)",
                expected: vec![self.cols.div_ceil(DSA_PAGE_SIZE as usize)],
                got: vec![max_pages],
            });
        }
        Ok(need)
    }

    fn as_topk_shape(&self, rows: usize) -> TopkShape {
        TopkShape {
            rows,
            cols: self.cols,
            row_stride: self.row_stride,
            topk: self.topk,
        }
    }
}

impl DsaKernels {
    /// Top-k of every row of `logits` (fp32, see [`TopkShape`]) over its valid range,
    /// written to `out` (int32 `[rows, topk]`, row `r` at `r * topk`). See the [module
    /// docs](crate::topk) for the tie rule, NaN/`-inf` handling, padding and the offsets.
    ///
    /// Every buffer length and scalar is checked here before the launch; the range values
    /// themselves live on the device and are clamped to `[0, cols]` by the kernel. No
    /// allocation, no synchronization.
    pub fn topk<L, I, O>(
        &self,
        logits: &L,
        ranges: TopkRanges<'_, I>,
        shape: TopkShape,
        options: TopkOptions<'_, I>,
        out: &mut O,
    ) -> Result<()>
    where
        L: DevicePtr<f32>,
        I: DevicePtr<i32>,
        O: DevicePtrMut<i32>,
    {
        let rows = shape.rows;
        let (starts, ends) = match ranges {
            TopkRanges::Bounds { starts, ends } => (Some(starts), ends),
            TopkRanges::Lengths(lengths) => (None, lengths),
        };
        crate::validate::topk(
            shape,
            logits.len(),
            starts.map(|s| s.len()),
            ends.len(),
            options.row_offsets.map(|o| o.len()),
            out.len(),
        )?;
        if rows == 0 {
            return Ok(());
        }
        let mut a = self.args();
        let params = DsaTopkParams {
            logits: a.read("top-k logits", logits, 4)?,
            row_stride: shape.row_stride as i64,
            starts: a.read_opt("top-k range starts", starts, 4)?,
            ends: a.read("top-k range ends", ends, 4)?,
            offsets: a.read_opt("top-k row offsets", options.row_offsets, 4)?,
            block_table: std::ptr::null(),
            out: a.write("top-k output", out, 4)?,
            rows: rows as i32,
            cols: shape.cols as i32,
            k: shape.topk as i32,
            sorted: i32::from(options.sorted),
            max_pages: 0,
            next_n: 1,
            seq_lens: std::ptr::null(),
        };
        let (kernel, cfg) = topk_launch(rows, shape.cols, self.sm_count());
        // SAFETY: every buffer holds what the kernel reads or writes for these shapes
        // (checked above); range values are clamped to [0, cols] in the kernel.
        unsafe { a.launch("topk", kernel, cfg, &params) }
    }

    /// Top-k of a paged decode step: the rows of `logits` are the query rows of `batch`
    /// (as [`Self::indexer_logits_decode`] writes them), each row's range is derived on the
    /// device from its sequence's length (row `b * next_n + j` ranges over
    /// `[0, seq_lens[b] - next_n + 1 + j)`), and the selected indices come out translated
    /// through the batch's block table to physical cache slots, ready for
    /// [`Self::sparse_mla_decode`]. `out` is int32 `[batch * next_n, topk]`.
    pub fn topk_paged<B, S, L, O>(
        &self,
        batch: &PagedBatch<'_, B, S>,
        logits: &L,
        shape: PagedTopkShape,
        out: &mut O,
    ) -> Result<()>
    where
        B: DevicePtr<i32>,
        S: DevicePtr<i32>,
        L: DevicePtr<f32>,
        O: DevicePtrMut<i32>,
    {
        let b = batch.shape();
        crate::validate::topk_paged(&b, shape, logits.len(), out.len())?;
        let rows = b.rows();
        let mut a = self.args();
        let params = DsaTopkParams {
            logits: a.read("top-k logits", logits, 4)?,
            row_stride: shape.row_stride as i64,
            starts: std::ptr::null(),
            ends: std::ptr::null(),
            offsets: std::ptr::null(),
            block_table: a.read("block table", batch.block_table(), 4)?,
            out: a.write("top-k output", out, 4)?,
            rows: rows as i32,
            cols: shape.cols as i32,
            k: shape.topk as i32,
            sorted: i32::from(shape.sorted),
            max_pages: b.max_pages as i32,
            next_n: b.next_n as i32,
            seq_lens: a.read("seq_lens", batch.seq_lens(), 4)?,
        };
        let (kernel, cfg) = topk_launch(rows, shape.cols, self.sm_count());
        // SAFETY: logits and out hold what the kernel touches for this batch (checked
        // above), seq_lens holds `batch` entries and the table `batch * max_pages`
        // (checked by PagedBatch::new); lengths are clamped to [0, cols] and table pages
        // bounds-checked in the kernel.
        unsafe { a.launch("topk", kernel, cfg, &params) }
    }
}

/// CTAs per row: rows longer than the candidate buffer split their candidate pass over a
/// cluster of 8, 4 or 2 CTAs (the most that keeps rows x CTAs within half the SMs), so that
/// few long rows (a decode batch) still read through many SMs; one CTA per row otherwise.
/// Half, because each CTA takes a whole SM's shared memory and a cluster must fit in one
/// GPC: on the H200 32 rows x 4 CTAs did not all fit at once (34 us against 25 us for 32 x
/// 2 and 29 us unsplit), while 4 rows x 8 did (20 us against 27 us).
fn topk_split(rows: usize, cols: usize, sms: usize) -> usize {
    if cols <= DSA_TOPK_CAND_CAP as usize {
        return 1;
    }
    [8, 4, 2]
        .into_iter()
        .find(|&c| rows.saturating_mul(c) <= sms / 2)
        .unwrap_or(1)
}

fn topk_launch(rows: usize, cols: usize, sms: usize) -> (&'static str, LaunchConfig) {
    let split = topk_split(rows, cols, sms);
    let kernel = match split {
        8 => "dsa_topk_f32_split8",
        4 => "dsa_topk_f32_split4",
        2 => "dsa_topk_f32_split2",
        _ => "dsa_topk_f32",
    };
    // rows * split <= sms / 2 when split > 1; rows fits an i32 (checked by validate).
    let cfg = linear((rows * split) as u32, DSA_TOPK_THREADS, DSA_TOPK_SMEM_BYTES);
    (kernel, cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_checks() {
        let s = TopkShape::new(4, 1000);
        assert_eq!(s.validate().unwrap(), 4000);
        assert!(TopkShape { topk: 0, ..s }.validate().is_err());
        assert!(TopkShape { topk: 4097, ..s }.validate().is_err());
        assert!(TopkShape { topk: 4096, ..s }.validate().is_ok());
        assert!(TopkShape {
            row_stride: 999,
            ..s
        }
        .validate()
        .is_err());
        assert_eq!(
            TopkShape {
                row_stride: 1003,
                ..s
            }
            .validate()
            .unwrap(),
            3 * 1003 + 1000
        );
        assert_eq!(TopkShape { rows: 0, ..s }.validate().unwrap(), 0);
        assert!(TopkShape {
            cols: 1 << 31,
            row_stride: 1 << 31,
            ..s
        }
        .validate()
        .is_err());
    }

    #[test]
    fn long_rows_split_only_while_clusters_fit() {
        assert_eq!(topk_split(4, 131072, 132), 8);
        assert_eq!(topk_split(16, 131072, 132), 4);
        assert_eq!(topk_split(32, 131072, 132), 2);
        assert_eq!(topk_split(33, 131072, 132), 2);
        assert_eq!(topk_split(34, 131072, 132), 1);
        assert_eq!(topk_split(128, 131072, 132), 1);
        assert_eq!(topk_split(4, 16384, 132), 1);
        assert_eq!(topk_launch(32, 131072, 132).0, "dsa_topk_f32_split2");
        assert_eq!(topk_launch(128, 131072, 132).0, "dsa_topk_f32");
    }

    #[test]
    fn paged_checks() {
        let p = PagedTopkShape {
            cols: 130,
            row_stride: 130,
            topk: 64,
            sorted: false,
        };
        assert!(p.validate(8, 3).is_ok());
        assert!(p.validate(8, 2).is_err());
    }
}
