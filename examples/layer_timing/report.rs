//! The results: per-case stage tables against their floors, the summary over cases, DSA
//! against dense attention inside the layer, the 61-layer projection, and the files (Markdown,
//! JSON, SVG) written to the output directory.
use std::fmt::Write as _;

use crate::layer::{Group, Op, Routing};
use crate::model::*;

/// One timed stage of one case.
pub struct StageResult {
    pub op: Op,
    pub name: &'static str,
    /// Median time, seconds.
    pub time: f64,
    pub floor: f64,
    pub basis: &'static str,
}

impl StageResult {
    pub fn group(&self) -> Group {
        self.op.group()
    }
}

/// One case: a decode step (`batch` sequences of `ctx` tokens) or a prefill chunk.
pub struct CaseResult {
    pub decode: bool,
    /// Sequences (decode) or chunk tokens (prefill).
    pub tokens: usize,
    pub ctx: usize,
    pub stages: Vec<StageResult>,
    /// Median of the layer's stages enqueued back to back without events, seconds.
    pub total: f64,
    /// Experts touched and rows routed (the layer's, the EP8 shape's).
    pub routing: Routing,
    /// A run from before the norms, RoPE and residual adds were timed stages (a replot of
    /// its JSON): their floors, counted as such runs did. Empty for a run that times them.
    pub untimed: Vec<(&'static str, f64)>,
    pub reps: usize,
}

impl CaseResult {
    pub fn label(&self) -> String {
        if self.decode {
            format!("decode B{} {}", self.tokens, ctx_label(self.ctx))
        } else {
            format!("prefill {} of {}", self.tokens, ctx_label(self.ctx))
        }
    }
    fn in_layer(&self) -> impl Iterator<Item = &StageResult> {
        self.stages.iter().filter(|s| s.op.in_layer())
    }
    pub fn stage_sum(&self) -> f64 {
        self.in_layer().map(|s| s.time).sum()
    }
    pub fn floor_sum(&self) -> f64 {
        self.in_layer().map(|s| s.floor).sum()
    }
    pub fn time_of(&self, f: impl Fn(&StageResult) -> bool) -> f64 {
        self.stages.iter().filter(|s| f(s)).map(|s| s.time).sum()
    }
    fn op(&self, op: Op) -> Option<&StageResult> {
        self.stages.iter().find(|s| s.op == op)
    }
    /// The DSA-only part of the attention: indexer q_b, prep, logits, top-k, sparse MLA.
    pub fn dsa_attention(&self) -> f64 {
        self.time_of(|s| {
            matches!(
                s.op,
                Op::IdxQB | Op::IdxKPrep | Op::IdxQPrep | Op::IdxLogits | Op::TopK | Op::SparseMla
            )
        })
    }
    /// The stage furthest from its floor by ratio (among stages whose floor is at least
    /// 1 us: below that every launch is "infinitely" far), and by time above the floor.
    pub fn furthest(&self) -> (&StageResult, &StageResult) {
        let by_ratio = self
            .in_layer()
            .filter(|s| s.floor >= 1e-6)
            .max_by(|a, b| (a.time / a.floor).total_cmp(&(b.time / b.floor)))
            .or_else(|| self.in_layer().next())
            .expect("stages");
        let by_excess = self
            .in_layer()
            .max_by(|a, b| (a.time - a.floor).total_cmp(&(b.time - b.floor)))
            .expect("stages");
        (by_ratio, by_excess)
    }
}

pub fn ctx_label(ctx: usize) -> String {
    if ctx.is_multiple_of(1024) {
        format!("{}K", ctx / 1024)
    } else {
        format!("{ctx}")
    }
}

fn us(s: f64) -> String {
    let u = s * 1e6;
    if u >= 100.0 {
        format!("{u:.0}")
    } else if u >= 10.0 {
        format!("{u:.1}")
    } else {
        format!("{u:.2}")
    }
}

/// The stage table of one case.
pub fn case_table(c: &CaseResult) -> String {
    let mut md = String::new();
    let total = c.total;
    let (touched, rows) = c.routing.layer;
    let _ = writeln!(
        md,
        "### {} ({} routed rows over {} experts; median of {} passes)\n",
        c.label(),
        rows,
        touched,
        c.reps
    );
    let _ = writeln!(
        md,
        "| stage | time (us) | floor (us) | bound | time / floor | share of layer |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for s in &c.stages {
        let share = if s.op.in_layer() {
            format!("{:.1}%", 100.0 * s.time / c.stage_sum())
        } else {
            "beside the layer".into()
        };
        // Below 1 us a floor says only "launch-bound": no ratio.
        let ratio = if s.floor >= 1e-6 {
            format!("{:.1}x", s.time / s.floor)
        } else {
            "floor < 1 us".into()
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            s.name,
            us(s.time),
            us(s.floor),
            s.basis,
            ratio,
            share
        );
    }
    let _ = writeln!(
        md,
        "| **layer (stages back to back, no events)** | **{}** | **{}** | | **{:.2}x** | |",
        us(total),
        us(c.floor_sum()),
        total / c.floor_sum()
    );
    let _ = writeln!(
        md,
        "| sum of the stage times (evented pass) | {} | | | {:.2}x | |",
        us(c.stage_sum()),
        c.stage_sum() / c.floor_sum()
    );
    for (name, f) in &c.untimed {
        let _ = writeln!(
            md,
            "| {name}: not timed in this run | - | {} | HBM | - | |",
            us(*f)
        );
    }
    if !c.untimed.is_empty() {
        let untimed: f64 = c.untimed.iter().map(|u| u.1).sum();
        let _ = writeln!(
            md,
            "\nThis run predates the timed norms, RoPE and residual adds: their floors add {} us ({:.1}% of the layer).",
            us(untimed),
            100.0 * untimed / total
        );
    }
    md
}

/// The summary over cases.
pub fn summary_table(cases: &[CaseResult]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "| case | layer (us) | sum of floors (us) | layer / floors | attention part (us) | MoE part (us) | DSA attention (us) | dense FP8 attention (us) | dense bf16 attention (us) | layer with dense bf16 instead (us) | stages with floors < 1 us (us) | furthest from floor (ratio, floors >= 1 us) | furthest from floor (time above) |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for c in cases {
        let attn = c.time_of(|s| s.op.in_layer() && s.op.attention_half());
        let moe = c.time_of(|s| s.op.in_layer() && !s.op.attention_half());
        let dsa = c.dsa_attention();
        let dense = |op| c.op(op).map(|s| s.time);
        let fmt = |v: Option<f64>| v.map(us).unwrap_or_else(|| "-".into());
        let with_dense = dense(Op::DenseBf16).map(|d| {
            format!(
                "{} ({:.2}x the DSA layer)",
                us(c.total - dsa + d),
                (c.total - dsa + d) / c.total
            )
        });
        let (r, e) = c.furthest();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {:.2}x | {} | {} | {} | {} | {} | {} | {} | {} ({:.1}x) | {} (+{} us) |",
            c.label(),
            us(c.total),
            us(c.floor_sum()),
            c.total / c.floor_sum(),
            us(attn),
            us(moe),
            us(dsa),
            fmt(dense(Op::DenseFp8)),
            fmt(dense(Op::DenseBf16)),
            with_dense.unwrap_or_else(|| "-".into()),
            us(c.time_of(|s| s.op.in_layer() && s.floor < 1e-6)),
            r.name,
            r.time / r.floor,
            e.name,
            us(e.time - e.floor),
        );
    }
    md
}

/// NVLink bytes per second one GPU moves in an all-to-all (H200 NVLink 4: 450 GB/s per
/// direction; two thirds of it taken as achieved).
const A2A_BPS: f64 = 300e9;
/// Fixed cost of one all-to-all (launch, synchronization across the 8 GPUs).
const A2A_LATENCY: f64 = 20e-6;
/// GPU memory usable for weights + caches (141 GB less workspace, activations, CUDA context).
const USABLE_BYTES: f64 = 130e9;
/// Vocabulary (embedding and lm_head, bf16, split over the 8 GPUs).
const VOCAB: f64 = 129280.0;

/// The 61-layer decode step of one decode case, one GPU alone and one GPU's share of EP8.
pub fn projection(c: &CaseResult) -> String {
    let w = Sizes::deepseek_v32();
    let mut md = String::new();
    let b = c.tokens as f64;
    let attn = c.time_of(|s| s.op.in_layer() && s.op.attention_half());
    // The FFN's norm and residual add: every layer runs them, the dense-MLP ones too.
    let frame = c.time_of(|s| s.op.ffn_frame());
    let moe = c.time_of(|s| s.op.in_layer() && !s.op.attention_half() && !s.op.ffn_frame());
    let dense_mlp = c.time_of(|s| s.op == Op::DenseMlp);
    let untimed: f64 = c.untimed.iter().map(|u| u.1).sum();
    // Scale stage sums to the back-to-back layer time (events between stages cost a little).
    let k = c.total / c.stage_sum();
    let (attn, frame, moe) = (attn * k, frame * k, moe * k);
    let every_layer = attn + frame + untimed;
    let moe_layers = (LAYERS - DENSE_LAYERS) as f64;
    let dense_layers = DENSE_LAYERS as f64;
    let one_gpu = LAYERS as f64 * every_layer + moe_layers * moe + dense_layers * dense_mlp;
    // EP8: 8 GPUs each run the attention of their own B sequences (data-parallel
    // attention) and hold 32 of the 256 experts; each GPU's experts see the slots of all
    // 8B tokens: the routed part measured at that shape (32 experts, 8B rows), plus this
    // GPU's gate and shared expert, plus the two all-to-alls.
    let ep_routed = c.time_of(|s| s.op == Op::EpMoe) * k;
    let own = c.time_of(|s| matches!(s.op, Op::Gate | Op::Shared)) * k;
    let a2a_bytes = b * TOP_K as f64 * (EP - 1) as f64 / EP as f64 * HIDDEN as f64 * (1.0 + 2.0);
    let a2a = 2.0 * A2A_LATENCY + a2a_bytes / A2A_BPS;
    let moe_ep = own + ep_routed + a2a;
    let (touched_ep, _) = c.routing.ep.unwrap_or_default();
    let local = (EXPERTS / EP) as f64;
    let ep_step = LAYERS as f64 * every_layer + moe_layers * moe_ep + dense_layers * dense_mlp;
    let weights_gpu = LAYERS as f64 * w.attention
        + moe_layers * ((local + 1.0) * w.expert + w.gate)
        + dense_layers * w.dense_mlp
        + 2.0 * VOCAB * HIDDEN as f64 * 2.0 / EP as f64;
    let kv_token = LAYERS as f64 * (MLA_FP8_TOKEN + IDX_TOKEN) as f64;
    let kv_gpu = b * c.ctx as f64 * kv_token;
    let fits_b = ((USABLE_BYTES - weights_gpu) / (c.ctx as f64 * kv_token)).floor();
    let _ = writeln!(md, "#### {}: 61-layer decode step\n", c.label());
    let _ = writeln!(md, "| | per layer (us) | step (ms) | tokens/s |");
    let _ = writeln!(md, "|---|---|---|---|");
    let untimed_note = if c.untimed.is_empty() {
        String::new()
    } else {
        format!(", + untimed floors {} us", us(untimed))
    };
    let _ = writeln!(
        md,
        "| attention half (x61){untimed_note} | {} | {:.2} | |",
        us(attn),
        LAYERS as f64 * (attn + untimed) * 1e3
    );
    if frame > 0.0 {
        let _ = writeln!(
            md,
            "| post-attention RMSNorm + MoE residual add (x61) | {} | {:.2} | |",
            us(frame),
            LAYERS as f64 * frame * 1e3
        );
    }
    let _ = writeln!(
        md,
        "| MoE half, all 256 experts here (x58) | {} | {:.2} | |",
        us(moe),
        moe_layers * moe * 1e3
    );
    let _ = writeln!(
        md,
        "| dense MLP (x3) | {} | {:.2} | |",
        us(dense_mlp),
        dense_layers * dense_mlp * 1e3
    );
    let _ = writeln!(
        md,
        "| **one GPU holding everything (hypothetical: {:.0} GB of weights)** | | **{:.2}** | **{:.0}** |",
        (LAYERS as f64 * w.attention
            + moe_layers * ((EXPERTS + 1) as f64 * w.expert + w.gate)
            + dense_layers * w.dense_mlp)
            / 1e9,
        one_gpu * 1e3,
        b / one_gpu
    );
    let _ = writeln!(
        md,
        "| EP8 share (x58): gate + shared expert + routed part measured at 32 experts and 8B rows ({} us, {} experts touched vs {} here) + 2 all-to-alls ({} us) | {} | {:.2} | |",
        us(ep_routed),
        touched_ep,
        c.routing.layer.0,
        us(a2a),
        us(moe_ep),
        moe_layers * moe_ep * 1e3
    );
    let _ = writeln!(
        md,
        "| **one GPU's share of EP8 (B {} per GPU)** | | **{:.2}** | **{:.0} per GPU, {:.0} for 8 GPUs** |",
        c.tokens,
        ep_step * 1e3,
        b / ep_step,
        EP as f64 * b / ep_step
    );
    let _ = writeln!(
        md,
        "\nMemory per GPU in EP8: {:.0} GB of weights + {:.0} GB of caches (B {} x {} x 61 layers x {} B/token) = {:.0} GB of {:.0} usable: {}.",
        weights_gpu / 1e9,
        kv_gpu / 1e9,
        c.tokens,
        ctx_label(c.ctx),
        MLA_FP8_TOKEN + IDX_TOKEN,
        (weights_gpu + kv_gpu) / 1e9,
        USABLE_BYTES / 1e9,
        if weights_gpu + kv_gpu <= USABLE_BYTES {
            "fits".to_string()
        } else {
            format!("does not fit; at most {} sequences of this context per GPU", fits_b.max(0.0))
        }
    );
    md
}

/// Assumptions of the projection, written once.
pub fn projection_notes() -> String {
    format!(
        "Projection assumptions: the per-layer stage times above (scaled to the back-to-back layer time) \
         times 61 layers for the attention half (its RMSNorms, RoPE and residual add included) and for the \
         post-attention RMSNorm and the FFN's residual add, 58 MoE layers and 3 dense-MLP layers \
         (intermediate 18432); runs from before the norms, RoPE and residual adds were timed count them \
         at their HBM floors instead; embedding, final norm, lm_head and sampling left out. EP8: 8 GPUs, data-parallel attention (each GPU runs its own B sequences and \
         holds their caches, attention weights replicated), 32 of the 256 experts per GPU, the shared expert \
         and the dense MLP replicated; a GPU's routed part (route, plan, permute, both grouped GEMMs, SwiGLU, \
         combine) is measured at its shape: 32 experts receiving 8B rows (an eighth of the 64B slots of the \
         deployment's 8B tokens; here B tokens routed to 8 of 32 experts: the same rows and experts); two \
         all-to-alls per MoE layer (FP8 dispatch, bf16 combine) of 7/8 of the B x 8 slots' rows at {:.0} GB/s \
         plus {:.0} us each (assumed, not measured: no multi-GPU run here). Memory: {:.0} GB usable per GPU, caches of 656 + 132 B per \
         token per layer, embedding + lm_head split 8 ways.\n",
        A2A_BPS / 1e9,
        A2A_LATENCY * 1e6,
        USABLE_BYTES / 1e9
    )
}

/// All results as JSON (written by hand: the crate has no serde).
pub fn json(cases: &[CaseResult]) -> String {
    let mut s = String::from("{\n  \"gpu_rates\": {");
    let _ = write!(
        s,
        "\"copy_GBps\": {:.0}, \"bf16_TFLOPs\": {:.0}, \"fp8_TFLOPs\": {:.0}}},\n  \"cases\": [\n",
        COPY_BPS / 1e9,
        BF16_PEAK / 1e12,
        FP8_PEAK / 1e12
    );
    for (ci, c) in cases.iter().enumerate() {
        let _ = writeln!(
            s,
            "    {{\"case\": \"{}\", \"mode\": \"{}\", \"tokens\": {}, \"ctx\": {}, \"layer_us\": {:.2}, \"stage_sum_us\": {:.2}, \"floor_sum_us\": {:.2}, \"experts_touched\": {}, \"routed_rows\": {}, \"ep_experts_touched\": {}, \"ep_rows\": {}, \"reps\": {}, \"stages\": [",
            c.label(),
            if c.decode { "decode" } else { "prefill" },
            c.tokens,
            c.ctx,
            c.total * 1e6,
            c.stage_sum() * 1e6,
            c.floor_sum() * 1e6,
            c.routing.layer.0,
            c.routing.layer.1,
            c.routing.ep.map_or(0, |e| e.0),
            c.routing.ep.map_or(0, |e| e.1),
            c.reps
        );
        for (i, st) in c.stages.iter().enumerate() {
            let _ = writeln!(
                s,
                "      {{\"stage\": \"{}\", \"group\": \"{}\", \"in_layer\": {}, \"us\": {:.3}, \"floor_us\": {:.6}, \"bound\": \"{}\"}}{}",
                st.name,
                st.group().name(),
                st.op.in_layer(),
                st.time * 1e6,
                st.floor * 1e6,
                st.basis,
                if i + 1 < c.stages.len() { "," } else { "" }
            );
        }
        let _ = writeln!(s, "    ]}}{}", if ci + 1 < cases.len() { "," } else { "" });
    }
    s.push_str("  ]\n}\n");
    s
}

/// The value of `"key": value` in one line of [`json`]'s output (quotes stripped).
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(&format!("\"{key}\": "))? + key.len() + 4;
    let rest = &line[at..];
    let v = match rest.strip_prefix('"') {
        Some(q) => &q[..q.find('"')?],
        None => &rest[..rest.find([',', '}'])?],
    };
    Some(v.trim())
}

/// Cases back from a file [`json`] wrote (`--replot`): re-render the tables, the plot and
/// the projection without a GPU.
pub fn parse_json(text: &str) -> Result<Vec<CaseResult>, Error> {
    let num = |line: &str, key: &str| -> Result<f64, Error> {
        Ok(field(line, key)
            .ok_or(format!("no {key} in: {line}"))?
            .parse()?)
    };
    let mut cases: Vec<CaseResult> = Vec::new();
    for line in text.lines() {
        if field(line, "case").is_some() {
            let decode = field(line, "mode") == Some("decode");
            let t = num(line, "tokens")? as usize;
            let ep = num(line, "ep_experts_touched").ok().map(|e| e as usize);
            cases.push(CaseResult {
                decode,
                tokens: t,
                ctx: num(line, "ctx")? as usize,
                stages: Vec::new(),
                total: num(line, "layer_us")? * 1e-6,
                routing: Routing {
                    layer: (
                        num(line, "experts_touched")? as usize,
                        num(line, "routed_rows")? as usize,
                    ),
                    ep: ep
                        .filter(|_| decode)
                        .map(|e| (e, num(line, "ep_rows").unwrap_or(0.0) as usize)),
                },
                // Filled below if the case turns out to have no timed norms.
                untimed: Vec::new(),
                reps: num(line, "reps").unwrap_or(20.0) as usize,
            });
        } else if let Some(name) = field(line, "stage") {
            let c = cases.last_mut().ok_or("a stage before any case")?;
            let op = crate::layer::ops(c.decode, true)
                .into_iter()
                .find(|o| o.name(c.decode) == name)
                .ok_or(format!("unknown stage {name}"))?;
            let basis = match field(line, "bound") {
                Some("FP8 peak") => "FP8 peak",
                Some("bf16 peak") => "bf16 peak",
                _ => "HBM",
            };
            c.stages.push(StageResult {
                op,
                name: op.name(c.decode),
                time: num(line, "us")? * 1e-6,
                floor: num(line, "floor_us")? * 1e-6,
                basis,
            });
        }
    }
    for c in &mut cases {
        if !c.stages.iter().any(|s| s.group() == Group::Norms) {
            c.untimed = crate::layer::untimed(c.tokens)
                .into_iter()
                .map(|(n, f)| (n, f.seconds()))
                .collect();
        }
    }
    Ok(cases)
}

/// Where the time goes: one bar per case, its layer time split by stage group (100% =
/// the case's sum of stage times), the sum of floors marked, the layer time written.
pub fn svg(cases: &[CaseResult]) -> String {
    let (ml, mt, bw, bh, gap) = (170.0, 60.0, 620.0, 24.0, 12.0);
    let legend_w = 250.0;
    let width = ml + bw + 190.0 + legend_w;
    let bars = mt + cases.len() as f64 * (bh + gap) + 30.0;
    let legend = mt + Group::PLOTTED.len() as f64 * 20.0 + 20.0;
    let height = bars.max(legend);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"##
    );
    let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="white"/>"##);
    let _ = writeln!(
        s,
        r##"<text x="{ml}" y="22" font-size="16" font-weight="bold">One DeepSeek-V3.2 MoE layer on one H200: where the time goes</text>"##
    );
    let _ = writeln!(
        s,
        r##"<text x="{ml}" y="42" fill="#555">share of the layer's stage times; black tick: sum of the stage floors; right: layer time</text>"##
    );
    for (i, c) in cases.iter().enumerate() {
        let y = mt + i as f64 * (bh + gap);
        let sum = c.stage_sum();
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" text-anchor="end">{}</text>"##,
            ml - 8.0,
            y + bh / 2.0 + 4.0,
            c.label()
        );
        let mut x = ml;
        for g in Group::PLOTTED {
            let t = c.time_of(|st| st.op.in_layer() && st.group() == g);
            let wdt = bw * t / sum;
            if wdt <= 0.0 {
                continue;
            }
            let _ = writeln!(
                s,
                r##"<rect x="{x:.1}" y="{y:.1}" width="{wdt:.1}" height="{bh}" fill="{}"><title>{}: {} us</title></rect>"##,
                g.color(),
                g.name(),
                us(t)
            );
            x += wdt;
        }
        let fx = ml + bw * (c.floor_sum() / sum).min(1.0);
        let _ = writeln!(
            s,
            r##"<line x1="{fx:.1}" x2="{fx:.1}" y1="{}" y2="{}" stroke="black" stroke-width="2"/>"##,
            y - 3.0,
            y + bh + 3.0
        );
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}">{:.2} ms ({:.2}x floors)</text>"##,
            ml + bw + 6.0,
            y + bh / 2.0 + 4.0,
            c.total * 1e3,
            c.total / c.floor_sum()
        );
    }
    let lx = ml + bw + 180.0;
    for (i, g) in Group::PLOTTED.iter().enumerate() {
        let ly = mt + i as f64 * 20.0;
        let _ = writeln!(
            s,
            r##"<rect x="{lx}" y="{ly}" width="14" height="14" fill="{}"/><text x="{}" y="{}">{}</text>"##,
            g.color(),
            lx + 20.0,
            ly + 11.0,
            g.name()
        );
    }
    s.push_str("</svg>\n");
    s
}
