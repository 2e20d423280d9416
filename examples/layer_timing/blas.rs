//! The layer's two kinds of plain bf16 GEMMs through cuBLAS: the absorbed per-head
//! products (W_UK on the queries, W_UV on the attention output) as strided batched GEMMs
//! over the heads, and the router gate with an f32 output.
//!
//! cuBLAS is column-major; a row-major `[r, c]` matrix with row stride `ld` is a
//! column-major `c x r` one with leading dimension `ld`, so every product below is written
//! transposed: `C^T = op(B)^T op(A)^T`.
use std::ffi::c_void;
use std::sync::Arc;

use dsa_kernels::cudarc::cublas::{
    result, sys as bsys, CudaBlas, Gemm, GemmConfig, StridedBatchedConfig,
};
use dsa_kernels::cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use dsa_kernels::half::bf16;

use crate::model::{Error, HEADS, HIDDEN, KV_LORA, QK_DIM, QK_HEAD, QK_NOPE, V_HEAD};

const N: bsys::cublasOperation_t = bsys::cublasOperation_t::CUBLAS_OP_N;
const T: bsys::cublasOperation_t = bsys::cublasOperation_t::CUBLAS_OP_T;

fn i32_of(v: usize) -> Result<i32, Error> {
    Ok(i32::try_from(v)?)
}

/// Per-head rows of kv_b: W_UK `[128, 512]` then W_UV `[128, 512]`.
const KV_B_HEAD: usize = (QK_NOPE + V_HEAD) * KV_LORA;

/// One strided batched bf16 GEMM over the heads, `C_h = op(A_h) B_h` column-major:
/// (leading dimension, stride between heads) of each operand.
#[allow(clippy::too_many_arguments)]
fn over_heads<A, B, C>(
    blas: &CudaBlas,
    transa: bsys::cublasOperation_t,
    (m, n, k): (usize, usize, usize),
    (a, lda, sa): (&A, usize, usize),
    (b, ldb, sb): (&B, usize, usize),
    (c, ldc, sc): (&mut C, usize, usize),
) -> Result<(), Error>
where
    A: DevicePtr<bf16>,
    B: DevicePtr<bf16>,
    C: DevicePtrMut<bf16>,
{
    let cfg = StridedBatchedConfig {
        gemm: GemmConfig {
            transa,
            transb: N,
            m: i32_of(m)?,
            n: i32_of(n)?,
            k: i32_of(k)?,
            alpha: bf16::ONE,
            lda: i32_of(lda)?,
            ldb: i32_of(ldb)?,
            beta: bf16::ZERO,
            ldc: i32_of(ldc)?,
        },
        batch_size: HEADS as i32,
        stride_a: sa as i64,
        stride_b: sb as i64,
        stride_c: sc as i64,
    };
    // SAFETY: the callers assert that every operand holds the HEADS products the
    // strides and leading dimensions address.
    unsafe { blas.gemm_strided_batched(cfg, a, b, c)? };
    Ok(())
}

/// `q[t, h, 0..512] = q_b[t, h, 0..128] . W_UK[h]` for `t < tokens`: `q_b` bf16 `[tokens,
/// HEADS, 192]` (nope | rope), `kv_b` `[HEADS, 256, 512]`, `q` bf16 `[tokens, HEADS, 576]`
/// (its rope columns are left as they are). Head h reads kv_b[h * 256 * 512 ..][..128 *
/// 512] and q_b[t * 24576 + h * 192 ..][..128], writes q[t * 73728 + h * 576 ..][..512].
pub fn absorb_uk(
    blas: &CudaBlas,
    tokens: usize,
    q_b: &CudaSlice<bf16>,
    kv_b: &CudaSlice<bf16>,
    q: &mut CudaSlice<bf16>,
) -> Result<(), Error> {
    assert!(q_b.len() >= tokens * HEADS * QK_HEAD && q.len() >= tokens * HEADS * QK_DIM);
    assert!(kv_b.len() >= HEADS * KV_B_HEAD);
    over_heads(
        blas,
        N,
        (KV_LORA, tokens, QK_NOPE),
        (kv_b, KV_LORA, KV_B_HEAD),
        (q_b, HEADS * QK_HEAD, QK_HEAD),
        (q, HEADS * QK_DIM, QK_DIM),
    )
}

/// `o[t, h, 0..128] = W_UV[h] . o_latent[t, h, 0..512]`: `o_latent` bf16 `[tokens, HEADS,
/// 512]`, `o` bf16 `[tokens, HEADS * 128]` (o_proj's input). Head h reads W_UV at
/// `h * 256 * 512 + 128 * 512` (128 x 512) and `o_latent[t * 65536 + h * 512 ..][..512]`,
/// writes `o[t * 16384 + h * 128 ..][..128]`.
pub fn absorb_uv(
    blas: &CudaBlas,
    tokens: usize,
    o_latent: &CudaSlice<bf16>,
    kv_b: &CudaSlice<bf16>,
    o: &mut CudaSlice<bf16>,
) -> Result<(), Error> {
    assert!(o_latent.len() >= tokens * HEADS * KV_LORA && o.len() >= tokens * HEADS * V_HEAD);
    assert!(kv_b.len() >= HEADS * KV_B_HEAD);
    let w_uv = kv_b.slice(QK_NOPE * KV_LORA..);
    over_heads(
        blas,
        T,
        (V_HEAD, tokens, KV_LORA),
        (&w_uv, KV_LORA, KV_B_HEAD),
        (o_latent, HEADS * KV_LORA, KV_LORA),
        (o, HEADS * V_HEAD, V_HEAD),
    )
}

/// Router logits f32 `[tokens, EXPERTS]` = `x` bf16 `[tokens, HIDDEN]` . `gate^T` (gate
/// bf16 `[experts, HIDDEN]`), f32 accumulation and output.
pub fn gate_logits(
    blas: &CudaBlas,
    stream: &Arc<CudaStream>,
    tokens: usize,
    experts: usize,
    x: &CudaSlice<bf16>,
    gate: &CudaSlice<bf16>,
    logits: &mut CudaSlice<f32>,
) -> Result<(), Error> {
    assert!(x.len() >= tokens * HIDDEN && gate.len() >= experts * HIDDEN);
    assert!(logits.len() >= tokens * experts);
    let (alpha, beta) = (1.0f32, 0.0f32);
    let (xp, _gx) = x.device_ptr(stream);
    let (gp, _gg) = gate.device_ptr(stream);
    let (lp, _gl) = logits.device_ptr_mut(stream);
    // SAFETY: pointers to live buffers of the asserted sizes, host scalars for alpha and
    // beta (the handle's default pointer mode), the handle bound to `stream`.
    unsafe {
        result::gemm_ex(
            *blas.handle(),
            T,
            N,
            i32_of(experts)?,
            i32_of(tokens)?,
            HIDDEN as i32,
            &alpha as *const f32 as *const c_void,
            gp as *const c_void,
            bsys::cudaDataType_t::CUDA_R_16BF,
            HIDDEN as i32,
            xp as *const c_void,
            bsys::cudaDataType_t::CUDA_R_16BF,
            HIDDEN as i32,
            &beta as *const f32 as *const c_void,
            lp as *mut c_void,
            bsys::cudaDataType_t::CUDA_R_32F,
            i32_of(experts)?,
            bsys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            bsys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )?;
    }
    Ok(())
}
