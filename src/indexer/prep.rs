//! Fused q/k preparation launches (kernels-cuda/indexer/indexer_prep.cu).
use cudarc::driver::{DevicePtr, DevicePtrMut};
use half::bf16;

use super::rope::INDEXER_ROPE_PAIRS;
use crate::cache::{IndexerKCache, SlotMapping, INDEXER_DIM};
use crate::check;
use crate::error::{DsaError, Result};
use crate::runtime::{linear, DsaKernels};
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

impl IndexerPrepShape {
    /// The shape's rules against an input of `x_len` elements and rope tables of
    /// `rope_len` entries each, pure: at least one head, the token stride at least one
    /// token's `heads * 128` values, a multiple of 8 and within i64, every size checked
    /// (no wrap), rows and positions within i32. Returns the rows `tokens * heads`.
    pub fn validate(&self, x_len: usize, max_pos: usize, rope_len: usize) -> Result<usize> {
        let IndexerPrepShape {
            tokens,
            heads,
            token_stride,
        } = *self;
        if heads == 0 {
            return Err(DsaError::Unsupported {
                what: "indexer prep heads",
                detail: "heads must be >= 1".into(),
            });
        }
        let width = check::product("indexer prep row", &[heads, INDEXER_DIM])?;
        check::row_stride("indexer prep token stride", token_stride, width, 8)?;
        let need = check::span("indexer prep input", tokens, token_stride, width)?;
        check::at_least(
            "indexer prep input",
            x_len,
            need,
            &[tokens, heads, INDEXER_DIM],
        )?;
        check_rope_tables(max_pos, rope_len)?;
        let rows = check::product("indexer prep rows", &[tokens, heads])?;
        check::fits_i32("indexer prep rows", rows)?;
        Ok(rows)
    }
}

/// The rule of a pair of RoPE tables covering `max_pos` positions, the shorter holding
/// `rope_len` values (`[max_pos, 32]` each, positions within i32), pure; `max_pos` as the
/// kernels take it.
pub(crate) fn check_rope_tables(max_pos: usize, rope_len: usize) -> Result<i32> {
    let table = check::product("rope tables", &[max_pos, INDEXER_ROPE_PAIRS])?;
    check::at_least(
        "rope tables",
        rope_len,
        table,
        &[max_pos, INDEXER_ROPE_PAIRS],
    )?;
    check::fits_i32("rope positions", max_pos)
}

impl DsaKernels {
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
        let lens = crate::validate::PrepQLens {
            x: x.len(),
            positions: positions.len(),
            rope: rope.cos.len().min(rope.sin.len()),
            w: w.len(),
            q8: q8.len(),
            w_out: w_out.len(),
        };
        let rows = crate::validate::indexer_prepare_q(shape, rope.max_pos, lens)?;
        if rows == 0 {
            return Ok(());
        }
        let (fold, hs) = sqrt_half_128();
        let mut a = self.args();
        let params = DsaIndexerPrepParams {
            x: a.read("indexer prep input", x, 16)? as *const _,
            x_token_stride: shape.token_stride as i64,
            positions: a.read("positions", positions, 4)?,
            rope_cos: a.read("rope cos", rope.cos, 4)?,
            rope_sin: a.read("rope sin", rope.sin, 4)?,
            max_pos: rope.max_pos as i32,
            num_tokens: shape.tokens as i32,
            heads: shape.heads as i32,
            w_fold: fold,
            hadamard_scale: hs,
            q8: a.write("q8", q8, 16)?,
            w: a.read("head weights", w, 4)?,
            w_out: a.write("folded weights", w_out, 4)?,
            slots: std::ptr::null(),
            cache: std::ptr::null_mut(),
            capacity_tokens: 0,
        };
        let cfg = linear(
            check::grid("indexer prep grid", rows, WARPS as usize)?,
            32 * WARPS,
            0,
        );
        // SAFETY: every buffer was checked to hold the rows the kernel touches (checked
        // arithmetic, stride within i64); positions are bounds-checked in the kernel.
        unsafe { a.launch("indexer_prep", "dsa_indexer_prep_q", cfg, &params) }
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
        // The shape and table rules first, then the slots against this cache.
        crate::validate::indexer_prepare_k(
            shape,
            rope.max_pos,
            x.len(),
            positions.len(),
            rope.cos.len().min(rope.sin.len()),
            slots.len(),
        )?;
        let slots = slots.checked_for(shape.tokens, cache.capacity_tokens())?;
        self.launch_prepare_k(shape, x, positions, rope, cache, &slots)
    }

    /// As [`Self::indexer_prepare_k`], with the slots already on the device (an engine's
    /// own slot mapping, `i32 [tokens]`). Negative slots are skipped (padding); slots at or
    /// past the cache's capacity are skipped too (the kernel bounds-checks every slot), so
    /// no write leaves the cache whatever the slots hold. A bad slot is dropped silently
    /// rather than reported; prefer [`Self::indexer_prepare_k`] where slots are on the host.
    pub fn indexer_prepare_k_device_slots<
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
        crate::validate::indexer_prepare_k(
            shape,
            rope.max_pos,
            x.len(),
            positions.len(),
            rope.cos.len().min(rope.sin.len()),
            slots.len(),
        )?;
        self.launch_prepare_k(shape, x, positions, rope, cache, slots)
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
        let capacity_tokens = cache.capacity_tokens() as i64;
        let (fold, hs) = sqrt_half_128();
        let mut a = self.args();
        let params = DsaIndexerPrepParams {
            x: a.read("indexer prep input", x, 16)? as *const _,
            x_token_stride: shape.token_stride as i64,
            positions: a.read("positions", positions, 4)?,
            rope_cos: a.read("rope cos", rope.cos, 4)?,
            rope_sin: a.read("rope sin", rope.sin, 4)?,
            max_pos: rope.max_pos as i32,
            num_tokens: shape.tokens as i32,
            heads: 1,
            w_fold: fold,
            hadamard_scale: hs,
            q8: std::ptr::null_mut(),
            w: std::ptr::null(),
            w_out: std::ptr::null_mut(),
            slots: a.read("slots", slots, 4)?,
            cache: a.write("indexer K cache", cache.data_mut(), 16)?,
            capacity_tokens,
        };
        let cfg = linear(
            check::grid("indexer prep grid", shape.tokens, WARPS as usize)?,
            32 * WARPS,
            0,
        );
        // SAFETY: shapes checked above (checked arithmetic, stride within i64); slots and
        // positions are bounds-checked in the kernel.
        unsafe { a.launch("indexer_prep", "dsa_indexer_prep_k", cfg, &params) }
    }
}
