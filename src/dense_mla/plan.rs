//! The split-KV plan: computed on the device, once per decode step.
use cudarc::driver::{DevicePtr, DevicePtrMut};

use super::DenseMlaConfig;
use crate::error::Result;
use crate::paged_batch::PagedBatch;
use crate::runtime::{linear, DsaKernels};
use crate::sys::dense_mla::DsaDenseMlaPlanParams;

impl DsaKernels {
    /// Computes the split-KV plan of a decode step from the batch's device-resident
    /// `seq_lens` into `plan` (i32, at least [`DenseMlaConfig::plan_len`]).
    ///
    /// One small kernel, no host synchronization: the plan stays valid for every layer of
    /// the step as long as `seq_lens` does not change. Sequence `b`'s cost is its number
    /// of 64-token blocks plus a fixed per-piece overhead (0 for an empty sequence); the
    /// total is cut into `num_parts` equal-cost parts (at least 8 units each), and each
    /// part processes the contiguous range of (sequence, block) work under its interval.
    pub fn dense_mla_plan<B, L, P>(
        &self,
        cfg: &DenseMlaConfig,
        batch: &PagedBatch<'_, B, L>,
        plan: &mut P,
    ) -> Result<()>
    where
        B: DevicePtr<i32>,
        L: DevicePtr<i32>,
        P: DevicePtrMut<i32>,
    {
        let b = batch.shape();
        crate::validate::dense_mla_plan(cfg, &b, plan.len())?;
        let mut a = self.args();
        let params = DsaDenseMlaPlanParams {
            seq_lens: a.read("seq_lens", batch.seq_lens(), 4)?,
            plan: a.write("dense MLA plan", plan, 4)?,
            batch: b.batch as i32,
            max_pages: b.max_pages as i32,
            num_parts: cfg.num_parts as i32,
            reserved: 0,
        };
        // SAFETY: seq_lens holds batch entries and plan plan_len entries (checked above);
        // the kernel touches nothing else.
        unsafe {
            a.launch(
                "dense_mla_decode",
                "dsa_dense_mla_plan",
                linear(1, 1024, (b.batch * 4) as u32),
                &params,
            )
        }
    }
}
