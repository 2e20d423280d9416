//! The MoE family of DeepSeek-V3.2's FFN layers: routing, the permutation of token rows into
//! expert segments with FP8 1x128 quantization, the FP8 block-scaled grouped GEMM
//! (contiguous and masked layouts), SwiGLU + quantization, and the weighted combine.
//!
//! A layer is a fixed sequence of launches on one stream, none of which waits for the
//! host: [`moe_route`](crate::DsaKernels::moe_route) -> [`moe_plan`](crate::DsaKernels::moe_plan)
//! -> [`moe_permute_quant`](crate::DsaKernels::moe_permute_quant) -> grouped GEMM (w13) ->
//! [`moe_swiglu_quant`](crate::DsaKernels::moe_swiglu_quant) -> grouped GEMM (w2) ->
//! [`moe_combine`](crate::DsaKernels::moe_combine); [`MoeLayer`] runs it with the shared
//! expert. Every buffer is sized from a [`MoeShape`] for the worst case of any routing
//! (`T k + E (align - 1)` rows, contiguous), so the whole layer can be captured once in a
//! CUDA graph and replayed for every routing. Layouts follow DeepGEMM's grouped-GEMM
//! operand conventions and spec section 2: e4m3 codes K-major, activation scales MN-major,
//! `m_indices` `-1` on padding rows, `masked_m` per expert.
//!
//! Determinism: rows inside an expert are in slot order (a counting sort, not atomic slot
//! claims), the combine gathers in slot order without atomics, so the same inputs give
//! the same bits on every run.
//!
//! ```no_run
//! use dsa_kernels::moe::{Fp8Weights, MoeLayer, MoeShape, MoeWeights, RouteConfig};
//! use dsa_kernels::{device, DsaKernels};
//! use half::bf16;
//!
//! # fn main() -> dsa_kernels::Result<()> {
//! let ctx = device::open_device(0)?;
//! let stream = ctx.default_stream();
//! let k = DsaKernels::new(stream.clone())?;
//! // Worst-case buffers for 128 tokens, allocated once.
//! let shape = MoeShape::deepseek_v3(128);
//! let mut layer = MoeLayer::new(&stream, &shape, &RouteConfig::DEEPSEEK_V3, None)?;
//! // Expert weights (e4m3 codes, 128x128 scales) and the routing bias, on the device.
//! let (e, h, i) = (shape.experts, shape.hidden, shape.inter);
//! let w13 = stream.alloc_zeros::<u8>(e * 2 * i * h)?;
//! let w13s = stream.alloc_zeros::<f32>(e * (2 * i / 128) * (h / 128))?;
//! let w2 = stream.alloc_zeros::<u8>(e * h * i)?;
//! let w2s = stream.alloc_zeros::<f32>(e * (h / 128) * (i / 128))?;
//! let bias = stream.alloc_zeros::<f32>(e)?;
//! let weights = MoeWeights {
//!     bias: bias.as_view(),
//!     w13: Fp8Weights { codes: w13.as_view(), scales: w13s.as_view() },
//!     w2: Fp8Weights { codes: w2.as_view(), scales: w2s.as_view() },
//!     shared: None,
//! };
//! // Per step: gate logits (the caller's gate GEMM) and the hidden states in, bf16 out.
//! let logits = stream.alloc_zeros::<f32>(128 * e)?;
//! let x = stream.alloc_zeros::<bf16>(128 * h)?;
//! let mut out = stream.alloc_zeros::<bf16>(128 * h)?;
//! layer.forward(&k, &weights, &logits, &x, &mut out)?;
//! # Ok(())
//! # }
//! ```

pub mod expert_parallel;
pub mod gemm;

mod combine;
mod ep_exchange;
mod ep_layer;
mod layer;
mod plan;
mod quant;
mod route;
mod shape;

pub use ep_layer::{EpConfig, EpRows, ExpertParallelMoe};
pub use layer::{Fp8Weights, MoeLayer, MoeWeights, SharedExpert};
pub use plan::MoePlan;
pub(crate) use quant::plain_sizes;
pub use route::RouteConfig;
pub use shape::{
    Align, MoeLayout, MoeShape, MOE_BLOCK, MOE_MAX_EXPERTS, MOE_MAX_GROUPS, MOE_MAX_TOP_K,
};
