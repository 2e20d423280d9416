//! The split-KV combine: lse-weighted merge of each sequence's partial results.
use cudarc::driver::{DevicePtr, DevicePtrMut};
use half::bf16;

use super::DenseMlaConfig;
use crate::cache::KV_LORA_RANK;
use crate::check;
use crate::error::Result;
use crate::paged_batch::PagedBatchShape;
use crate::runtime::{linear, DsaKernels};
use crate::sys::dense_mla::DsaMlaCombineParams;

impl DsaKernels {
    /// Merges the partials the split kernel wrote into `workspace` (layout in
    /// [`DenseMlaConfig::workspace_len`]), following `plan`, into `out` (bf16
    /// `[batch, next_n, heads, 512]`) and `lse` (f32 `[batch, next_n, heads]`, natural log):
    /// `lse = ln sum_i exp(lse_i)`, `out = sum_i exp(lse_i - lse) out_i`. A row with no
    /// split or only empty ones gets out 0 and lse `+inf`.
    ///
    /// [`Self::dense_mla_decode`] calls this itself; it is public for engines that run the
    /// split kernel's partials through their own merge (for example across devices).
    pub fn dense_mla_combine<P, W, O, L>(
        &self,
        cfg: &DenseMlaConfig,
        batch: &PagedBatchShape,
        plan: &P,
        workspace: &W,
        out: &mut O,
        lse: &mut L,
    ) -> Result<()>
    where
        P: DevicePtr<i32>,
        W: DevicePtr<f32>,
        O: DevicePtrMut<bf16>,
        L: DevicePtrMut<f32>,
    {
        crate::validate::dense_mla_combine(
            cfg,
            batch,
            plan.len(),
            workspace.len(),
            out.len(),
            lse.len(),
        )?;
        let rows = batch.rows() * cfg.heads;
        let lse_offset = cfg.max_splits(batch) * batch.next_n * cfg.heads * KV_LORA_RANK;
        let mut a = self.args();
        let ws = a.read::<f32, _>("dense MLA workspace", workspace, 16)?;
        let params = DsaMlaCombineParams {
            partial_out: ws,
            // SAFETY: inside the workspace, checked to hold the partial outputs and lse.
            partial_lse: unsafe { ws.add(lse_offset) },
            plan: a.read("dense MLA plan", plan, 4)?,
            out: a.write::<bf16, _>("dense MLA out", out, 8)? as *mut _,
            lse: a.write("dense MLA lse", lse, 4)?,
            batch: batch.batch as i32,
            s_q: batch.next_n as i32,
            h_q: cfg.heads as i32,
            num_parts: cfg.num_parts as i32,
        };
        const WARPS: usize = 8;
        let launch = linear(
            check::grid("dense MLA combine grid", rows, WARPS)?,
            32 * WARPS as u32,
            0,
        );
        // SAFETY: every buffer was checked against the sizes the kernel indexes; the
        // split indices it reads come from a plan of this geometry (at most max_splits).
        unsafe { a.launch("mla_combine", "dsa_mla_combine", launch, &params) }
    }
}
