//! The split-KV combine: lse-weighted merge of each sequence's partial results.
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig};
use half::bf16;

use super::DenseMlaConfig;
use crate::cache::KV_LORA_RANK;
use crate::check;
use crate::error::Result;
use crate::runtime::DsaKernels;
use crate::sys::mla_combine::{DsaMlaCombineParams, DSA_MLA_COMBINE_WARPS};

impl DsaKernels {
    /// Merges the partials the split kernel wrote into `workspace` (layout in
    /// [`DenseMlaConfig::workspace_len`]), following `plan`, into `out` (bf16
    /// `[batch, s_q, h_q, 512]`) and `lse` (f32 `[batch, s_q, h_q]`, natural log):
    /// `lse = ln sum_i exp(lse_i)`, `out = sum_i exp(lse_i - lse) out_i`. A row with no
    /// split or only empty ones gets out 0 and lse `+inf`.
    ///
    /// [`Self::dense_mla_decode`] calls this itself; it is public for engines that run the
    /// split kernel's partials through their own merge (for example across devices).
    pub fn dense_mla_combine<P, W, O, L>(
        &self,
        cfg: &DenseMlaConfig,
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
        cfg.validate()?;
        let rows = cfg.batch * cfg.s_q * cfg.h_q;
        check_combine_buffers(cfg, plan.len(), workspace.len(), out.len(), lse.len())?;
        check::fits_i32("dense MLA rows", rows)?;
        let stream = self.stream().clone();
        let (plan_ptr, _g0) = plan.device_ptr(&stream);
        let (ws_ptr, _g1) = workspace.device_ptr(&stream);
        let (out_ptr, _g2) = out.device_ptr_mut(&stream);
        check::aligned("dense MLA out", out_ptr, 8)?;
        check::aligned("dense MLA workspace", ws_ptr, 16)?;
        let (lse_ptr, _g3) = lse.device_ptr_mut(&stream);
        let lse_part = ws_ptr + (cfg.max_splits() * cfg.s_q * cfg.h_q * KV_LORA_RANK * 4) as u64;
        let params = DsaMlaCombineParams {
            partial_out: ws_ptr as *const f32,
            partial_lse: lse_part as *const f32,
            plan: plan_ptr as *const i32,
            attn_sink: std::ptr::null(),
            out: out_ptr as *mut _,
            lse: lse_ptr as *mut f32,
            groups: cfg.batch as i32,
            rows_per_group: (cfg.s_q * cfg.h_q) as i32,
            h_q: cfg.h_q as i32,
            num_parts: cfg.num_parts as i32,
            num_splits: 0,
            max_splits: cfg.max_splits() as i32,
        };
        let launch = LaunchConfig {
            grid_dim: (rows.div_ceil(DSA_MLA_COMBINE_WARPS as usize) as u32, 1, 1),
            block_dim: (32 * DSA_MLA_COMBINE_WARPS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: every buffer was checked against the sizes the kernel indexes; the kernel
        // drops any split range of the plan outside [0, max_splits), whatever the plan holds.
        unsafe { self.launch("mla_combine", "dsa_mla_combine", launch, &params) }
    }
}

/// Sizes of the buffers the combine reads and writes (the decode call checks them too,
/// before its first launch).
pub(super) fn check_combine_buffers(
    cfg: &DenseMlaConfig,
    plan: usize,
    workspace: usize,
    out: usize,
    lse: usize,
) -> Result<()> {
    let rows = cfg.batch * cfg.s_q * cfg.h_q;
    check::at_least("dense MLA plan", plan, cfg.plan_len(), &[cfg.plan_len()])?;
    check::at_least(
        "dense MLA workspace",
        workspace,
        cfg.workspace_len(),
        &[cfg.workspace_len()],
    )?;
    check::at_least(
        "dense MLA out",
        out,
        rows * KV_LORA_RANK,
        &[cfg.batch, cfg.s_q, cfg.h_q, KV_LORA_RANK],
    )?;
    check::at_least("dense MLA lse", lse, rows, &[cfg.batch, cfg.s_q, cfg.h_q])
}
