//! Cache-write launches: new tokens, bf16 rows, scattered into a paged cache.
use cudarc::driver::{CudaView, DevicePtr, DevicePtrMut, LaunchConfig};
use half::bf16;

use super::{CacheKind, PagedCache, SlotMapping};
use crate::check;
use crate::error::{DsaError, Result};
use crate::runtime::DsaKernels;
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
        // SAFETY: every slot was checked against the cache's capacity above.
        unsafe { self.write_cache_device_slots(cache, src, &slots, pow2_scale) }
    }

    /// As [`Self::write_cache`], with slots already on the device (an engine's own slot
    /// mapping). Negative slots are skipped (padding); slots at or past the capacity are
    /// skipped too, so no write leaves the cache.
    ///
    /// # Safety
    /// None for memory: the kernel bounds-checks slots. Marked unsafe because a bad slot
    /// is silently dropped rather than reported; prefer [`Self::write_cache`].
    pub unsafe fn write_cache_device_slots<K: CacheKind, S: DevicePtr<bf16>>(
        &self,
        cache: &mut PagedCache<K>,
        src: CacheRows<'_, S>,
        slots: &CudaView<'_, i32>,
        pow2_scale: bool,
    ) -> Result<()> {
        let n = src.rows;
        check::at_least("slots", slots.len(), n, &[n])?;
        if n == 0 {
            return Ok(());
        }
        if src.row_stride < K::SRC_DIM || src.row_stride % 8 != 0 {
            return Err(DsaError::Alignment {
                what: "cache write source",
                detail: format!(
                    "row stride {} must be >= {} and a multiple of 8",
                    src.row_stride,
                    K::SRC_DIM
                ),
            });
        }
        check::at_least(
            K::NAME,
            src.src.len(),
            (n - 1) * src.row_stride + K::SRC_DIM,
            &[n, K::SRC_DIM],
        )?;
        let num_tokens = check::fits_i32("cache write rows", n)?;
        let stream = self.stream().clone();
        let (src_ptr, _g0) = src.src.device_ptr(&stream);
        check::aligned("cache write source", src_ptr, 16)?;
        let (slots_ptr, _g1) = slots.device_ptr(&stream);
        let capacity_tokens = cache.capacity_tokens() as i64;
        let (cache_ptr, _g2) = cache.data_mut().device_ptr_mut(&stream);
        let params = DsaCacheWriteParams {
            src: src_ptr as *const _,
            src_row_stride: src.row_stride as i64,
            slots: slots_ptr as *const i32,
            cache: cache_ptr as *mut _,
            num_tokens,
            pow2_scale: i32::from(pow2_scale && K::FP8),
            capacity_tokens,
        };
        const WARPS: u32 = 4;
        let cfg = LaunchConfig {
            grid_dim: ((n as u32).div_ceil(WARPS), 1, 1),
            block_dim: (32 * WARPS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: shapes and alignment checked above; slots are bounds-checked in the kernel.
        unsafe { self.launch("cache_write", K::WRITE_KERNEL, cfg, &params) }
    }
}
