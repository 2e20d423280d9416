//! One routed-MoE layer, routing to combine, with the shared expert: the runner that owns
//! the layer's workspace and enqueues the fixed launch sequence.
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, CudaView, DevicePtr, DevicePtrMut};
use half::bf16;

use super::gemm::{self, ContiguousShape, LinearShape, MaskedShape};
use super::shape::mul;
use super::{MoeLayout, MoePlan, MoeShape, RouteConfig, MOE_BLOCK};
use crate::check;
use crate::error::{DsaError, Result};
use crate::runtime::DsaKernels;

/// An FP8 weight with 128x128 block scales on the device: `codes` e4m3 `[.., n, k]`
/// (K-major), `scales` f32 `[.., n / 128, k / 128]`.
#[derive(Debug)]
pub struct Fp8Weights<'a> {
    pub codes: CudaView<'a, u8>,
    pub scales: CudaView<'a, f32>,
}

/// The shared expert (all shared experts fused into one MLP of width `inter`).
#[derive(Debug)]
pub struct SharedExpert<'a> {
    /// Width of the shared MLP (a multiple of 128).
    pub inter: usize,
    /// `[gate; up]` stacked: `[2 inter, hidden]`.
    pub w13: Fp8Weights<'a>,
    /// `[hidden, inter]`.
    pub w2: Fp8Weights<'a>,
}

/// The device weights of one routed-MoE layer.
#[derive(Debug)]
pub struct MoeWeights<'a> {
    /// `e_score_correction_bias` f32 `[experts]`.
    pub bias: CudaView<'a, f32>,
    /// Every expert's `[gate; up]`: `[experts, 2 inter, hidden]` (gate_proj rows first,
    /// then up_proj's, and their scales likewise).
    pub w13: Fp8Weights<'a>,
    /// Every expert's down_proj: `[experts, hidden, inter]`.
    pub w2: Fp8Weights<'a>,
    pub shared: Option<SharedExpert<'a>>,
}

/// Workspace of the shared expert, sized for the layer's tokens.
#[derive(Debug)]
pub(crate) struct SharedWork {
    inter: usize,
    xq: CudaSlice<u8>,
    xs: CudaSlice<f32>,
    h: CudaSlice<bf16>,
    aq: CudaSlice<u8>,
    as_: CudaSlice<f32>,
    y: CudaSlice<bf16>,
}

/// A routed-MoE layer runner: owns the plan and every intermediate buffer for one
/// [`MoeShape`] (allocated once by [`MoeLayer::new`]), and runs
/// route -> plan -> permute + quant -> grouped GEMM (w13) -> SwiGLU + quant -> grouped
/// GEMM (w2) -> combine, plus the shared expert's dense FP8 MLP added in the combine. No
/// allocation and no host synchronization in [`MoeLayer::forward`]: a whole layer can be
/// captured in a CUDA graph and replayed with new logits and activations.
///
/// Matches `dsa_reference::moe::Moe::forward` given the same gate logits (the gate GEMM
/// `x Wg^T` is the caller's: its f32 rounding decides ties, so it is an input here). The
/// reference rounds the w1 and w3 outputs to bf16 separately; the w13 GEMM does the same
/// per column. In the masked layout an expert with more than `max_m` tokens drops the
/// rest (flagged in [`MoeLayer::plan`]'s status); use `max_m >= tokens` for no drops.
#[derive(Debug)]
pub struct MoeLayer {
    shape: MoeShape,
    route: RouteConfig,
    ids: CudaSlice<i32>,
    weights: CudaSlice<f32>,
    plan: MoePlan,
    work: ExpertWork,
    shared: Option<SharedWork>,
}

impl MoeLayer {
    /// Allocates the workspace of `shape` (and of a shared expert of width
    /// `shared_inter`, if any) on `stream`.
    pub fn new(
        stream: &Arc<CudaStream>,
        shape: &MoeShape,
        route: &RouteConfig,
        shared_inter: Option<usize>,
    ) -> Result<Self> {
        shape.validate()?;
        route.validate(shape)?;
        let slots = shape.slots()?;
        let shared = match shared_inter {
            None => None,
            Some(inter) => Some(SharedWork::new(stream, shape, inter)?),
        };
        Ok(Self {
            shape: *shape,
            route: *route,
            ids: stream.alloc_zeros(slots.max(1))?,
            weights: stream.alloc_zeros(slots.max(1))?,
            plan: MoePlan::new(stream, shape)?,
            work: ExpertWork::new(stream, shape)?,
            shared,
        })
    }

    pub fn shape(&self) -> &MoeShape {
        &self.shape
    }

    /// Width of the shared expert the layer was created for, if any.
    pub fn shared_inter(&self) -> Option<usize> {
        self.shared.as_ref().map(|w| w.inter)
    }

    /// The plan of the last forward (its status holds the masked overflow flag).
    pub fn plan(&self) -> &MoePlan {
        &self.plan
    }

    /// Routing ids `[tokens, top_k]` of the last forward.
    pub fn ids(&self) -> &CudaSlice<i32> {
        &self.ids
    }

    /// Combine weights `[tokens, top_k]` of the last forward.
    pub fn route_weights(&self) -> &CudaSlice<f32> {
        &self.weights
    }

    /// `out` bf16 `[tokens, hidden]` = the layer applied to `x` bf16 `[tokens, hidden]`
    /// routed by `logits` f32 `[tokens, experts]`. Weights are checked against the
    /// shape (and the shared expert's presence against the workspace) before any launch.
    pub fn forward<L, X, O>(
        &mut self,
        k: &DsaKernels,
        w: &MoeWeights<'_>,
        logits: &L,
        x: &X,
        out: &mut O,
    ) -> Result<()>
    where
        L: DevicePtr<f32>,
        X: DevicePtr<bf16>,
        O: DevicePtrMut<bf16>,
    {
        let s = self.shape;
        check_weights(w, &s, s.experts, self.shared.as_ref())?;
        k.moe_route(
            &s,
            &self.route,
            logits,
            &w.bias,
            &mut self.ids,
            &mut self.weights,
        )?;
        k.moe_plan(&s, &self.ids, &mut self.plan)?;
        k.moe_permute_quant(&s, &self.plan, x, &mut self.work.a1, &mut self.work.sfa1)?;
        self.work.run(k, &s, &self.plan, w)?;
        if let (Some(sw), Some(work)) = (&w.shared, &mut self.shared) {
            work.forward(k, sw, &s, x)?;
        }
        let shared_y = self.shared.as_ref().map(|w| w.y());
        k.moe_combine(&s, &self.plan, &self.work.y, &self.weights, shared_y, out)
    }
}

/// The routed experts' buffers for one [`MoeShape`] (the w13 GEMM's FP8 input and scales,
/// its output, the w2 GEMM's FP8 input and scales, its output) and the launches between
/// them. The single-GPU layer fills `a1` by the permutation, the expert-parallel layer by
/// gathering received rows; both read `y`.
#[derive(Debug)]
pub(crate) struct ExpertWork {
    pub(crate) a1: CudaSlice<u8>,
    pub(crate) sfa1: CudaSlice<f32>,
    h: CudaSlice<bf16>,
    a2: CudaSlice<u8>,
    sfa2: CudaSlice<f32>,
    pub(crate) y: CudaSlice<bf16>,
}

impl ExpertWork {
    pub(crate) fn new(stream: &Arc<CudaStream>, shape: &MoeShape) -> Result<Self> {
        Ok(Self {
            a1: stream.alloc_zeros(shape.a1_len()?)?,
            sfa1: stream.alloc_zeros(shape.sfa1_len()?)?,
            h: stream.alloc_zeros(shape.h_len()?)?,
            a2: stream.alloc_zeros(shape.a2_len()?)?,
            sfa2: stream.alloc_zeros(shape.sfa2_len()?)?,
            y: stream.alloc_zeros(shape.y_len()?)?,
        })
    }

    /// `a1` -> grouped GEMM (w13) -> `h` -> SwiGLU + quant -> `a2` -> grouped GEMM (w2) ->
    /// `y`, over the rows `plan` puts in use; `w` holds `s.experts` groups.
    pub(crate) fn run(
        &mut self,
        k: &DsaKernels,
        s: &MoeShape,
        plan: &MoePlan,
        w: &MoeWeights<'_>,
    ) -> Result<()> {
        let (hd, it) = (s.hidden, s.inter);
        grouped_gemm(
            k,
            s,
            plan,
            &w.w13,
            (&self.a1, &self.sfa1),
            &mut self.h,
            2 * it,
            hd,
        )?;
        k.moe_swiglu_quant(s, plan, &self.h, &mut self.a2, &mut self.sfa2)?;
        grouped_gemm(
            k,
            s,
            plan,
            &w.w2,
            (&self.a2, &self.sfa2),
            &mut self.y,
            hd,
            it,
        )
    }
}

/// One grouped GEMM of the routed experts, `a` (codes, scales) times `w` into `d`
/// (`[.., n]` from `kd` columns), in the shape's layout.
#[allow(clippy::too_many_arguments)]
fn grouped_gemm(
    k: &DsaKernels,
    s: &MoeShape,
    plan: &MoePlan,
    w: &Fp8Weights<'_>,
    (a, sfa): (&CudaSlice<u8>, &CudaSlice<f32>),
    d: &mut CudaSlice<bf16>,
    n: usize,
    kd: usize,
) -> Result<()> {
    match s.layout {
        MoeLayout::Contiguous => {
            let m_indices = plan.m_indices().ok_or(DsaError::Unsupported {
                what: "MoE plan",
                detail: "contiguous plan without m_indices".into(),
            })?;
            let shape = ContiguousShape {
                rows: s.rows()?,
                groups: s.experts,
                n,
                k: kd,
                align: s.align.rows(),
            };
            gemm::grouped_gemm_contiguous(k, shape, a, sfa, &w.codes, &w.scales, &m_indices, d)
        }
        MoeLayout::Masked { max_m } => {
            let masked_m = plan.masked_m().ok_or(DsaError::Unsupported {
                what: "MoE plan",
                detail: "masked plan without masked_m".into(),
            })?;
            let shape = MaskedShape {
                groups: s.experts,
                max_m,
                n,
                k: kd,
            };
            gemm::grouped_gemm_masked(k, shape, a, sfa, &w.codes, &w.scales, &masked_m, d)
        }
    }
}

impl SharedWork {
    /// The shared expert's workspace of width `inter` for `shape.tokens` rows.
    pub(crate) fn new(stream: &Arc<CudaStream>, shape: &MoeShape, inter: usize) -> Result<Self> {
        if inter == 0 || !inter.is_multiple_of(MOE_BLOCK) {
            return Err(DsaError::Unsupported {
                what: "shared expert width",
                detail: format!("{inter}, must be a positive multiple of 128"),
            });
        }
        let t = shape.tokens;
        let stride = super::gemm::sfa_row_stride(t);
        let size = |a: usize, b: usize| mul("shared expert workspace", a, b);
        Ok(SharedWork {
            inter,
            xq: stream.alloc_zeros(size(t, shape.hidden)?.max(1))?,
            xs: stream.alloc_zeros(size(stride, shape.hidden / MOE_BLOCK)?.max(1))?,
            h: stream.alloc_zeros(size(t, 2 * inter)?.max(1))?,
            aq: stream.alloc_zeros(size(t, inter)?.max(1))?,
            as_: stream.alloc_zeros(size(stride, inter / MOE_BLOCK)?.max(1))?,
            y: stream.alloc_zeros(size(t, shape.hidden)?.max(1))?,
        })
    }

    /// The shared expert's output `[tokens, hidden]` (after [`Self::forward`]).
    pub(crate) fn y(&self) -> &CudaSlice<bf16> {
        &self.y
    }

    /// `y = shared MLP(x)` for the `shape.tokens` rows of `x`: quantize, FP8 linear w13,
    /// SwiGLU + quantize, FP8 linear w2.
    pub(crate) fn forward<X: DevicePtr<bf16>>(
        &mut self,
        k: &DsaKernels,
        sw: &SharedExpert<'_>,
        s: &MoeShape,
        x: &X,
    ) -> Result<()> {
        let (t, hd, si) = (s.tokens, s.hidden, sw.inter);
        if t == 0 {
            return Ok(());
        }
        k.fp8_quantize_rows(t, hd, s.ue8m0, x, &mut self.xq, &mut self.xs)?;
        let l1 = LinearShape {
            m: t,
            n: 2 * si,
            k: hd,
        };
        gemm::fp8_linear(
            k,
            l1,
            &self.xq,
            &self.xs,
            &sw.w13.codes,
            &sw.w13.scales,
            &mut self.h,
        )?;
        k.fp8_swiglu_quant_rows(t, si, s.ue8m0, &self.h, &mut self.aq, &mut self.as_)?;
        let l2 = LinearShape { m: t, n: hd, k: si };
        gemm::fp8_linear(
            k,
            l2,
            &self.aq,
            &self.as_,
            &sw.w2.codes,
            &sw.w2.scales,
            &mut self.y,
        )
    }
}

/// Checks a layer's weights before any launch: `groups` experts' w13 and w2 of `shape`'s
/// sizes, the bias of `shape.experts` (all experts: routing sees every one), and the
/// shared expert against the workspace made for it.
pub(crate) fn check_weights(
    w: &MoeWeights<'_>,
    s: &MoeShape,
    groups: usize,
    shared: Option<&SharedWork>,
) -> Result<()> {
    let (e, hd, it) = (groups, s.hidden, s.inter);
    let (hb, ib) = (hd / MOE_BLOCK, it / MOE_BLOCK);
    // Saturating products: a size past usize fails the check instead of wrapping.
    let prod = |d: &[usize]| d.iter().fold(1usize, |p, &x| p.saturating_mul(x));
    let expect: [(&'static str, usize, &[usize]); 4] = [
        ("MoE w13", w.w13.codes.len(), &[e, 2 * it, hd]),
        ("MoE w13 scales", w.w13.scales.len(), &[e, 2 * ib, hb]),
        ("MoE w2", w.w2.codes.len(), &[e, hd, it]),
        ("MoE w2 scales", w.w2.scales.len(), &[e, hb, ib]),
    ];
    for (what, got, dims) in expect {
        check::at_least(what, got, prod(dims), dims)?;
    }
    if let Some(sw) = &w.shared {
        let sb = sw.inter / MOE_BLOCK;
        let expect: [(&'static str, usize, &[usize]); 4] = [
            ("shared w13", sw.w13.codes.len(), &[2 * sw.inter, hd]),
            ("shared w13 scales", sw.w13.scales.len(), &[2 * sb, hb]),
            ("shared w2", sw.w2.codes.len(), &[hd, sw.inter]),
            ("shared w2 scales", sw.w2.scales.len(), &[hb, sb]),
        ];
        for (what, got, dims) in expect {
            check::at_least(what, got, prod(dims), dims)?;
        }
    }
    check::at_least("MoE bias", w.bias.len(), s.experts, &[s.experts])?;
    match (&w.shared, shared) {
        (Some(sw), Some(work)) if sw.inter == work.inter => Ok(()),
        (None, None) => Ok(()),
        _ => Err(DsaError::Unsupported {
            what: "MoE shared expert",
            detail: "the weights' shared expert (or its width) is not the one the layer was \
                     created for"
                .into(),
        }),
    }
}
