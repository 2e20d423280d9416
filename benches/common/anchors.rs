//! The anchors every bench prints its ratio against, one row per GPU: the device-to-device
//! copy rate, and FlashMLA 9241ae3 built from source for sm_90a and run at the anchor
//! shapes on seeded inputs (the same inputs as ours, outputs compared). CUDA-event timing.
//! - H200 (141 GB HBM3e, 132 SMs, driver 580, CUDA 13.0), 2026-12-02.
//! - H100 SXM (80 GB HBM3, 132 SMs), 2026-11-22 (docs/benchmarks-h100.md).
//!
//! The row is picked by the name of the device the benches run on ([`set_gpu`], called by
//! `common::kernels`); an H800 takes the H100 row (the same SM and memory). On any other
//! GPU, or where a GPU has no row for an anchor, the ratio prints as NaN rather than
//! against another GPU's number. A new GPU means one column here and a new bench run.
use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gpu {
    H100,
    H200,
}

static GPU: OnceLock<Option<Gpu>> = OnceLock::new();

/// Records the GPU the benches run on, from its device name (first call wins).
pub fn set_gpu(device_name: &str) {
    let name = device_name.to_ascii_uppercase();
    let gpu = if name.contains("H200") {
        Some(Gpu::H200)
    } else if name.contains("H100") || name.contains("H800") {
        Some(Gpu::H100)
    } else {
        None
    };
    let _ = GPU.set(gpu);
}

pub fn gpu() -> Option<Gpu> {
    GPU.get().copied().flatten()
}

/// One anchor: its name and rate on each GPU that has one.
pub struct Anchor {
    pub h100: Option<(&'static str, f64)>,
    pub h200: Option<(&'static str, f64)>,
}

impl Anchor {
    /// The name and rate of this GPU's row, or a NaN rate where it has none.
    pub fn get(&self) -> (&'static str, f64) {
        let row = match gpu() {
            Some(Gpu::H100) => self.h100,
            Some(Gpu::H200) => self.h200,
            None => None,
        };
        row.unwrap_or(("no anchor measured on this GPU", f64::NAN))
    }
}

/// Device-to-device copy, read + write bytes per second.
pub const COPY_GBS: Anchor = Anchor {
    h100: Some(("H100 device copy 3000 GB/s", 3000.0)),
    h200: Some(("H200 device copy 4242 GB/s", 4242.0)),
};

/// FlashMLA sparse FP8 decode, h_q 128, top-2048 (TFLOP/s).
pub const FLASHMLA_SPARSE_FP8_B128_SQ2: Anchor = Anchor {
    h100: Some(("FlashMLA H100 sparse FP8 B128 s_q2", 385.0)),
    h200: Some(("FlashMLA H200 sparse FP8 B128 s_q2", 394.0)),
};
pub const FLASHMLA_SPARSE_FP8_B128_SQ1: Anchor = Anchor {
    h100: Some(("FlashMLA H100 sparse FP8 B128 s_q1", 353.0)),
    h200: Some(("FlashMLA H200 sparse FP8 B128 s_q1", 380.0)),
};
pub const FLASHMLA_SPARSE_FP8_B32_SQ1: Anchor = Anchor {
    h100: Some(("FlashMLA H100 sparse FP8 B32 s_q1", 203.0)),
    h200: Some(("FlashMLA H200 sparse FP8 B32 s_q1", 276.0)),
};
/// FlashMLA's sparse prefill kernel over the bf16 cache read as a flat kv, B 128, s_q 2
/// (FlashMLA has no paged sparse bf16 decode on Hopper: this is its nearest bf16 path;
/// it was not run on the H100).
pub const FLASHMLA_SPARSE_BF16_B128_SQ2: Anchor = Anchor {
    h100: None,
    h200: Some((
        "FlashMLA H200 sparse bf16 (prefill kernel) B128 s_q2",
        536.0,
    )),
};
/// FlashMLA sparse prefill, s_q 4096, s_kv 128K, h_q 128, top-2048.
pub const FLASHMLA_SPARSE_PREFILL: Anchor = Anchor {
    h100: Some(("FlashMLA H100 sparse prefill", 540.0)),
    h200: Some(("FlashMLA H200 sparse prefill", 529.0)),
};
/// FlashMLA dense bf16 decode, h_q 128, s_q 1.
pub const FLASHMLA_DENSE_B128_32K: Anchor = Anchor {
    h100: Some(("FlashMLA H100 dense B128 32K", 431.0)),
    h200: Some(("FlashMLA H200 dense B128 32K", 680.0)),
};
pub const FLASHMLA_DENSE_B32_128K: Anchor = Anchor {
    h100: Some(("FlashMLA H100 dense B32 128K", 414.0)),
    h200: Some(("FlashMLA H200 dense B32 128K", 664.0)),
};
