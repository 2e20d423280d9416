//! Sparse MLA decode over a paged MLA cache, with split-KV for small batches.
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig};
use half::bf16;

use super::{SparseExtras, BLOCK, HEADS_PER_CTA, MAX_SPLITS, SMEM_BYTES, THREADS};
use crate::cache::{CacheKind, CacheLayout, PagedCache, KV_LORA_RANK, QK_DIM};
use crate::check;
use crate::error::{DsaError, Result};
use crate::runtime::DsaKernels;
use crate::sys::mla_combine::{DsaMlaCombineParams, DSA_MLA_COMBINE_WARPS};
use crate::sys::sparse_mla::DsaSparseMlaParams;

/// Shape and scale of one sparse decode call.
///
/// Layouts (all row-major, contiguous):
/// * `q`: bf16 `[batch, s_q, h_q, 576]` (512 latent then 64 rope per head);
/// * `indices`: i32 `[batch, s_q, topk]`, physical cache slots (`page * 64 + offset`,
///   already translated through the block table); `-1` is unused, and so is any slot at
///   or past the cache's capacity (never read);
/// * `out`: bf16 `[batch, s_q, h_q, 512]`; `lse`: f32 `[batch, s_q, h_q]`, natural log
///   (FlashMLA returns it transposed, `[batch, h_q, s_q]`);
/// * workspace: f32, [`DsaKernels::sparse_mla_decode_workspace_len`] elements (0 when the
///   call needs no split): split partial outputs `[splits, batch * s_q, h_q, 512]` followed
///   by their lse `[splits, batch * s_q, h_q]`.
///
/// `topk` may be any positive count up to 16384 (multiples of 64 waste nothing).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SparseDecodeConfig {
    pub batch: usize,
    pub s_q: usize,
    pub h_q: usize,
    pub topk: usize,
    pub softmax_scale: f32,
}

pub(crate) fn check_common(h_q: usize, topk: usize, scale: f32) -> Result<()> {
    if h_q == 0 || h_q > 1024 {
        return Err(DsaError::Unsupported {
            what: "sparse MLA h_q",
            detail: format!("h_q = {h_q}; supported 1..=1024 (64 and 128 are the fast cases)"),
        });
    }
    if topk == 0 || topk > 16384 {
        return Err(DsaError::Unsupported {
            what: "sparse MLA topk",
            detail: format!("topk = {topk}; supported 1..=16384"),
        });
    }
    if !scale.is_finite() || scale <= 0.0 {
        return Err(DsaError::Unsupported {
            what: "sparse MLA softmax_scale",
            detail: format!("{scale} must be finite and positive"),
        });
    }
    Ok(())
}

impl SparseDecodeConfig {
    /// Query rows: `batch * s_q`.
    pub fn rows(&self) -> usize {
        self.batch * self.s_q
    }

    /// Checks the scalar arguments.
    pub fn validate(&self) -> Result<()> {
        check_common(self.h_q, self.topk, self.softmax_scale)?;
        check::fits_i32("sparse decode batch * s_q * h_q", self.rows() * self.h_q)?;
        Ok(())
    }

    /// Splits of each query's index list on a GPU with `sm_count` SMs. A function of the
    /// shape only, so it is the same for every layer of a step and needs no device plan.
    ///
    /// Minimizes (waves of CTAs) x (index blocks per CTA + the CTA's fixed cost, about two
    /// blocks' worth) and charges a split for its combine pass.
    pub fn num_splits(&self, sm_count: usize) -> usize {
        let blocks = self.topk.div_ceil(BLOCK);
        let ctas = self.rows() * self.h_q.div_ceil(HEADS_PER_CTA);
        if blocks <= 1 || ctas == 0 || sm_count == 0 {
            return 1;
        }
        let mut best = (f64::MAX, 1usize);
        for s in 1..=blocks.min(MAX_SPLITS) {
            let waves = (ctas * s).div_ceil(sm_count) as f64;
            let per_cta = blocks.div_ceil(s) as f64 + 2.0;
            let combine = if s > 1 { 1.0 + 0.1 * s as f64 } else { 0.0 };
            let cost = waves * per_cta + combine;
            if cost < best.0 - 1e-9 {
                best = (cost, s);
            }
        }
        best.1
    }

    /// f32 elements of workspace for `splits` splits (0 for one).
    pub fn workspace_len_for(&self, splits: usize) -> usize {
        if splits <= 1 {
            0
        } else {
            splits * self.rows() * self.h_q * (KV_LORA_RANK + 1)
        }
    }
}

impl DsaKernels {
    /// f32 elements of workspace [`Self::sparse_mla_decode`] needs for `cfg` on this
    /// device (0 when it needs none). Depends on the shape only: size it once.
    pub fn sparse_mla_decode_workspace_len(&self, cfg: &SparseDecodeConfig) -> usize {
        cfg.workspace_len_for(cfg.num_splits(self.device().sm_count.max(1) as usize))
    }

    /// Sparse MLA decode (layouts on [`SparseDecodeConfig`]) over an FP8 or bf16 paged MLA
    /// cache. Allocates nothing and never synchronizes: capturable in a CUDA graph.
    /// `workspace` may be `None` when [`Self::sparse_mla_decode_workspace_len`] is 0.
    #[allow(clippy::too_many_arguments)]
    pub fn sparse_mla_decode<K, Q, I, O, L>(
        &self,
        cfg: &SparseDecodeConfig,
        q: &Q,
        cache: &PagedCache<K>,
        indices: &I,
        extras: SparseExtras<'_>,
        out: &mut O,
        lse: &mut L,
        workspace: Option<&mut dyn DevicePtrMut<f32>>,
    ) -> Result<()>
    where
        K: CacheKind,
        Q: DevicePtr<bf16>,
        I: DevicePtr<i32>,
        O: DevicePtrMut<bf16>,
        L: DevicePtrMut<f32>,
    {
        cfg.validate()?;
        let kernel = match K::LAYOUT {
            CacheLayout::MlaFp8 => "dsa_sparse_mla_decode_fp8",
            CacheLayout::MlaBf16 => "dsa_sparse_mla_decode_bf16",
            CacheLayout::IndexerK => {
                return Err(DsaError::Unsupported {
                    what: "sparse MLA decode cache",
                    detail: "needs an MLA cache (FP8 or bf16), got the indexer K cache".into(),
                })
            }
        };
        let (rows, h_q, topk) = (cfg.rows(), cfg.h_q, cfg.topk);
        let shape_q = [cfg.batch, cfg.s_q, h_q, QK_DIM];
        check::at_least("sparse decode q", q.len(), rows * h_q * QK_DIM, &shape_q)?;
        check::at_least(
            "sparse decode indices",
            indices.len(),
            rows * topk,
            &[cfg.batch, cfg.s_q, topk],
        )?;
        check::at_least(
            "sparse decode out",
            out.len(),
            rows * h_q * KV_LORA_RANK,
            &[cfg.batch, cfg.s_q, h_q, KV_LORA_RANK],
        )?;
        check::at_least(
            "sparse decode lse",
            lse.len(),
            rows * h_q,
            &[cfg.batch, cfg.s_q, h_q],
        )?;
        if let Some(t) = extras.topk_length {
            check::at_least("topk_length", t.len(), cfg.batch, &[cfg.batch])?;
        }
        if let Some(s) = extras.attn_sink {
            check::at_least("attn_sink", s.len(), h_q, &[h_q])?;
        }
        let splits = cfg.num_splits(self.device().sm_count.max(1) as usize);
        let ws_len = cfg.workspace_len_for(splits);
        let hgroups = h_q.div_ceil(HEADS_PER_CTA);
        let ctas = check::fits_i32("sparse decode grid", hgroups * rows * splits)?;
        if ws_len > 0 {
            match workspace.as_ref() {
                Some(w) => check::at_least("sparse decode workspace", w.len(), ws_len, &[ws_len])?,
                None => {
                    return Err(DsaError::Capacity {
                        what: "sparse decode workspace",
                        needed: ws_len,
                        capacity: 0,
                    })
                }
            }
        }
        if rows == 0 {
            return Ok(());
        }
        let stream = self.stream().clone();
        let (q_ptr, _g0) = q.device_ptr(&stream);
        check::aligned("sparse decode q", q_ptr, 16)?;
        let (kv_ptr, _g1) = cache.data().device_ptr(&stream);
        check::aligned("sparse decode cache", kv_ptr, 16)?;
        let (idx_ptr, _g2) = indices.device_ptr(&stream);
        let tl = extras.topk_length.map(|t| t.device_ptr(&stream));
        let sink = extras.attn_sink.map(|s| s.device_ptr(&stream));
        let (out_ptr, _g3) = out.device_ptr_mut(&stream);
        check::aligned("sparse decode out", out_ptr, 8)?;
        let (lse_ptr, _g4) = lse.device_ptr_mut(&stream);
        let mut ws_guard = None;
        let (mut part_out, mut part_lse) = (std::ptr::null_mut(), std::ptr::null_mut());
        if ws_len > 0 {
            if let Some(w) = workspace {
                let (p, g) = w.device_ptr_mut(&stream);
                check::aligned("sparse decode workspace", p, 16)?;
                part_out = p as *mut f32;
                // SAFETY: offset inside the workspace, checked to hold ws_len elements.
                part_lse = unsafe { part_out.add(splits * rows * h_q * KV_LORA_RANK) };
                ws_guard = Some(g);
            }
        }
        let sink_ptr = sink
            .as_ref()
            .map_or(std::ptr::null(), |s| s.0 as *const f32);
        let params = DsaSparseMlaParams {
            q: q_ptr as *const _,
            kv: kv_ptr as *const _,
            indices: idx_ptr as *const i32,
            topk_length: tl.as_ref().map_or(std::ptr::null(), |t| t.0 as *const i32),
            attn_sink: sink_ptr,
            out: out_ptr as *mut _,
            lse: lse_ptr as *mut f32,
            max_logits: std::ptr::null_mut(),
            partial_out: part_out,
            partial_lse: part_lse,
            kv_rows: cache.capacity_tokens() as i64,
            rows: rows as i32,
            s_q: cfg.s_q as i32,
            h_q: h_q as i32,
            topk: topk as i32,
            num_splits: splits as i32,
            blocks_per_split: topk.div_ceil(BLOCK).div_ceil(splits) as i32,
            scale: cfg.softmax_scale,
            scale_log2: cfg.softmax_scale * std::f32::consts::LOG2_E,
        };
        let lc = LaunchConfig {
            grid_dim: (ctas as u32, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: SMEM_BYTES,
        };
        // SAFETY: buffers checked against the shape above; slots are bounds-checked against
        // the cache capacity in the kernel.
        unsafe { self.launch("sparse_mla_decode", kernel, lc, &params)? };
        if splits > 1 {
            let cp = DsaMlaCombineParams {
                partial_out: part_out,
                partial_lse: part_lse,
                plan: std::ptr::null(),
                attn_sink: sink_ptr,
                out: out_ptr as *mut _,
                lse: lse_ptr as *mut f32,
                groups: 1,
                rows_per_group: (rows * h_q) as i32,
                h_q: h_q as i32,
                num_parts: 0,
                num_splits: splits as i32,
                max_splits: splits as i32,
            };
            let warps = (rows * h_q) as u32;
            let lc = LaunchConfig {
                grid_dim: (warps.div_ceil(DSA_MLA_COMBINE_WARPS), 1, 1),
                block_dim: (32 * DSA_MLA_COMBINE_WARPS, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: the partials were written by the launch above on the same stream.
            unsafe { self.launch("mla_combine", "dsa_mla_combine", lc, &cp)? };
        }
        drop(ws_guard);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(batch: usize, s_q: usize, h_q: usize, topk: usize) -> SparseDecodeConfig {
        SparseDecodeConfig {
            batch,
            s_q,
            h_q,
            topk,
            softmax_scale: 0.135_234,
        }
    }

    #[test]
    fn splits_fill_the_gpu_only_when_needed() {
        // 64 CTAs on 132 SMs: two splits fill the GPU in one wave.
        assert_eq!(cfg(32, 1, 128, 2048).num_splits(132), 2);
        // 256 and 512 CTAs already give whole waves.
        assert_eq!(cfg(128, 1, 128, 2048).num_splits(132), 1);
        assert_eq!(cfg(128, 2, 128, 2048).num_splits(132), 1);
        // One query: many splits, never more than the combine kernel takes.
        let s = cfg(1, 1, 64, 16384).num_splits(132);
        assert!(s > 1 && s <= MAX_SPLITS, "{s}");
        // A single block is never split.
        assert_eq!(cfg(1, 1, 64, 64).num_splits(132), 1);
        assert_eq!(cfg(0, 1, 64, 2048).num_splits(132), 1);
    }

    #[test]
    fn workspace_holds_partials_and_lse() {
        let c = cfg(2, 3, 64, 1024);
        assert_eq!(c.workspace_len_for(1), 0);
        assert_eq!(c.workspace_len_for(4), 4 * 6 * 64 * 513);
    }

    #[test]
    fn validate_rejects_bad_scalars() {
        assert!(cfg(1, 1, 64, 2048).validate().is_ok());
        assert!(cfg(1, 1, 16, 64).validate().is_ok());
        for bad in [cfg(1, 1, 0, 64), cfg(1, 1, 64, 0), cfg(1, 1, 64, 16385)] {
            assert!(matches!(bad.validate(), Err(DsaError::Unsupported { .. })));
        }
        let mut c = cfg(1, 1, 64, 64);
        c.softmax_scale = f32::NAN;
        assert!(c.validate().is_err());
        c.softmax_scale = -1.0;
        assert!(c.validate().is_err());
    }
}
