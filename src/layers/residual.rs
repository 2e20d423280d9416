//! The residual stream: embedding gather and the add of a block's bf16 output.
use cudarc::driver::{DevicePtr, DevicePtrMut};
use half::bf16;

use super::ROW_THREADS;
use crate::error::Result;
use crate::runtime::{linear, DsaKernels};
use crate::sys::layers::{DsaEmbeddingParams, DsaResidualAddParams};

impl DsaKernels {
    /// `out [rows, dim]` f32 = rows `tokens[r]` of `table [vocab, dim]` f32 (a token outside
    /// `[0, vocab)` gives a zero row; token ids are device data). `dim` a multiple of 4.
    pub fn embedding<T, I, O>(
        &self,
        table: &T,
        vocab: usize,
        dim: usize,
        tokens: &I,
        rows: usize,
        out: &mut O,
    ) -> Result<()>
    where
        T: DevicePtr<f32>,
        I: DevicePtr<i32>,
        O: DevicePtrMut<f32>,
    {
        let (vocab, rows_i, dim_i) =
            crate::validate::embedding(vocab, dim, table.len(), rows, tokens.len(), out.len())?;
        if rows == 0 {
            return Ok(());
        }
        let mut a = self.args();
        let params = DsaEmbeddingParams {
            table: a.read("embedding table", table, 16)?,
            tokens: a.read("embedding tokens", tokens, 4)?,
            out: a.write("embedding out", out, 16)?,
            rows: rows_i,
            dim: dim_i,
            vocab,
        };
        // SAFETY: table, tokens and out hold the checked sizes; token ids are clamped in
        // the kernel.
        unsafe {
            a.launch(
                "residual",
                "dsa_embedding",
                linear(rows as u32, ROW_THREADS, 0),
                &params,
            )
        }
    }

    /// `x[i] += y[i]` for the first `n` elements: the f32 residual stream plus a block's
    /// bf16 output.
    pub fn residual_add<X, Y>(&self, x: &mut X, y: &Y, n: usize) -> Result<()>
    where
        X: DevicePtrMut<f32>,
        Y: DevicePtr<bf16>,
    {
        let (n_i, blocks) = crate::validate::residual_add(n, x.len(), y.len())?;
        if n == 0 {
            return Ok(());
        }
        let mut a = self.args();
        let params = DsaResidualAddParams {
            x: a.write("residual x", x, 4)?,
            y: a.read::<bf16, _>("residual y", y, 2)? as *const _,
            n: n_i,
        };
        // SAFETY: both buffers hold n elements (checked); grid-stride loop bounded by n.
        unsafe {
            a.launch(
                "residual",
                "dsa_residual_add",
                linear(blocks, 256, 0),
                &params,
            )
        }
    }
}
