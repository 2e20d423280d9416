//! RMSNorm and LayerNorm rows.
use cudarc::driver::{DevicePtr, DevicePtrMut};
use half::bf16;

use super::ROW_THREADS;
use crate::check;
use crate::error::{DsaError, Result};
use crate::runtime::{linear, DsaKernels};
use crate::sys::layers::{DsaLayerNormParams, DsaRmsNormParams};

/// `rows` input rows of `dim` values, row `r` at element `r * stride` (`stride >= dim`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NormRows {
    pub rows: usize,
    pub dim: usize,
    pub stride: usize,
}

impl NormRows {
    /// `rows` contiguous rows of `dim`.
    pub fn contiguous(rows: usize, dim: usize) -> Self {
        Self {
            rows,
            dim,
            stride: dim,
        }
    }

    /// The rules, pure: a positive `dim`, `stride >= dim`, rows and dims within i32; the
    /// elements the input spans.
    pub(crate) fn validate(&self) -> Result<usize> {
        if self.dim == 0 {
            return Err(DsaError::Unsupported {
                what: "norm dim",
                detail: "must be positive".into(),
            });
        }
        check::row_stride("norm input stride", self.stride, self.dim, 1)?;
        check::fits_i32("norm rows", self.rows)?;
        check::fits_i32("norm dim", self.dim)?;
        check::product("norm out", &[self.rows, self.dim])?;
        check::span("norm input", self.rows, self.stride, self.dim)
    }
}

/// The input of [`DsaKernels::rms_norm`]: f32 rows (the residual stream) or bf16 rows (a
/// projection's output).
#[derive(Debug, Clone, Copy)]
pub enum NormInput<'a, F, B> {
    F32(&'a F),
    Bf16(&'a B),
}

impl DsaKernels {
    /// RMSNorm of `x` (layout [`NormRows`]) with `weight` f32 `[dim]`: `(x * inv) *
    /// weight` in f32, `inv = 1 / sqrt(mean(x^2) + eps)` in f64 rounded once (the
    /// reference's `nn::rms_norm`). Writes `out_f32 [rows, dim]` and/or bf16 rows at
    /// `out_bf16.0 + r * out_bf16.1` (stride a multiple of 1, `>= dim`); at least one.
    #[allow(clippy::too_many_arguments)]
    pub fn rms_norm<F, B, W>(
        &self,
        rows: NormRows,
        x: NormInput<'_, F, B>,
        weight: &W,
        eps: f32,
        out_f32: Option<&mut dyn DevicePtrMut<f32>>,
        out_bf16: Option<(&mut dyn DevicePtrMut<bf16>, usize)>,
    ) -> Result<()>
    where
        F: DevicePtr<f32>,
        B: DevicePtr<bf16>,
        W: DevicePtr<f32>,
    {
        let x_len = match x {
            NormInput::F32(b) => b.len(),
            NormInput::Bf16(b) => b.len(),
        };
        let bf16_stride = crate::validate::rms_norm(
            rows,
            x_len,
            weight.len(),
            out_f32.as_ref().map(|o| o.len()),
            out_bf16.as_ref().map(|(o, stride)| (o.len(), *stride)),
        )?;
        if rows.rows == 0 {
            return Ok(());
        }
        let mut a = self.args();
        let (x_f32, x_bf16) = match x {
            NormInput::F32(b) => (a.read("rms_norm x", b, 4)?, std::ptr::null()),
            NormInput::Bf16(b) => (
                std::ptr::null(),
                a.read::<bf16, _>("rms_norm x", b, 2)? as *const _,
            ),
        };
        let params = DsaRmsNormParams {
            x_f32,
            x_bf16,
            weight: a.read("rms_norm weight", weight, 4)?,
            out_f32: match out_f32 {
                Some(o) => a.write("rms_norm out_f32", o, 4)?,
                None => std::ptr::null_mut(),
            },
            out_bf16: match out_bf16 {
                Some((o, _)) => a.write::<bf16, _>("rms_norm out_bf16", o, 2)? as *mut _,
                None => std::ptr::null_mut(),
            },
            x_stride: rows.stride as i64,
            out_bf16_stride: bf16_stride,
            rows: rows.rows as i32,
            dim: rows.dim as i32,
            eps,
        };
        // SAFETY: every buffer holds the span of its checked layout.
        unsafe {
            a.launch(
                "norms",
                "dsa_rms_norm",
                linear(rows.rows as u32, ROW_THREADS, 0),
                &params,
            )
        }
    }

    /// LayerNorm (biased variance, PyTorch's) of bf16 rows `x` (layout [`NormRows`]) with
    /// f32 `weight` and `bias` `[dim]`: statistics and `(x - mean) * inv` in f64, then
    /// f32 `* weight + bias`, rounded to bf16 into `out [rows, dim]` (the reference's
    /// `nn::layer_norm` then `round_bf16_slice`, as the indexer's key).
    pub fn layer_norm<X, W, O>(
        &self,
        rows: NormRows,
        x: &X,
        weight: &W,
        bias: &W,
        eps: f32,
        out: &mut O,
    ) -> Result<()>
    where
        X: DevicePtr<bf16>,
        W: DevicePtr<f32>,
        O: DevicePtrMut<bf16>,
    {
        crate::validate::layer_norm(rows, x.len(), weight.len(), bias.len(), out.len())?;
        if rows.rows == 0 {
            return Ok(());
        }
        let mut a = self.args();
        let params = DsaLayerNormParams {
            x: a.read::<bf16, _>("layer_norm x", x, 2)? as *const _,
            weight: a.read("layer_norm weight", weight, 4)?,
            bias: a.read("layer_norm bias", bias, 4)?,
            out: a.write::<bf16, _>("layer_norm out", out, 2)? as *mut _,
            x_stride: rows.stride as i64,
            rows: rows.rows as i32,
            dim: rows.dim as i32,
            eps,
        };
        // SAFETY: every buffer holds the span of its checked layout.
        unsafe {
            a.launch(
                "norms",
                "dsa_layer_norm",
                linear(rows.rows as u32, ROW_THREADS, 0),
                &params,
            )
        }
    }
}
