//! The DeepSeek-V3.2 reference model: embedding, decoder layers (MLA with the lightning
//! indexer and DSA, dense MLP or MoE), final norm and LM head; prefill and incremental
//! decode over paged caches with the kernels' byte layouts.
//!
//! **Data flow of one layer** for `n` new tokens at positions `p0 .. p0 + n`:
//! 1. `h = RMSNorm(x)`; `qr = RMSNorm(q_a_proj h)`; `q = q_b_proj qr` split per head
//!    into nope 128 | rope 64, interleaved YaRN RoPE on the rope part.
//! 2. `kv_a_proj_with_mqa h` = `c_kv 512 | k_rope 64`; RMSNorm on `c_kv`, interleaved
//!    RoPE on `k_rope`; the entry is rounded to bf16 and written to the MLA cache (FP8
//!    656-byte or bf16 layout) at the token's slot.
//! 3. Indexer: `indexer.wq_b qr` (64 x 128) and `LayerNorm(indexer.wk h)` (128) go
//!    through [`crate::indexer::prepare`]; keys are written to the indexer cache, head
//!    weights `weights_proj h * 64^-0.5` are folded with the q scales, logits come from
//!    [`crate::indexer::logits_decode`] over the cache (next_n = n), and
//!    [`crate::topk::topk_rows`] keeps `index_topk` keys per query (causal).
//! 4. Attention over the selected keys, read back from the cache (so prefill and decode
//!    see identical keys), in the absorbed form through the
//!    [`crate::attention::sparse_mla_decode`] oracle (q rounded to bf16, output rounded
//!    to bf16, as the kernel API) or in the MHA form; then `o_proj`; residual add.
//! 5. `RMSNorm`, then the dense MLP or the MoE, residual add.
//!
//! The residual stream is kept in f32; every FP8 linear's output is rounded to bf16.
//!
//! **Decode == prefill.** A decode step is [`Model::forward`] with one token. Every
//! per-token computation is row-independent and deterministic, so in the absorbed form
//! token-by-token decode reproduces prefill logits bit for bit (a property test).

use crate::attention;
use crate::cache::{self, MLA_DIM, PAGE_SIZE};
use crate::config::Config;
use crate::error::ModelError;
use crate::indexer;
use crate::linear::{fp8_linear, Fp8Weight};
use crate::mla::{self, KvB, MhaKey};
use crate::moe::{Mlp, Moe, RouteParams};
use crate::nn;
use crate::rope::RopeTables;
use crate::topk;
use crate::weights::{self, names, Tensors};
use half::bf16;
use std::collections::BTreeMap;

/// Storage format of the MLA cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheDtype {
    /// 656 bytes per token (spec section 2).
    Fp8,
    /// `[pages, 64, 576]` bf16.
    Bf16,
}

/// Which MLA form computes attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionForm {
    /// Per-head keys and values from `kv_b_proj` (DeepSeek's prefill form).
    Mha,
    /// The absorbed 576/512 form of the kernels (DeepSeek's decode form).
    Absorbed,
}

/// Options of one forward call.
#[derive(Clone, Copy, Debug)]
pub struct ForwardOptions {
    /// MLA form.
    pub form: AttentionForm,
    /// DeepSeek Sparse Attention on (the indexer's top-k); off attends every causal key.
    pub sparse: bool,
    /// Return logits of every new token (else only of the last one).
    pub all_logits: bool,
    /// Round the absorbed-form query and attention output to bf16, as the kernels' bf16
    /// API does (on by default; off makes the absorbed form agree with the MHA form to
    /// f64 rounding, before the FP8 activation quantization of the next linear).
    pub bf16_attention_io: bool,
}

impl Default for ForwardOptions {
    /// Absorbed form, DSA on, all logits, bf16 attention input/output.
    fn default() -> Self {
        ForwardOptions {
            form: AttentionForm::Absorbed,
            sparse: true,
            all_logits: true,
            bf16_attention_io: true,
        }
    }
}

/// Key counts of a forward call, summed over layers and new tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForwardStats {
    /// Attention rows computed (`layers * new tokens`).
    pub queries: u64,
    /// MLA keys actually attended (the DSA selection, or every causal key when dense).
    pub keys_attended: u64,
    /// MLA keys dense causal attention would read.
    pub keys_causal: u64,
    /// Indexer keys scored (every causal key, 132 bytes each).
    pub indexer_keys_scored: u64,
}

impl std::ops::AddAssign for ForwardStats {
    fn add_assign(&mut self, o: Self) {
        self.queries += o.queries;
        self.keys_attended += o.keys_attended;
        self.keys_causal += o.keys_causal;
        self.indexer_keys_scored += o.indexer_keys_scored;
    }
}

/// What [`Model::forward_traced`] records, per layer `l`.
#[derive(Clone, Debug, Default)]
pub struct ForwardTrace {
    /// `hidden[l]`: the f32 residual stream `[n, hidden]` after layer `l`.
    pub hidden: Vec<Vec<f32>>,
    /// `selected[l][t]`: the positions query `t` attended in layer `l` (the indexer's
    /// top-k, or every causal key when DSA is off), in the top-k's order.
    pub selected: Vec<Vec<Vec<i32>>>,
}

/// The paged caches of all layers: MLA (FP8 or bf16) and indexer.
#[derive(Clone, Debug)]
pub struct KvCache {
    /// MLA cache format.
    pub dtype: CacheDtype,
    /// Pages per layer.
    pub num_pages: usize,
    mla_fp8: Vec<Vec<u8>>,
    mla_bf16: Vec<Vec<bf16>>,
    indexer: Vec<Vec<u8>>,
}

impl KvCache {
    /// Zeroed caches of `num_pages` pages for every layer of `cfg`.
    pub fn new(cfg: &Config, dtype: CacheDtype, num_pages: usize) -> Self {
        let l = cfg.num_hidden_layers;
        let (f, b) = match dtype {
            CacheDtype::Fp8 => (num_pages * cache::MLA_FP8_PAGE_BYTES, 0),
            CacheDtype::Bf16 => (0, num_pages * PAGE_SIZE * MLA_DIM),
        };
        KvCache {
            dtype,
            num_pages,
            mla_fp8: vec![vec![0u8; f]; l],
            mla_bf16: vec![vec![bf16::ZERO; b]; l],
            indexer: vec![vec![0u8; num_pages * cache::INDEXER_PAGE_BYTES]; l],
        }
    }

    /// Layer `l`'s MLA FP8 cache bytes (empty for a bf16 cache).
    pub fn mla_fp8(&self, l: usize) -> &[u8] {
        &self.mla_fp8[l]
    }

    /// Layer `l`'s MLA bf16 cache (empty for an FP8 cache).
    pub fn mla_bf16(&self, l: usize) -> &[bf16] {
        &self.mla_bf16[l]
    }

    /// Layer `l`'s indexer cache bytes.
    pub fn indexer(&self, l: usize) -> &[u8] {
        &self.indexer[l]
    }

    fn write_mla(&mut self, l: usize, slot: usize, entry: &[bf16]) {
        match self.dtype {
            CacheDtype::Fp8 => cache::mla_fp8_cache_write(&mut self.mla_fp8[l], slot, entry),
            CacheDtype::Bf16 => cache::mla_bf16_cache_write(&mut self.mla_bf16[l], slot, entry),
        }
    }

    fn read_mla(&self, l: usize, slot: usize) -> Option<Vec<f32>> {
        match self.dtype {
            CacheDtype::Fp8 => cache::mla_fp8_cache_read(&self.mla_fp8[l], slot),
            CacheDtype::Bf16 => cache::mla_bf16_cache_read(&self.mla_bf16[l], slot),
        }
    }
}

/// One sequence's state: its block table (page ids) and current length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sequence {
    /// Page id of each 64-token block of the sequence.
    pub block_table: Vec<i32>,
    /// Tokens already in the caches.
    pub len: usize,
}

impl Sequence {
    /// An empty sequence with the given block table.
    pub fn new(block_table: Vec<i32>) -> Self {
        Sequence {
            block_table,
            len: 0,
        }
    }

    /// An empty sequence on pages `0 .. pages` in order.
    pub fn contiguous(pages: usize) -> Self {
        Self::new((0..pages as i32).collect())
    }
}

#[derive(Clone, Debug)]
struct IndexerW {
    wq_b: Fp8Weight,
    wk: Fp8Weight,
    k_norm_w: Vec<f32>,
    k_norm_b: Vec<f32>,
    weights_proj: Vec<f32>,
}

#[derive(Clone, Debug)]
enum Ffn {
    Dense(Mlp),
    Moe(Moe),
}

#[derive(Clone, Debug)]
struct Layer {
    attn_norm: Vec<f32>,
    ffn_norm: Vec<f32>,
    wq_a: Fp8Weight,
    q_norm: Vec<f32>,
    wq_b: Fp8Weight,
    wkv_a: Fp8Weight,
    kv_norm: Vec<f32>,
    kvb: KvB,
    wo: Fp8Weight,
    idx: IndexerW,
    ffn: Ffn,
}

/// The reference model.
#[derive(Clone, Debug)]
pub struct Model {
    /// Its configuration.
    pub cfg: Config,
    embed: Vec<f32>,
    layers: Vec<Layer>,
    final_norm: Vec<f32>,
    lm_head: Vec<f32>,
    rope: RopeTables,
}

fn mlp_from(t: &Tensors, prefix: &str, hidden: usize, inter: usize) -> Result<Mlp, ModelError> {
    Ok(Mlp {
        w1: weights::get_fp8(t, &format!("{prefix}.gate_proj"), inter, hidden)?,
        w3: weights::get_fp8(t, &format!("{prefix}.up_proj"), inter, hidden)?,
        w2: weights::get_fp8(t, &format!("{prefix}.down_proj"), hidden, inter)?,
    })
}

impl Model {
    /// Builds the model from checkpoint tensors (names in [`crate::weights`]), checking
    /// every shape. Unused tensors are ignored.
    pub fn from_tensors(cfg: Config, t: &Tensors) -> Result<Self, ModelError> {
        cfg.validate()?;
        let c = &cfg;
        let h = c.hidden_size;
        let nh = c.num_attention_heads;
        let mut layers = Vec::with_capacity(c.num_hidden_layers);
        for i in 0..c.num_hidden_layers {
            let l = |s: &str| names::layer(i, s);
            let kv_b = weights::get_fp8(
                t,
                &l("self_attn.kv_b_proj"),
                nh * (c.qk_nope_head_dim + c.v_head_dim),
                c.kv_lora_rank,
            )?;
            let ffn = if c.is_moe_layer(i) {
                let e = c.n_routed_experts;
                let experts = (0..e)
                    .map(|j| {
                        mlp_from(
                            t,
                            &l(&format!("mlp.experts.{j}")),
                            h,
                            c.moe_intermediate_size,
                        )
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let shared = if c.n_shared_experts > 0 {
                    Some(mlp_from(
                        t,
                        &l("mlp.shared_experts"),
                        h,
                        c.moe_intermediate_size * c.n_shared_experts,
                    )?)
                } else {
                    None
                };
                Ffn::Moe(Moe {
                    gate: weights::get_f32(t, &l("mlp.gate.weight"), &[e, h])?,
                    bias: weights::get_f32(t, &l("mlp.gate.e_score_correction_bias"), &[e])?,
                    experts,
                    shared,
                    route: RouteParams {
                        n_group: c.n_group,
                        topk_group: c.topk_group,
                        top_k: c.num_experts_per_tok,
                        renormalize: c.norm_topk_prob,
                        route_scale: c.routed_scaling_factor,
                    },
                })
            } else {
                Ffn::Dense(mlp_from(t, &l("mlp"), h, c.intermediate_size)?)
            };
            layers.push(Layer {
                attn_norm: weights::get_f32(t, &l("input_layernorm.weight"), &[h])?,
                ffn_norm: weights::get_f32(t, &l("post_attention_layernorm.weight"), &[h])?,
                wq_a: weights::get_fp8(t, &l("self_attn.q_a_proj"), c.q_lora_rank, h)?,
                q_norm: weights::get_f32(
                    t,
                    &l("self_attn.q_a_layernorm.weight"),
                    &[c.q_lora_rank],
                )?,
                wq_b: weights::get_fp8(
                    t,
                    &l("self_attn.q_b_proj"),
                    nh * c.qk_head_dim(),
                    c.q_lora_rank,
                )?,
                wkv_a: weights::get_fp8(t, &l("self_attn.kv_a_proj_with_mqa"), MLA_DIM, h)?,
                kv_norm: weights::get_f32(
                    t,
                    &l("self_attn.kv_a_layernorm.weight"),
                    &[c.kv_lora_rank],
                )?,
                kvb: KvB {
                    heads: nh,
                    nope: c.qk_nope_head_dim,
                    v: c.v_head_dim,
                    rank: c.kv_lora_rank,
                    w: kv_b.dequantize(),
                },
                wo: weights::get_fp8(t, &l("self_attn.o_proj"), h, nh * c.v_head_dim)?,
                idx: IndexerW {
                    wq_b: weights::get_fp8(
                        t,
                        &l("self_attn.indexer.wq_b"),
                        c.index_n_heads * c.index_head_dim,
                        c.q_lora_rank,
                    )?,
                    wk: weights::get_fp8(t, &l("self_attn.indexer.wk"), c.index_head_dim, h)?,
                    k_norm_w: weights::get_f32(
                        t,
                        &l("self_attn.indexer.k_norm.weight"),
                        &[c.index_head_dim],
                    )?,
                    k_norm_b: weights::get_f32(
                        t,
                        &l("self_attn.indexer.k_norm.bias"),
                        &[c.index_head_dim],
                    )?,
                    weights_proj: weights::get_f32(
                        t,
                        &l("self_attn.indexer.weights_proj.weight"),
                        &[c.index_n_heads, h],
                    )?,
                },
                ffn,
            });
        }
        let rope = RopeTables::yarn(&c.rope, c.qk_rope_head_dim, c.max_position_embeddings);
        Ok(Model {
            embed: weights::get_f32(t, names::EMBED, &[c.vocab_size, h])?,
            final_norm: weights::get_f32(t, names::FINAL_NORM, &[h])?,
            lm_head: weights::get_f32(t, names::LM_HEAD, &[c.vocab_size, h])?,
            layers,
            rope,
            cfg,
        })
    }

    /// The model with [`weights::seeded`] weights.
    pub fn seeded(cfg: Config, seed: u64) -> Result<Self, ModelError> {
        let t = weights::seeded(&cfg, seed);
        Self::from_tensors(cfg, &t)
    }

    /// Runs `tokens` as the next tokens of `seq` (a prefill, a chunk of one, or with one
    /// token a decode step), writing their cache entries and advancing `seq.len`.
    /// Returns logits `[n, vocab]` (or `[1, vocab]` of the last token unless
    /// `opts.all_logits`) and key counts.
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        seq: &mut Sequence,
        opts: &ForwardOptions,
    ) -> Result<(Vec<f32>, ForwardStats), ModelError> {
        self.forward_impl(tokens, cache, seq, opts, None)
    }

    /// [`Model::forward`] that also records, per layer, the residual stream after the
    /// layer and the keys the indexer selected: what a GPU forward is compared with layer
    /// by layer.
    pub fn forward_traced(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        seq: &mut Sequence,
        opts: &ForwardOptions,
    ) -> Result<(Vec<f32>, ForwardTrace), ModelError> {
        let mut trace = ForwardTrace::default();
        let (logits, _) = self.forward_impl(tokens, cache, seq, opts, Some(&mut trace))?;
        Ok((logits, trace))
    }

    fn forward_impl(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        seq: &mut Sequence,
        opts: &ForwardOptions,
        mut trace: Option<&mut ForwardTrace>,
    ) -> Result<(Vec<f32>, ForwardStats), ModelError> {
        let c = &self.cfg;
        let n = tokens.len();
        let p0 = seq.len;
        let end = p0 + n;
        if n == 0 {
            return Ok((Vec::new(), ForwardStats::default()));
        }
        if let Some(&tok) = tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(ModelError::Token {
                token: tok,
                vocab: c.vocab_size,
            });
        }
        if end > self.rope.positions() {
            return Err(ModelError::Capacity(format!(
                "position {} beyond max_position_embeddings {}",
                end - 1,
                self.rope.positions()
            )));
        }
        let pages = end.div_ceil(PAGE_SIZE);
        if pages > seq.block_table.len() {
            return Err(ModelError::Capacity(format!(
                "{end} tokens need {pages} pages, the block table has {}",
                seq.block_table.len()
            )));
        }
        if let Some(&p) = seq.block_table[..pages]
            .iter()
            .find(|&&p| p < 0 || p as usize >= cache.num_pages)
        {
            return Err(ModelError::Capacity(format!(
                "page id {p} outside the cache of {} pages",
                cache.num_pages
            )));
        }
        let h = c.hidden_size;
        let mut x: Vec<f32> = tokens
            .iter()
            .flat_map(|&t| {
                self.embed[t as usize * h..(t as usize + 1) * h]
                    .iter()
                    .copied()
            })
            .collect();
        let mut stats = ForwardStats::default();
        for (li, layer) in self.layers.iter().enumerate() {
            let selected = trace.as_mut().map(|t| {
                t.selected.push(Vec::new());
                t.selected.last_mut().expect("just pushed")
            });
            let a = self.attention(li, layer, &x, p0, cache, seq, opts, &mut stats, selected);
            for (xi, ai) in x.iter_mut().zip(a) {
                *xi += ai;
            }
            let hn = nn::rms_norm(&x, &layer.ffn_norm, c.rms_norm_eps);
            let y = match &layer.ffn {
                Ffn::Dense(m) => m.forward(&hn, n, c.act_scale_ue8m0),
                Ffn::Moe(m) => m.forward(&hn, n, c.act_scale_ue8m0),
            };
            for (xi, yi) in x.iter_mut().zip(y) {
                *xi += yi;
            }
            if let Some(t) = trace.as_mut() {
                t.hidden.push(x.clone());
            }
        }
        seq.len = end;
        let rows = if opts.all_logits { n } else { 1 };
        let last = &x[(n - rows) * h..];
        let xn = nn::rms_norm(last, &self.final_norm, c.rms_norm_eps);
        Ok((nn::matmul_t(&xn, rows, &self.lm_head, c.vocab_size), stats))
    }

    /// The attention block of layer `li` for new tokens `x [n, hidden]` at positions
    /// `p0..`: returns `o_proj(attention)` `[n, hidden]`.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        li: usize,
        l: &Layer,
        x: &[f32],
        p0: usize,
        cache: &mut KvCache,
        seq: &Sequence,
        opts: &ForwardOptions,
        stats: &mut ForwardStats,
        selected: Option<&mut Vec<Vec<i32>>>,
    ) -> Vec<f32> {
        let c = &self.cfg;
        let pow2 = c.act_scale_ue8m0;
        let hdim = c.hidden_size;
        let n = x.len() / hdim;
        let nh = c.num_attention_heads;
        let (dn, dr, dq) = (c.qk_nope_head_dim, c.qk_rope_head_dim, c.qk_head_dim());
        let end = p0 + n;
        let bt = &seq.block_table;
        let hn = nn::rms_norm(x, &l.attn_norm, c.rms_norm_eps);

        // Queries.
        let qr = nn::rms_norm(
            &fp8_linear(&hn, n, &l.wq_a, pow2),
            &l.q_norm,
            c.rms_norm_eps,
        );
        let mut q = fp8_linear(&qr, n, &l.wq_b, pow2);
        for t in 0..n {
            for hh in 0..nh {
                let o = (t * nh + hh) * dq + dn;
                self.rope.apply_interleaved(&mut q[o..o + dr], p0 + t);
            }
        }

        // Cache entries of the new tokens.
        let kv = fp8_linear(&hn, n, &l.wkv_a, pow2);
        for t in 0..n {
            let row = &kv[t * MLA_DIM..(t + 1) * MLA_DIM];
            let mut entry = nn::rms_norm(&row[..c.kv_lora_rank], &l.kv_norm, c.rms_norm_eps);
            let mut kr = row[c.kv_lora_rank..].to_vec();
            self.rope.apply_interleaved(&mut kr, p0 + t);
            entry.extend(kr);
            let eb: Vec<bf16> = entry.iter().map(|&v| bf16::from_f32(v)).collect();
            cache.write_mla(li, cache::slot_of(bt, p0 + t), &eb);
        }

        // Lightning indexer: keys into the cache, logits over every causal key.
        let ni = c.index_n_heads;
        let positions: Vec<i32> = (p0..end).map(|p| p as i32).collect();
        let mut ki = nn::layer_norm(
            &fp8_linear(&hn, n, &l.idx.wk, pow2),
            &l.idx.k_norm_w,
            &l.idx.k_norm_b,
            c.rms_norm_eps,
        );
        nn::round_bf16_slice(&mut ki);
        let (k8, ks) = indexer::prepare(&ki, &positions, &self.rope);
        for t in 0..n {
            let codes: [u8; 128] = k8[t * 128..(t + 1) * 128].try_into().expect("128 codes");
            cache::indexer_cache_write(
                &mut cache.indexer[li],
                cache::slot_of(bt, p0 + t),
                &codes,
                ks[t],
            );
        }
        let slot_rows: Vec<Vec<i32>> = if opts.sparse {
            let qi = fp8_linear(&qr, n, &l.idx.wq_b, pow2);
            let qpos: Vec<i32> = positions
                .iter()
                .flat_map(|&p| std::iter::repeat_n(p, ni))
                .collect();
            let (q8, qs) = indexer::prepare(&qi, &qpos, &self.rope);
            let hs = (ni as f32).powf(-0.5);
            let w: Vec<f32> = nn::matmul_t(&hn, n, &l.idx.weights_proj, ni)
                .iter()
                .map(|v| v * hs)
                .collect();
            let w = indexer::fold_weights(&w, &qs);
            let max_pages = bt.len();
            let logits = indexer::logits_decode(
                &q8,
                &w,
                &cache.indexer[li],
                &[end as i32],
                bt,
                max_pages,
                n,
                ni,
                end,
            );
            let starts = vec![0i32; n];
            let ends: Vec<i32> = (0..n).map(|t| (p0 + t + 1) as i32).collect();
            let sel = topk::topk_rows(&logits, n, end, &starts, &ends, c.index_topk);
            sel.chunks(c.index_topk)
                .map(|r| r.iter().copied().filter(|&i| i >= 0).collect())
                .collect()
        } else {
            (0..n).map(|t| (0..=(p0 + t) as i32).collect()).collect()
        };
        if let Some(sel) = selected {
            sel.clone_from(&slot_rows);
        }
        for (t, r) in slot_rows.iter().enumerate() {
            stats.queries += 1;
            stats.keys_attended += r.len() as u64;
            stats.keys_causal += (p0 + t + 1) as u64;
            stats.indexer_keys_scored += (p0 + t + 1) as u64;
        }

        // Attention over the selected keys, read back from the cache.
        let scale = c.softmax_scale();
        let mut o =
            match opts.form {
                AttentionForm::Absorbed => {
                    let width = slot_rows.iter().map(|r| r.len()).max().unwrap_or(0).max(1);
                    let mut idx = vec![-1i32; n * width];
                    for (t, r) in slot_rows.iter().enumerate() {
                        let slots = topk::translate_to_slots(r, bt);
                        idx[t * width..t * width + slots.len()].copy_from_slice(&slots);
                    }
                    let mut q576: Vec<f32> = Vec::with_capacity(n * nh * MLA_DIM);
                    for t in 0..n {
                        let qt = &q[t * nh * dq..(t + 1) * nh * dq];
                        let qn: Vec<f32> = (0..nh)
                            .flat_map(|hh| qt[hh * dq..hh * dq + dn].iter().copied())
                            .collect();
                        let lat = l.kvb.absorb(&qn);
                        for hh in 0..nh {
                            q576.extend_from_slice(
                                &lat[hh * c.kv_lora_rank..(hh + 1) * c.kv_lora_rank],
                            );
                            q576.extend_from_slice(&qt[hh * dq + dn..(hh + 1) * dq]);
                        }
                    }
                    let cache_ro: &KvCache = cache;
                    let kvf = |slot: usize| cache_ro.read_mla(li, slot);
                    if opts.bf16_attention_io {
                        nn::round_bf16_slice(&mut q576);
                    }
                    let (mut o_lat, _lse) = attention::sparse_mla_decode_f32(
                        &q576, &kvf, &idx, None, None, scale, 1, n, nh, width,
                    );
                    if opts.bf16_attention_io {
                        nn::round_bf16_slice(&mut o_lat);
                    }
                    let mut out = Vec::with_capacity(n * nh * c.v_head_dim);
                    for t in 0..n {
                        out.extend(l.kvb.unabsorb(
                            &o_lat[t * nh * c.kv_lora_rank..(t + 1) * nh * c.kv_lora_rank],
                        ));
                    }
                    out
                }
                AttentionForm::Mha => {
                    let mut keys: BTreeMap<i32, MhaKey> = BTreeMap::new();
                    for r in &slot_rows {
                        for &p in r {
                            keys.entry(p).or_insert_with(|| {
                                let e = cache
                                    .read_mla(li, cache::slot_of(bt, p as usize))
                                    .expect("page ids were checked against the cache");
                                MhaKey::new(&e, &l.kvb)
                            });
                        }
                    }
                    let mut out = Vec::with_capacity(n * nh * c.v_head_dim);
                    for (t, r) in slot_rows.iter().enumerate() {
                        let qt = &q[t * nh * dq..(t + 1) * nh * dq];
                        let qn: Vec<f32> = (0..nh)
                            .flat_map(|hh| qt[hh * dq..hh * dq + dn].iter().copied())
                            .collect();
                        let qrp: Vec<f32> = (0..nh)
                            .flat_map(|hh| qt[hh * dq + dn..(hh + 1) * dq].iter().copied())
                            .collect();
                        let ks: Vec<&MhaKey> = r.iter().map(|p| &keys[p]).collect();
                        out.extend(mla::attend_mha(&qn, &qrp, &ks, &l.kvb, scale));
                    }
                    out
                }
            };
        nn::round_bf16_slice(&mut o);
        fp8_linear(&o, n, &l.wo, pow2)
    }
}
