//! The split-KV plan: computed on the device, once per decode step.
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig};

use super::DenseMlaConfig;
use crate::check;
use crate::error::Result;
use crate::runtime::DsaKernels;
use crate::sys::dense_mla::DsaDenseMlaPlanParams;

impl DsaKernels {
    /// Computes the split-KV plan of a decode step from the device-resident `seq_lens`
    /// (i32 `[cfg.batch]`) into `plan` (i32, at least [`DenseMlaConfig::plan_len`]).
    ///
    /// One small kernel, no host synchronization: the plan stays valid for every layer of
    /// the step as long as `seq_lens` does not change. Sequence `b`'s cost is its number
    /// of 64-token blocks plus a fixed per-piece overhead (0 for an empty sequence); the
    /// total is cut into `num_parts` equal-cost parts (at least 8 units each), and each
    /// part processes the contiguous range of (sequence, block) work under its interval.
    pub fn dense_mla_plan<S, P>(
        &self,
        cfg: &DenseMlaConfig,
        seq_lens: &S,
        plan: &mut P,
    ) -> Result<()>
    where
        S: DevicePtr<i32>,
        P: DevicePtrMut<i32>,
    {
        cfg.validate()?;
        check::at_least("seq_lens", seq_lens.len(), cfg.batch, &[cfg.batch])?;
        check::at_least(
            "dense MLA plan",
            plan.len(),
            cfg.plan_len(),
            &[cfg.plan_len()],
        )?;
        let stream = self.stream().clone();
        let (lens_ptr, _g0) = seq_lens.device_ptr(&stream);
        let (plan_ptr, _g1) = plan.device_ptr_mut(&stream);
        let params = DsaDenseMlaPlanParams {
            seq_lens: lens_ptr as *const i32,
            plan: plan_ptr as *mut i32,
            batch: cfg.batch as i32,
            max_pages: cfg.max_pages as i32,
            num_parts: cfg.num_parts as i32,
            reserved: 0,
        };
        let cfg = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (1024, 1, 1),
            shared_mem_bytes: (cfg.batch * 4) as u32,
        };
        // SAFETY: seq_lens holds batch entries and plan plan_len entries (checked above);
        // the kernel touches nothing else.
        unsafe { self.launch("dense_mla_decode", "dsa_dense_mla_plan", cfg, &params) }
    }
}
