//! DeepSeek-V3.2's layer sizes, the seeded FP8 weights of one layer on the device, and the
//! floors (bytes over the copy rate, FLOPs over the peak) every stage is compared with.
use std::sync::Arc;

use dsa_kernels::cudarc::driver::{CudaSlice, CudaStream, DeviceRepr};
use dsa_kernels::fp8::f32_to_e4m3;
use dsa_kernels::half::bf16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::dense::fill;

pub type Error = Box<dyn std::error::Error>;

/// Hidden size.
pub const HIDDEN: usize = 7168;
/// MLA query heads.
pub const HEADS: usize = 128;
pub const Q_LORA: usize = 1536;
pub const KV_LORA: usize = 512;
pub const ROPE: usize = 64;
pub const QK_NOPE: usize = 128;
pub const V_HEAD: usize = 128;
/// Per-head width of the q_b output: `[nope 128 | rope 64]`.
pub const QK_HEAD: usize = QK_NOPE + ROPE;
/// Absorbed query / cache row width: latent 512 + rope 64.
pub const QK_DIM: usize = KV_LORA + ROPE;
pub const IDX_HEADS: usize = 64;
pub const IDX_DIM: usize = 128;
pub const TOPK: usize = 2048;
pub const EXPERTS: usize = 256;
pub const TOP_K: usize = 8;
pub const MOE_INTER: usize = 2048;
pub const SHARED_INTER: usize = 2048;
/// Intermediate size of the first three layers' dense MLP.
pub const DENSE_INTER: usize = 18432;
/// The fused A projection's columns: q_a 1536 | kv_a 576 | indexer k 128 | indexer
/// head weights 64 (one FP8 linear over the same input, 18 blocks of 128).
pub const A_OUT: usize = Q_LORA + QK_DIM + IDX_DIM + IDX_HEADS;
/// Column offsets inside the A projection's output.
pub const A_KV: usize = Q_LORA;
pub const A_IDX_K: usize = Q_LORA + QK_DIM;
pub const SOFTMAX_SCALE: f32 = 0.135_234;
pub const NORM_EPS: f32 = 1e-6;
/// MLA FP8 cache bytes per token, indexer cache bytes per token.
pub const MLA_FP8_TOKEN: usize = 656;
pub const IDX_TOKEN: usize = 132;
pub const LAYERS: usize = 61;
pub const DENSE_LAYERS: usize = 3;
/// GPUs of the expert-parallel deployment the projection assumes.
pub const EP: usize = 8;

/// H200 rates the floors use: the device copy rate from the benches' anchors (read +
/// write bytes), and dense tensor-core peaks of 790 TFLOP/s bf16 and 1580 FP8 (132 SMs x
/// 4096 / 8192 FLOP per clock at ~1.46 GHz; the spec sheet's 989 / 1979 at the 1.98 GHz
/// boost would lower the FLOP-bound floors by a fifth).
pub const COPY_BPS: f64 = match crate::anchors::COPY_GBS.h200 {
    Some((_, gbs)) => gbs * 1e9,
    None => f64::NAN,
};
pub const BF16_PEAK: f64 = 790e12;
pub const FP8_PEAK: f64 = 1580e12;

/// What a stage must at least move and compute.
#[derive(Debug, Clone, Copy, Default)]
pub struct Floor {
    /// Bytes that must cross HBM (read + write).
    pub bytes: f64,
    /// FLOPs, at `peak` FLOP/s.
    pub flops: f64,
    pub peak: f64,
}

impl Floor {
    pub fn bytes(bytes: f64) -> Self {
        Self {
            bytes,
            ..Default::default()
        }
    }
    pub fn seconds(&self) -> f64 {
        let mem = self.bytes / COPY_BPS;
        let math = if self.peak > 0.0 {
            self.flops / self.peak
        } else {
            0.0
        };
        mem.max(math)
    }
    /// "HBM" or "bf16"/"FP8" tensor peak: which bound sets the floor.
    pub fn basis(&self) -> &'static str {
        let mem = self.bytes / COPY_BPS;
        if self.peak > 0.0 && self.flops / self.peak > mem {
            if self.peak == FP8_PEAK {
                "FP8 peak"
            } else {
                "bf16 peak"
            }
        } else {
            "HBM"
        }
    }
}

/// The floor of an FP8 block-scaled linear `[m, k] x [n, k]^T` reading `wrows` weight rows
/// (`n` per group actually touched): weights + scales, activations + scales, bf16 out.
pub fn fp8_gemm_floor(m: usize, n: usize, k: usize, weight_groups: usize) -> Floor {
    let w = (weight_groups * n * k) as f64 * (1.0 + 4.0 / (128.0 * 128.0));
    Floor {
        bytes: w + (m * k) as f64 * (1.0 + 4.0 / 128.0) + (m * n * 2) as f64,
        flops: 2.0 * (m * n * k) as f64,
        peak: FP8_PEAK,
    }
}

/// The floor of a bf16 batched GEMM of `batch` products `[m, k] x [k, n]` whose `[k, n]`
/// operands are weights.
pub fn bf16_bmm_floor(batch: usize, m: usize, n: usize, k: usize) -> Floor {
    Floor {
        bytes: 2.0 * (batch * (k * n + m * k + m * n)) as f64,
        flops: 2.0 * (batch * m * n * k) as f64,
        peak: BF16_PEAK,
    }
}

/// The floor of an FP8 1x128 quantization of `[m, k]` bf16 rows.
pub fn quant_floor(m: usize, k: usize) -> Floor {
    Floor::bytes((m * k) as f64 * (2.0 + 1.0 + 4.0 / 128.0))
}

/// An FP8 weight with 128x128 block scales: codes e4m3 `[groups, n, k]`, scales f32
/// `[groups, n / 128, k / 128]`.
pub struct Fp8Weight {
    pub codes: CudaSlice<u8>,
    pub scales: CudaSlice<f32>,
    pub n: usize,
    pub k: usize,
}

/// Host patterns of random values the device buffers are tiled with: a few MB uploaded
/// once per buffer and doubled on the device (`dense::fill`), so ~12 GB of weights take
/// tens of milliseconds instead of seconds over PCIe. The pattern length is not a
/// multiple of any weight's row, so rows differ; the values matter for no timing here.
pub struct Patterns {
    codes: Vec<u8>,
    scales: Vec<f32>,
    bf16: Vec<bf16>,
}

impl Patterns {
    pub fn new(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        // 8 MB + 4 KB + 16 bytes (not a multiple of 128 or of any row length).
        let codes = (0..(8 << 20) + 4096 + 16)
            .map(|_| f32_to_e4m3(rng.random_range(-2.0f32..2.0)))
            .collect();
        // Weight block scales ~2^-8 (weights of magnitude ~1e-2, as trained ones).
        let scales = (0..4099)
            .map(|_| rng.random_range(0.5f32..1.5) / 256.0)
            .collect();
        let bf16 = (0..(1 << 20) + 24)
            .map(|_| bf16::from_f32(rng.random_range(-0.05f32..0.05)))
            .collect();
        Self {
            codes,
            scales,
            bf16,
        }
    }

    pub fn fp8(
        &self,
        s: &Arc<CudaStream>,
        groups: usize,
        n: usize,
        k: usize,
    ) -> Result<Fp8Weight, Error> {
        let mut codes = s.alloc_zeros::<u8>(groups * n * k)?;
        fill(s, &mut codes, &self.codes);
        let mut scales = s.alloc_zeros::<f32>(groups * (n / 128) * (k / 128))?;
        fill(s, &mut scales, &self.scales);
        Ok(Fp8Weight {
            codes,
            scales,
            n,
            k,
        })
    }

    pub fn bf16(&self, s: &Arc<CudaStream>, len: usize) -> Result<CudaSlice<bf16>, Error> {
        tiled(s, len, &self.bf16)
    }
}

/// A device buffer of `len` elements tiled with `pattern`.
pub fn tiled<T: DeviceRepr + Copy + Unpin + dsa_kernels::cudarc::driver::ValidAsZeroBits>(
    s: &Arc<CudaStream>,
    len: usize,
    pattern: &[T],
) -> Result<CudaSlice<T>, Error> {
    let mut b = s.alloc_zeros::<T>(len.max(1))?;
    fill(s, &mut b, pattern);
    Ok(b)
}

/// Random bf16 values in `[-r, r)` (host).
pub fn random_bf16(rng: &mut StdRng, n: usize, r: f32) -> Vec<bf16> {
    (0..n)
        .map(|_| bf16::from_f32(rng.random_range(-r..r)))
        .collect()
}

/// One layer's weights (the MLA attention with its indexer, the MoE with its shared
/// expert, and the dense MLP of the first three layers, timed separately).
pub struct Weights {
    /// Fused A projection `[A_OUT, HIDDEN]`.
    pub a: Fp8Weight,
    /// q_b `[HEADS * 192, Q_LORA]`.
    pub q_b: Fp8Weight,
    /// Indexer query projection `[64 * 128, Q_LORA]`.
    pub idx_q_b: Fp8Weight,
    /// o_proj `[HIDDEN, HEADS * 128]`.
    pub o: Fp8Weight,
    /// kv_b dequantized to bf16 for the absorbed products: `[HEADS, 256, 512]`, per head
    /// rows 0..128 W_UK (`[nope, latent]`), rows 128..256 W_UV (`[v, latent]`).
    pub kv_b: CudaSlice<bf16>,
    /// Router gate `[EXPERTS, HIDDEN]` bf16.
    pub gate: CudaSlice<bf16>,
    /// e_score_correction_bias `[EXPERTS]`.
    pub bias: CudaSlice<f32>,
    /// Routed experts' `[gate; up]` `[EXPERTS, 2 * 2048, HIDDEN]` and down `[EXPERTS,
    /// HIDDEN, 2048]`.
    pub w13: Fp8Weight,
    pub w2: Fp8Weight,
    pub shared13: Fp8Weight,
    pub shared2: Fp8Weight,
    /// The dense MLP of layers 0-2: `[2 * 18432, HIDDEN]` and `[HIDDEN, 18432]`.
    pub dense13: Fp8Weight,
    pub dense2: Fp8Weight,
    /// RMSNorm weights (f32): the input and post-attention norms `[HIDDEN]`, q_a
    /// `[Q_LORA]`, kv_a `[KV_LORA]`.
    pub attn_norm: CudaSlice<f32>,
    pub ffn_norm: CudaSlice<f32>,
    pub q_norm: CudaSlice<f32>,
    pub kv_norm: CudaSlice<f32>,
}

impl Weights {
    pub fn new(s: &Arc<CudaStream>, seed: u64) -> Result<Self, Error> {
        let p = Patterns::new(seed);
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
        let bias: Vec<f32> = (0..EXPERTS)
            .map(|_| rng.random_range(-0.01f32..0.01))
            .collect();
        let mut norm = |n: usize| -> Result<CudaSlice<f32>, Error> {
            let w: Vec<f32> = (0..n).map(|_| rng.random_range(0.5f32..1.5)).collect();
            Ok(s.clone_htod(&w)?)
        };
        Ok(Self {
            a: p.fp8(s, 1, A_OUT, HIDDEN)?,
            q_b: p.fp8(s, 1, HEADS * QK_HEAD, Q_LORA)?,
            idx_q_b: p.fp8(s, 1, IDX_HEADS * IDX_DIM, Q_LORA)?,
            o: p.fp8(s, 1, HIDDEN, HEADS * V_HEAD)?,
            kv_b: p.bf16(s, HEADS * (QK_NOPE + V_HEAD) * KV_LORA)?,
            gate: p.bf16(s, EXPERTS * HIDDEN)?,
            bias: s.clone_htod(&bias)?,
            w13: p.fp8(s, EXPERTS, 2 * MOE_INTER, HIDDEN)?,
            w2: p.fp8(s, EXPERTS, HIDDEN, MOE_INTER)?,
            shared13: p.fp8(s, 1, 2 * SHARED_INTER, HIDDEN)?,
            shared2: p.fp8(s, 1, HIDDEN, SHARED_INTER)?,
            dense13: p.fp8(s, 1, 2 * DENSE_INTER, HIDDEN)?,
            dense2: p.fp8(s, 1, HIDDEN, DENSE_INTER)?,
            attn_norm: norm(HIDDEN)?,
            ffn_norm: norm(HIDDEN)?,
            q_norm: norm(Q_LORA)?,
            kv_norm: norm(KV_LORA)?,
        })
    }
}

/// Bytes of one layer's weights, from the shapes: FP8 codes with f32 128x128 scales, the
/// bf16 kv_b (absorbed products) and router gate.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// A projection, q_b, indexer q_b, o_proj, kv_b.
    pub attention: f64,
    /// One routed expert (w13 + w2); the shared expert has the same shape.
    pub expert: f64,
    /// Router gate and bias.
    pub gate: f64,
    /// The dense MLP of layers 0-2.
    pub dense_mlp: f64,
}

impl Sizes {
    pub fn deepseek_v32() -> Self {
        let fp8 = |n: usize, k: usize| (n * k) as f64 * (1.0 + 4.0 / (128.0 * 128.0));
        Self {
            attention: fp8(A_OUT, HIDDEN)
                + fp8(HEADS * QK_HEAD, Q_LORA)
                + fp8(IDX_HEADS * IDX_DIM, Q_LORA)
                + fp8(HIDDEN, HEADS * V_HEAD)
                + (HEADS * (QK_NOPE + V_HEAD) * KV_LORA * 2) as f64,
            expert: fp8(2 * MOE_INTER, HIDDEN) + fp8(HIDDEN, MOE_INTER),
            gate: (EXPERTS * HIDDEN * 2 + EXPERTS * 4) as f64,
            dense_mlp: fp8(2 * DENSE_INTER, HIDDEN) + fp8(HIDDEN, DENSE_INTER),
        }
    }

    /// One MoE layer: attention, 256 routed experts + the shared one, the gate.
    pub fn moe_layer(&self) -> f64 {
        self.attention + (EXPERTS + 1) as f64 * self.expert + self.gate
    }
}
