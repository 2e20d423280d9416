//! FP8 block-scaled grouped GEMM (activations 1x128, weights 128x128, bf16 out).
