//! Combine: each token's expert outputs, weighted, summed in slot order.
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig};
use half::bf16;

use super::shape::mul;
use super::{MoePlan, MoeShape};
use crate::check;
use crate::error::{DsaError, Result};
use crate::runtime::DsaKernels;
use crate::sys::moe::{DsaMoeCombineParams, DSA_MOE_COMBINE_THREADS};

impl DsaKernels {
    /// `out[t] = bf16(sum_j weights[t, j] * y[row_of[t k + j]] + shared[t])`: `y` bf16
    /// `[rows, hidden]` (the w2 GEMM's output in the plan's row space), `weights` f32
    /// `[tokens, top_k]` (from [`Self::moe_route`]), `shared` bf16 `[tokens, hidden]` (the
    /// shared expert's output, optional), `out` bf16 `[tokens, hidden]`. All buffers
    /// 16-byte aligned.
    ///
    /// The sum runs in slot order `j` with f32 fused multiply-adds, the shared term added
    /// last, one rounding to bf16 at the end; dropped slots contribute nothing. No
    /// atomics: the result is a function of the inputs, bit for bit, run to run.
    pub fn moe_combine<Y, W, O>(
        &self,
        shape: &MoeShape,
        plan: &MoePlan,
        y: &Y,
        weights: &W,
        shared: Option<&Y>,
        out: &mut O,
    ) -> Result<()>
    where
        Y: DevicePtr<bf16>,
        W: DevicePtr<f32>,
        O: DevicePtrMut<bf16>,
    {
        shape.validate()?;
        plan.check_for(shape)?;
        let (t, h) = (shape.tokens, shape.hidden);
        let slots = shape.slots()?;
        let rows = shape.rows()?;
        let th = mul("MoE combine output", t, h)?;
        check::at_least("MoE y", y.len(), shape.y_len()?, &[rows, h])?;
        check::at_least("MoE weights", weights.len(), slots, &[t, shape.top_k])?;
        if let Some(s) = shared {
            check::at_least("MoE shared expert output", s.len(), th, &[t, h])?;
        }
        check::at_least("MoE combine output", out.len(), th, &[t, h])?;
        if t == 0 {
            return Ok(());
        }
        if t > u16::MAX as usize * 1024 {
            return Err(DsaError::Unsupported {
                what: "MoE combine tokens",
                detail: format!("{t} tokens; at most {}", u16::MAX as usize * 1024),
            });
        }
        let stream = self.stream().clone();
        let mut a = self.args();
        let (row_of, _plan_guard) = plan.ptr(&stream, plan.sections().row_of);
        let params = DsaMoeCombineParams {
            y: a.read::<bf16, _>("MoE y", y, 16)? as *const u16,
            row_of,
            weights: a.read("MoE weights", weights, 4)?,
            shared: a.read_opt::<bf16, _>("MoE shared expert output", shared, 16)? as *const u16,
            out: a.write::<bf16, _>("MoE combine output", out, 16)? as *mut u16,
            tokens: t as i32,
            hidden: h as i32,
            top_k: shape.top_k as i32,
            rows: rows as i32,
        };
        let cols_per_cta = DSA_MOE_COMBINE_THREADS as usize * 8;
        // Tokens on grid.y (at most 65535) in chunks when there are more.
        let mut done = 0usize;
        while done < t {
            let n = (t - done).min(u16::MAX as usize);
            let mut p = params;
            // SAFETY: offsets inside the buffers checked above (row_of and weights by
            // slot, out and shared by token row).
            unsafe {
                p.row_of = params.row_of.add(done * shape.top_k);
                p.weights = params.weights.add(done * shape.top_k);
                p.out = params.out.add(done * h);
                if !params.shared.is_null() {
                    p.shared = params.shared.add(done * h);
                }
            }
            p.tokens = n as i32;
            let launch = LaunchConfig {
                grid_dim: (h.div_ceil(cols_per_cta) as u32, n as u32, 1),
                block_dim: (DSA_MOE_COMBINE_THREADS, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: y holds `rows` rows (the kernel skips rows outside [0, rows)),
            // row_of and weights `n * top_k` entries from `done`, out and shared `n` rows.
            unsafe { self.launch("moe_combine", "dsa_moe_combine", launch, &p)? };
            done += n;
        }
        Ok(())
    }
}
