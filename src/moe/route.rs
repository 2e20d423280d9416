//! Routing: gate logits -> the experts of each token and their combine weights.
use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig};

use super::MoeShape;
use crate::check;
use crate::error::{DsaError, Result};
use crate::runtime::DsaKernels;
use crate::sys::moe::{DsaMoeRouteParams, DSA_MOE_ROUTE_WARPS};

/// The gate's selection rule (DeepSeek-V3 "noaux_tc"; `top_k` and the expert count come
/// from the [`MoeShape`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RouteConfig {
    /// Expert groups (8): `experts` must be a multiple, at most 32 groups.
    pub n_group: usize,
    /// Groups kept per token (4), `1..=n_group`.
    pub topk_group: usize,
    /// Divide the chosen scores by their sum (`norm_topk_prob`).
    pub renormalize: bool,
    /// Multiplier of the combine weights (`routed_scaling_factor`, 2.5), applied once, here.
    pub route_scale: f32,
}

impl RouteConfig {
    /// DeepSeek-V3 / V3.2: 8 groups, 4 kept, renormalised, times 2.5.
    pub const DEEPSEEK_V3: Self = Self {
        n_group: 8,
        topk_group: 4,
        renormalize: true,
        route_scale: 2.5,
    };

    /// Checks the rule against the shape: the groups split the experts, and the kept
    /// groups hold at least `top_k` experts (so every token gets `top_k` of them).
    pub fn validate(&self, shape: &MoeShape) -> Result<()> {
        let bad = |detail: String| {
            Err(DsaError::Unsupported {
                what: "MoE routing groups",
                detail,
            })
        };
        if self.n_group == 0
            || self.n_group > super::MOE_MAX_GROUPS
            || !shape.experts.is_multiple_of(self.n_group)
        {
            return bad(format!(
                "n_group = {} must be in 1..=32 and divide the {} experts",
                self.n_group, shape.experts
            ));
        }
        if self.topk_group == 0 || self.topk_group > self.n_group {
            return bad(format!(
                "topk_group = {} must be in 1..={}",
                self.topk_group, self.n_group
            ));
        }
        let kept = self.topk_group * (shape.experts / self.n_group);
        if shape.top_k > kept {
            return bad(format!(
                "top_k = {} is more than the {kept} experts of {} kept groups",
                shape.top_k, self.topk_group
            ));
        }
        if !self.route_scale.is_finite() {
            return bad(format!("route_scale = {} must be finite", self.route_scale));
        }
        Ok(())
    }
}

impl DsaKernels {
    /// Routes `shape.tokens` tokens: `logits` f32 `[tokens, experts]` (the gate GEMM's
    /// output), `bias` f32 `[experts]` (`e_score_correction_bias`) -> `ids` i32 `[tokens,
    /// top_k]` and `weights` f32 `[tokens, top_k]`, both in selection order.
    ///
    /// `s = sigmoid(logit)`; selection by `s + bias`: groups of `experts / n_group`, group
    /// score = sum of its two largest biased scores, the best `topk_group` groups are kept
    /// and the `top_k` largest biased scores inside them chosen. Ties go to the smaller
    /// group index, then the smaller expert index. Weights are the unbiased `s` of the
    /// chosen experts, divided by their f32 sum taken in selection order (when
    /// `renormalize`), times `route_scale`. The sigmoid uses the same f32 exponential as
    /// the host libm, so ids and weights equal `dsa_reference::moe::route` bit for bit.
    /// Logits should be finite: a NaN score ranks below every number (the selection stays
    /// valid, but it is not the reference's).
    ///
    /// One warp per token, no workspace, no synchronization.
    pub fn moe_route<L, B, I, W>(
        &self,
        shape: &MoeShape,
        cfg: &RouteConfig,
        logits: &L,
        bias: &B,
        ids: &mut I,
        weights: &mut W,
    ) -> Result<()>
    where
        L: DevicePtr<f32>,
        B: DevicePtr<f32>,
        I: DevicePtrMut<i32>,
        W: DevicePtrMut<f32>,
    {
        shape.validate()?;
        cfg.validate(shape)?;
        let slots = shape.slots()?;
        let (t, e) = (shape.tokens, shape.experts);
        let n_logits = super::shape::mul("MoE logits", t, e)?;
        check::at_least("MoE logits", logits.len(), n_logits, &[t, e])?;
        check::at_least("MoE bias", bias.len(), e, &[e])?;
        check::at_least("MoE ids", ids.len(), slots, &[t, shape.top_k])?;
        check::at_least("MoE weights", weights.len(), slots, &[t, shape.top_k])?;
        if t == 0 {
            return Ok(());
        }
        let mut a = self.args();
        let params = DsaMoeRouteParams {
            logits: a.read("MoE logits", logits, 4)?,
            bias: a.read("MoE bias", bias, 4)?,
            ids: a.write("MoE ids", ids, 4)?,
            weights: a.write("MoE weights", weights, 4)?,
            tokens: t as i32,
            experts: e as i32,
            n_group: cfg.n_group as i32,
            topk_group: cfg.topk_group as i32,
            top_k: shape.top_k as i32,
            renormalize: i32::from(cfg.renormalize),
            route_scale: cfg.route_scale,
            reserved: 0,
        };
        let warps = DSA_MOE_ROUTE_WARPS as usize;
        let launch = LaunchConfig {
            grid_dim: (t.div_ceil(warps) as u32, 1, 1),
            block_dim: (32 * warps as u32, 1, 1),
            // Two f32 per expert per warp (E <= 1024: 32 KiB).
            shared_mem_bytes: (warps * 2 * e * 4) as u32,
        };
        // SAFETY: logits hold tokens * experts values, bias experts, ids and weights
        // tokens * top_k (checked above); the kernel reads and writes nothing else.
        unsafe { a.launch("moe_route", "dsa_moe_route", launch, &params) }
    }
}
