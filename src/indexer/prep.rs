//! Fused q/k preparation launches (kernels-cuda/indexer/indexer_prep.cu).
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig};
use half::bf16;

use super::rope::INDEXER_ROPE_PAIRS;
use crate::cache::{IndexerKCache, SlotMapping, INDEXER_DIM};
use crate::check;
use crate::error::{DsaError, Result};
use crate::runtime::DsaKernels;
use crate::sys::indexer::DsaIndexerPrepParams;

/// Caller-owned device RoPE tables: f32 `cos`, `sin`, each `[max_pos, 32]` row-major
/// (layout and formula in [`super::rope_tables`]).
#[derive(Debug)]
pub struct RopeTablesRef<'a, T> {
    pub cos: &'a T,
    pub sin: &'a T,
    /// Positions the tables cover.
    pub max_pos: usize,
}

impl<T> Clone for RopeTablesRef<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for RopeTablesRef<'_, T> {}

/// Shape of a prep call: `tokens` rows of `heads` x 128 bf16 values, token `t`, head `h`
/// at element `t * token_stride + h * 128` (`token_stride >= heads * 128`, a multiple of
/// 8, so a slice of a fused projection output works). For k, `heads` is 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexerPrepShape {
    pub tokens: usize,
    pub heads: usize,
    pub token_stride: usize,
}

const WARPS: u32 = 4;

fn sqrt_half_128() -> (f32, f64) {
    (
        (INDEXER_DIM as f32).powf(-0.5),
        (INDEXER_DIM as f64).powf(-0.5),
    )
}

impl DsaKernels {
    #[allow(clippy::too_many_arguments)]
    fn prep_common<X: DevicePtr<bf16>, P: DevicePtr<i32>, R: DevicePtr<f32>>(
        &self,
        shape: IndexerPrepShape,
        x: &X,
        positions: &P,
        rope: &RopeTablesRef<'_, R>,
    ) -> Result<()> {
        let IndexerPrepShape {
            tokens,
            heads,
            token_stride,
        } = shape;
        if heads == 0 || token_stride < heads * INDEXER_DIM || token_stride % 8 != 0 {
            return Err(DsaError::Unsupported {
                what: "indexer prep shape",
                detail: format!(
                    "heads {heads} must be >= 1 and token stride {token_stride} >= heads * 128 and a multiple of 8"
                ),
            });
        }
        check::at_least(
            "indexer prep input",
            x.len(),
            (tokens.max(1) - 1) * token_stride + heads * INDEXER_DIM,
            &[tokens, heads, INDEXER_DIM],
        )?;
        check::at_least("positions", positions.len(), tokens, &[tokens])?;
        let table = rope.max_pos * INDEXER_ROPE_PAIRS;
        check::at_least(
            "rope cos",
            rope.cos.len(),
            table,
            &[rope.max_pos, INDEXER_ROPE_PAIRS],
        )?;
        check::at_least(
            "rope sin",
            rope.sin.len(),
            table,
            &[rope.max_pos, INDEXER_ROPE_PAIRS],
        )?;
        check::fits_i32("rope positions", rope.max_pos)?;
        check::fits_i32("indexer prep rows", tokens * heads)?;
        Ok(())
    }

    /// Prepares indexer queries: RoPE (rotate-half, dims 0..63, at `positions[t]`),
    /// Hadamard over 128 scaled by `128^-0.5`, e4m3 with one power-of-two scale per head
    /// row. Writes `q8 [tokens, heads, 128]` (e4m3 codes) and `w_out [tokens, heads]` =
    /// `(w * qscale) * 128^-0.5` in f32, where `w [tokens, heads]` is the head-weight
    /// projection already scaled by `heads^-0.5`.
    ///
    /// `positions` lives on the device, so it is checked there: a token whose position is
    /// outside `[0, rope.max_pos)` gets zero codes and a zero weight (it scores 0 against
    /// every key).
    #[allow(clippy::too_many_arguments)]
    pub fn indexer_prepare_q<
        X: DevicePtr<bf16>,
        P: DevicePtr<i32>,
        R: DevicePtr<f32>,
        W: DevicePtr<f32>,
        Q: DevicePtrMut<u8>,
        O: DevicePtrMut<f32>,
    >(
        &self,
        shape: IndexerPrepShape,
        x: &X,
        positions: &P,
        rope: RopeTablesRef<'_, R>,
        w: &W,
        q8: &mut Q,
        w_out: &mut O,
    ) -> Result<()> {
        self.prep_common(shape, x, positions, &rope)?;
        let rows = shape.tokens * shape.heads;
        check::at_least("head weights", w.len(), rows, &[shape.tokens, shape.heads])?;
        check::at_least(
            "q8",
            q8.len(),
            rows * INDEXER_DIM,
            &[shape.tokens, shape.heads, INDEXER_DIM],
        )?;
        check::at_least(
            "folded weights",
            w_out.len(),
            rows,
            &[shape.tokens, shape.heads],
        )?;
        if rows == 0 {
            return Ok(());
        }
        let stream = self.stream().clone();
        let (x_ptr, _g0) = x.device_ptr(&stream);
        check::aligned("indexer prep input", x_ptr, 16)?;
        let (pos_ptr, _g1) = positions.device_ptr(&stream);
        let (cos_ptr, _g2) = rope.cos.device_ptr(&stream);
        let (sin_ptr, _g3) = rope.sin.device_ptr(&stream);
        let (w_ptr, _g4) = w.device_ptr(&stream);
        let (q8_ptr, _g5) = q8.device_ptr_mut(&stream);
        let (wo_ptr, _g6) = w_out.device_ptr_mut(&stream);
        let (fold, hs) = sqrt_half_128();
        let params = DsaIndexerPrepParams {
            x: x_ptr as *const _,
            x_token_stride: shape.token_stride as i64,
            positions: pos_ptr as *const i32,
            rope_cos: cos_ptr as *const f32,
            rope_sin: sin_ptr as *const f32,
            max_pos: rope.max_pos as i32,
            num_tokens: shape.tokens as i32,
            heads: shape.heads as i32,
            w_fold: fold,
            hadamard_scale: hs,
            q8: q8_ptr as *mut u8,
            w: w_ptr as *const f32,
            w_out: wo_ptr as *mut f32,
            slots: std::ptr::null(),
            cache: std::ptr::null_mut(),
            capacity_tokens: 0,
        };
        let cfg = LaunchConfig {
            grid_dim: ((rows as u32).div_ceil(WARPS), 1, 1),
            block_dim: (32 * WARPS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: every buffer was checked to hold the rows the kernel touches; positions
        // are bounds-checked in the kernel.
        unsafe { self.launch("indexer_prep", "dsa_indexer_prep_q", cfg, &params) }
    }

    /// Prepares indexer keys (RoPE, Hadamard, e4m3 with a power-of-two scale, as for q)
    /// and writes them straight into `cache` at the slots of `slots` (one per token,
    /// checked against the cache here). `shape.heads` must be 1. A token whose position
    /// is outside `[0, rope.max_pos)` is not written.
    pub fn indexer_prepare_k<X: DevicePtr<bf16>, P: DevicePtr<i32>, R: DevicePtr<f32>>(
        &self,
        shape: IndexerPrepShape,
        x: &X,
        positions: &P,
        rope: RopeTablesRef<'_, R>,
        cache: &mut IndexerKCache,
        slots: &SlotMapping,
    ) -> Result<()> {
        self.check_k_args(shape, x, positions, &rope)?;
        let slots = slots.checked_for(shape.tokens, cache.capacity_tokens())?;
        self.launch_prepare_k(shape, x, positions, rope, cache, &slots)
    }

    /// As [`Self::indexer_prepare_k`], with the slots already on the device (an engine's
    /// own slot mapping, `i32 [tokens]`). Negative slots are skipped (padding); slots at or
    /// past the cache's capacity are skipped too, so no write leaves the cache.
    ///
    /// # Safety
    /// None for memory: the kernel bounds-checks every slot. Marked unsafe because a bad
    /// slot is silently dropped rather than reported; prefer [`Self::indexer_prepare_k`].
    pub unsafe fn indexer_prepare_k_device_slots<
        X: DevicePtr<bf16>,
        P: DevicePtr<i32>,
        R: DevicePtr<f32>,
        S: DevicePtr<i32>,
    >(
        &self,
        shape: IndexerPrepShape,
        x: &X,
        positions: &P,
        rope: RopeTablesRef<'_, R>,
        cache: &mut IndexerKCache,
        slots: &S,
    ) -> Result<()> {
        self.check_k_args(shape, x, positions, &rope)?;
        check::at_least("slots", slots.len(), shape.tokens, &[shape.tokens])?;
        self.launch_prepare_k(shape, x, positions, rope, cache, slots)
    }

    /// The k-prep shape checks (one head per token, then those shared with q).
    fn check_k_args<X: DevicePtr<bf16>, P: DevicePtr<i32>, R: DevicePtr<f32>>(
        &self,
        shape: IndexerPrepShape,
        x: &X,
        positions: &P,
        rope: &RopeTablesRef<'_, R>,
    ) -> Result<()> {
        if shape.heads != 1 {
            return Err(DsaError::Shape {
                what: "indexer k heads",
                expected: vec![1],
                got: vec![shape.heads],
            });
        }
        self.prep_common(shape, x, positions, rope)
    }

    /// Launches the k prep once its arguments are checked; slots are bounds-checked in the
    /// kernel, so any `slots` of at least `shape.tokens` entries is memory-safe.
    fn launch_prepare_k<
        X: DevicePtr<bf16>,
        P: DevicePtr<i32>,
        R: DevicePtr<f32>,
        S: DevicePtr<i32>,
    >(
        &self,
        shape: IndexerPrepShape,
        x: &X,
        positions: &P,
        rope: RopeTablesRef<'_, R>,
        cache: &mut IndexerKCache,
        slots: &S,
    ) -> Result<()> {
        if shape.tokens == 0 {
            return Ok(());
        }
        let stream = self.stream().clone();
        let (x_ptr, _g0) = x.device_ptr(&stream);
        check::aligned("indexer prep input", x_ptr, 16)?;
        let (pos_ptr, _g1) = positions.device_ptr(&stream);
        let (cos_ptr, _g2) = rope.cos.device_ptr(&stream);
        let (sin_ptr, _g3) = rope.sin.device_ptr(&stream);
        let (slots_ptr, _g4) = slots.device_ptr(&stream);
        let capacity_tokens = cache.capacity_tokens() as i64;
        let (cache_ptr, _g5) = cache.data_mut().device_ptr_mut(&stream);
        let (fold, hs) = sqrt_half_128();
        let params = DsaIndexerPrepParams {
            x: x_ptr as *const _,
            x_token_stride: shape.token_stride as i64,
            positions: pos_ptr as *const i32,
            rope_cos: cos_ptr as *const f32,
            rope_sin: sin_ptr as *const f32,
            max_pos: rope.max_pos as i32,
            num_tokens: shape.tokens as i32,
            heads: 1,
            w_fold: fold,
            hadamard_scale: hs,
            q8: std::ptr::null_mut(),
            w: std::ptr::null(),
            w_out: std::ptr::null_mut(),
            slots: slots_ptr as *const i32,
            cache: cache_ptr as *mut u8,
            capacity_tokens,
        };
        let cfg = LaunchConfig {
            grid_dim: ((shape.tokens as u32).div_ceil(WARPS), 1, 1),
            block_dim: (32 * WARPS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: shapes checked above; slots and positions are bounds-checked in the kernel.
        unsafe { self.launch("indexer_prep", "dsa_indexer_prep_k", cfg, &params) }
    }
}
