//! The mini model end to end against `dsa-reference`: the same seeded weights, a batch of
//! sequences of different lengths prefilled, then greedy decode steps; per-layer residual
//! streams, the selected top-k sets, logits and greedy tokens compared, and the decode step
//! timed eagerly and replayed from a CUDA graph. The GPU test and `examples/mini_forward.rs`
//! both run this.
use std::time::Instant;

use dsa_kernels::{device, DsaKernels};
use dsa_reference::cache::slot_of;
use dsa_reference::weights;
use dsa_reference::{CacheDtype, Config, ForwardOptions, KvCache, Model, Sequence};

use crate::{GpuModel, GpuWeights, Result, Trace};

/// A handle on a fresh non-default stream of GPU 0, set up for CUDA-graph capture: cudarc's
/// cross-stream event tracking off (its waits are illegal inside a capture; everything here
/// runs on one stream) and every kernel loaded up front.
pub fn graph_ready_kernels() -> Result<DsaKernels> {
    let ctx = device::open_device(0)?;
    // SAFETY: every buffer of the forward is created and used on the one stream below.
    unsafe { ctx.disable_event_tracking() };
    let k = DsaKernels::new(ctx.new_stream()?)?;
    k.preload()?;
    Ok(k)
}

/// Agreement of two tensors: FlashMLA's cosine difference `1 - 2 sum(xy) / sum(x^2 + y^2)`
/// and `max |gpu - ref| / max |ref|`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Agreement {
    pub cos_diff: f64,
    pub max_rel: f64,
    pub max_abs: f64,
}

impl Agreement {
    pub fn of(gpu: &[f32], reference: &[f32]) -> Self {
        let (mut xy, mut xx, mut num, mut den) = (0f64, 0f64, 0f64, 0f64);
        for (&g, &r) in gpu.iter().zip(reference) {
            let (g, r) = (g as f64, r as f64);
            xy += g * r;
            xx += g * g + r * r;
            num = num.max((g - r).abs());
            den = den.max(r.abs());
        }
        let bad = gpu.len() != reference.len() || gpu.iter().any(|v| !v.is_finite());
        Agreement {
            cos_diff: if bad {
                f64::INFINITY
            } else if xx == 0.0 {
                0.0
            } else {
                1.0 - 2.0 * xy / xx
            },
            max_rel: if bad {
                f64::INFINITY
            } else if den == 0.0 {
                num
            } else {
                num / den
            },
            max_abs: if bad { f64::INFINITY } else { num },
        }
    }
}

/// One layer of the prefill.
#[derive(Debug, Clone, Copy, Default)]
pub struct LayerReport {
    pub hidden: Agreement,
    /// `|gpu set ∩ ref set| / |ref set|`, mean and minimum over the query rows.
    pub topk_overlap_mean: f64,
    pub topk_overlap_min: f64,
    /// Rows with more causal keys than the top-k (where the selection is a real choice).
    pub sparse_rows: usize,
}

/// A greedy token where the two paths disagree.
#[derive(Debug, Clone, Copy)]
pub struct Divergence {
    pub step: usize,
    pub seq: usize,
    pub ref_token: u32,
    pub gpu_token: u32,
    /// Reference logit of its own choice minus its logit of the GPU's choice (>= 0).
    pub ref_margin: f32,
    /// GPU logit of its own choice minus its logit of the reference's choice (>= 0).
    pub gpu_margin: f32,
    /// Max minus min of the reference's logits of that row (the scale of a margin).
    pub ref_range: f32,
}

/// Everything the run measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub lens: Vec<usize>,
    /// End to end: the GPU's own residual stream against the reference's, per layer.
    pub layers: Vec<LayerReport>,
    /// Layer-local: each GPU layer fed the reference's residual stream (the error of that
    /// layer alone, not amplified by the layers before it).
    pub layers_local: Vec<LayerReport>,
    /// The model's own sensitivity: the reference against itself with its attention query
    /// and output kept in f32 instead of rounded to bf16 (a perturbation of the size the
    /// GPU's bf16 tensor-core inputs make), per layer and for the logits and tokens.
    pub floor_layers: Vec<Agreement>,
    pub floor_prefill_logits: Agreement,
    pub floor_prefill_argmax_agree: (usize, usize),
    pub floor_decode_tokens_agree: (usize, usize),
    pub prefill_logits: Agreement,
    /// Positions of the prefill whose argmax agrees, of all prefill positions.
    pub prefill_argmax_agree: (usize, usize),
    pub decode_logits: Agreement,
    /// Greedy decode tokens equal, of `steps * batch`.
    pub decode_tokens_agree: (usize, usize),
    pub divergences: Vec<Divergence>,
    pub prefill_ms: f64,
    pub reference_s: f64,
    pub eager_step_ms: f64,
    pub graph_step_ms: f64,
    /// Graph replay against the eager step: logits agreement and argmax equality.
    pub graph_vs_eager: Agreement,
    /// Two eager runs of the same step against each other: zero when the forward is
    /// deterministic (the top-k is emitted sorted, so the attention sums its keys in one
    /// order; the MoE plan is a counting sort and its combine gathers in slot order).
    pub eager_vs_eager: Agreement,
    pub graph_argmax_equal: bool,
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// Positions whose argmax agrees, over `[rows, v]` logits.
fn argmax_agree(a: &[f32], b: &[f32], v: usize) -> usize {
    a.chunks(v)
        .zip(b.chunks(v))
        .filter(|(x, y)| argmax(x) == argmax(y))
        .count()
}

/// Per layer: the GPU trace's residual stream against the reference's and the top-k sets
/// (reference positions translated to slots through each sequence's block table).
fn layer_reports(
    gpu: &Trace,
    ref_traces: &[dsa_reference::ForwardTrace],
    ref_hidden: &[Vec<f32>],
    tables: &[Vec<i32>],
    topk: usize,
    h: usize,
) -> Vec<LayerReport> {
    let rows = ref_hidden.first().map_or(0, |v| v.len() / h);
    (0..ref_hidden.len())
        .map(|l| {
            let (mut sum, mut min, mut sparse, mut row) = (0f64, 1f64, 0usize, 0usize);
            for (s, tr) in ref_traces.iter().enumerate() {
                for (p, sel) in tr.selected[l].iter().enumerate() {
                    let want: std::collections::HashSet<i32> = sel
                        .iter()
                        .map(|&q| slot_of(&tables[s], q as usize) as i32)
                        .collect();
                    let got = &gpu.slots[l][row * topk..(row + 1) * topk];
                    let hit = got.iter().filter(|g| want.contains(g)).count();
                    let frac = if want.is_empty() {
                        1.0
                    } else {
                        hit as f64 / want.len() as f64
                    };
                    sum += frac;
                    min = min.min(frac);
                    if p + 1 > topk {
                        sparse += 1;
                    }
                    row += 1;
                }
            }
            LayerReport {
                hidden: Agreement::of(&gpu.hidden[l], &ref_hidden[l]),
                topk_overlap_mean: sum / rows.max(1) as f64,
                topk_overlap_min: min,
                sparse_rows: sparse,
            }
        })
        .collect()
}

/// Deterministic token ids (a 64-bit LCG).
fn tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(1);
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 33) % vocab as u64) as u32
        })
        .collect()
}

/// Runs `lens.len()` sequences (prompt lengths `lens`) of `cfg` with `weights::seeded(cfg,
/// seed)` on the GPU and on the reference: prefill, then `steps` greedy decode steps fed
/// with the reference's tokens (so the two paths keep identical histories and every step
/// compares), then times the decode step eagerly and from a CUDA graph (`timing_reps`
/// replays; 0 skips). `progress` gets a line per stage.
pub fn run(
    k: DsaKernels,
    cfg: &Config,
    seed: u64,
    lens: &[usize],
    steps: usize,
    timing_reps: usize,
    progress: &mut dyn FnMut(&str),
) -> Result<Report> {
    let batch = lens.len();
    let t = weights::seeded(cfg, seed);
    let model = Model::from_tensors(cfg.clone(), &t)?;
    let w = GpuWeights::upload(k.stream(), cfg, &t)?;
    drop(t);
    progress("weights uploaded");

    // Pages handed out round-robin over the sequences, so no sequence's pages are
    // contiguous (as after some traffic in a real allocator).
    let pages: Vec<usize> = lens.iter().map(|&l| (l + steps).div_ceil(64)).collect();
    let max_pages = pages.iter().copied().max().unwrap_or(1);
    let mut tables: Vec<Vec<i32>> = vec![Vec::new(); batch];
    let mut next = 0i32;
    for j in 0..max_pages {
        for (s, t) in tables.iter_mut().enumerate() {
            if j < pages[s] {
                t.push(next);
                next += 1;
            }
        }
    }
    let num_pages = next as usize;
    let prefill_rows: usize = lens.iter().sum();
    let mut gpu = GpuModel::new(k, w, num_pages, prefill_rows.max(batch), max_pages)?;
    let prompts: Vec<Vec<u32>> = (0..batch)
        .map(|s| tokens(lens[s], cfg.vocab_size, seed ^ (s as u64 + 1)))
        .collect();

    // Reference prefill, and the same with f32 attention IO (the sensitivity floor).
    let t0 = Instant::now();
    let opts = ForwardOptions::default();
    let floor_opts = ForwardOptions {
        bf16_attention_io: false,
        ..opts
    };
    let mut cache = KvCache::new(cfg, CacheDtype::Fp8, num_pages);
    let mut floor_cache = KvCache::new(cfg, CacheDtype::Fp8, num_pages);
    let mut seqs: Vec<Sequence> = tables.iter().map(|t| Sequence::new(t.clone())).collect();
    let mut floor_seqs = seqs.clone();
    let (mut ref_logits, mut ref_traces) = (Vec::new(), Vec::new());
    let (mut floor_logits, mut floor_traces) = (Vec::new(), Vec::new());
    for s in 0..batch {
        let (l, tr) = model.forward_traced(&prompts[s], &mut cache, &mut seqs[s], &opts)?;
        ref_logits.extend(l);
        ref_traces.push(tr);
        let (l, tr) = model.forward_traced(
            &prompts[s],
            &mut floor_cache,
            &mut floor_seqs[s],
            &floor_opts,
        )?;
        floor_logits.extend(l);
        floor_traces.push(tr);
        progress(&format!(
            "reference prefill of sequence {s} ({} tokens) done",
            lens[s]
        ));
    }
    let mut report = Report {
        lens: lens.to_vec(),
        reference_s: t0.elapsed().as_secs_f64(),
        ..Report::default()
    };
    let (h, topk, v) = (cfg.hidden_size, cfg.index_topk, cfg.vocab_size);
    let concat = |traces: &[dsa_reference::ForwardTrace], l: usize| -> Vec<f32> {
        traces
            .iter()
            .flat_map(|t| t.hidden[l].iter().copied())
            .collect()
    };
    let ref_hidden: Vec<Vec<f32>> = (0..cfg.num_hidden_layers)
        .map(|l| concat(&ref_traces, l))
        .collect();
    for (l, want) in ref_hidden.iter().enumerate() {
        report
            .floor_layers
            .push(Agreement::of(&concat(&floor_traces, l), want));
    }
    report.floor_prefill_logits = Agreement::of(&floor_logits, &ref_logits);
    report.floor_prefill_argmax_agree = (argmax_agree(&floor_logits, &ref_logits, v), prefill_rows);

    // GPU prefill rows: every token of every prompt.
    let mut rows = gpu.rows(prefill_rows)?;
    let (mut tok, mut pos, mut tab) = (Vec::new(), Vec::new(), Vec::new());
    for s in 0..batch {
        for (p, &tk) in prompts[s].iter().enumerate() {
            tok.push(tk);
            pos.push(p);
            tab.push(tables[s].as_slice());
        }
    }
    gpu.set(&mut rows, &tok, &pos, &tab)?;
    // Layer-local first (its cache entries are then overwritten by the GPU's own prefill).
    let mut local = Trace::default();
    gpu.forward_layer_local(&mut rows, &ref_hidden, Some(&mut local))?;
    report.layers_local = layer_reports(&local, &ref_traces, &ref_hidden, &tables, topk, h);
    progress("GPU layer-local prefill compared");
    let mut trace = Trace::default();
    let t0 = Instant::now();
    gpu.forward(&mut rows, Some(&mut trace))?;
    let gpu_logits = gpu.logits(&rows)?;
    report.prefill_ms = t0.elapsed().as_secs_f64() * 1e3;
    progress(&format!("GPU prefill of {prefill_rows} rows done (traced)"));
    report.layers = layer_reports(&trace, &ref_traces, &ref_hidden, &tables, topk, h);
    report.prefill_logits = Agreement::of(&gpu_logits, &ref_logits);
    report.prefill_argmax_agree = (argmax_agree(&gpu_logits, &ref_logits, v), prefill_rows);

    // Greedy decode, fed with the reference's tokens.
    let mut step_rows = gpu.rows(batch)?;
    let mut next_tok: Vec<u32> = (0..batch)
        .map(|s| {
            let last = (lens[s] - 1) * v;
            let off: usize = lens[..s].iter().sum::<usize>() * v;
            argmax(&ref_logits[off + last..off + last + v])
        })
        .collect();
    let (mut all_gpu, mut all_ref) = (Vec::new(), Vec::new());
    let (mut agree, mut floor_agree) = (0, 0);
    for step in 0..steps {
        let pos: Vec<usize> = seqs.iter().map(|s| s.len).collect();
        let tabs: Vec<&[i32]> = tables.iter().map(|t| t.as_slice()).collect();
        gpu.set(&mut step_rows, &next_tok, &pos, &tabs)?;
        gpu.forward(&mut step_rows, None)?;
        let g = gpu.logits(&step_rows)?;
        let mut r = Vec::with_capacity(batch * v);
        for s in 0..batch {
            let (l, _) = model.forward(&[next_tok[s]], &mut cache, &mut seqs[s], &opts)?;
            r.extend(l);
            let (f, _) = model.forward(
                &[next_tok[s]],
                &mut floor_cache,
                &mut floor_seqs[s],
                &floor_opts,
            )?;
            if argmax(&f) == argmax(&r[s * v..]) {
                floor_agree += 1;
            }
        }
        for s in 0..batch {
            let (gs, rs) = (&g[s * v..(s + 1) * v], &r[s * v..(s + 1) * v]);
            let (gt, rt) = (argmax(gs), argmax(rs));
            if gt == rt {
                agree += 1;
            } else {
                report.divergences.push(Divergence {
                    step,
                    seq: s,
                    ref_token: rt,
                    gpu_token: gt,
                    ref_margin: rs[rt as usize] - rs[gt as usize],
                    gpu_margin: gs[gt as usize] - gs[rt as usize],
                    ref_range: rs.iter().cloned().fold(f32::MIN, f32::max)
                        - rs.iter().cloned().fold(f32::MAX, f32::min),
                });
            }
            next_tok[s] = rt;
        }
        all_gpu.extend(g);
        all_ref.extend(r);
        progress(&format!("decode step {step} compared"));
    }
    report.decode_logits = Agreement::of(&all_gpu, &all_ref);
    report.decode_tokens_agree = (agree, steps * batch);
    report.floor_decode_tokens_agree = (floor_agree, steps * batch);

    // Timing: the same decode step (same inputs, so the cache writes are idempotent),
    // eagerly and from a CUDA graph.
    if timing_reps > 0 {
        let stream = gpu.stream().clone();
        gpu.forward(&mut step_rows, None)?;
        stream.synchronize()?;
        let eager = gpu.logits(&step_rows)?;
        let t0 = Instant::now();
        for _ in 0..timing_reps {
            gpu.forward(&mut step_rows, None)?;
        }
        stream.synchronize()?;
        report.eager_step_ms = t0.elapsed().as_secs_f64() * 1e3 / timing_reps as f64;
        report.eager_vs_eager = Agreement::of(&gpu.logits(&step_rows)?, &eager);
        let graph = gpu.capture(&mut step_rows)?;
        stream.memset_zeros(&mut step_rows.logits)?;
        graph.launch()?;
        let replay = gpu.logits(&step_rows)?;
        report.graph_vs_eager = Agreement::of(&replay, &eager);
        report.graph_argmax_equal = (0..batch)
            .all(|s| argmax(&replay[s * v..(s + 1) * v]) == argmax(&eager[s * v..(s + 1) * v]));
        let t0 = Instant::now();
        for _ in 0..timing_reps {
            graph.launch()?;
        }
        stream.synchronize()?;
        report.graph_step_ms = t0.elapsed().as_secs_f64() * 1e3 / timing_reps as f64;
        progress("decode step timed (eager, graph)");
    }
    Ok(report)
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "sequences {:?}", self.lens)?;
        writeln!(
            f,
            "Residual stream after each layer against the reference (cos diff = 1 - 2xy/(x^2+y^2); max rel = max|gpu-ref|/max|ref|); \
             'floor' = the reference against itself with f32 instead of bf16 attention IO; top-k = |gpu ∩ ref| / |ref| per query row."
        )?;
        writeln!(
            f,
            "| layer | end-to-end cos diff | max rel | layer-local cos diff | max rel | floor cos diff | max rel | top-k e2e mean / min | top-k local mean / min | rows > top-k keys |"
        )?;
        writeln!(f, "|---|---|---|---|---|---|---|---|---|---|")?;
        for (l, r) in self.layers.iter().enumerate() {
            let lo = self.layers_local.get(l).copied().unwrap_or_default();
            let fl = self.floor_layers.get(l).copied().unwrap_or_default();
            writeln!(
                f,
                "| {l} | {:.2e} | {:.2e} | {:.2e} | {:.2e} | {:.2e} | {:.2e} | {:.4} / {:.4} | {:.4} / {:.4} | {} |",
                r.hidden.cos_diff,
                r.hidden.max_rel,
                lo.hidden.cos_diff,
                lo.hidden.max_rel,
                fl.cos_diff,
                fl.max_rel,
                r.topk_overlap_mean,
                r.topk_overlap_min,
                lo.topk_overlap_mean,
                lo.topk_overlap_min,
                r.sparse_rows
            )?;
        }
        writeln!(
            f,
            "prefill logits: cos diff {:.3e}, max rel err {:.3e} (max abs {:.3e}); argmax equal at {}/{} positions \
             (floor: cos diff {:.3e}, argmax equal {}/{})",
            self.prefill_logits.cos_diff,
            self.prefill_logits.max_rel,
            self.prefill_logits.max_abs,
            self.prefill_argmax_agree.0,
            self.prefill_argmax_agree.1,
            self.floor_prefill_logits.cos_diff,
            self.floor_prefill_argmax_agree.0,
            self.floor_prefill_argmax_agree.1
        )?;
        writeln!(
            f,
            "decode (teacher-forced on the reference's greedy tokens): logits cos diff {:.3e}, max rel err {:.3e}; \
             greedy tokens equal {}/{} (floor: {}/{})",
            self.decode_logits.cos_diff,
            self.decode_logits.max_rel,
            self.decode_tokens_agree.0,
            self.decode_tokens_agree.1,
            self.floor_decode_tokens_agree.0,
            self.floor_decode_tokens_agree.1
        )?;
        if let Some(d) = self.divergences.first() {
            writeln!(
                f,
                "first divergence at decode step {}; the first five:",
                d.step
            )?;
        }
        for d in self.divergences.iter().take(5) {
            writeln!(
                f,
                "  step {} seq {}: reference {} (margin {:.3e} over the GPU's pick, row range {:.3}), GPU {} (margin {:.3e})",
                d.step, d.seq, d.ref_token, d.ref_margin, d.ref_range, d.gpu_token, d.gpu_margin
            )?;
        }
        writeln!(
            f,
            "GPU prefill {:.1} ms (first call, traced), reference {:.1} s",
            self.prefill_ms, self.reference_s
        )?;
        if self.graph_step_ms > 0.0 {
            writeln!(
                f,
                "decode step (batch {}): eager {:.3} ms, CUDA graph {:.3} ms (host-timed means); graph replay vs eager logits \
                 max rel {:.3e}, argmax equal {}; eager vs eager max rel {:.3e}",
                self.lens.len(),
                self.eager_step_ms,
                self.graph_step_ms,
                self.graph_vs_eager.max_rel,
                self.graph_argmax_equal,
                self.eager_vs_eager.max_rel
            )?;
        }
        Ok(())
    }
}
