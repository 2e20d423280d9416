//! FP8 1x128 quantization of f32 activations.
use cudarc::driver::{DevicePtr, DevicePtrMut};

use crate::error::Result;
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
        let (stride, blocks) = crate::validate::act_quant_f32(
            rows,
            cols,
            x_stride,
            x.len(),
            codes.len(),
            scales.len(),
        )?;
        if rows == 0 {
            return Ok(());
        }
        let mut a = self.args();
        let params = DsaActQuantParams {
            x: a.read("act_quant x", x, 16)?,
            codes: a.write("act_quant codes", codes, 4)?,
            scales: a.write("act_quant scales", scales, 4)?,
            // Rows, columns and the scale stride are within i32, the row stride within
            // i64 (validate::act_quant_f32).
            x_stride: x_stride as i64,
            rows: rows as i32,
            cols: cols as i32,
            scale_stride: stride as i32,
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
