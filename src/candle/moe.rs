//! The routed-MoE layer on candle tensors: [`CandleMoeLayer`] wraps a [`MoeLayer`] (which
//! owns the layer's workspace) and takes its weights, gate logits and activations as
//! tensors on the adapter's device.
//!
//! | what | dtype | shape |
//! |---|---|---|
//! | `bias` (`e_score_correction_bias`) | `F32` | `[experts]` |
//! | routed `w13` codes (gate rows, then up rows) | `U8` (e4m3) | `[experts, 2 inter, hidden]` |
//! | routed `w13` scales | `F32` | `[experts, 2 inter / 128, hidden / 128]` |
//! | routed `w2` codes | `U8` (e4m3) | `[experts, hidden, inter]` |
//! | routed `w2` scales | `F32` | `[experts, hidden / 128, inter / 128]` |
//! | shared `w13` / `w2` | as above without the expert axis | `[2 s, hidden]` / `[hidden, s]` |
//! | gate `logits` | `F32` | `[tokens, experts]` |
//! | `x`, output | `BF16` | `[tokens, hidden]` |
use candle_core::{bail, DType, Tensor};
use half::bf16;

use super::{expect_dims, expect_dtype, wrap, CandleDsa, Locked, Result};
use crate::moe::{
    Fp8Weights, MoeLayer, MoePlan, MoeShape, MoeWeights, RouteConfig, SharedExpert, MOE_BLOCK,
};

/// An FP8 weight as two tensors: e4m3 codes (`U8`, K-major) and 128x128 block scales
/// (`F32`).
#[derive(Debug, Clone, Copy)]
pub struct CandleFp8<'t> {
    pub codes: &'t Tensor,
    pub scales: &'t Tensor,
}

/// The weights of one routed-MoE layer (module docs for shapes). The shared expert's
/// width is read from its `w2` codes (`[hidden, width]`).
#[derive(Debug, Clone, Copy)]
pub struct CandleMoeWeights<'t> {
    pub bias: &'t Tensor,
    pub w13: CandleFp8<'t>,
    pub w2: CandleFp8<'t>,
    pub shared: Option<(CandleFp8<'t>, CandleFp8<'t>)>,
}

/// A routed-MoE layer for a fixed [`MoeShape`] (token count included) with its
/// workspace, created by [`CandleDsa::moe_layer`]. Reuse it for every call of that shape:
/// [`CandleMoeLayer::forward`] allocates only its output tensor.
#[derive(Debug)]
pub struct CandleMoeLayer {
    layer: MoeLayer,
}

/// Every tensor of one layer call, read-locked for the call.
struct LockedWeights<'t> {
    bias: Locked<'t>,
    w13: [Locked<'t>; 2],
    w2: [Locked<'t>; 2],
    shared: Option<[[Locked<'t>; 2]; 2]>,
}

impl CandleDsa {
    /// A routed-MoE layer of `shape` routed by `route`, with a shared expert of width
    /// `shared_inter` (a multiple of 128) if given; allocates its workspace on the
    /// device's stream.
    pub fn moe_layer(
        &self,
        shape: &MoeShape,
        route: &RouteConfig,
        shared_inter: Option<usize>,
    ) -> Result<CandleMoeLayer> {
        let layer =
            MoeLayer::new(self.kernels.stream(), shape, route, shared_inter).map_err(wrap)?;
        Ok(CandleMoeLayer { layer })
    }

    fn lock_fp8<'t>(
        &self,
        names: [&'static str; 2],
        w: &CandleFp8<'t>,
        (n, k): (usize, usize),
        lead: Option<usize>,
    ) -> Result<[Locked<'t>; 2]> {
        let (codes, scales): (Vec<usize>, Vec<usize>) = match lead {
            Some(e) => (vec![e, n, k], vec![e, n / MOE_BLOCK, k / MOE_BLOCK]),
            None => (vec![n, k], vec![n / MOE_BLOCK, k / MOE_BLOCK]),
        };
        expect_dtype(names[0], w.codes, DType::U8)?;
        expect_dtype(names[1], w.scales, DType::F32)?;
        expect_dims(names[0], w.codes, &codes)?;
        expect_dims(names[1], w.scales, &scales)?;
        Ok([
            self.lock(names[0], w.codes)?,
            self.lock(names[1], w.scales)?,
        ])
    }
}

fn fp8_view<'a>(l: &'a [Locked<'_>; 2]) -> Result<Fp8Weights<'a>> {
    Ok(Fp8Weights {
        codes: l[0].view::<u8>()?,
        scales: l[1].view::<f32>()?,
    })
}

impl CandleMoeLayer {
    /// The layer's shape.
    pub fn shape(&self) -> &MoeShape {
        self.layer.shape()
    }

    /// The direct API's layer (routing ids, combine weights and plan of the last call).
    pub fn layer(&self) -> &MoeLayer {
        &self.layer
    }

    /// The plan of the last call (its status holds the masked layout's overflow flag).
    pub fn plan(&self) -> &MoePlan {
        self.layer.plan()
    }

    /// `out` bf16 `[tokens, hidden]`: the layer applied to `x` (bf16 `[tokens, hidden]`)
    /// routed by `logits` (f32 `[tokens, experts]`, the gate GEMM's output), shared
    /// expert added. Every tensor is checked (device, dtype, shape, contiguity) before
    /// any launch.
    pub fn forward(
        &mut self,
        dsa: &CandleDsa,
        w: &CandleMoeWeights<'_>,
        logits: &Tensor,
        x: &Tensor,
    ) -> Result<Tensor> {
        let s = *self.layer.shape();
        let (t, hd, it, e) = (s.tokens, s.hidden, s.inter, s.experts);
        expect_dtype("logits", logits, DType::F32)?;
        expect_dims("logits", logits, &[t, e])?;
        expect_dtype("x", x, DType::BF16)?;
        expect_dims("x", x, &[t, hd])?;
        expect_dtype("bias", w.bias, DType::F32)?;
        expect_dims("bias", w.bias, &[e])?;
        let shared = match (&w.shared, self.layer.shared_inter()) {
            (None, None) => None,
            (Some((w13, w2)), Some(si)) => Some([
                dsa.lock_fp8(["shared w13", "shared w13 scales"], w13, (2 * si, hd), None)?,
                dsa.lock_fp8(["shared w2", "shared w2 scales"], w2, (hd, si), None)?,
            ]),
            (Some(_), None) => {
                bail!("dsa: shared expert weights given to a layer created without one")
            }
            (None, Some(_)) => {
                bail!("dsa: the layer was created with a shared expert; its weights are missing")
            }
        };
        let locks = LockedWeights {
            bias: dsa.lock("bias", w.bias)?,
            w13: dsa.lock_fp8(["w13", "w13 scales"], &w.w13, (2 * it, hd), Some(e))?,
            w2: dsa.lock_fp8(["w2", "w2 scales"], &w.w2, (hd, it), Some(e))?,
            shared,
        };
        let (l_lock, x_lock) = (dsa.lock("logits", logits)?, dsa.lock("x", x)?);
        let shared_w = match (&locks.shared, self.layer.shared_inter()) {
            (Some([w13, w2]), Some(inter)) => Some(SharedExpert {
                inter,
                w13: fp8_view(w13)?,
                w2: fp8_view(w2)?,
            }),
            _ => None,
        };
        let weights = MoeWeights {
            bias: locks.bias.view::<f32>()?,
            w13: fp8_view(&locks.w13)?,
            w2: fp8_view(&locks.w2)?,
            shared: shared_w,
        };
        let (mut out, out_shape) = dsa.zeros::<bf16>((t, hd))?;
        self.layer
            .forward(
                &dsa.kernels,
                &weights,
                &l_lock.view::<f32>()?,
                &x_lock.view::<bf16>()?,
                &mut out,
            )
            .map_err(wrap)?;
        Ok(dsa.tensor((out, out_shape)))
    }
}
