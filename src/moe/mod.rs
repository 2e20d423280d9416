//! The MoE family of DeepSeek-V3.2's FFN layers: routing, the permutation of token rows into
//! expert segments with FP8 1x128 quantization, the FP8 block-scaled grouped GEMM
//! (contiguous and masked layouts), SwiGLU + quantization, and the weighted combine.

pub mod gemm;
