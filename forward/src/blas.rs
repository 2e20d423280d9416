//! The plain GEMMs of the forward through cuBLAS, row-major wrappers (cuBLAS is
//! column-major: a row-major `[m, k]` is a column-major `[k, m]`, so `C = A B^T` row-major
//! is `C^T = B A^T` column-major).
use std::sync::Arc;

use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig, StridedBatchedConfig};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use half::bf16;

use crate::{ForwardError, Result};

/// A cuBLAS handle on the forward's stream with its own workspace (so a CUDA-graph capture
/// never makes cuBLAS allocate).
pub struct Blas {
    blas: CudaBlas,
    _workspace: CudaSlice<u8>,
}

fn need(what: &str, got: usize, want: usize) -> Result<()> {
    if got < want {
        return Err(ForwardError::Input(format!(
            "{what}: {got} elements, the GEMM reads or writes {want}"
        )));
    }
    Ok(())
}

impl Blas {
    pub fn new(stream: &Arc<CudaStream>) -> Result<Self> {
        let blas = CudaBlas::new(stream.clone())?;
        let workspace = stream.alloc_zeros::<u8>(32 << 20)?;
        {
            let (ptr, _g) = workspace.device_ptr(stream);
            // SAFETY: the workspace outlives the handle (both live in Self, the handle is
            // dropped first) and is used on this stream only.
            unsafe {
                cudarc::cublas::sys::cublasSetWorkspace_v2(
                    *blas.handle(),
                    ptr as *mut _,
                    workspace.len(),
                )
                .result()?;
            }
        }
        Ok(Self {
            blas,
            _workspace: workspace,
        })
    }

    /// `y [m, n] = alpha * x [m, k] . w [n, k]^T`, f32 in and out (fp32 FMA, no TF32: the
    /// handle's default math mode).
    #[allow(clippy::too_many_arguments)]
    pub fn linear_f32<X, W, Y>(
        &self,
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        x: &X,
        w: &W,
        y: &mut Y,
    ) -> Result<()>
    where
        X: DevicePtr<f32>,
        W: DevicePtr<f32>,
        Y: DevicePtrMut<f32>,
    {
        need("linear_f32 x", x.len(), m * k)?;
        need("linear_f32 w", w.len(), n * k)?;
        need("linear_f32 y", y.len(), m * n)?;
        if m == 0 {
            return Ok(());
        }
        let cfg = GemmConfig {
            transa: CUBLAS_OP_T,
            transb: CUBLAS_OP_N,
            m: n as i32,
            n: m as i32,
            k: k as i32,
            alpha,
            lda: k as i32,
            ldb: k as i32,
            beta: 0.0,
            ldc: n as i32,
        };
        // SAFETY: the three buffers hold the extents checked above.
        unsafe { self.blas.gemm(cfg, w, x, y) }?;
        Ok(())
    }

    /// Per head `h < heads`: `c_h [m, n] = a_h [m, k] . op(b_h)` in bf16 with f32
    /// accumulation, where `a_h` row `i` is at `a + h * a_head + i * a_row`, `c_h` row `i`
    /// at `c + h * c_head + i * c_row`, and `b_h` at `b + h * b_head` is `[k, n]`
    /// row-major (`b_t` false) or `[n, k]` row-major (`b_t` true). The absorbed MLA
    /// products: `q_lat[h] = q_nope[h] W_UK[h]` (`b_t` false) and `o[h] = o_lat[h]
    /// W_UV[h]^T` (`b_t` true).
    #[allow(clippy::too_many_arguments)]
    pub fn per_head_bf16<A, B, C>(
        &self,
        heads: usize,
        m: usize,
        n: usize,
        k: usize,
        a: (&A, usize, usize),
        b: (&B, usize, bool),
        c: (&mut C, usize, usize),
    ) -> Result<()>
    where
        A: DevicePtr<bf16>,
        B: DevicePtr<bf16>,
        C: DevicePtrMut<bf16>,
    {
        let (a, a_head, a_row) = a;
        let (b, b_head, b_t) = b;
        let (c, c_head, c_row) = c;
        if m == 0 || heads == 0 {
            return Ok(());
        }
        need(
            "per-head a",
            a.len(),
            (heads - 1) * a_head + (m - 1) * a_row + k,
        )?;
        need("per-head b", b.len(), (heads - 1) * b_head + k * n)?;
        need(
            "per-head c",
            c.len(),
            (heads - 1) * c_head + (m - 1) * c_row + n,
        )?;
        let cfg = StridedBatchedConfig {
            gemm: GemmConfig {
                transa: if b_t { CUBLAS_OP_T } else { CUBLAS_OP_N },
                transb: CUBLAS_OP_N,
                m: n as i32,
                n: m as i32,
                k: k as i32,
                alpha: bf16::ONE,
                lda: if b_t { k as i32 } else { n as i32 },
                ldb: a_row as i32,
                beta: bf16::ZERO,
                ldc: c_row as i32,
            },
            batch_size: heads as i32,
            stride_a: b_head as i64,
            stride_b: a_head as i64,
            stride_c: c_head as i64,
        };
        // SAFETY: the extents of every head's operands were checked above.
        unsafe { self.blas.gemm_strided_batched(cfg, b, a, c) }?;
        Ok(())
    }
}
