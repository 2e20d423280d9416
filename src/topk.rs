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
//! * Output: int32 `[rows, k]`, row `r` at `out[r * k ..]`. When a row has fewer than `k`
//!   selectable values, all of them are returned followed by `-1` padding. Without
//!   [`TopkOptions::sorted`] the selected indices come in no particular order (it may
//!   differ between runs); with it, by value descending, then index ascending.
//! * Fused outputs ([`TopkOptions`]), applied to each selected index `i` in this order:
//!   `i += row_offsets[r]` (ragged prefill, where rows index a flattened key space), then
//!   translation through a block table to a physical slot of the paged caches
//!   (`block_table[r / next_n][i / 64] * 64 + i % 64`, paged decode); an index whose page
//!   lies outside the table row or whose table entry is negative becomes `-1`. Padding
//!   stays `-1` in every mode.
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
//! fits in shared memory, a few more passes over the row. `k` may be anything in
//! `1..=4096`; rows may be of any length below 2^31 (one CTA per row at every length: a
//! row past ~200K keys is proportionally slower, and a few long rows use few SMs). No
//! workspace is needed.
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig};

use crate::check;
use crate::error::{DsaError, Result};
use crate::runtime::DsaKernels;
use crate::sys::common::DSA_PAGE_SIZE;
use crate::sys::topk::{DsaTopkParams, DSA_TOPK_MAX_K, DSA_TOPK_SMEM_BYTES, DSA_TOPK_THREADS};

/// The largest `k` supported.
pub const TOPK_MAX_K: usize = DSA_TOPK_MAX_K as usize;
/// The indexer's `k` (DeepSeek-V3.2 `index_topk`).
pub const TOPK_DEFAULT_K: usize = 2048;

/// Shape of one top-k call over row-major fp32 logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopkShape {
    /// Number of rows (one output row of `k` indices each).
    pub rows: usize,
    /// Columns of a row: every range is clamped to `[0, cols)`.
    pub cols: usize,
    /// Elements between the starts of consecutive rows (`>= cols`; any value, the kernel
    /// handles unaligned rows).
    pub row_stride: usize,
    /// How many indices per row, `1..=4096`.
    pub k: usize,
}

impl TopkShape {
    /// `rows` rows of `cols` contiguous values, [`TOPK_DEFAULT_K`] per row.
    pub fn new(rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            row_stride: cols,
            k: TOPK_DEFAULT_K,
        }
    }

    /// Checks the scalars and returns the logits elements the call reads
    /// (`(rows - 1) * row_stride + cols`, 0 when there are no rows).
    pub fn validate(&self) -> Result<usize> {
        if self.k == 0 || self.k > TOPK_MAX_K {
            return Err(DsaError::Unsupported {
                what: "top-k k",
                detail: format!("k = {} must be in 1..={TOPK_MAX_K}", self.k),
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
        if self.rows == 0 {
            return Ok(0);
        }
        (self.rows - 1)
            .checked_mul(self.row_stride)
            .and_then(|x| x.checked_add(self.cols))
            .ok_or(DsaError::Capacity {
                what: "top-k logits",
                needed: usize::MAX,
                capacity: isize::MAX as usize,
            })
    }
}

/// Per-row valid ranges, int32 on the device, one entry per row.
#[derive(Debug)]
pub enum TopkRanges<'a, I> {
    /// `[starts[r], ends[r])` (ragged prefill: several sequences in one key space).
    Bounds { starts: &'a I, ends: &'a I },
    /// `[0, lengths[r])` (decode: the row's context length).
    Lengths(&'a I),
}

impl<I> Clone for TopkRanges<'_, I> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<I> Copy for TopkRanges<'_, I> {}

/// Translation of the selected indices to physical slots of a paged cache (page size 64):
/// row `r` belongs to sequence `r / next_n`, whose block-table row is
/// `block_table[(r / next_n) * max_pages ..][..max_pages]` (int32 `[batch, max_pages]`).
#[derive(Debug)]
pub struct TopkTranslation<'a, I> {
    pub block_table: &'a I,
    /// Sequences in the block table (`batch * next_n >= rows`).
    pub batch: usize,
    pub max_pages: usize,
    /// Query rows per sequence (1 for plain decode, up to 4 for speculative decode).
    pub next_n: usize,
}

impl<I> Clone for TopkTranslation<'_, I> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<I> Copy for TopkTranslation<'_, I> {}

/// Output options of a top-k call (all off by default).
#[derive(Debug)]
pub struct TopkOptions<'a, I> {
    /// Emit each row by value descending, then index ascending (a bitonic sort of the
    /// selected `k` in shared memory, some microseconds per row).
    pub sorted: bool,
    /// int32 `[rows]`: added to every selected index of row `r` (before translation).
    pub row_offsets: Option<&'a I>,
    /// Translate the (offset) indices to physical cache slots.
    pub translation: Option<TopkTranslation<'a, I>>,
}

impl<I> Default for TopkOptions<'_, I> {
    fn default() -> Self {
        Self {
            sorted: false,
            row_offsets: None,
            translation: None,
        }
    }
}

impl<I> Clone for TopkOptions<'_, I> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<I> Copy for TopkOptions<'_, I> {}

/// Host checks of the translation scalars; `cols` bounds the indices when there are no
/// row offsets, so then every index has a table entry.
fn check_translation(
    rows: usize,
    cols: usize,
    has_offsets: bool,
    batch: usize,
    max_pages: usize,
    next_n: usize,
    table_len: usize,
) -> Result<()> {
    if next_n == 0 {
        return Err(DsaError::Unsupported {
            what: "top-k translation next_n",
            detail: "next_n must be at least 1".into(),
        });
    }
    check::fits_i32("top-k block table pages", max_pages)?;
    check::fits_i32("top-k next_n", next_n)?;
    if batch.saturating_mul(next_n) < rows {
        return Err(DsaError::Shape {
            what: "top-k block table rows (batch * next_n must cover the logits rows)",
            expected: vec![rows.div_ceil(next_n), max_pages],
            got: vec![batch, max_pages],
        });
    }
    if max_pages == 0 {
        return Err(DsaError::Shape {
            what: "top-k block table",
            expected: vec![batch, cols.div_ceil(DSA_PAGE_SIZE as usize).max(1)],
            got: vec![batch, 0],
        });
    }
    let needed = batch.checked_mul(max_pages).ok_or(DsaError::Capacity {
        what: "top-k block table",
        needed: usize::MAX,
        capacity: table_len,
    })?;
    check::at_least("top-k block table", table_len, needed, &[batch, max_pages])?;
    if !has_offsets && max_pages * (DSA_PAGE_SIZE as usize) < cols {
        return Err(DsaError::Shape {
            what: "top-k block table (its pages must cover the logits columns)",
            expected: vec![batch, cols.div_ceil(DSA_PAGE_SIZE as usize)],
            got: vec![batch, max_pages],
        });
    }
    Ok(())
}

impl DsaKernels {
    /// Top-k of every row of `logits` (fp32, see [`TopkShape`]) over its valid range,
    /// written to `out` (int32 `[rows, k]`, row `r` at `r * k`). See the [module
    /// docs](crate::topk) for the tie rule, NaN/`-inf` handling, padding and the fused
    /// outputs.
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
        let need = shape.validate()?;
        let rows = shape.rows;
        if rows == 0 {
            return Ok(());
        }
        check::at_least(
            "top-k logits",
            logits.len(),
            need,
            &[rows, shape.row_stride],
        )?;
        let (starts, ends) = match ranges {
            TopkRanges::Bounds { starts, ends } => {
                check::at_least("top-k range starts", starts.len(), rows, &[rows])?;
                (Some(starts), ends)
            }
            TopkRanges::Lengths(lengths) => (None, lengths),
        };
        check::at_least("top-k range ends", ends.len(), rows, &[rows])?;
        if let Some(o) = options.row_offsets {
            check::at_least("top-k row offsets", o.len(), rows, &[rows])?;
        }
        if let Some(t) = &options.translation {
            check_translation(
                rows,
                shape.cols,
                options.row_offsets.is_some(),
                t.batch,
                t.max_pages,
                t.next_n,
                t.block_table.len(),
            )?;
        }
        let out_len = rows.checked_mul(shape.k).ok_or(DsaError::Capacity {
            what: "top-k output",
            needed: usize::MAX,
            capacity: out.len(),
        })?;
        check::at_least("top-k output", out.len(), out_len, &[rows, shape.k])?;

        let stream = self.stream().clone();
        let (logits_ptr, _g0) = logits.device_ptr(&stream);
        check::aligned("top-k logits", logits_ptr, 4)?;
        let (ends_ptr, _g1) = ends.device_ptr(&stream);
        let starts_g = starts.map(|s| s.device_ptr(&stream));
        let offsets_g = options.row_offsets.map(|o| o.device_ptr(&stream));
        let table_g = options
            .translation
            .as_ref()
            .map(|t| t.block_table.device_ptr(&stream));
        let (out_ptr, _g2) = out.device_ptr_mut(&stream);
        let (max_pages, next_n) = options
            .translation
            .as_ref()
            .map_or((0, 1), |t| (t.max_pages as i32, t.next_n as i32));
        let params = DsaTopkParams {
            logits: logits_ptr as *const f32,
            row_stride: shape.row_stride as i64,
            starts: starts_g
                .as_ref()
                .map_or(std::ptr::null(), |(p, _)| *p as *const i32),
            ends: ends_ptr as *const i32,
            offsets: offsets_g
                .as_ref()
                .map_or(std::ptr::null(), |(p, _)| *p as *const i32),
            block_table: table_g
                .as_ref()
                .map_or(std::ptr::null(), |(p, _)| *p as *const i32),
            out: out_ptr as *mut i32,
            rows: rows as i32,
            cols: shape.cols as i32,
            k: shape.k as i32,
            sorted: i32::from(options.sorted),
            max_pages,
            next_n,
        };
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, 1, 1),
            block_dim: (DSA_TOPK_THREADS, 1, 1),
            shared_mem_bytes: DSA_TOPK_SMEM_BYTES,
        };
        // SAFETY: every buffer holds what the kernel reads or writes for these shapes
        // (checked above); range values are clamped to [0, cols] and table pages
        // bounds-checked in the kernel.
        unsafe { self.launch("topk", "dsa_topk_f32", cfg, &params) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_checks() {
        let s = TopkShape::new(4, 1000);
        assert_eq!(s.validate().unwrap(), 4000);
        assert!(TopkShape { k: 0, ..s }.validate().is_err());
        assert!(TopkShape { k: 4097, ..s }.validate().is_err());
        assert!(TopkShape { k: 4096, ..s }.validate().is_ok());
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
    fn translation_checks() {
        // 8 rows, next_n 2 -> 4 sequences; 130 columns need 3 pages.
        assert!(check_translation(8, 130, false, 4, 3, 2, 12).is_ok());
        assert!(check_translation(8, 130, false, 3, 3, 2, 12).is_err());
        assert!(check_translation(8, 130, false, 4, 2, 2, 8).is_err());
        assert!(check_translation(8, 130, true, 4, 2, 2, 8).is_ok());
        assert!(check_translation(8, 130, false, 4, 3, 2, 11).is_err());
        assert!(check_translation(8, 130, false, 4, 3, 0, 12).is_err());
        assert!(check_translation(8, 130, true, 4, 0, 2, 12).is_err());
    }
}
