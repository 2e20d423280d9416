//! Sparse MLA prefill over a flat bf16 kv.
use cudarc::driver::{DevicePtr, DevicePtrMut};
use half::bf16;

use super::{SparseExtras, HEADS_PER_CTA, SMEM_BYTES, THREADS};
use crate::cache::QK_DIM;
use crate::check;
use crate::error::Result;
use crate::runtime::{linear, DsaKernels};
use crate::sys::sparse_mla::DsaSparseMlaParams;

/// Shape and scale of one sparse prefill call.
///
/// Layouts (all row-major, contiguous):
/// * `q`: bf16 `[s_q, heads, 576]` (512 latent then 64 rope per head);
/// * `kv`: bf16 `[s_kv, 576]`, one latent row per key token (its first 512 values are the
///   value);
/// * `indices`: i32 `[s_q, topk]`, rows of `kv`; negative or `>= s_kv` is unused;
/// * `out`: bf16 `[s_q, heads, 512]`; `max_logits`, `lse`: f32 `[s_q, heads]` (natural log).
///
/// **Batches** are flattened: concatenate the sequences' queries into `q` and their key rows
/// into `kv`, and give each query indices that are already offset by its sequence's first
/// row in `kv` (`indices = local_top_k + kv_offset[seq]`, keeping `-1` as `-1`). Indices
/// never cross sequences unless the caller makes them, so one launch serves any mix of
/// sequence lengths.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SparsePrefillConfig {
    pub s_q: usize,
    pub s_kv: usize,
    pub heads: usize,
    pub topk: usize,
    pub softmax_scale: f32,
}

impl SparsePrefillConfig {
    /// Checks the scalar arguments, pure: supported heads and topk, `s_q * heads` and the
    /// grid within i32, `s_kv` within the kernel's i64 row count, every buffer size
    /// computable without overflow.
    pub fn validate(&self) -> Result<()> {
        super::decode::check_common(self.heads, self.topk, self.softmax_scale)?;
        check::fits_i32("sparse prefill s_q", self.s_q)?;
        let rows = check::product("sparse prefill s_q * heads", &[self.s_q, self.heads])?;
        check::fits_i32("sparse prefill s_q * heads", rows)?;
        check::fits_i64("sparse prefill s_kv", self.s_kv)?;
        check::product("sparse prefill kv", &[self.s_kv, QK_DIM, 2])?;
        check::product("sparse prefill indices", &[self.s_q, self.topk])?;
        check::product("sparse prefill q", &[rows, QK_DIM])?;
        check::fits_i32(
            "sparse prefill grid",
            check::product(
                "sparse prefill grid",
                &[self.heads.div_ceil(HEADS_PER_CTA), self.s_q],
            )?,
        )?;
        Ok(())
    }
}

impl DsaKernels {
    /// Sparse MLA prefill (layouts on [`SparsePrefillConfig`]): `out`, `max_logits` and
    /// `lse` of every (query, head). `extras.topk_length` must be `None` (use `-1` entries);
    /// `extras.attn_sink` is honoured.
    #[allow(clippy::too_many_arguments)]
    pub fn sparse_mla_prefill<Q, KV, I, T, S, O, M, L>(
        &self,
        cfg: &SparsePrefillConfig,
        q: &Q,
        kv: &KV,
        indices: &I,
        extras: SparseExtras<'_, T, S>,
        out: &mut O,
        max_logits: &mut M,
        lse: &mut L,
    ) -> Result<()>
    where
        Q: DevicePtr<bf16>,
        KV: DevicePtr<bf16>,
        I: DevicePtr<i32>,
        T: DevicePtr<i32>,
        S: DevicePtr<f32>,
        O: DevicePtrMut<bf16>,
        M: DevicePtrMut<f32>,
        L: DevicePtrMut<f32>,
    {
        let lens = crate::validate::SparsePrefillLens {
            q: q.len(),
            kv: kv.len(),
            indices: indices.len(),
            out: out.len(),
            max_logits: max_logits.len(),
            lse: lse.len(),
            attn_sink: extras.attn_sink.map(|s| s.len()),
        };
        crate::validate::sparse_mla_prefill(cfg, extras.topk_length.is_some(), lens)?;
        let (s_q, heads, topk) = (cfg.s_q, cfg.heads, cfg.topk);
        if s_q == 0 {
            return Ok(());
        }
        let ctas = heads.div_ceil(HEADS_PER_CTA) * s_q;
        let mut a = self.args();
        let params = DsaSparseMlaParams {
            q: a.read::<bf16, _>("sparse prefill q", q, 16)? as *const _,
            kv: a.read::<bf16, _>("sparse prefill kv", kv, 16)? as *const _,
            indices: a.read("sparse prefill indices", indices, 4)?,
            topk_length: std::ptr::null(),
            attn_sink: a.read_opt("attn_sink", extras.attn_sink, 4)?,
            out: a.write::<bf16, _>("sparse prefill out", out, 4)? as *mut _,
            lse: a.write("sparse prefill lse", lse, 4)?,
            max_logits: a.write("sparse prefill max_logits", max_logits, 4)?,
            partial_out: std::ptr::null_mut(),
            partial_lse: std::ptr::null_mut(),
            kv_rows: cfg.s_kv as i64,
            rows: s_q as i32,
            s_q: s_q as i32,
            h_q: heads as i32,
            topk: topk as i32,
            num_splits: 1,
            blocks_per_split: topk.div_ceil(super::BLOCK) as i32,
            scale: cfg.softmax_scale,
            scale_log2: cfg.softmax_scale * std::f32::consts::LOG2_E,
        };
        let lc = linear(ctas as u32, THREADS, SMEM_BYTES);
        // SAFETY: every buffer was checked against the shape above (checked arithmetic, so
        // kv holds all s_kv rows the kernel may index); indices are bounds-checked against
        // s_kv in the kernel.
        unsafe { a.launch("sparse_mla_prefill", "dsa_sparse_mla_prefill", lc, &params) }
    }
}
