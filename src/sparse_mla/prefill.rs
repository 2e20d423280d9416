//! Sparse MLA prefill over a flat bf16 kv.
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig};
use half::bf16;

use super::{SparseExtras, HEADS_PER_CTA, SMEM_BYTES, THREADS};
use crate::cache::{KV_LORA_RANK, QK_DIM};
use crate::check;
use crate::error::{DsaError, Result};
use crate::runtime::DsaKernels;
use crate::sys::sparse_mla::DsaSparseMlaParams;

/// Shape and scale of one sparse prefill call.
///
/// Layouts (all row-major, contiguous):
/// * `q`: bf16 `[s_q, h_q, 576]` (512 latent then 64 rope per head);
/// * `kv`: bf16 `[s_kv, 576]`, one latent row per key token (its first 512 values are the
///   value);
/// * `indices`: i32 `[s_q, topk]`, rows of `kv`; negative or `>= s_kv` is unused;
/// * `out`: bf16 `[s_q, h_q, 512]`; `max_logits`, `lse`: f32 `[s_q, h_q]` (natural log).
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
    pub h_q: usize,
    pub topk: usize,
    pub softmax_scale: f32,
}

impl SparsePrefillConfig {
    /// Checks the scalar arguments.
    pub fn validate(&self) -> Result<()> {
        super::decode::check_common(self.h_q, self.topk, self.softmax_scale)?;
        check::fits_i32("sparse prefill s_q", self.s_q)?;
        check::fits_i32("sparse prefill s_q * h_q", self.s_q * self.h_q)?;
        Ok(())
    }
}

impl DsaKernels {
    /// Sparse MLA prefill (layouts on [`SparsePrefillConfig`]): `out`, `max_logits` and
    /// `lse` of every (query, head). `extras.topk_length` must be `None` (use `-1` entries);
    /// `extras.attn_sink` is honoured.
    #[allow(clippy::too_many_arguments)]
    pub fn sparse_mla_prefill<Q, KV, I, O, M, L>(
        &self,
        cfg: &SparsePrefillConfig,
        q: &Q,
        kv: &KV,
        indices: &I,
        extras: SparseExtras<'_>,
        out: &mut O,
        max_logits: &mut M,
        lse: &mut L,
    ) -> Result<()>
    where
        Q: DevicePtr<bf16>,
        KV: DevicePtr<bf16>,
        I: DevicePtr<i32>,
        O: DevicePtrMut<bf16>,
        M: DevicePtrMut<f32>,
        L: DevicePtrMut<f32>,
    {
        cfg.validate()?;
        let (s_q, h_q, topk) = (cfg.s_q, cfg.h_q, cfg.topk);
        if extras.topk_length.is_some() {
            return Err(DsaError::Unsupported {
                what: "sparse prefill topk_length",
                detail: "prefill has no batch dimension: mark unused indices with -1".into(),
            });
        }
        check::at_least(
            "sparse prefill q",
            q.len(),
            s_q * h_q * QK_DIM,
            &[s_q, h_q, QK_DIM],
        )?;
        check::at_least(
            "sparse prefill kv",
            kv.len(),
            cfg.s_kv * QK_DIM,
            &[cfg.s_kv, QK_DIM],
        )?;
        check::at_least(
            "sparse prefill indices",
            indices.len(),
            s_q * topk,
            &[s_q, topk],
        )?;
        check::at_least(
            "sparse prefill out",
            out.len(),
            s_q * h_q * KV_LORA_RANK,
            &[s_q, h_q, KV_LORA_RANK],
        )?;
        check::at_least(
            "sparse prefill max_logits",
            max_logits.len(),
            s_q * h_q,
            &[s_q, h_q],
        )?;
        check::at_least("sparse prefill lse", lse.len(), s_q * h_q, &[s_q, h_q])?;
        if let Some(s) = extras.attn_sink {
            check::at_least("attn_sink", s.len(), h_q, &[h_q])?;
        }
        let hgroups = h_q.div_ceil(HEADS_PER_CTA);
        let ctas = check::fits_i32("sparse prefill grid", hgroups * s_q)?;
        if s_q == 0 {
            return Ok(());
        }
        let stream = self.stream().clone();
        let (q_ptr, _g0) = q.device_ptr(&stream);
        check::aligned("sparse prefill q", q_ptr, 16)?;
        let (kv_ptr, _g1) = kv.device_ptr(&stream);
        check::aligned("sparse prefill kv", kv_ptr, 16)?;
        let (idx_ptr, _g2) = indices.device_ptr(&stream);
        let sink = extras.attn_sink.map(|s| s.device_ptr(&stream));
        let (out_ptr, _g3) = out.device_ptr_mut(&stream);
        check::aligned("sparse prefill out", out_ptr, 4)?;
        let (ml_ptr, _g4) = max_logits.device_ptr_mut(&stream);
        let (lse_ptr, _g5) = lse.device_ptr_mut(&stream);
        let params = DsaSparseMlaParams {
            q: q_ptr as *const _,
            kv: kv_ptr as *const _,
            indices: idx_ptr as *const i32,
            topk_length: std::ptr::null(),
            attn_sink: sink
                .as_ref()
                .map_or(std::ptr::null(), |s| s.0 as *const f32),
            out: out_ptr as *mut _,
            lse: lse_ptr as *mut f32,
            max_logits: ml_ptr as *mut f32,
            partial_out: std::ptr::null_mut(),
            partial_lse: std::ptr::null_mut(),
            kv_rows: cfg.s_kv as i64,
            rows: s_q as i32,
            s_q: s_q as i32,
            h_q: h_q as i32,
            topk: topk as i32,
            num_splits: 1,
            blocks_per_split: topk.div_ceil(super::BLOCK) as i32,
            scale: cfg.softmax_scale,
            scale_log2: cfg.softmax_scale * std::f32::consts::LOG2_E,
        };
        let lc = LaunchConfig {
            grid_dim: (ctas as u32, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: SMEM_BYTES,
        };
        // SAFETY: every buffer was checked against the shape above; indices are
        // bounds-checked against s_kv in the kernel.
        unsafe { self.launch("sparse_mla_prefill", "dsa_sparse_mla_prefill", lc, &params) }
    }
}
