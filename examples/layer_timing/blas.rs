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

/// `q[t, h, 0..512] = q_b[t, h, 0..128] . W_UK[h]` for `t < tokens`: `q_b` bf16 `[tokens,
/// HEADS, 192]` (nope | rope), `kv_b` `[HEADS, 256, 512]`, `q` bf16 `[tokens, HEADS, 576]`
/// (its rope columns are left as they are).
pub fn absorb_uk(
    blas: &CudaBlas,
    tokens: usize,
    q_b: &CudaSlice<bf16>,
    kv_b: &CudaSlice<bf16>,
    q: &mut CudaSlice<bf16>,
) -> Result<(), Error> {
    assert!(q_b.len() >= tokens * HEADS * QK_HEAD && q.len() >= tokens * HEADS * QK_DIM);
    assert!(kv_b.len() >= HEADS * KV_B_HEAD);
    let cfg = StridedBatchedConfig {
        gemm: GemmConfig {
            transa: N,
            transb: N,
            m: KV_LORA as i32,
            n: i32_of(tokens)?,
            k: QK_NOPE as i32,
            alpha: bf16::ONE,
            lda: KV_LORA as i32,
            ldb: (HEADS * QK_HEAD) as i32,
            beta: bf16::ZERO,
            ldc: (HEADS * QK_DIM) as i32,
        },
        batch_size: HEADS as i32,
        stride_a: KV_B_HEAD as i64,
        stride_b: QK_HEAD as i64,
        stride_c: QK_DIM as i64,
    };
    // SAFETY: the asserts above bound every element the batched product addresses:
    // head h reads kv_b[h * 256 * 512 ..][..128 * 512], q_b[t * 24576 + h * 192 ..][..128],
    // writes q[t * 73728 + h * 576 ..][..512].
    unsafe { blas.gemm_strided_batched(cfg, kv_b, q_b, q)? };
    Ok(())
}

/// `o[t, h, 0..128] = W_UV[h] . o_latent[t, h, 0..512]`: `o_latent` bf16 `[tokens, HEADS,
/// 512]`, `o` bf16 `[tokens, HEADS * 128]` (o_proj's input).
pub fn absorb_uv(
    blas: &CudaBlas,
    tokens: usize,
    o_latent: &CudaSlice<bf16>,
    kv_b: &CudaSlice<bf16>,
    o: &mut CudaSlice<bf16>,
) -> Result<(), Error> {
    assert!(o_latent.len() >= tokens * HEADS * KV_LORA && o.len() >= tokens * HEADS * V_HEAD);
    assert!(kv_b.len() >= HEADS * KV_B_HEAD);
    let cfg = StridedBatchedConfig {
        gemm: GemmConfig {
            transa: T,
            transb: N,
            m: V_HEAD as i32,
            n: i32_of(tokens)?,
            k: KV_LORA as i32,
            alpha: bf16::ONE,
            lda: KV_LORA as i32,
            ldb: (HEADS * KV_LORA) as i32,
            beta: bf16::ZERO,
            ldc: (HEADS * V_HEAD) as i32,
        },
        batch_size: HEADS as i32,
        stride_a: KV_B_HEAD as i64,
        stride_b: KV_LORA as i64,
        stride_c: V_HEAD as i64,
    };
    let w_uv = kv_b.slice(QK_NOPE * KV_LORA..);
    // SAFETY: bounded by the asserts: head h reads W_UV at h * 256 * 512 + 128 * 512
    // (128 x 512), o_latent[t * 65536 + h * 512 ..][..512], writes o[t * 16384 + h * 128
    // ..][..128].
    unsafe { blas.gemm_strided_batched(cfg, &w_uv, o_latent, o)? };
    Ok(())
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
