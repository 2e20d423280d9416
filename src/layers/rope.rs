//! MLA's interleaved RoPE.
use cudarc::driver::{DevicePtr, DevicePtrMut};
use half::bf16;

use crate::cache::ROPE_DIM;
use crate::check;
use crate::error::{DsaError, Result};
use crate::indexer::RopeTablesRef;
use crate::runtime::{linear, DsaKernels};
use crate::sys::layers::DsaMlaRopeParams;

/// Where [`DsaKernels::mla_rope`] reads and writes: `tokens` x `heads` groups of 64 bf16
/// values, (token `t`, head `h`) at `t * token_stride + h * head_stride` of its buffer
/// (the buffer view starts at the first rope value, e.g. `q.slice(128..)` for a query
/// `[tokens, heads, 192]` whose rope part follows the 128 nope values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RopeRows {
    pub token_stride: usize,
    pub head_stride: usize,
}

impl RopeRows {
    pub(crate) fn span(&self, what: &'static str, tokens: usize, heads: usize) -> Result<usize> {
        if !self.token_stride.is_multiple_of(2) || !self.head_stride.is_multiple_of(2) {
            return Err(DsaError::Alignment {
                what,
                detail: "rope strides must be even (pairs are 4-byte loads)".into(),
            });
        }
        check::fits_i32(what, self.head_stride)?;
        check::fits_i64(what, self.token_stride)?;
        if tokens == 0 || heads == 0 {
            return Ok(0);
        }
        let last = check::product(what, &[tokens - 1, self.token_stride])?
            .checked_add(check::product(what, &[heads - 1, self.head_stride])?)
            .and_then(|v| v.checked_add(ROPE_DIM))
            .ok_or_else(|| check::overflow(what))?;
        Ok(last)
    }
}

impl DsaKernels {
    /// Interleaved RoPE (pairs `(2i, 2i + 1)`) of the 64 rope values of every (token,
    /// head): `src` -> `dst` (layouts [`RopeRows`]; `src` and `dst` may be different
    /// buffers, e.g. the projection output and the attention query), rotation in f32 with
    /// each product rounded (the reference's `RopeTables::apply_interleaved`) and the
    /// result rounded to bf16. `positions` i32 `[tokens]` (device data: a position outside
    /// the tables writes zeros); `rope` the tables of [`crate::indexer::rope_tables`] (MLA
    /// and the indexer share them in DeepSeek-V3.2).
    #[allow(clippy::too_many_arguments)]
    pub fn mla_rope<S, D, P, R>(
        &self,
        tokens: usize,
        heads: usize,
        src: &S,
        src_rows: RopeRows,
        dst: &mut D,
        dst_rows: RopeRows,
        positions: &P,
        rope: RopeTablesRef<'_, R>,
    ) -> Result<()>
    where
        S: DevicePtr<bf16>,
        D: DevicePtrMut<bf16>,
        P: DevicePtr<i32>,
        R: DevicePtr<f32>,
    {
        let (tokens_i, heads_i, max_pos, blocks) = crate::validate::mla_rope(
            tokens,
            heads,
            src.len(),
            src_rows,
            dst.len(),
            dst_rows,
            positions.len(),
            rope.max_pos,
            rope.cos.len().min(rope.sin.len()),
        )?;
        if tokens == 0 || heads == 0 {
            return Ok(());
        }
        let mut a = self.args();
        let params = DsaMlaRopeParams {
            src: a.read::<bf16, _>("mla_rope src", src, 4)? as *const _,
            dst: a.write::<bf16, _>("mla_rope dst", dst, 4)? as *mut _,
            positions: a.read("mla_rope positions", positions, 4)?,
            cos: a.read("mla_rope cos", rope.cos, 4)?,
            sin: a.read("mla_rope sin", rope.sin, 4)?,
            src_token_stride: src_rows.token_stride as i64,
            dst_token_stride: dst_rows.token_stride as i64,
            src_head_stride: src_rows.head_stride as i32,
            dst_head_stride: dst_rows.head_stride as i32,
            tokens: tokens_i,
            heads: heads_i,
            max_pos,
        };
        // SAFETY: src and dst hold the span of their checked layouts; positions are
        // bounds-checked against max_pos in the kernel and the tables hold max_pos rows.
        unsafe { a.launch("mla_rope", "dsa_mla_rope", linear(blocks, 128, 0), &params) }
    }
}
