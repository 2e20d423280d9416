//! The forward pass: caches, the per-batch buffers, and one layer as its list of launches.
use std::sync::Arc;

use cudarc::driver::{sys, CudaGraph, CudaSlice, CudaStream, CudaView};
use dsa_kernels::cache::{IndexerKCache, MlaFp8Cache, PAGE_SIZE, QK_DIM};
use dsa_kernels::indexer::{rope_tables, RopeTablesRef, YarnRope};
use dsa_kernels::layers::{NormInput, NormRows, RopeRows};
use dsa_kernels::moe::gemm::{self, sfa_row_stride, LinearShape};
use dsa_kernels::moe::{
    Align, Fp8Weights, MoeLayer, MoeLayout, MoeShape, MoeWeights, RouteConfig, SharedExpert,
};
use dsa_kernels::{
    DsaDecodeStep, DsaDecodeStepConfig, DsaKernels, DsaLayerInputs, PagedBatch, PagedBatchShape,
};
use half::bf16;

use crate::blas::Blas;
use crate::weights::{DenseMlp, Ffn, Fp8Linear, GpuWeights};
use crate::{ForwardError, Result};

/// MLA dims fixed by the kernels (checked on upload).
const NOPE: usize = 128;
const ROPE: usize = 64;
const QK_HEAD: usize = NOPE + ROPE;
const V_HEAD: usize = 128;
const KV_LORA: usize = 512;
/// Padded width of `kv_a_proj_with_mqa` (576 -> 640) inside the fused projection.
const KV_A_PADDED: usize = 640;

/// The per-batch buffers of `rows` new tokens (a prefill's rows, or a decode step's
/// batch): the host fills `tokens`, `positions`, `slots`, `block_table` and `seq_lens`
/// ([`GpuModel::set`]), [`GpuModel::forward`] fills `logits`. Allocated once, so a decode
/// step reuses them every step (and a captured graph reads them in place).
pub struct Rows {
    pub rows: usize,
    pub max_pages: usize,
    tokens: CudaSlice<i32>,
    positions: CudaSlice<i32>,
    slots: CudaSlice<i32>,
    block_table: CudaSlice<i32>,
    seq_lens: CudaSlice<i32>,
    x: CudaSlice<f32>,
    hn: CudaSlice<f32>,
    hn_bf16: CudaSlice<bf16>,
    act: CudaSlice<u8>,
    act_scales: CudaSlice<f32>,
    wa_out: CudaSlice<bf16>,
    qr: CudaSlice<f32>,
    q: CudaSlice<bf16>,
    index_q: CudaSlice<bf16>,
    index_w: CudaSlice<f32>,
    index_k: CudaSlice<bf16>,
    kv: CudaSlice<bf16>,
    q576: CudaSlice<bf16>,
    attn: CudaSlice<bf16>,
    lse: CudaSlice<f32>,
    o: CudaSlice<bf16>,
    y: CudaSlice<bf16>,
    mlp_h: CudaSlice<bf16>,
    gate_logits: CudaSlice<f32>,
    moe: Option<MoeLayer>,
    /// f32 `[rows, vocab]` logits of the last forward.
    pub logits: CudaSlice<f32>,
}

/// What [`GpuModel::forward`] records per layer when asked (eager runs only): the
/// residual stream after the layer and the selected cache slots.
#[derive(Default, Debug, Clone)]
pub struct Trace {
    /// `hidden[l]`: f32 `[rows, hidden]`.
    pub hidden: Vec<Vec<f32>>,
    /// `slots[l]`: i32 `[rows, topk]`, `-1` padding.
    pub slots: Vec<Vec<i32>>,
}

/// The model on one GPU: weights, caches, the DSA step and cuBLAS.
pub struct GpuModel {
    pub w: GpuWeights,
    pub k: DsaKernels,
    blas: Blas,
    /// The DSA step (top-k emitted sorted); its indices hold the current layer's
    /// selected cache slots.
    step: DsaDecodeStep,
    mla: Vec<MlaFp8Cache>,
    index: Vec<IndexerKCache>,
    cos: CudaSlice<f32>,
    sin: CudaSlice<f32>,
    max_pos: usize,
    max_rows: usize,
    max_pages: usize,
}

impl GpuModel {
    /// The model over `num_pages` cache pages per layer, serving batches of up to
    /// `max_rows` new tokens whose block tables have up to `max_pages` pages.
    pub fn new(
        k: DsaKernels,
        w: GpuWeights,
        num_pages: usize,
        max_rows: usize,
        max_pages: usize,
    ) -> Result<Self> {
        let c = &w.cfg;
        let s = k.stream().clone();
        let r = &c.rope;
        let yarn = YarnRope {
            theta: r.theta,
            factor: r.factor,
            original_max_position: r.original_max_position,
            beta_fast: r.beta_fast,
            beta_slow: r.beta_slow,
            mscale: r.mscale,
            mscale_all_dim: r.mscale_all_dim,
        };
        let max_pos = c.max_position_embeddings;
        let (cos, sin) = rope_tables(&yarn, max_pos)?;
        let step_cfg = DsaDecodeStepConfig {
            max_batch: max_rows,
            next_n: 1,
            max_pages,
            index_heads: c.index_n_heads,
            heads: c.num_attention_heads,
            topk: c.index_topk,
            softmax_scale: c.softmax_scale(),
            sorted_topk: true,
        };
        let step = DsaDecodeStep::new(&k, step_cfg)?;
        let mut mla = Vec::new();
        let mut index = Vec::new();
        for _ in 0..c.num_hidden_layers {
            mla.push(MlaFp8Cache::new(&s, num_pages)?);
            index.push(IndexerKCache::new(&s, num_pages)?);
        }
        Ok(Self {
            blas: Blas::new(&s)?,
            cos: s.clone_htod(&cos)?,
            sin: s.clone_htod(&sin)?,
            max_pos,
            step,
            mla,
            index,
            max_rows,
            max_pages,
            k,
            w,
        })
    }

    /// Buffers for batches of exactly `rows` new tokens.
    pub fn rows(&self, rows: usize) -> Result<Rows> {
        if rows == 0 || rows > self.max_rows {
            return Err(ForwardError::Input(format!(
                "{rows} rows, the model serves 1..={}",
                self.max_rows
            )));
        }
        let c = &self.w.cfg;
        let s = self.k.stream();
        let (h, nh) = (c.hidden_size, c.num_attention_heads);
        let wa_n = c.q_lora_rank + KV_A_PADDED + c.index_head_dim;
        let max_k = [
            h,
            c.q_lora_rank,
            nh * V_HEAD,
            c.intermediate_size,
            c.moe_intermediate_size,
        ]
        .into_iter()
        .max()
        .unwrap_or(h);
        let moe = match c.first_k_dense_replace < c.num_hidden_layers {
            true => {
                let shape = MoeShape {
                    tokens: rows,
                    hidden: h,
                    inter: c.moe_intermediate_size,
                    experts: c.n_routed_experts,
                    top_k: c.num_experts_per_tok,
                    align: Align::A128,
                    layout: MoeLayout::Contiguous,
                    ue8m0: c.act_scale_ue8m0,
                };
                let route = RouteConfig {
                    n_group: c.n_group,
                    topk_group: c.topk_group,
                    renormalize: c.norm_topk_prob,
                    route_scale: c.routed_scaling_factor,
                };
                Some(MoeLayer::new(
                    s,
                    &shape,
                    &route,
                    Some(c.moe_intermediate_size * c.n_shared_experts),
                )?)
            }
            false => None,
        };
        let z = |n: usize| s.alloc_zeros::<bf16>(n.max(1));
        let zf = |n: usize| s.alloc_zeros::<f32>(n.max(1));
        let zi = |n: usize| s.alloc_zeros::<i32>(n.max(1));
        Ok(Rows {
            rows,
            max_pages: self.max_pages,
            tokens: zi(rows)?,
            positions: zi(rows)?,
            slots: zi(rows)?,
            block_table: zi(rows * self.max_pages)?,
            seq_lens: zi(rows)?,
            x: zf(rows * h)?,
            hn: zf(rows * h)?,
            hn_bf16: z(rows * h)?,
            act: s.alloc_zeros::<u8>(rows * max_k)?,
            act_scales: zf(sfa_row_stride(rows) * max_k / 128)?,
            wa_out: z(rows * wa_n)?,
            qr: zf(rows * c.q_lora_rank)?,
            q: z(rows * nh * QK_HEAD)?,
            index_q: z(rows * c.index_n_heads * c.index_head_dim)?,
            index_w: zf(rows * c.index_n_heads)?,
            index_k: z(rows * c.index_head_dim)?,
            kv: z(rows * QK_DIM)?,
            q576: z(rows * nh * QK_DIM)?,
            attn: z(rows * nh * KV_LORA)?,
            lse: zf(rows * nh)?,
            o: z(rows * nh * V_HEAD)?,
            y: z(rows * h)?,
            mlp_h: z(rows * 2 * c.intermediate_size.max(c.moe_intermediate_size))?,
            gate_logits: zf(rows * c.n_routed_experts)?,
            moe,
            logits: zf(rows * c.vocab_size)?,
        })
    }

    /// Writes the batch description of `rows` into its device buffers: per row its token,
    /// position, cache slot, its sequence's block table (`max_pages` entries, row-major)
    /// and its paged length (position + 1: a row sees its causal keys).
    pub fn set(
        &self,
        r: &mut Rows,
        tokens: &[u32],
        positions: &[usize],
        tables: &[&[i32]],
    ) -> Result<()> {
        let n = r.rows;
        if tokens.len() != n || positions.len() != n || tables.len() != n {
            return Err(ForwardError::Input(format!(
                "{n} rows need {n} tokens, positions and block tables"
            )));
        }
        let mut bt = vec![-1i32; n * r.max_pages];
        let mut slots = Vec::with_capacity(n);
        for (i, (&p, t)) in positions.iter().zip(tables).enumerate() {
            let page = p / PAGE_SIZE;
            if page >= t.len() || t.len() > r.max_pages || p >= self.max_pos {
                return Err(ForwardError::Input(format!(
                    "row {i}: position {p} outside its block table of {} pages (max {}) or the RoPE tables",
                    t.len(),
                    r.max_pages
                )));
            }
            bt[i * r.max_pages..i * r.max_pages + t.len()].copy_from_slice(t);
            slots.push(t[page] * PAGE_SIZE as i32 + (p % PAGE_SIZE) as i32);
        }
        let s = self.k.stream();
        let tok: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
        let pos: Vec<i32> = positions.iter().map(|&p| p as i32).collect();
        let lens: Vec<i32> = positions.iter().map(|&p| p as i32 + 1).collect();
        s.memcpy_htod(&tok, &mut r.tokens)?;
        s.memcpy_htod(&pos, &mut r.positions)?;
        s.memcpy_htod(&slots, &mut r.slots)?;
        s.memcpy_htod(&bt, &mut r.block_table)?;
        s.memcpy_htod(&lens, &mut r.seq_lens)?;
        Ok(())
    }

    /// FP8 linear `out [rows, w.n] = act . w^T` of the quantized activation in `r.act`.
    fn linear(
        k: &DsaKernels,
        rows: usize,
        act: &CudaSlice<u8>,
        sc: &CudaSlice<f32>,
        w: &Fp8Linear,
        out: &mut CudaSlice<bf16>,
    ) -> Result<()> {
        let shape = LinearShape {
            m: rows,
            n: w.n,
            k: w.k,
        };
        gemm::fp8_linear(k, shape, act, sc, &w.codes, &w.scales, out)?;
        Ok(())
    }

    /// The dense SwiGLU MLP of `hn` (f32, quantized as the reference does) into `y`,
    /// through `act` / `scales` and `h` (`[rows, 2 inter]` bf16).
    #[allow(clippy::too_many_arguments)]
    fn dense_mlp(
        k: &DsaKernels,
        n: usize,
        hn: &CudaSlice<f32>,
        act: &mut CudaSlice<u8>,
        scales: &mut CudaSlice<f32>,
        h: &mut CudaSlice<bf16>,
        y: &mut CudaSlice<bf16>,
        m: &DenseMlp,
        ue8m0: bool,
    ) -> Result<()> {
        let hidden = m.w13.k;
        k.act_quant_f32(n, hidden, hidden, ue8m0, hn, act, scales)?;
        Self::linear(k, n, act, scales, &m.w13, h)?;
        k.fp8_swiglu_quant_rows(n, m.inter, ue8m0, h, act, scales)?;
        Self::linear(k, n, act, scales, &m.w2, y)
    }

    /// One forward of the batch in `r` (after [`Self::set`]): every layer, the final norm
    /// and the LM head into `r.logits`. Writes the new tokens' cache entries. Allocates
    /// nothing and never synchronizes unless `trace` is given (then it downloads each
    /// layer's residual stream and top-k), so a decode step can be captured in a CUDA
    /// graph and replayed after new [`Self::set`] calls.
    pub fn forward(&mut self, r: &mut Rows, trace: Option<&mut Trace>) -> Result<()> {
        self.forward_impl(r, trace, None)
    }

    /// [`Self::forward`] with every layer `l >= 1` fed `inputs[l - 1]` (f32 `[rows,
    /// hidden]`, e.g. the reference's residual stream after layer `l - 1`) instead of the
    /// GPU's own: each layer's error alone, without what the layers before it passed on.
    /// The caches get the entries of those inputs. Synchronizes (uploads per layer).
    pub fn forward_layer_local(
        &mut self,
        r: &mut Rows,
        inputs: &[Vec<f32>],
        trace: Option<&mut Trace>,
    ) -> Result<()> {
        let want = r.rows * self.w.cfg.hidden_size;
        if inputs.len() + 1 < self.w.layers.len() || inputs.iter().any(|v| v.len() != want) {
            return Err(ForwardError::Input(format!(
                "layer-local inputs: one [{}, {}] per layer but the last",
                r.rows, self.w.cfg.hidden_size
            )));
        }
        self.forward_impl(r, trace, Some(inputs))
    }

    fn forward_impl(
        &mut self,
        r: &mut Rows,
        mut trace: Option<&mut Trace>,
        inputs: Option<&[Vec<f32>]>,
    ) -> Result<()> {
        let c = self.w.cfg.clone();
        let k = &self.k;
        let n = r.rows;
        let (h, nh, ql) = (c.hidden_size, c.num_attention_heads, c.q_lora_rank);
        let (ih, ue) = (c.index_n_heads, c.act_scale_ue8m0);
        let wa_n = ql + KV_A_PADDED + c.index_head_dim;
        let eps = c.rms_norm_eps;
        let shape = PagedBatchShape {
            batch: n,
            next_n: 1,
            max_pages: r.max_pages,
        };
        k.embedding(&self.w.embed, c.vocab_size, h, &r.tokens, n, &mut r.x)?;
        let batch = PagedBatch::new(shape, &r.block_table, &r.seq_lens)?;
        self.step.plan(k, &batch)?;
        let rope = RopeTablesRef {
            cos: &self.cos,
            sin: &self.sin,
            max_pos: self.max_pos,
        };
        for (li, lw) in self.w.layers.iter().enumerate() {
            if let (Some(inp), true) = (inputs, li > 0) {
                k.stream().memcpy_htod(&inp[li - 1], &mut r.x)?;
            }
            // Attention input: RMSNorm, FP8 quantization of the f32 rows, and the fused
            // q_a | kv_a | indexer-k projection.
            k.rms_norm(
                NormRows::contiguous(n, h),
                NormInput::<_, CudaSlice<bf16>>::F32(&r.x),
                &lw.attn_norm,
                eps,
                Some(&mut r.hn),
                None,
            )?;
            k.act_quant_f32(n, h, h, ue, &r.hn, &mut r.act, &mut r.act_scales)?;
            Self::linear(k, n, &r.act, &r.act_scales, &lw.wa, &mut r.wa_out)?;
            // Queries: q_norm, then q_b_proj and the indexer's wq_b from one quantization.
            k.rms_norm(
                NormRows {
                    rows: n,
                    dim: ql,
                    stride: wa_n,
                },
                NormInput::<CudaSlice<f32>, _>::Bf16(&r.wa_out),
                &lw.q_norm,
                eps,
                Some(&mut r.qr),
                None,
            )?;
            k.act_quant_f32(n, ql, ql, ue, &r.qr, &mut r.act, &mut r.act_scales)?;
            Self::linear(k, n, &r.act, &r.act_scales, &lw.wq_b, &mut r.q)?;
            Self::linear(k, n, &r.act, &r.act_scales, &lw.index_wq_b, &mut r.index_q)?;
            // The MLA cache row: kv_norm on the latent, RoPE on k_rope, bf16.
            let kv_a = r.wa_out.slice(ql..);
            k.rms_norm(
                NormRows {
                    rows: n,
                    dim: KV_LORA,
                    stride: wa_n,
                },
                NormInput::<CudaSlice<f32>, _>::Bf16(&kv_a),
                &lw.kv_norm,
                eps,
                None,
                Some((&mut r.kv, QK_DIM)),
            )?;
            let k_rope = r.wa_out.slice(ql + KV_LORA..);
            let mut kv_rope = r.kv.slice_mut(KV_LORA..);
            k.mla_rope(
                n,
                1,
                &k_rope,
                RopeRows {
                    token_stride: wa_n,
                    head_stride: 0,
                },
                &mut kv_rope,
                RopeRows {
                    token_stride: QK_DIM,
                    head_stride: 0,
                },
                &r.positions,
                rope,
            )?;
            // Indexer key (LayerNorm, bf16) and head weights (f32 GEMM, times 64^-0.5).
            let ik = r.wa_out.slice(ql + KV_A_PADDED..);
            k.layer_norm(
                NormRows {
                    rows: n,
                    dim: c.index_head_dim,
                    stride: wa_n,
                },
                &ik,
                &lw.index_k_norm_w,
                &lw.index_k_norm_b,
                eps,
                &mut r.index_k,
            )?;
            self.blas.linear_f32(
                n,
                ih,
                h,
                (ih as f32).powf(-0.5),
                &r.hn,
                &lw.index_weights_proj,
                &mut r.index_w,
            )?;
            // The absorbed query: q_rope roped into q576[.., 512..], q_nope W_UK into
            // q576[.., ..512].
            let q_rope = r.q.slice(NOPE..);
            let mut q576_rope = r.q576.slice_mut(KV_LORA..);
            k.mla_rope(
                n,
                nh,
                &q_rope,
                RopeRows {
                    token_stride: nh * QK_HEAD,
                    head_stride: QK_HEAD,
                },
                &mut q576_rope,
                RopeRows {
                    token_stride: nh * QK_DIM,
                    head_stride: QK_DIM,
                },
                &r.positions,
                rope,
            )?;
            self.blas.per_head_bf16(
                nh,
                n,
                KV_LORA,
                NOPE,
                (&r.q, QK_HEAD, nh * QK_HEAD),
                (&lw.kv_b, (NOPE + V_HEAD) * KV_LORA, false),
                (&mut r.q576, QK_DIM, nh * QK_DIM),
            )?;
            // DSA: indexer q/k prep and cache writes, logits, top-k, sparse MLA.
            let inputs = DsaLayerInputs {
                index_q: &r.index_q,
                index_weights: &r.index_w,
                index_k: &r.index_k,
                kv: &r.kv,
                positions: &r.positions,
                slots: &r.slots,
                rope,
            };
            // The step runs with its top-k emitted sorted (value descending, index
            // ascending, the reference's order): the attention then sums its keys in one
            // fixed order, so a step's output is the same bits on every run and replay.
            self.step.layer(
                k,
                &batch,
                &inputs,
                &mut self.index[li],
                &mut self.mla[li],
                &r.q576,
                &mut r.attn,
                &mut r.lse,
            )?;
            // o = o_lat W_UV^T per head, then o_proj and the residual add.
            let w_uv: CudaView<'_, bf16> = lw.kv_b.slice(NOPE * KV_LORA..);
            self.blas.per_head_bf16(
                nh,
                n,
                V_HEAD,
                KV_LORA,
                (&r.attn, KV_LORA, nh * KV_LORA),
                (&w_uv, (NOPE + V_HEAD) * KV_LORA, true),
                (&mut r.o, V_HEAD, nh * V_HEAD),
            )?;
            k.fp8_quantize_rows(n, nh * V_HEAD, ue, &r.o, &mut r.act, &mut r.act_scales)?;
            Self::linear(k, n, &r.act, &r.act_scales, &lw.wo, &mut r.y)?;
            k.residual_add(&mut r.x, &r.y, n * h)?;
            // FFN.
            k.rms_norm(
                NormRows::contiguous(n, h),
                NormInput::<_, CudaSlice<bf16>>::F32(&r.x),
                &lw.ffn_norm,
                eps,
                Some(&mut r.hn),
                Some((&mut r.hn_bf16, h)),
            )?;
            match &lw.ffn {
                Ffn::Dense(m) => Self::dense_mlp(
                    k,
                    n,
                    &r.hn,
                    &mut r.act,
                    &mut r.act_scales,
                    &mut r.mlp_h,
                    &mut r.y,
                    m,
                    ue,
                )?,
                Ffn::Moe(m) => {
                    self.blas.linear_f32(
                        n,
                        c.n_routed_experts,
                        h,
                        1.0,
                        &r.hn,
                        &m.gate,
                        &mut r.gate_logits,
                    )?;
                    let weights = MoeWeights {
                        bias: m.bias.as_view(),
                        w13: Fp8Weights {
                            codes: m.w13_codes.as_view(),
                            scales: m.w13_scales.as_view(),
                        },
                        w2: Fp8Weights {
                            codes: m.w2_codes.as_view(),
                            scales: m.w2_scales.as_view(),
                        },
                        shared: Some(SharedExpert {
                            inter: m.shared.inter,
                            w13: Fp8Weights {
                                codes: m.shared.w13.codes.as_view(),
                                scales: m.shared.w13.scales.as_view(),
                            },
                            w2: Fp8Weights {
                                codes: m.shared.w2.codes.as_view(),
                                scales: m.shared.w2.scales.as_view(),
                            },
                        }),
                    };
                    let moe = r.moe.as_mut().ok_or_else(|| {
                        ForwardError::Input("MoE layer without an MoE workspace".into())
                    })?;
                    moe.forward(k, &weights, &r.gate_logits, &r.hn_bf16, &mut r.y)?;
                }
            }
            k.residual_add(&mut r.x, &r.y, n * h)?;
            if let Some(t) = trace.as_mut() {
                let s = k.stream();
                t.hidden.push(s.clone_dtoh(&r.x)?[..n * h].to_vec());
                let idx = s.clone_dtoh(self.step.indices())?;
                t.slots.push(idx[..n * c.index_topk].to_vec());
            }
        }
        k.rms_norm(
            NormRows::contiguous(n, h),
            NormInput::<_, CudaSlice<bf16>>::F32(&r.x),
            &self.w.final_norm,
            eps,
            Some(&mut r.hn),
            None,
        )?;
        self.blas.linear_f32(
            n,
            c.vocab_size,
            h,
            1.0,
            &r.hn,
            &self.w.lm_head,
            &mut r.logits,
        )
    }

    /// Captures [`Self::forward`] of `r` (no trace) into a CUDA graph: replaying it runs
    /// the whole step for whatever [`Self::set`] last wrote into `r`. The handle's stream
    /// must be capturable: a non-default stream, cudarc's event tracking off and every
    /// kernel loaded ([`crate::compare::graph_ready_kernels`] sets that up).
    pub fn capture(&mut self, r: &mut Rows) -> Result<CudaGraph> {
        let stream = self.k.stream().clone();
        stream.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
        let recorded = self.forward(r, None);
        // End the capture whatever happened, so the stream is usable again.
        let graph = stream.end_capture(sys::CUgraphInstantiate_flags(0))?;
        recorded?;
        graph.ok_or_else(|| ForwardError::Input("the capture recorded no work".into()))
    }

    /// The logits of the last forward, f32 `[rows, vocab]` (synchronizes).
    pub fn logits(&self, r: &Rows) -> Result<Vec<f32>> {
        let v = self.k.stream().clone_dtoh(&r.logits)?;
        Ok(v[..r.rows * self.w.cfg.vocab_size].to_vec())
    }

    /// The stream everything runs on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        self.k.stream()
    }
}
