//! The model-layer operations a DeepSeek-V3.2 forward needs around the attention and MoE
//! families, each a small kernel with the reference's arithmetic
//! (`dsa_reference::nn`, `rope`, `linear`):
//!
//! * [`DsaKernels::embedding`](crate::DsaKernels::embedding) and [`DsaKernels::residual_add`](crate::DsaKernels::residual_add): the f32 residual stream
//!   (the reference keeps it in f32; every block's output is bf16);
//! * [`DsaKernels::rms_norm`](crate::DsaKernels::rms_norm) (f32 or bf16 rows in, f32 and/or bf16 out) and
//!   [`DsaKernels::layer_norm`](crate::DsaKernels::layer_norm) (the indexer's key norm), statistics in f64;
//! * [`DsaKernels::mla_rope`](crate::DsaKernels::mla_rope): MLA's interleaved RoPE on the 64 rope dims of query heads
//!   or of the shared key, bf16 in and out, written where the attention wants them (the
//!   query's `[.., 512..576]`, the cache row's last 64 values);
//! * [`DsaKernels::act_quant_f32`](crate::DsaKernels::act_quant_f32): FP8 1x128 quantization of f32 activations into the
//!   MN-major scale layout of [`crate::moe::gemm::fp8_linear`] (the bf16 form is
//!   [`DsaKernels::fp8_quantize_rows`](crate::DsaKernels::fp8_quantize_rows)).
//!
//! Rows are row-major with an explicit stride wherever the input is a slice of a fused
//! projection's output (e.g. `q_a | kv_a | indexer k` from one GEMM). Every launch is
//! checked on the host first (lengths, strides, 32-bit sizes); device data (token ids,
//! positions) is bounds-checked in the kernels. Nothing allocates or synchronizes, so a
//! whole forward step can be captured in a CUDA graph.
mod norm;
mod quant;
mod residual;
mod rope;

pub use norm::{NormInput, NormRows};
pub use rope::RopeRows;

use crate::sys::layers as sys;

/// Threads per block of the one-block-per-row kernels.
pub(crate) const ROW_THREADS: u32 = sys::DSA_LAYERS_ROW_THREADS;
