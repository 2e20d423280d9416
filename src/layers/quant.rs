//! FP8 1x128 quantization of f32 activations.
use cudarc::driver::{DevicePtr, DevicePtrMut};

use crate::check;
use crate::error::{DsaError, Result};
use crate::moe::gemm::sfa_row_stride;
use crate::moe::MOE_BLOCK;
use crate::runtime::{linear, DsaKernels};
use crate::sys::layers::DsaActQuantParams;

impl DsaKernels {
    /// FP8 1x128 quantization of `rows` f32 rows of `cols` values (row `r` at `r *
    /// x_stride`, `cols` a multiple of 128, `x_stride` a multiple of 4): `codes` e4m3
    /// `[rows, cols]`, `scales` f32 MN-major `[cols / 128, round_up(rows, 4)]`, the A side
    /// of [`crate::moe::gemm::fp8_linear`]. Scale `max(amax, 1e-4) / 448` (a power of two
    /// when `ue8m0`), code `e4m3(x / scale)`: the reference's `quantize_act_1x128`.
    #[allow(clippy::too_many_arguments)]
    pub fn act_quant_f32<X, C, S>(
        &self,
        rows: usize,
        cols: usize,
        x_stride: usize,
        ue8m0: bool,
        x: &X,
        codes: &mut C,
        scales: &mut S,
    ) -> Result<()>
    where
        X: DevicePtr<f32>,
        C: DevicePtrMut<u8>,
        S: DevicePtrMut<f32>,
    {
        if cols == 0 || !cols.is_multiple_of(MOE_BLOCK) {
            return Err(DsaError::Unsupported {
                what: "act_quant cols",
                detail: format!("{cols}, must be a positive multiple of 128"),
            });
        }
        check::row_stride("act_quant x stride", x_stride, cols, 4)?;
        let span = check::span("act_quant x", rows, x_stride, cols)?;
        check::at_least("act_quant x", x.len(), span, &[rows, x_stride])?;
        check::holds("act_quant codes", codes.len(), &[rows, cols])?;
        let stride = sfa_row_stride(rows);
        check::holds(
            "act_quant scales",
            scales.len(),
            &[cols / MOE_BLOCK, stride],
        )?;
        let warps = check::product("act_quant blocks", &[rows, cols / MOE_BLOCK])?;
        let blocks = check::grid("act_quant grid", warps, 4)?;
        let (rows_i, cols_i, stride_i) = (
            check::fits_i32("act_quant rows", rows)?,
            check::fits_i32("act_quant cols", cols)?,
            check::fits_i32("act_quant scale stride", stride)?,
        );
        if rows == 0 {
            return Ok(());
        }
        let mut a = self.args();
        let params = DsaActQuantParams {
            x: a.read("act_quant x", x, 16)?,
            codes: a.write("act_quant codes", codes, 4)?,
            scales: a.write("act_quant scales", scales, 4)?,
            x_stride: x_stride as i64,
            rows: rows_i,
            cols: cols_i,
            scale_stride: stride_i,
            pow2: ue8m0 as i32,
        };
        // SAFETY: every buffer holds its checked layout; one warp per (row, block).
        unsafe {
            a.launch(
                "act_quant",
                "dsa_act_quant_f32",
                linear(blocks, 128, 0),
                &params,
            )
        }
    }
}
