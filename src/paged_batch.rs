//! The paged batch of a decode step: block table, per-sequence lengths and the scalars
//! that describe them, checked once and then taken by every paged operation (indexer
//! logits, top-k with translation, dense and sparse MLA decode).
use cudarc::driver::DevicePtr;

use crate::cache::PAGE_SIZE;
use crate::check;
use crate::error::{DsaError, Result};

/// Geometry of a paged decode batch.
///
/// * `batch` sequences, each with `next_n` new query tokens this step (1 for plain decode,
///   more for speculative decode); query row `b * next_n + j` is token `j` of sequence `b`;
/// * the block table is i32 `[batch, max_pages]`: logical token `s` of sequence `b` lives
///   at physical slot `block_table[b * max_pages + s / 64] * 64 + s % 64` of every paged
///   cache of the step;
/// * the sequence lengths are i32 `[batch]`, each counting the `next_n` new tokens (already
///   written to the caches): row `b * next_n + j` sees logical tokens
///   `0 ..= seq_lens[b] - next_n + j` (causal).
///
/// Table entries and lengths live on the device and are not trusted: a negative length
/// reads as 0, a length past `64 * max_pages` is cut there, and a table entry outside a
/// cache's pages masks its 64 tokens (never read). Checking them on the host would need a
/// synchronization; validate them where they are built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PagedBatchShape {
    /// Sequences, `>= 1`.
    pub batch: usize,
    /// New tokens (query rows) per sequence, `>= 1`.
    pub next_n: usize,
    /// Width of the block table (pages per sequence), `>= 1`.
    pub max_pages: usize,
}

impl PagedBatchShape {
    /// The shape's rules, checked once: every dimension positive, and the query rows, the
    /// block table's entries and a sequence's tokens all within the kernels' 32-bit
    /// indexing. Pure: no device involved.
    pub fn validate(&self) -> Result<()> {
        if self.batch == 0 || self.next_n == 0 || self.max_pages == 0 {
            return Err(DsaError::Unsupported {
                what: "paged batch",
                detail: format!(
                    "batch {}, next_n {} and max_pages {} must all be >= 1",
                    self.batch, self.next_n, self.max_pages
                ),
            });
        }
        let rows = check::product("paged batch rows", &[self.batch, self.next_n])?;
        check::fits_i32("paged batch rows (batch * next_n)", rows)?;
        let table = check::product("block table", &[self.batch, self.max_pages])?;
        check::fits_i32("block table entries (batch * max_pages)", table)?;
        let tokens = check::product("paged batch tokens", &[self.max_pages, PAGE_SIZE])?;
        check::fits_i32("tokens per sequence (64 * max_pages)", tokens)?;
        Ok(())
    }

    /// Query rows: `batch * next_n` (valid once [`Self::validate`] passed).
    pub fn rows(&self) -> usize {
        self.batch.saturating_mul(self.next_n)
    }

    /// i32 entries of the block table: `batch * max_pages`.
    pub fn table_len(&self) -> usize {
        self.batch.saturating_mul(self.max_pages)
    }

    /// Tokens a sequence can hold: `64 * max_pages`.
    pub fn max_tokens(&self) -> usize {
        self.max_pages.saturating_mul(PAGE_SIZE)
    }

    /// The shape's rules and the lengths of its two device buffers.
    pub fn check_buffers(&self, block_table_len: usize, seq_lens_len: usize) -> Result<()> {
        self.validate()?;
        check::at_least(
            "block table",
            block_table_len,
            self.table_len(),
            &[self.batch, self.max_pages],
        )?;
        check::at_least("seq_lens", seq_lens_len, self.batch, &[self.batch])
    }
}

/// A validated paged batch: the [`PagedBatchShape`] with its device block table and
/// sequence lengths, checked against each other once by [`PagedBatch::new`].
///
/// Generic over the buffer types so `CudaSlice` and `CudaView` both work.
#[derive(Debug)]
pub struct PagedBatch<'a, B, L> {
    shape: PagedBatchShape,
    block_table: &'a B,
    seq_lens: &'a L,
}

impl<B, L> Clone for PagedBatch<'_, B, L> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B, L> Copy for PagedBatch<'_, B, L> {}

impl<'a, B: DevicePtr<i32>, L: DevicePtr<i32>> PagedBatch<'a, B, L> {
    /// Checks `shape` and the two buffers' lengths (layouts on [`PagedBatchShape`]).
    pub fn new(shape: PagedBatchShape, block_table: &'a B, seq_lens: &'a L) -> Result<Self> {
        shape.check_buffers(block_table.len(), seq_lens.len())?;
        Ok(Self {
            shape,
            block_table,
            seq_lens,
        })
    }

    /// The batch's geometry.
    pub fn shape(&self) -> PagedBatchShape {
        self.shape
    }

    /// The block table, i32 `[batch, max_pages]`.
    pub fn block_table(&self) -> &'a B {
        self.block_table
    }

    /// The sequence lengths, i32 `[batch]`.
    pub fn seq_lens(&self) -> &'a L {
        self.seq_lens
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_rules() {
        let ok = PagedBatchShape {
            batch: 4,
            next_n: 2,
            max_pages: 3,
        };
        assert!(ok.validate().is_ok());
        assert!(ok.check_buffers(12, 4).is_ok());
        assert!(ok.check_buffers(11, 4).is_err());
        assert!(ok.check_buffers(12, 3).is_err());
        for bad in [
            PagedBatchShape { batch: 0, ..ok },
            PagedBatchShape { next_n: 0, ..ok },
            PagedBatchShape { max_pages: 0, ..ok },
            PagedBatchShape {
                max_pages: 1 << 26,
                ..ok
            },
            PagedBatchShape {
                batch: usize::MAX,
                ..ok
            },
            PagedBatchShape {
                next_n: 1 << 31,
                ..ok
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
