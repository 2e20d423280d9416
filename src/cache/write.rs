//! Cache-write launches: new tokens, bf16 rows, scattered into a paged cache.
use cudarc::driver::DevicePtr;
use half::bf16;

use super::{CacheKind, PagedCache, SlotMapping};
use crate::check;
use crate::error::Result;
use crate::runtime::{linear, DsaKernels};
use crate::sys::cache::DsaCacheWriteParams;

/// Where the new tokens come from: `rows` bf16 rows of `K::SRC_DIM` values (576 for MLA:
/// 512 latent then 64 rope; 128 for the indexer), row `i` at element `i * row_stride`.
/// The buffer must be 16-byte aligned and `row_stride` a multiple of 8.
#[derive(Debug, Clone, Copy)]
pub struct CacheRows<'a, S> {
    pub src: &'a S,
    pub rows: usize,
    pub row_stride: usize,
}

impl DsaKernels {
    /// Writes `src.rows` tokens into `cache` at the slots of `slots` (checked on upload; here
    /// their number must equal the rows and the largest must fit the cache). FP8 caches are
    /// quantized per 128 values with scale `max(amax, 1e-4) / 448`; `pow2_scale` rounds the
    /// scale up to a power of two (the indexer cache's UE8M0 rule; optional for MLA).
    pub fn write_cache<K: CacheKind, S: DevicePtr<bf16>>(
        &self,
        cache: &mut PagedCache<K>,
        src: CacheRows<'_, S>,
        slots: &SlotMapping,
        pow2_scale: bool,
    ) -> Result<()> {
        let slots = slots.checked_for(src.rows, cache.capacity_tokens())?;
        self.write_cache_device_slots(cache, src, &slots, pow2_scale)
    }

    /// As [`Self::write_cache`], with slots already on the device (an engine's own slot
    /// mapping, i32 `[rows]`). Negative slots are skipped (padding); slots at or past the
    /// capacity are skipped too (the kernel bounds-checks every slot), so no write leaves
    /// the cache whatever the slots hold; a bad slot is dropped silently rather than
    /// reported, so prefer [`Self::write_cache`] where the slots are on the host.
    pub fn write_cache_device_slots<K: CacheKind, S: DevicePtr<bf16>, I: DevicePtr<i32>>(
        &self,
        cache: &mut PagedCache<K>,
        src: CacheRows<'_, S>,
        slots: &I,
        pow2_scale: bool,
    ) -> Result<()> {
        let (num_tokens, stride) = crate::validate::write_cache::<K>(
            src.src.len(),
            src.rows,
            src.row_stride,
            slots.len(),
        )?;
        if src.rows == 0 {
            return Ok(());
        }
        let capacity_tokens = cache.capacity_tokens() as i64;
        let mut a = self.args();
        let params = DsaCacheWriteParams {
            src: a.read("cache write source", src.src, 16)? as *const _,
            src_row_stride: stride,
            slots: a.read("slots", slots, 4)?,
            cache: a.write(K::NAME, cache.data_mut(), 16)? as *mut _,
            num_tokens,
            pow2_scale: i32::from(pow2_scale && K::FP8),
            capacity_tokens,
        };
        const WARPS: usize = 4;
        let cfg = linear(
            check::grid("cache write grid", src.rows, WARPS)?,
            32 * WARPS as u32,
            0,
        );
        // SAFETY: the source holds every row the kernel reads (checked above, with checked
        // arithmetic and the stride bounded by the kernel's i64); slots holds `rows`
        // entries and each is bounds-checked against the capacity in the kernel.
        unsafe { a.launch("cache_write", K::WRITE_KERNEL, cfg, &params) }
    }
}

/// The source rules of a cache write, pure: the row stride (>= the row's values, a
/// multiple of 8 for the kernel's 16-byte loads, within i64) and a source buffer of
/// `src_len` elements that holds every row. Returns the row count and stride as the
/// kernel takes them.
pub fn check_cache_rows<K: CacheKind>(
    src_len: usize,
    rows: usize,
    row_stride: usize,
) -> Result<(i32, i64)> {
    let stride = check::row_stride("cache write source", row_stride, K::SRC_DIM, 8)?;
    let need = check::span(K::NAME, rows, row_stride, K::SRC_DIM)?;
    check::at_least(K::NAME, src_len, need, &[rows, K::SRC_DIM])?;
    Ok((check::fits_i32("cache write rows", rows)?, stride))
}
