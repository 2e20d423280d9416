//! The anchors every bench prints its ratio against, all measured on an H200 (141 GB
//! HBM3e, 132 SMs, driver 580, CUDA 13.0) on 2026-12-02, CUDA-event timing:
//! the device-to-device copy rate, and FlashMLA 9241ae3 built from source for sm_90a and
//! run at the anchor shapes on seeded inputs (the same inputs as ours, outputs compared).
//! One place, so a new GPU means one edit here and a new bench run.

/// Device-to-device copy, read + write bytes per second (H200).
pub const COPY_GBS: (&str, f64) = ("H200 device copy 4242 GB/s", 4242.0);

/// FlashMLA sparse FP8 decode, h_q 128, top-2048 (TFLOP/s).
pub const FLASHMLA_SPARSE_FP8_B128_SQ2: (&str, f64) = ("FlashMLA H200 sparse FP8 B128 s_q2", 394.0);
pub const FLASHMLA_SPARSE_FP8_B128_SQ1: (&str, f64) = ("FlashMLA H200 sparse FP8 B128 s_q1", 380.0);
pub const FLASHMLA_SPARSE_FP8_B32_SQ1: (&str, f64) = ("FlashMLA H200 sparse FP8 B32 s_q1", 276.0);
/// FlashMLA's sparse prefill kernel over the bf16 cache read as a flat kv, B 128, s_q 2
/// (FlashMLA has no paged sparse bf16 decode on Hopper; this is its nearest bf16 path).
pub const FLASHMLA_SPARSE_BF16_B128_SQ2: (&str, f64) = (
    "FlashMLA H200 sparse bf16 (prefill kernel) B128 s_q2",
    536.0,
);
/// FlashMLA sparse prefill, s_q 4096, s_kv 128K, h_q 128, top-2048.
pub const FLASHMLA_SPARSE_PREFILL: (&str, f64) = ("FlashMLA H200 sparse prefill", 529.0);
/// FlashMLA dense bf16 decode, h_q 128, s_q 1.
pub const FLASHMLA_DENSE_B128_32K: (&str, f64) = ("FlashMLA H200 dense B128 32K", 680.0);
pub const FLASHMLA_DENSE_B32_128K: (&str, f64) = ("FlashMLA H200 dense B32 128K", 664.0);
