//! Sparse MLA decode over a paged MLA cache, with split-KV for small batches.
use cudarc::driver::{DevicePtr, DevicePtrMut};
use half::bf16;

use super::{SparseExtras, BLOCK, HEADS_PER_CTA, MAX_SPLITS, SMEM_BYTES, THREADS};
use crate::cache::{MlaCacheKind, PagedCache, KV_LORA_RANK, QK_DIM};
use crate::check;
use crate::error::{DsaError, Result};
use crate::paged_batch::{PagedBatch, PagedBatchShape};
use crate::runtime::{linear, DsaKernels};
use crate::sys::mla_combine::{DsaMlaCombineParams, DSA_MLA_COMBINE_WARPS};
use crate::sys::sparse_mla::DsaSparseMlaParams;

/// The attention side of a sparse decode call (the batch side, `batch` sequences of
/// `next_n` query rows each, is a [`PagedBatch`]).
///
/// Layouts (all row-major, contiguous):
/// * `q`: bf16 `[batch, next_n, heads, 576]` (512 latent then 64 rope per head);
/// * `indices`: i32 `[batch, next_n, topk]`, physical cache slots (`page * 64 + offset`,
///   as [`DsaKernels::topk_paged`] writes them); `-1` is unused, and so is any slot at or
///   past the cache's capacity (never read);
/// * `out`: bf16 `[batch, next_n, heads, 512]`; `lse`: f32 `[batch, next_n, heads]`,
///   natural log (FlashMLA returns it transposed, `[batch, heads, next_n]`);
/// * workspace: f32, [`DsaKernels::sparse_mla_decode_workspace_len`] elements (0 when the
///   call needs no split; pass any buffer then): split partial outputs
///   `[splits, batch * next_n, heads, 512]` followed by their lse
///   `[splits, batch * next_n, heads]`.
///
/// `topk` may be any positive count up to 16384 (multiples of 64 waste nothing).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SparseDecodeConfig {
    pub heads: usize,
    pub topk: usize,
    pub softmax_scale: f32,
}

pub(crate) fn check_common(heads: usize, topk: usize, scale: f32) -> Result<()> {
    if heads == 0 || heads > 1024 {
        return Err(DsaError::Unsupported {
            what: "sparse MLA heads",
            detail: format!("heads = {heads}; supported 1..=1024 (64 and 128 are the fast cases)"),
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
    /// Checks the scalars with `batch`, pure: supported heads and topk, and every size of
    /// the call (query rows x heads, the grid at the most splits, the workspace) within
    /// the kernels' indexing.
    pub fn validate(&self, batch: &PagedBatchShape) -> Result<()> {
        batch.validate()?;
        check_common(self.heads, self.topk, self.softmax_scale)?;
        let rows = batch.rows();
        check::fits_i32(
            "sparse decode rows * heads",
            check::product("sparse decode rows", &[rows, self.heads])?,
        )?;
        let groups = self.heads.div_ceil(HEADS_PER_CTA);
        check::fits_i32(
            "sparse decode grid",
            check::product("sparse decode grid", &[groups, rows, MAX_SPLITS])?,
        )?;
        check::product(
            "sparse decode workspace",
            &[MAX_SPLITS, rows, self.heads, KV_LORA_RANK + 1, 4],
        )?;
        check::product("sparse decode indices", &[rows, self.topk])?;
        check::product("sparse decode q", &[rows, self.heads, QK_DIM])?;
        Ok(())
    }

    /// Splits of each query's index list for `rows` query rows on a GPU with `sm_count`
    /// SMs. A function of the shape only, so it is the same for every layer of a step and
    /// needs no device plan.
    ///
    /// Minimizes (waves of CTAs) x (index blocks per CTA + the CTA's fixed cost, about two
    /// blocks' worth) and charges a split for its combine pass.
    pub fn num_splits(&self, rows: usize, sm_count: usize) -> usize {
        let blocks = self.topk.div_ceil(BLOCK);
        let ctas = rows.saturating_mul(self.heads.div_ceil(HEADS_PER_CTA));
        if blocks <= 1 || ctas == 0 || sm_count == 0 {
            return 1;
        }
        let mut best = (f64::MAX, 1usize);
        for s in 1..=blocks.min(MAX_SPLITS) {
            let waves = ctas.saturating_mul(s).div_ceil(sm_count) as f64;
            let per_cta = blocks.div_ceil(s) as f64 + 2.0;
            let combine = if s > 1 { 1.0 + 0.1 * s as f64 } else { 0.0 };
            let cost = waves * per_cta + combine;
            if cost < best.0 - 1e-9 {
                best = (cost, s);
            }
        }
        best.1
    }

    /// f32 elements of workspace for `splits` splits of `rows` query rows (0 for one;
    /// saturating, exact once [`Self::validate`] passed).
    pub fn workspace_len_for(&self, rows: usize, splits: usize) -> usize {
        if splits <= 1 {
            0
        } else {
            check::product(
                "sparse decode workspace",
                &[splits, rows, self.heads, KV_LORA_RANK + 1],
            )
            .unwrap_or(usize::MAX)
        }
    }

    /// f32 elements of workspace for `rows` query rows on `sm_count` SMs.
    pub fn workspace_len(&self, rows: usize, sm_count: usize) -> usize {
        self.workspace_len_for(rows, self.num_splits(rows, sm_count))
    }

    /// The largest workspace any batch of `1..=max_batch` sequences of `next_n` rows needs
    /// on `sm_count` SMs. The need is not monotonic in the batch (a batch that fills whole
    /// waves needs no split while a smaller one does: heads 128, topk 2048 on 132 SMs need
    /// nothing at 128 sequences and 87 MB at 110), so a workspace sized for the largest
    /// batch alone can be too small for a smaller one; size it with this.
    pub fn workspace_len_up_to(&self, max_batch: usize, next_n: usize, sm_count: usize) -> usize {
        (1..=max_batch)
            .map(|b| self.workspace_len(b.saturating_mul(next_n), sm_count))
            .max()
            .unwrap_or(0)
    }
}

/// The kernel for `groups` 64-head groups: the paired form where the layout has one and
/// the groups pair up (consecutive CTAs are the head groups of one row and split), else
/// the plain one. On the H200 the paired FP8 decode is 3-5% faster at h_q 128.
fn sparse_kernel<K: MlaCacheKind>(groups: usize) -> &'static str {
    match K::SPARSE_PAIR_KERNEL {
        Some(pair) if groups.is_multiple_of(2) => pair,
        _ => K::SPARSE_KERNEL,
    }
}

impl DsaKernels {
    /// f32 elements of workspace [`Self::sparse_mla_decode`] needs for `cfg` over `batch`
    /// on this device (0 when it needs none). Not monotonic in the batch: to size one
    /// workspace for every batch up to a maximum use [`Self::sparse_mla_decode_workspace_len_up_to`].
    pub fn sparse_mla_decode_workspace_len(
        &self,
        batch: &PagedBatchShape,
        cfg: &SparseDecodeConfig,
    ) -> usize {
        cfg.workspace_len(batch.rows(), self.sm_count())
    }

    /// The largest workspace [`Self::sparse_mla_decode`] needs for any batch of
    /// `1..=max_batch` sequences of `next_n` query rows on this device.
    pub fn sparse_mla_decode_workspace_len_up_to(
        &self,
        max_batch: usize,
        next_n: usize,
        cfg: &SparseDecodeConfig,
    ) -> usize {
        cfg.workspace_len_up_to(max_batch, next_n, self.sm_count())
    }

    /// Sparse MLA decode (layouts on [`SparseDecodeConfig`]) over an FP8 or bf16 paged MLA
    /// cache (the indexer K cache does not type-check) for the query rows of `batch`.
    /// Allocates nothing and never synchronizes: capturable in a CUDA graph. `workspace`
    /// must hold [`Self::sparse_mla_decode_workspace_len`] elements (any buffer when that
    /// is 0).
    #[allow(clippy::too_many_arguments)]
    pub fn sparse_mla_decode<K, B, L, Q, I, T, S, O, M, W>(
        &self,
        cfg: &SparseDecodeConfig,
        batch: &PagedBatch<'_, B, L>,
        cache: &PagedCache<K>,
        q: &Q,
        indices: &I,
        extras: SparseExtras<'_, T, S>,
        out: &mut O,
        lse: &mut M,
        workspace: &mut W,
    ) -> Result<()>
    where
        K: MlaCacheKind,
        B: DevicePtr<i32>,
        L: DevicePtr<i32>,
        Q: DevicePtr<bf16>,
        I: DevicePtr<i32>,
        T: DevicePtr<i32>,
        S: DevicePtr<f32>,
        O: DevicePtrMut<bf16>,
        M: DevicePtrMut<f32>,
        W: DevicePtrMut<f32>,
    {
        let b = batch.shape();
        let lens = crate::validate::SparseDecodeLens {
            q: q.len(),
            indices: indices.len(),
            out: out.len(),
            lse: lse.len(),
            topk_length: extras.topk_length.map(|t| t.len()),
            attn_sink: extras.attn_sink.map(|s| s.len()),
            workspace: workspace.len(),
        };
        let (splits, ws_len) = crate::validate::sparse_mla_decode(cfg, &b, self.sm_count(), lens)?;
        let (rows, heads, topk) = (b.rows(), cfg.heads, cfg.topk);
        let ctas = heads.div_ceil(HEADS_PER_CTA) * rows * splits;
        let lse_offset = splits * rows * heads * KV_LORA_RANK;
        let mut a = self.args();
        let (part_out, part_lse) = if ws_len > 0 {
            let p = a.write::<f32, _>("sparse decode workspace", workspace, 16)?;
            // SAFETY: inside the workspace, checked to hold ws_len elements.
            (p, unsafe { p.add(lse_offset) })
        } else {
            (std::ptr::null_mut(), std::ptr::null_mut())
        };
        let sink = a.read_opt("attn_sink", extras.attn_sink, 4)?;
        let out_ptr = a.write::<bf16, _>("sparse decode out", out, 8)?;
        let lse_ptr = a.write("sparse decode lse", lse, 4)?;
        let params = DsaSparseMlaParams {
            q: a.read::<bf16, _>("sparse decode q", q, 16)? as *const _,
            kv: a.read::<K::Elem, _>("sparse decode cache", cache.data(), 16)? as *const _,
            indices: a.read("sparse decode indices", indices, 4)?,
            topk_length: a.read_opt("topk_length", extras.topk_length, 4)?,
            attn_sink: sink,
            out: out_ptr as *mut _,
            lse: lse_ptr,
            max_logits: std::ptr::null_mut(),
            partial_out: part_out,
            partial_lse: part_lse,
            kv_rows: check::fits_i64("cache slots", cache.capacity_tokens())?,
            rows: rows as i32,
            s_q: b.next_n as i32,
            h_q: heads as i32,
            topk: topk as i32,
            num_splits: splits as i32,
            blocks_per_split: topk.div_ceil(BLOCK).div_ceil(splits) as i32,
            scale: cfg.softmax_scale,
            scale_log2: cfg.softmax_scale * std::f32::consts::LOG2_E,
        };
        // SAFETY: buffers checked against the shape above; slots are bounds-checked
        // against the cache capacity in the kernel.
        unsafe {
            self.launch(
                "sparse_mla_decode",
                sparse_kernel::<K>(heads.div_ceil(HEADS_PER_CTA)),
                linear(ctas as u32, THREADS, SMEM_BYTES),
                &params,
            )?
        };
        if splits > 1 {
            let cp = DsaMlaCombineParams {
                partial_out: part_out,
                partial_lse: part_lse,
                plan: std::ptr::null(),
                attn_sink: sink,
                out: out_ptr as *mut _,
                lse: lse_ptr,
                groups: 1,
                rows_per_group: (rows * heads) as i32,
                h_q: heads as i32,
                num_parts: 0,
                num_splits: splits as i32,
                max_splits: splits as i32,
            };
            const WARPS: usize = DSA_MLA_COMBINE_WARPS as usize;
            let lc = linear(
                check::grid("sparse combine grid", rows * heads, WARPS)?,
                32 * WARPS as u32,
                0,
            );
            // SAFETY: the partials were written by the launch above on the same stream;
            // out and lse hold rows * heads rows (checked above).
            unsafe { a.launch("mla_combine", "dsa_mla_combine", lc, &cp)? };
        } else {
            drop(a);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(heads: usize, topk: usize) -> SparseDecodeConfig {
        SparseDecodeConfig {
            heads,
            topk,
            softmax_scale: 0.135_234,
        }
    }

    fn shape(batch: usize, next_n: usize) -> PagedBatchShape {
        PagedBatchShape {
            batch,
            next_n,
            max_pages: 1,
        }
    }

    #[test]
    fn splits_fill_the_gpu_only_when_needed() {
        // 64 CTAs on 132 SMs: two splits fill the GPU in one wave.
        assert_eq!(cfg(128, 2048).num_splits(32, 132), 2);
        // 256 and 512 CTAs already give whole waves.
        assert_eq!(cfg(128, 2048).num_splits(128, 132), 1);
        assert_eq!(cfg(128, 2048).num_splits(256, 132), 1);
        // One query: many splits, never more than the combine kernel takes.
        let s = cfg(64, 16384).num_splits(1, 132);
        assert!(s > 1 && s <= MAX_SPLITS, "{s}");
        // A single block is never split.
        assert_eq!(cfg(64, 64).num_splits(1, 132), 1);
        assert_eq!(cfg(64, 2048).num_splits(0, 132), 1);
    }

    #[test]
    fn workspace_holds_partials_and_lse() {
        let c = cfg(64, 1024);
        assert_eq!(c.workspace_len_for(6, 1), 0);
        assert_eq!(c.workspace_len_for(6, 4), 4 * 6 * 64 * 513);
    }

    #[test]
    fn workspace_need_is_not_monotonic_and_the_max_covers_it() {
        let c = cfg(128, 2048);
        assert_eq!(c.workspace_len(128, 132), 0);
        let at_110 = c.workspace_len(110, 132);
        assert!(at_110 * 4 > 80 << 20, "{at_110}");
        let max = c.workspace_len_up_to(128, 1, 132);
        assert!((1..=128).all(|b| c.workspace_len(b, 132) <= max));
        assert_eq!(c.workspace_len_up_to(0, 1, 132), 0);
    }

    #[test]
    fn validate_rejects_bad_scalars() {
        assert!(cfg(64, 2048).validate(&shape(1, 1)).is_ok());
        assert!(cfg(16, 64).validate(&shape(1, 1)).is_ok());
        for bad in [cfg(0, 64), cfg(64, 0), cfg(64, 16385)] {
            assert!(matches!(
                bad.validate(&shape(1, 1)),
                Err(DsaError::Unsupported { .. })
            ));
        }
        let mut c = cfg(64, 64);
        c.softmax_scale = f32::NAN;
        assert!(c.validate(&shape(1, 1)).is_err());
        c.softmax_scale = -1.0;
        assert!(c.validate(&shape(1, 1)).is_err());
    }
}
