//! One DeepSeek-V3.2 MoE layer as the sequence of library calls an engine enqueues, one
//! [`Op`] per timed stage: the input RMSNorm of the f32 residual stream, the MLA
//! projections (FP8 linears, activations quantized by the crate's 1x128 quantizer) with
//! the q_a / kv_a RMSNorms between them, RoPE of q_pe / k_pe, the absorbed per-head
//! products (cuBLAS), the cache writes, the indexer, top-k, sparse MLA (decode over the
//! paged FP8 cache, or prefill), o_proj and its residual add, then the post-attention
//! RMSNorm and the MoE (gate, routing, plan, permutation + quantization, grouped GEMMs,
//! SwiGLU, shared expert, combine) and its residual add. Dense MLA decode over the same
//! caches and the dense MLP of the first three layers are timed beside the layer, not in
//! it.
use std::sync::Arc;

use dsa_kernels::cache::{CacheRows, IndexerKCache, MlaBf16Cache, MlaFp8Cache};
use dsa_kernels::cudarc::cublas::CudaBlas;
use dsa_kernels::cudarc::driver::{CudaSlice, CudaStream};
use dsa_kernels::half::bf16;
use dsa_kernels::indexer::{
    prefill_out_stride, IndexerPrepShape, PrefillLogitsShape, RopeTablesRef,
};
use dsa_kernels::layers::{NormInput, NormRows, RopeRows};
use dsa_kernels::moe::gemm::{self, ContiguousShape, LinearShape};
use dsa_kernels::moe::{
    Align, Fp8Weights, MoeLayer, MoeLayout, MoePlan, MoeShape, MoeWeights, RouteConfig,
};
use dsa_kernels::sparse_mla::{SparseExtras, SparsePrefillConfig};
use dsa_kernels::topk::{TopkOptions, TopkRanges, TopkShape};
use dsa_kernels::{DsaDecodeStep, DsaDecodeStepConfig, DsaKernels};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::blas;
use crate::dense::DenseStep;
use crate::model::*;

/// The persistent state every case shares: caches (sized for the largest case), RoPE
/// tables, weights, the handles.
pub struct Env {
    pub k: DsaKernels,
    pub blas: CudaBlas,
    pub w: Weights,
    pub mla: MlaFp8Cache,
    pub idx: IndexerKCache,
    pub mla_bf16: Option<MlaBf16Cache>,
    pub cos: CudaSlice<f32>,
    pub sin: CudaSlice<f32>,
    pub max_pos: usize,
    /// Random bf16 inputs (hidden states, new cache rows), uniform in [-1, 1).
    pub act_pattern: Vec<bf16>,
}

impl Env {
    pub fn stream(&self) -> &Arc<CudaStream> {
        self.k.stream()
    }
    fn pages(&self) -> usize {
        self.mla.num_pages()
    }
}

/// A timed stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    InputNorm,
    QuantX,
    AProj,
    QkvNorms,
    QuantQa,
    QB,
    IdxQB,
    Rope,
    WUk,
    CacheWrite,
    IdxKPrep,
    IdxQPrep,
    IdxLogits,
    TopK,
    SparseMla,
    WUv,
    QuantO,
    OProj,
    ResidualAttn,
    PostNorm,
    Gate,
    Route,
    Plan,
    Permute,
    W13,
    SwiGlu,
    W2,
    Shared,
    Combine,
    ResidualMoe,
    EpMoe,
    DenseFp8,
    DenseBf16,
    DenseMlp,
}

/// Where a stage's time goes in the plot and in the 61-layer sum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// RMSNorms, RoPE and the residual adds: the per-token streaming ops around the
    /// projections.
    Norms,
    Proj,
    Absorb,
    Cache,
    Indexer,
    Topk,
    Attention,
    Routing,
    MoeOps,
    Experts,
    Shared,
    /// Timed beside the layer: dense MLA for comparison.
    DenseAttn,
    /// Timed beside the layer: the dense MLP of layers 0-2.
    DenseMlp,
    /// Timed beside the layer: the routed MoE at one EP8 GPU's shape.
    Ep,
}

impl Group {
    pub const PLOTTED: [Group; 11] = [
        Group::Norms,
        Group::Proj,
        Group::Absorb,
        Group::Cache,
        Group::Indexer,
        Group::Topk,
        Group::Attention,
        Group::Routing,
        Group::MoeOps,
        Group::Experts,
        Group::Shared,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Group::Norms => "RMSNorm / RoPE / residual adds",
            Group::Proj => "FP8 projections (+ quant)",
            Group::Absorb => "absorbed W_UK / W_UV (cuBLAS)",
            Group::Cache => "cache writes",
            Group::Indexer => "indexer prep + logits",
            Group::Topk => "top-k",
            Group::Attention => "sparse MLA",
            Group::Routing => "gate + routing + plan",
            Group::MoeOps => "permute / SwiGLU / combine",
            Group::Experts => "routed expert GEMMs",
            Group::Shared => "shared expert",
            Group::DenseAttn => "dense MLA (comparison)",
            Group::DenseMlp => "dense MLP (layers 0-2)",
            Group::Ep => "routed MoE at the EP8 shape",
        }
    }
    pub fn color(self) -> &'static str {
        match self {
            Group::Norms => "#c49c94",
            Group::Proj => "#1f77b4",
            Group::Absorb => "#aec7e8",
            Group::Cache => "#7f7f7f",
            Group::Indexer => "#17becf",
            Group::Topk => "#9edae5",
            Group::Attention => "#2ca02c",
            Group::Routing => "#ffbb78",
            Group::MoeOps => "#ff7f0e",
            Group::Experts => "#d62728",
            Group::Shared => "#9467bd",
            Group::DenseAttn => "#8c564b",
            Group::DenseMlp => "#e377c2",
            Group::Ep => "#bcbd22",
        }
    }
}

impl Op {
    pub fn name(self, decode: bool) -> &'static str {
        match self {
            Op::InputNorm => "input RMSNorm (f32 stream -> bf16, 7168)",
            Op::QuantX => "quant x (1x128 FP8)",
            Op::AProj => "A proj: q_a + kv_a + idx k + idx w (FP8, N 2304)",
            Op::QkvNorms => "RMSNorm q_a (1536) + kv_a (512)",
            Op::QuantQa => "quant q_a",
            Op::QB => "q_b (FP8, N 24576)",
            Op::IdxQB => "indexer q_b (FP8, N 8192)",
            Op::Rope => "RoPE q_pe (128 x 64) + k_pe (64)",
            Op::WUk => "W_UK absorb (cuBLAS bf16 bmm)",
            Op::CacheWrite => "MLA cache write (FP8)",
            Op::IdxKPrep => "indexer k prep + cache write",
            Op::IdxQPrep => "indexer q prep",
            Op::IdxLogits if decode => "indexer logits (paged decode)",
            Op::IdxLogits => "indexer logits (prefill)",
            Op::TopK if decode => "top-2048 + block-table translation",
            Op::TopK => "top-2048 (prefill rows)",
            Op::SparseMla if decode => "sparse MLA decode (FP8 cache)",
            Op::SparseMla => "sparse MLA prefill",
            Op::WUv => "W_UV absorb (cuBLAS bf16 bmm)",
            Op::QuantO => "quant o",
            Op::OProj => "o_proj (FP8, K 16384)",
            Op::ResidualAttn => "residual add (attention out)",
            Op::PostNorm => "post-attention RMSNorm (f32 stream -> bf16)",
            Op::Gate => "router gate (cuBLAS bf16 -> f32)",
            Op::Route => "route (sigmoid, groups, top-8)",
            Op::Plan => "plan (counts, offsets, rows)",
            Op::Permute => "permute + quant",
            Op::W13 => "grouped GEMM gate_up",
            Op::SwiGlu => "SwiGLU + quant",
            Op::W2 => "grouped GEMM down",
            Op::Shared => "shared expert (quant, 2 FP8 linears, SwiGLU)",
            Op::Combine => "combine (+ shared)",
            Op::ResidualMoe => "residual add (MoE out)",
            Op::EpMoe => "EP8 shape: route -> combine, 32 experts, 8B rows (beside)",
            Op::DenseFp8 => "dense MLA decode, FP8 cache (comparison)",
            Op::DenseBf16 => "dense MLA decode, bf16 cache (comparison)",
            Op::DenseMlp => "dense MLP, inter 18432 (layers 0-2)",
        }
    }

    pub fn group(self) -> Group {
        match self {
            Op::InputNorm
            | Op::QkvNorms
            | Op::Rope
            | Op::ResidualAttn
            | Op::PostNorm
            | Op::ResidualMoe => Group::Norms,
            Op::QuantX | Op::AProj | Op::QuantQa | Op::QB | Op::IdxQB | Op::QuantO | Op::OProj => {
                Group::Proj
            }
            Op::WUk | Op::WUv => Group::Absorb,
            Op::CacheWrite => Group::Cache,
            Op::IdxKPrep | Op::IdxQPrep | Op::IdxLogits => Group::Indexer,
            Op::TopK => Group::Topk,
            Op::SparseMla => Group::Attention,
            Op::Gate | Op::Route | Op::Plan => Group::Routing,
            Op::Permute | Op::SwiGlu | Op::Combine => Group::MoeOps,
            Op::W13 | Op::W2 => Group::Experts,
            Op::Shared => Group::Shared,
            Op::DenseFp8 | Op::DenseBf16 => Group::DenseAttn,
            Op::EpMoe => Group::Ep,
            Op::DenseMlp => Group::DenseMlp,
        }
    }

    /// Whether the stage is part of the MoE layer (the others are timed beside it).
    pub fn in_layer(self) -> bool {
        !matches!(self.group(), Group::DenseAttn | Group::DenseMlp | Group::Ep)
    }

    /// Part of the attention half of the layer: its norms, RoPE and residual add included.
    pub fn attention_half(self) -> bool {
        match self.group() {
            Group::Proj
            | Group::Absorb
            | Group::Cache
            | Group::Indexer
            | Group::Topk
            | Group::Attention => true,
            Group::Norms => !self.ffn_frame(),
            _ => false,
        }
    }

    /// The FFN's norm and residual add: in the MoE half here, but run by every layer (the
    /// dense-MLP layers 0-2 too), so the 61-layer sum counts them 61 times.
    pub fn ffn_frame(self) -> bool {
        matches!(self, Op::PostNorm | Op::ResidualMoe)
    }

    /// The HBM floor of the per-token streaming ops (norms, RoPE, residual adds) at `t`
    /// tokens; `None` for the other stages.
    pub fn streaming_floor(self, t: usize) -> Option<Floor> {
        let tf = t as f64;
        // f32 stream rows in, bf16 rows out, the f32 weight once.
        let stream_norm = Floor::bytes(tf * (HIDDEN * 6) as f64 + (HIDDEN * 4) as f64);
        Some(match self {
            Op::InputNorm | Op::PostNorm => stream_norm,
            // bf16 in and out, both f32 weights.
            Op::QkvNorms => {
                let cols = Q_LORA + KV_LORA;
                Floor::bytes(tf * (cols * 4) as f64 + (cols * 4) as f64)
            }
            // bf16 rope values in and out, and each launch's positions; the tables' rows
            // (256 B per distinct position) stay in L2.
            Op::Rope => Floor::bytes(tf * ((HEADS + 1) * ROPE * 4 + 2 * 4) as f64),
            // f32 stream read and written, the block's bf16 output read.
            Op::ResidualAttn | Op::ResidualMoe => Floor::bytes(tf * (HIDDEN * 10) as f64),
            _ => return None,
        })
    }
}

/// The stages of the MoE layer in launch order, then the ones timed beside it.
pub fn ops(decode: bool, bf16_cache: bool) -> Vec<Op> {
    let mut v = vec![
        Op::InputNorm,
        Op::QuantX,
        Op::AProj,
        Op::QkvNorms,
        Op::QuantQa,
        Op::QB,
        Op::IdxQB,
        Op::Rope,
        Op::WUk,
        Op::CacheWrite,
        Op::IdxKPrep,
        Op::IdxQPrep,
        Op::IdxLogits,
        Op::TopK,
        Op::SparseMla,
        Op::WUv,
        Op::QuantO,
        Op::OProj,
        Op::ResidualAttn,
        Op::PostNorm,
        Op::Gate,
        Op::Route,
        Op::Plan,
        Op::Permute,
        Op::W13,
        Op::SwiGlu,
        Op::W2,
        Op::Shared,
        Op::Combine,
        Op::ResidualMoe,
    ];
    if decode {
        v.push(Op::EpMoe);
        v.push(Op::DenseFp8);
        if bf16_cache {
            v.push(Op::DenseBf16);
        }
    }
    v.push(Op::DenseMlp);
    v
}

/// The norms, RoPE and residual adds with their floors at `t` tokens: (name, floor). A
/// run from before they were timed stages has no times for them; its replot adds these
/// floors instead (as such runs reported them).
pub fn untimed(t: usize) -> Vec<(&'static str, Floor)> {
    ops(true, true)
        .into_iter()
        .filter(|o| o.group() == Group::Norms)
        .filter_map(|o| Some((o.name(true), o.streaming_floor(t)?)))
        .collect()
}

/// Experts touched and rows routed by the last routing: the layer's and, in decode, the
/// EP8 shape's.
#[derive(Debug, Clone, Copy)]
pub struct Routing {
    pub layer: (usize, usize),
    pub ep: Option<(usize, usize)>,
}

/// Quantized copy of a `[t, cols]` activation: e4m3 codes and MN-major 1x128 scales.
struct Quant {
    codes: CudaSlice<u8>,
    scales: CudaSlice<f32>,
}

impl Quant {
    fn new(s: &Arc<CudaStream>, t: usize, cols: usize) -> Result<Self, Error> {
        Ok(Self {
            codes: s.alloc_zeros(t * cols)?,
            scales: s.alloc_zeros(gemm::sfa_row_stride(t) * cols / 128)?,
        })
    }
}

/// The decode-only state: the paged batch (shuffled pages, every sequence at the full
/// context), the library's DSA step, and the dense MLA step over the same batch.
struct DecodeAttn {
    dense: DenseStep,
    step: DsaDecodeStep,
}

/// The prefill-only state: the chunk's keys as the indexer and sparse prefill read them
/// (flat, the whole context), logits, ranges, selected indices.
struct PrefillAttn {
    s_kv: usize,
    q8: CudaSlice<u8>,
    w: CudaSlice<f32>,
    k8: CudaSlice<u8>,
    kscale: CudaSlice<f32>,
    ks: CudaSlice<i32>,
    ke: CudaSlice<i32>,
    logits: CudaSlice<f32>,
    stride: usize,
    indices: CudaSlice<i32>,
    kv: CudaSlice<bf16>,
    max_logits: CudaSlice<f32>,
}

enum Attn {
    Decode(Box<DecodeAttn>),
    Prefill(Box<PrefillAttn>),
}

/// The routed part of an MoE layer: ids, plan and the row-space buffers of one
/// [`MoeShape`] (own, not `MoeLayer`'s, so each op can be timed).
struct Routed {
    shape: MoeShape,
    ids: CudaSlice<i32>,
    weights: CudaSlice<f32>,
    plan: MoePlan,
    a1: CudaSlice<u8>,
    sfa1: CudaSlice<f32>,
    h: CudaSlice<bf16>,
    a2: CudaSlice<u8>,
    sfa2: CudaSlice<f32>,
    y: CudaSlice<bf16>,
    out: CudaSlice<bf16>,
}

impl Routed {
    fn new(s: &Arc<CudaStream>, shape: MoeShape) -> Result<Self, Error> {
        let slots = shape.slots()?;
        Ok(Self {
            shape,
            ids: s.alloc_zeros(slots)?,
            weights: s.alloc_zeros(slots)?,
            plan: MoePlan::new(s, &shape)?,
            a1: s.alloc_zeros(shape.a1_len()?)?,
            sfa1: s.alloc_zeros(shape.sfa1_len()?)?,
            h: s.alloc_zeros(shape.h_len()?)?,
            a2: s.alloc_zeros(shape.a2_len()?)?,
            sfa2: s.alloc_zeros(shape.sfa2_len()?)?,
            y: s.alloc_zeros(shape.y_len()?)?,
            out: s.alloc_zeros(shape.tokens * HIDDEN)?,
        })
    }

    /// One grouped GEMM over the first `shape.experts` experts of `wt`: w13 (`a1 -> h`)
    /// or w2 (`a2 -> y`).
    fn gemm(&mut self, k: &DsaKernels, wt: &Fp8Weight, first: bool) -> Result<(), Error> {
        let e = self.shape.experts;
        let codes = wt.codes.slice(..e * wt.n * wt.k);
        let scales = wt.scales.slice(..e * (wt.n / 128) * (wt.k / 128));
        let shape = ContiguousShape {
            rows: self.shape.rows()?,
            groups: e,
            n: wt.n,
            k: wt.k,
            align: self.shape.align.rows(),
        };
        let ids = self
            .plan
            .m_indices()
            .ok_or("contiguous plan without m_indices")?;
        let (a, sfa, d) = if first {
            (&self.a1, &self.sfa1, &mut self.h)
        } else {
            (&self.a2, &self.sfa2, &mut self.y)
        };
        gemm::grouped_gemm_contiguous(k, shape, a, sfa, &codes, &scales, &ids, d)?;
        Ok(())
    }

    /// (experts touched, routed rows) of the last routing.
    fn routing(&self, s: &Arc<CudaStream>) -> Result<(usize, usize), Error> {
        routing_of(s, &self.plan)
    }
}

/// (experts touched, routed rows) of a plan.
fn routing_of(s: &Arc<CudaStream>, plan: &MoePlan) -> Result<(usize, usize), Error> {
    let counts = s.clone_dtoh(&plan.counts())?;
    let touched = counts.iter().filter(|&&c| c > 0).count();
    let rows = counts.iter().map(|&c| c.max(0) as usize).sum();
    Ok((touched, rows))
}

/// The MoE half: gate logits, the routed part, the shared expert's buffers.
struct Moe {
    logits: CudaSlice<f32>,
    r: Routed,
    sx: Quant,
    sh: CudaSlice<bf16>,
    sa: Quant,
    sy: CudaSlice<bf16>,
}

/// One GPU's routed part in an EP8 deployment, run by the library's [`MoeLayer`] (route
/// -> combine, no shared expert): its 32 local experts receive 8B rows (an eighth of the
/// 64B slots of all GPUs' 8B tokens); here B tokens routed to 8 of 32 experts give the
/// same rows and experts.
struct EpMoe {
    layer: MoeLayer,
    out: CudaSlice<bf16>,
}

impl EpMoe {
    fn new(s: &Arc<CudaStream>, shape: MoeShape) -> Result<Self, Error> {
        let shape = MoeShape {
            experts: EXPERTS / EP,
            ..shape
        };
        Ok(Self {
            layer: MoeLayer::new(s, &shape, &RouteConfig::DEEPSEEK_V3, None)?,
            out: s.alloc_zeros(shape.tokens * HIDDEN)?,
        })
    }

    /// The layer over the first 32 experts' weights, routed by the first 32 columns'
    /// worth of the gate logits (any logits route the same way for timing).
    fn forward(
        &mut self,
        k: &DsaKernels,
        w: &Weights,
        logits: &CudaSlice<f32>,
        x: &CudaSlice<bf16>,
    ) -> Result<(), Error> {
        let e = self.layer.shape().experts;
        let first = |wt: &'_ Fp8Weight| (e * wt.n * wt.k, e * (wt.n / 128) * (wt.k / 128));
        let ((c13, s13), (c2, s2)) = (first(&w.w13), first(&w.w2));
        let weights = MoeWeights {
            bias: w.bias.slice(..e),
            w13: Fp8Weights {
                codes: w.w13.codes.slice(..c13),
                scales: w.w13.scales.slice(..s13),
            },
            w2: Fp8Weights {
                codes: w.w2.codes.slice(..c2),
                scales: w.w2.scales.slice(..s2),
            },
            shared: None,
        };
        self.layer.forward(k, &weights, logits, x, &mut self.out)?;
        Ok(())
    }

    fn routing(&self, s: &Arc<CudaStream>) -> Result<(usize, usize), Error> {
        routing_of(s, self.layer.plan())
    }
}

/// One case's activations and per-case state.
pub struct Layer {
    pub t: usize,
    /// Context of each sequence (decode) or of the prompt after the chunk (prefill).
    pub ctx: usize,
    pub decode: bool,
    /// The f32 residual stream `[t, HIDDEN]` both RMSNorms read. The passes repeat the
    /// layer on the same inputs: a stream the adds wrote and the norms read would drift
    /// pass by pass (and the routing with it), so the adds go to `h_acc`, a stream of the
    /// same shape: the same bytes moved, the norms' input fixed.
    h: CudaSlice<f32>,
    h_acc: CudaSlice<f32>,
    /// A normed row in bf16: the input norm's output (read by quant x), then the
    /// post-attention norm's (read by the gate, the permutation and the shared expert).
    x: CudaSlice<bf16>,
    xq: Quant,
    a_out: CudaSlice<bf16>,
    /// The q_a norm's output, quantized for q_b and the indexer's q_b.
    qa: CudaSlice<bf16>,
    /// The MLA cache row `[t, 576]`: the kv_a norm's latent, then k_pe after RoPE.
    kv: CudaSlice<bf16>,
    qaq: Quant,
    q_b: CudaSlice<bf16>,
    idx_q: CudaSlice<bf16>,
    idx_w: CudaSlice<f32>,
    q: CudaSlice<bf16>,
    positions: CudaSlice<i32>,
    slots: CudaSlice<i32>,
    o_lat: CudaSlice<bf16>,
    lse: CudaSlice<f32>,
    o: CudaSlice<bf16>,
    oq: Quant,
    attn_out: CudaSlice<bf16>,
    moe: Moe,
    /// Decode only: the routed part at one EP8 GPU's shape (32 experts, 8B rows).
    ep: Option<EpMoe>,
    dense_h: CudaSlice<bf16>,
    dense_a: Quant,
    dense_y: CudaSlice<bf16>,
    attn: Attn,
}

impl Layer {
    /// A decode step: `batch` sequences of `ctx` tokens each (the new token included, at
    /// position `ctx - 1`), pages shuffled over the whole cache.
    pub fn decode(env: &Env, batch: usize, ctx: usize) -> Result<Self, Error> {
        let k = &env.k;
        let s = env.stream();
        let dense = DenseStep::new(k, env.pages(), batch, 1, ctx);
        let table = s.clone_dtoh(&dense.bt)?;
        let mp = dense.shape.max_pages;
        let pos = ctx - 1;
        let slots: Vec<i32> = (0..batch)
            .map(|b| table[b * mp + pos / 64] * 64 + (pos % 64) as i32)
            .collect();
        let cfg = DsaDecodeStepConfig::deepseek_v32(batch, 1, mp);
        let mut step = DsaDecodeStep::new(k, cfg)?;
        // Per step, for all layers: the indexer's schedule.
        step.plan(k, &dense.batch())?;
        let attn = Attn::Decode(Box::new(DecodeAttn { dense, step }));
        let align = Align::A64;
        Self::new(env, batch, ctx, vec![pos as i32; batch], slots, align, attn)
    }

    /// A prefill chunk of `t` tokens ending a prompt of `s_kv` tokens (positions `s_kv -
    /// t ..`), its new rows written to pages `0..` of the caches.
    pub fn prefill(env: &Env, t: usize, s_kv: usize) -> Result<Self, Error> {
        let s = env.stream();
        let prefix = s_kv - t;
        let mut rng = StdRng::seed_from_u64(s_kv as u64);
        let k8: Vec<u8> = (0..4096 * IDX_DIM)
            .map(|_| dsa_kernels::fp8::f32_to_e4m3(rng.random_range(-4.0f32..4.0)))
            .collect();
        let ks: Vec<f32> = (0..4099).map(|_| rng.random_range(0.01f32..0.02)).collect();
        let stride = prefill_out_stride(s_kv);
        let ends: Vec<i32> = (0..t).map(|i| (prefix + i + 1) as i32).collect();
        let attn = Attn::Prefill(Box::new(PrefillAttn {
            s_kv,
            q8: s.alloc_zeros(t * IDX_HEADS * IDX_DIM)?,
            w: s.alloc_zeros(t * IDX_HEADS)?,
            k8: tiled(s, s_kv * IDX_DIM, &k8)?,
            kscale: tiled(s, s_kv, &ks)?,
            ks: s.alloc_zeros(t)?,
            ke: s.clone_htod(&ends)?,
            logits: s.alloc_zeros(t * stride)?,
            stride,
            indices: s.alloc_zeros(t * TOPK)?,
            kv: tiled(s, s_kv * QK_DIM, &env.act_pattern)?,
            max_logits: s.alloc_zeros(t * HEADS)?,
        }));
        let positions: Vec<i32> = (prefix..s_kv).map(|p| p as i32).collect();
        let slots = positions.clone();
        Self::new(env, t, s_kv, positions, slots, Align::A128, attn)
    }

    fn new(
        env: &Env,
        t: usize,
        ctx: usize,
        positions: Vec<i32>,
        slots: Vec<i32>,
        align: Align,
        attn: Attn,
    ) -> Result<Self, Error> {
        let s = env.stream();
        let pat = &env.act_pattern;
        let shape = MoeShape {
            align,
            layout: MoeLayout::Contiguous,
            ..MoeShape::deepseek_v3(t)
        };
        let moe = Moe {
            logits: s.alloc_zeros(t * EXPERTS)?,
            r: Routed::new(s, shape)?,
            sx: Quant::new(s, t, HIDDEN)?,
            sh: s.alloc_zeros(t * 2 * SHARED_INTER)?,
            sa: Quant::new(s, t, SHARED_INTER)?,
            sy: s.alloc_zeros(t * HIDDEN)?,
        };
        // Decode: one GPU's routed part in an EP8 deployment, measured: its 32 local
        // experts receive 8B rows (an eighth of the 64B slots of all GPUs' 8B tokens);
        // here B tokens routed to 8 of 32 experts give the same rows and experts.
        let ep = match attn {
            Attn::Decode(_) => Some(EpMoe::new(s, shape)?),
            Attn::Prefill(_) => None,
        };
        let w: Vec<f32> = (0..t * IDX_HEADS)
            .map(|i| ((i % 13) as f32 - 6.0) / 48.0)
            .collect();
        let pat_f32: Vec<f32> = pat.iter().map(|v| v.to_f32()).collect();
        Ok(Self {
            t,
            ctx,
            decode: matches!(attn, Attn::Decode(_)),
            h: tiled(s, t * HIDDEN, &pat_f32)?,
            h_acc: tiled(s, t * HIDDEN, &pat_f32)?,
            x: tiled(s, t * HIDDEN, pat)?,
            xq: Quant::new(s, t, HIDDEN)?,
            a_out: tiled(s, t * A_OUT, pat)?,
            qa: tiled(s, t * Q_LORA, pat)?,
            kv: tiled(s, t * QK_DIM, pat)?,
            qaq: Quant::new(s, t, Q_LORA)?,
            q_b: s.alloc_zeros(t * HEADS * QK_HEAD)?,
            idx_q: s.alloc_zeros(t * IDX_HEADS * IDX_DIM)?,
            idx_w: s.clone_htod(&w)?,
            q: tiled(s, t * HEADS * QK_DIM, pat)?,
            positions: s.clone_htod(&positions)?,
            slots: s.clone_htod(&slots)?,
            o_lat: s.alloc_zeros(t * HEADS * KV_LORA)?,
            lse: s.alloc_zeros(t * HEADS)?,
            o: s.alloc_zeros(t * HEADS * V_HEAD)?,
            oq: Quant::new(s, t, HEADS * V_HEAD)?,
            attn_out: s.alloc_zeros(t * HIDDEN)?,
            moe,
            ep,
            dense_h: s.alloc_zeros(t * 2 * DENSE_INTER)?,
            dense_a: Quant::new(s, t, DENSE_INTER)?,
            dense_y: s.alloc_zeros(t * HIDDEN)?,
            attn,
        })
    }

    /// Enqueues one stage.
    pub fn run(&mut self, env: &mut Env, op: Op) -> Result<(), Error> {
        let k = &env.k;
        let w = &env.w;
        let t = self.t;
        let rope = RopeTablesRef {
            cos: &env.cos,
            sin: &env.sin,
            max_pos: env.max_pos,
        };
        match op {
            // The norms write bf16 rows, the input of quant x and of the MoE's bf16 ops
            // (an engine may instead keep f32 and quantize it, as the mini forward does:
            // 2 more bytes per value written and read).
            Op::InputNorm | Op::PostNorm => {
                let wt = if op == Op::InputNorm {
                    &w.attn_norm
                } else {
                    &w.ffn_norm
                };
                k.rms_norm(
                    NormRows::contiguous(t, HIDDEN),
                    NormInput::<_, CudaSlice<bf16>>::F32(&self.h),
                    wt,
                    NORM_EPS,
                    None,
                    Some((&mut self.x, HIDDEN)),
                )?
            }
            Op::QkvNorms => {
                // q_a's columns of the A projection into the rows quant q_a reads; kv_a's
                // latent into the cache row.
                k.rms_norm(
                    NormRows {
                        rows: t,
                        dim: Q_LORA,
                        stride: A_OUT,
                    },
                    NormInput::<CudaSlice<f32>, _>::Bf16(&self.a_out),
                    &w.q_norm,
                    NORM_EPS,
                    None,
                    Some((&mut self.qa, Q_LORA)),
                )?;
                let kv_a = self.a_out.slice(A_KV..);
                k.rms_norm(
                    NormRows {
                        rows: t,
                        dim: KV_LORA,
                        stride: A_OUT,
                    },
                    NormInput::<CudaSlice<f32>, _>::Bf16(&kv_a),
                    &w.kv_norm,
                    NORM_EPS,
                    None,
                    Some((&mut self.kv, QK_DIM)),
                )?
            }
            Op::Rope => {
                // q_pe of every head from q_b's output into the absorbed query (W_UK
                // writes its latent part), k_pe from kv_a's last 64 columns into the cache
                // row.
                let q_pe = self.q_b.slice(QK_NOPE..);
                let mut q_rope = self.q.slice_mut(KV_LORA..);
                k.mla_rope(
                    t,
                    HEADS,
                    &q_pe,
                    RopeRows {
                        token_stride: HEADS * QK_HEAD,
                        head_stride: QK_HEAD,
                    },
                    &mut q_rope,
                    RopeRows {
                        token_stride: HEADS * QK_DIM,
                        head_stride: QK_DIM,
                    },
                    &self.positions,
                    rope,
                )?;
                let k_pe = self.a_out.slice(A_KV + KV_LORA..);
                let mut k_rope = self.kv.slice_mut(KV_LORA..);
                k.mla_rope(
                    t,
                    1,
                    &k_pe,
                    RopeRows {
                        token_stride: A_OUT,
                        head_stride: 0,
                    },
                    &mut k_rope,
                    RopeRows {
                        token_stride: QK_DIM,
                        head_stride: 0,
                    },
                    &self.positions,
                    rope,
                )?
            }
            Op::ResidualAttn => k.residual_add(&mut self.h_acc, &self.attn_out, t * HIDDEN)?,
            Op::ResidualMoe => k.residual_add(&mut self.h_acc, &self.moe.r.out, t * HIDDEN)?,
            Op::QuantX => k.fp8_quantize_rows(
                t,
                HIDDEN,
                false,
                &self.x,
                &mut self.xq.codes,
                &mut self.xq.scales,
            )?,
            Op::AProj => linear(k, t, &self.xq, &w.a, &mut self.a_out)?,
            Op::QuantQa => k.fp8_quantize_rows(
                t,
                Q_LORA,
                false,
                &self.qa,
                &mut self.qaq.codes,
                &mut self.qaq.scales,
            )?,
            Op::QB => linear(k, t, &self.qaq, &w.q_b, &mut self.q_b)?,
            Op::IdxQB => linear(k, t, &self.qaq, &w.idx_q_b, &mut self.idx_q)?,
            Op::WUk => blas::absorb_uk(&env.blas, t, &self.q_b, &w.kv_b, &mut self.q)?,
            Op::CacheWrite => {
                let rows = CacheRows {
                    src: &self.kv,
                    rows: t,
                    row_stride: QK_DIM,
                };
                k.write_cache_device_slots(&mut env.mla, rows, &self.slots, false)?
            }
            Op::IdxKPrep => {
                let key = self.a_out.slice(A_IDX_K..);
                let shape = IndexerPrepShape {
                    tokens: t,
                    heads: 1,
                    token_stride: A_OUT,
                };
                k.indexer_prepare_k_device_slots(
                    shape,
                    &key,
                    &self.positions,
                    rope,
                    &mut env.idx,
                    &self.slots,
                )?
            }
            Op::IdxQPrep => {
                let shape = IndexerPrepShape {
                    tokens: t,
                    heads: IDX_HEADS,
                    token_stride: IDX_HEADS * IDX_DIM,
                };
                match &mut self.attn {
                    Attn::Decode(d) => {
                        let (q8, wo) = d.step.prepared_queries_mut();
                        k.indexer_prepare_q(
                            shape,
                            &self.idx_q,
                            &self.positions,
                            rope,
                            &self.idx_w,
                            q8,
                            wo,
                        )?
                    }
                    Attn::Prefill(p) => k.indexer_prepare_q(
                        shape,
                        &self.idx_q,
                        &self.positions,
                        rope,
                        &self.idx_w,
                        &mut p.q8,
                        &mut p.w,
                    )?,
                }
            }
            Op::IdxLogits => match &mut self.attn {
                Attn::Decode(d) => d.step.index_logits(k, &d.dense.batch(), &env.idx)?,
                Attn::Prefill(p) => {
                    let shape = PrefillLogitsShape {
                        s_q: t,
                        s_kv: p.s_kv,
                        heads: IDX_HEADS,
                        out_stride: p.stride,
                    };
                    k.indexer_logits_prefill(
                        shape,
                        &p.q8,
                        &p.w,
                        &p.k8,
                        &p.kscale,
                        &p.ks,
                        &p.ke,
                        &mut p.logits,
                    )?
                }
            },
            Op::TopK => match &mut self.attn {
                Attn::Decode(d) => d.step.select(k, &d.dense.batch())?,
                Attn::Prefill(p) => {
                    let shape = TopkShape {
                        rows: t,
                        cols: p.s_kv,
                        row_stride: p.stride,
                        topk: TOPK,
                    };
                    let ranges = TopkRanges::Bounds {
                        starts: &p.ks,
                        ends: &p.ke,
                    };
                    k.topk(
                        &p.logits,
                        ranges,
                        shape,
                        TopkOptions::default(),
                        &mut p.indices,
                    )?
                }
            },
            Op::SparseMla => match &mut self.attn {
                Attn::Decode(d) => {
                    let batch = d.dense.batch();
                    d.step
                        .attend(k, &batch, &env.mla, &self.q, &mut self.o_lat, &mut self.lse)?
                }
                Attn::Prefill(p) => {
                    let cfg = SparsePrefillConfig {
                        s_q: t,
                        s_kv: p.s_kv,
                        heads: HEADS,
                        topk: TOPK,
                        softmax_scale: SOFTMAX_SCALE,
                    };
                    k.sparse_mla_prefill(
                        &cfg,
                        &self.q,
                        &p.kv,
                        &p.indices,
                        SparseExtras::default(),
                        &mut self.o_lat,
                        &mut p.max_logits,
                        &mut self.lse,
                    )?
                }
            },
            Op::WUv => blas::absorb_uv(&env.blas, t, &self.o_lat, &w.kv_b, &mut self.o)?,
            Op::QuantO => k.fp8_quantize_rows(
                t,
                HEADS * V_HEAD,
                false,
                &self.o,
                &mut self.oq.codes,
                &mut self.oq.scales,
            )?,
            Op::OProj => linear(k, t, &self.oq, &w.o, &mut self.attn_out)?,
            Op::Gate => blas::gate_logits(
                &env.blas,
                k.stream(),
                t,
                EXPERTS,
                &self.x,
                &w.gate,
                &mut self.moe.logits,
            )?,
            Op::Route => {
                let m = &mut self.moe;
                let r = &mut m.r;
                let cfg = RouteConfig::DEEPSEEK_V3;
                k.moe_route(
                    &r.shape,
                    &cfg,
                    &m.logits,
                    &w.bias,
                    &mut r.ids,
                    &mut r.weights,
                )?
            }
            Op::Plan => {
                let r = &mut self.moe.r;
                k.moe_plan(&r.shape, &r.ids, &mut r.plan)?
            }
            Op::Permute => {
                let r = &mut self.moe.r;
                k.moe_permute_quant(&r.shape, &r.plan, &self.x, &mut r.a1, &mut r.sfa1)?
            }
            Op::W13 => self.moe.r.gemm(k, &w.w13, true)?,
            Op::W2 => self.moe.r.gemm(k, &w.w2, false)?,
            Op::SwiGlu => {
                let r = &mut self.moe.r;
                k.moe_swiglu_quant(&r.shape, &r.plan, &r.h, &mut r.a2, &mut r.sfa2)?
            }
            Op::EpMoe => {
                let ep = self.ep.as_mut().ok_or("the EP8 shape is a decode stage")?;
                ep.forward(k, w, &self.moe.logits, &self.x)?
            }
            Op::Shared => {
                let m = &mut self.moe;
                mlp(
                    k,
                    t,
                    &self.x,
                    &mut m.sx,
                    (&w.shared13, &w.shared2),
                    &mut m.sh,
                    &mut m.sa,
                    &mut m.sy,
                )?
            }
            Op::Combine => {
                let m = &mut self.moe;
                let r = &mut m.r;
                k.moe_combine(&r.shape, &r.plan, &r.y, &r.weights, Some(&m.sy), &mut r.out)?
            }
            Op::DenseFp8 | Op::DenseBf16 => {
                let Attn::Decode(d) = &mut self.attn else {
                    return Err("dense MLA decode is a decode stage".into());
                };
                if op == Op::DenseFp8 {
                    d.dense.layer(k, &env.mla)
                } else {
                    d.dense
                        .layer(k, env.mla_bf16.as_ref().ok_or("no bf16 cache")?)
                }
            }
            Op::DenseMlp => mlp(
                k,
                t,
                &self.x,
                &mut self.moe.sx,
                (&w.dense13, &w.dense2),
                &mut self.dense_h,
                &mut self.dense_a,
                &mut self.dense_y,
            )?,
        }
        Ok(())
    }

    /// (experts touched, routed rows) of the last routing: the layer's, and the EP8
    /// shape's (decode).
    pub fn routing(&self, s: &Arc<CudaStream>) -> Result<Routing, Error> {
        Ok(Routing {
            layer: self.moe.r.routing(s)?,
            ep: self.ep.as_ref().map(|e| e.routing(s)).transpose()?,
        })
    }

    /// The floor of `op` given the routing (experts touched, routed rows).
    pub fn floor(&self, op: Op, w: &Weights, routing: Routing) -> Floor {
        let t = self.t;
        let (touched, rows) = routing.layer;
        let tf = t as f64;
        match op {
            Op::InputNorm
            | Op::QkvNorms
            | Op::Rope
            | Op::ResidualAttn
            | Op::PostNorm
            | Op::ResidualMoe => op.streaming_floor(t).unwrap_or_default(),
            Op::QuantX => quant_floor(t, HIDDEN),
            Op::AProj => fp8_gemm_floor(t, A_OUT, HIDDEN, 1),
            Op::QuantQa => quant_floor(t, Q_LORA),
            Op::QB => fp8_gemm_floor(t, HEADS * QK_HEAD, Q_LORA, 1),
            Op::IdxQB => fp8_gemm_floor(t, IDX_HEADS * IDX_DIM, Q_LORA, 1),
            Op::WUk => bf16_bmm_floor(HEADS, t, KV_LORA, QK_NOPE),
            Op::WUv => bf16_bmm_floor(HEADS, t, V_HEAD, KV_LORA),
            Op::CacheWrite => Floor::bytes(tf * (QK_DIM * 2 + MLA_FP8_TOKEN) as f64),
            Op::IdxKPrep => Floor::bytes(tf * (IDX_DIM * 2 + IDX_TOKEN) as f64),
            Op::IdxQPrep => Floor::bytes(tf * (IDX_HEADS * (IDX_DIM * 3 + 8)) as f64),
            Op::IdxLogits => {
                let (pairs, keys, out) = self.logit_pairs();
                Floor {
                    bytes: keys * IDX_TOKEN as f64 + out * 4.0,
                    flops: 2.0 * (IDX_HEADS * IDX_DIM) as f64 * pairs,
                    peak: FP8_PEAK,
                }
            }
            Op::TopK => Floor::bytes(self.logit_pairs().0 * 4.0),
            Op::SparseMla => {
                let attended = self.attended(TOPK);
                let kv_bytes = if self.decode {
                    attended * MLA_FP8_TOKEN as f64
                } else {
                    // The prefill's queries share the context's rows: each read once.
                    (self.ctx * QK_DIM * 2) as f64
                };
                Floor {
                    bytes: kv_bytes + tf * (HEADS * (QK_DIM + KV_LORA) * 2) as f64,
                    flops: 2.0 * (HEADS * (QK_DIM + KV_LORA)) as f64 * attended,
                    peak: BF16_PEAK,
                }
            }
            Op::QuantO => quant_floor(t, HEADS * V_HEAD),
            Op::OProj => fp8_gemm_floor(t, HIDDEN, HEADS * V_HEAD, 1),
            Op::Gate => Floor {
                bytes: (EXPERTS * HIDDEN * 2 + t * HIDDEN * 2 + t * EXPERTS * 4) as f64,
                flops: 2.0 * (t * EXPERTS * HIDDEN) as f64,
                peak: BF16_PEAK,
            },
            Op::Route => Floor::bytes(tf * (EXPERTS * 4 + TOP_K * 8) as f64),
            Op::Plan => Floor::bytes(tf * (TOP_K * 4 * 3) as f64),
            Op::Permute => permute_floor(t, rows),
            Op::W13 | Op::W2 => {
                let wt = if op == Op::W13 { &w.w13 } else { &w.w2 };
                fp8_gemm_floor(rows, wt.n, wt.k, touched)
            }
            Op::SwiGlu => swiglu_floor(rows),
            Op::EpMoe => {
                let (touched, rows) = routing.ep.unwrap_or_default();
                let parts = [
                    Floor::bytes(tf * (EXPERTS / EP * 4 + TOP_K * 8 + TOP_K * 12) as f64),
                    permute_floor(t, rows),
                    fp8_gemm_floor(rows, w.w13.n, w.w13.k, touched),
                    swiglu_floor(rows),
                    fp8_gemm_floor(rows, w.w2.n, w.w2.k, touched),
                    combine_floor(t),
                ];
                sum_floors(&parts)
            }
            Op::Shared => mlp_floor(t, SHARED_INTER),
            Op::Combine => combine_floor(t),
            Op::DenseFp8 | Op::DenseBf16 => {
                let bpt = if op == Op::DenseFp8 {
                    MLA_FP8_TOKEN
                } else {
                    QK_DIM * 2
                };
                let attended = self.attended(usize::MAX);
                Floor {
                    bytes: attended * bpt as f64,
                    flops: 2.0 * (HEADS * (QK_DIM + KV_LORA)) as f64 * attended,
                    peak: BF16_PEAK,
                }
            }
            Op::DenseMlp => mlp_floor(t, DENSE_INTER),
        }
    }

    /// (query-key pairs scored, distinct keys read, logits written) by the indexer.
    fn logit_pairs(&self) -> (f64, f64, f64) {
        match &self.attn {
            Attn::Decode(_) => {
                let n = (self.t * self.ctx) as f64;
                (n, n, n)
            }
            Attn::Prefill(p) => {
                let prefix = (p.s_kv - self.t) as f64;
                let t = self.t as f64;
                let pairs = t * prefix + t * (t + 1.0) / 2.0;
                (pairs, p.s_kv as f64, t * p.stride as f64)
            }
        }
    }

    /// Keys attended over all query rows when each attends at most `cap` keys: decode
    /// rows see their sequence's `ctx` tokens, prefill row `i` the prefix and `i + 1`
    /// tokens of the chunk.
    fn attended(&self, cap: usize) -> f64 {
        if self.decode {
            (self.t * self.ctx.min(cap)) as f64
        } else {
            let prefix = self.ctx - self.t;
            (0..self.t).map(|i| (prefix + i + 1).min(cap) as f64).sum()
        }
    }
}

/// An FP8 linear over a quantized activation.
fn linear(
    k: &DsaKernels,
    t: usize,
    a: &Quant,
    w: &Fp8Weight,
    d: &mut CudaSlice<bf16>,
) -> Result<(), Error> {
    let shape = LinearShape {
        m: t,
        n: w.n,
        k: w.k,
    };
    gemm::fp8_linear(k, shape, &a.codes, &a.scales, &w.codes, &w.scales, d)?;
    Ok(())
}

/// A dense FP8 MLP (the shared expert, or layers 0-2's MLP): quantize, gate_up linear,
/// SwiGLU + quantize, down linear.
#[allow(clippy::too_many_arguments)]
fn mlp(
    k: &DsaKernels,
    t: usize,
    x: &CudaSlice<bf16>,
    xq: &mut Quant,
    (w13, w2): (&Fp8Weight, &Fp8Weight),
    h: &mut CudaSlice<bf16>,
    a: &mut Quant,
    y: &mut CudaSlice<bf16>,
) -> Result<(), Error> {
    k.fp8_quantize_rows(t, HIDDEN, false, x, &mut xq.codes, &mut xq.scales)?;
    linear(k, t, xq, w13, h)?;
    k.fp8_swiglu_quant_rows(t, w2.k, false, h, &mut a.codes, &mut a.scales)?;
    linear(k, t, a, w2, y)
}

fn mlp_floor(t: usize, inter: usize) -> Floor {
    sum_floors(&[
        quant_floor(t, HIDDEN),
        fp8_gemm_floor(t, 2 * inter, HIDDEN, 1),
        Floor::bytes((t * inter) as f64 * (4.0 + 1.0 + 4.0 / 128.0)),
        fp8_gemm_floor(t, HIDDEN, inter, 1),
    ])
}

/// The floor of a sequence of launches: each part's floor, added (a part's bound does not
/// overlap the next one's), named after the largest part's bound.
fn sum_floors(parts: &[Floor]) -> Floor {
    let secs: f64 = parts.iter().map(|f| f.seconds()).sum();
    // Named after the largest part's bound.
    let top = parts
        .iter()
        .max_by(|a, b| a.seconds().total_cmp(&b.seconds()))
        .copied()
        .unwrap_or_default();
    if top.basis() == "HBM" {
        Floor::bytes(secs * COPY_BPS)
    } else {
        Floor {
            bytes: 0.0,
            flops: secs * top.peak,
            peak: top.peak,
        }
    }
}

/// Read `t` token rows, write `rows` routed rows' codes and scales.
fn permute_floor(t: usize, rows: usize) -> Floor {
    Floor::bytes((t * HIDDEN * 2) as f64 + rows as f64 * HIDDEN as f64 * (1.0 + 4.0 / 128.0))
}

/// Read `[rows, 2 inter]` bf16, write `[rows, inter]` codes and scales.
fn swiglu_floor(rows: usize) -> Floor {
    Floor::bytes(
        rows as f64 * (MOE_INTER * 4) as f64 + rows as f64 * MOE_INTER as f64 * (1.0 + 4.0 / 128.0),
    )
}

/// Read each token's 8 expert rows and the shared expert's row, write one row.
fn combine_floor(t: usize) -> Floor {
    Floor::bytes((t * HIDDEN * 2 * (TOP_K + 2)) as f64)
}
