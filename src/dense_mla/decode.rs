//! The split kernel launch (plus the combine) of dense paged MLA decode.
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig};
use half::bf16;

use super::DenseMlaConfig;
use crate::cache::{MlaCacheKind, PagedCache, KV_LORA_RANK};
use crate::error::{DsaError, Result};
use crate::paged_batch::PagedBatch;
use crate::runtime::DsaKernels;
use crate::sys::dense_mla::DsaDenseMlaDecodeParams;

impl DsaKernels {
    /// Dense paged MLA decode of one layer: the split kernel writes per-piece partials into
    /// `workspace` (f32, at least [`DenseMlaConfig::workspace_len`]), then the combine
    /// kernel writes `out` (bf16 `[batch, next_n, heads, 512]`) and `lse` (f32
    /// `[batch, next_n, heads]`). `q` is bf16 `[batch, next_n, heads, 576]`. Semantics and
    /// the device-side bounds rule for block-table entries are in [`crate::dense_mla`].
    ///
    /// `cache` is an [`crate::cache::MlaBf16Cache`] or an [`crate::cache::MlaFp8Cache`]
    /// (the indexer K cache does not type-check). `plan` must come from
    /// [`Self::dense_mla_plan`] with the same batch and configuration (the kernels clamp
    /// what they read from it, so a mismatched plan gives wrong numbers, never an
    /// out-of-bounds access).
    #[allow(clippy::too_many_arguments)]
    pub fn dense_mla_decode<K, B, L, Q, P, W, O, S>(
        &self,
        cfg: &DenseMlaConfig,
        batch: &PagedBatch<'_, B, L>,
        cache: &PagedCache<K>,
        q: &Q,
        plan: &P,
        workspace: &mut W,
        out: &mut O,
        lse: &mut S,
    ) -> Result<()>
    where
        K: MlaCacheKind,
        B: DevicePtr<i32>,
        L: DevicePtr<i32>,
        Q: DevicePtr<bf16>,
        P: DevicePtr<i32>,
        W: DevicePtr<f32> + DevicePtrMut<f32>,
        O: DevicePtrMut<bf16>,
        S: DevicePtrMut<f32>,
    {
        let b = batch.shape();
        cfg.validate(&b)?;
        let smem = K::DENSE_SMEM;
        if (self.device().max_shared_memory_per_block_optin as u32) < smem {
            return Err(DsaError::Unsupported {
                what: "dense MLA decode",
                detail: format!(
                    "needs {smem} bytes of shared memory per block, the device allows {}",
                    self.device().max_shared_memory_per_block_optin
                ),
            });
        }
        let num_pages = crate::validate::dense_mla_decode(
            cfg,
            &b,
            q.len(),
            cache.num_pages(),
            plan.len(),
            workspace.len(),
            out.len(),
            lse.len(),
        )?;
        let lse_offset = cfg.max_splits(&b) * b.next_n * cfg.heads * KV_LORA_RANK;
        {
            let mut a = self.args();
            let ws = a.write::<f32, _>("dense MLA workspace", workspace, 16)?;
            let params = DsaDenseMlaDecodeParams {
                q: a.read::<bf16, _>("dense MLA q", q, 16)? as *const _,
                kv: a.read::<K::Elem, _>("dense MLA cache", cache.data(), 16)? as *const _,
                block_table: a.read("block table", batch.block_table(), 4)?,
                seq_lens: a.read("seq_lens", batch.seq_lens(), 4)?,
                plan: a.read("dense MLA plan", plan, 4)?,
                partial_out: ws,
                // SAFETY: inside the workspace, checked to hold partial outputs and lse.
                partial_lse: unsafe { ws.add(lse_offset) },
                batch: b.batch as i32,
                s_q: b.next_n as i32,
                h_q: cfg.heads as i32,
                head_groups: cfg.head_groups() as i32,
                max_pages: b.max_pages as i32,
                num_pages,
                num_parts: cfg.num_parts as i32,
                scale_log2: cfg.softmax_scale * std::f32::consts::LOG2_E,
            };
            let launch = LaunchConfig {
                grid_dim: (
                    cfg.num_parts as u32,
                    (b.next_n * cfg.head_groups()) as u32,
                    1,
                ),
                block_dim: (256, 1, 1),
                shared_mem_bytes: smem,
            };
            // SAFETY: every buffer was checked against the extents the kernel indexes with
            // this configuration; cache pages and plan entries are bounds-checked on the
            // device.
            unsafe { a.launch("dense_mla_decode", K::DENSE_KERNEL, launch, &params) }?;
        }
        self.dense_mla_combine(cfg, &b, plan, &*workspace, out, lse)
    }
}
