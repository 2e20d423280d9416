//! The headline: one decode step of one layer (B in {1, 32, 128}, s_q = 1, h_q = 128,
//! context 8K..128K), dense MLA over the bf16 and the FP8 cache against DSA (indexer
//! logits over the FP8 indexer cache, top-k 2048 with block-table translation, sparse MLA
//! decode over the FP8 cache); plus sparse prefill at s_q = 4096, topk 2048, s_kv = 128K.
//!
//! Per-step plans (dense split plan, indexer schedule) run once per step for all 61 layers
//! and are left out of the per-layer times. Every stage is timed on its own (CUDA events,
//! median of 30, L2 flushed when the inputs would fit in it), and the whole DSA layer is
//! timed as one sequence of launches. Prints a table, writes it as Markdown and an SVG
//! plot to `$OUT` (or `target/`).
mod common;
#[path = "dense/mod.rs"]
mod dense;

use std::fmt::Write as _;

use criterion::{criterion_group, criterion_main, Criterion};
use dsa_kernels::cache::{
    write_host_token, CacheKind, IndexerK, IndexerKCache, MlaFp8Cache, INDEXER_DIM,
    MLA_FP8_BYTES_PER_TOKEN, PAGE_SIZE, QK_DIM,
};
use dsa_kernels::cudarc::driver::CudaSlice;
use dsa_kernels::sparse_mla::{SparseExtras, SparsePrefillConfig};
use dsa_kernels::{DsaDecodeStep, DsaDecodeStepConfig, DsaKernels};
use half::bf16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use dense::{bf16_cache, fp8_cache, DenseStep, H_Q, SCALE};

const BATCHES: [usize; 3] = [1, 32, 128];
const CTXS: [usize; 4] = [8192, 32768, 65536, 131072];
const TOPK: usize = 2048;
const IDX_HEADS: usize = 64;

fn indexer_cache(
    stream: &std::sync::Arc<dsa_kernels::cudarc::driver::CudaStream>,
    pages: usize,
) -> IndexerKCache {
    let mut rng = StdRng::seed_from_u64(3);
    let pattern_pages = 64;
    let mut bytes = vec![0u8; pattern_pages * IndexerK::ELEMS_PER_PAGE];
    for slot in 0..pattern_pages * PAGE_SIZE {
        let row: Vec<bf16> = (0..INDEXER_DIM)
            .map(|_| bf16::from_f32(rng.random_range(-1.0f32..1.0)))
            .collect();
        write_host_token::<IndexerK>(&mut bytes, slot, &row, true).unwrap();
    }
    let mut c = IndexerKCache::new(stream, pages).unwrap();
    let total = c.data().len();
    let mut have = 0;
    while have < total {
        let n = bytes.len().min(total - have);
        stream
            .memcpy_htod(&bytes[..n], &mut c.data_mut().slice_mut(have..have + n))
            .unwrap();
        have += n;
    }
    c
}

/// The DSA side of one step: the library's decode step over the dense step's block table
/// and lengths, planned once (outside the per-layer timings), with prepared indexer
/// queries written into it.
struct DsaStep {
    step: DsaDecodeStep,
    out: CudaSlice<bf16>,
    lse: CudaSlice<f32>,
}

impl DsaStep {
    fn new(k: &DsaKernels, d: &DenseStep, batch: usize, ctx: usize) -> Self {
        let stream = k.stream().clone();
        let mut rng = StdRng::seed_from_u64(ctx as u64 + batch as u64);
        let q8: Vec<u8> = (0..batch * IDX_HEADS * INDEXER_DIM)
            .map(|_| dsa_kernels::fp8::f32_to_e4m3(rng.random_range(-8.0f32..8.0)))
            .collect();
        let w: Vec<f32> = (0..batch * IDX_HEADS)
            .map(|_| rng.random_range(0.0f32..0.01))
            .collect();
        let cfg = DsaDecodeStepConfig {
            max_batch: batch,
            next_n: 1,
            max_pages: d.shape.max_pages,
            index_heads: IDX_HEADS,
            heads: H_Q,
            topk: TOPK,
            softmax_scale: SCALE,
            sorted_topk: false,
        };
        assert_eq!(d.shape.max_tokens(), ctx, "contexts are whole pages");
        let mut step = DsaDecodeStep::new(k, cfg).unwrap();
        let (dq8, dw) = step.prepared_queries_mut();
        stream.memcpy_htod(&q8, dq8).unwrap();
        stream.memcpy_htod(&w, dw).unwrap();
        step.plan(k, &d.batch()).unwrap();
        Self {
            step,
            out: stream.alloc_zeros(batch * H_Q * 512).unwrap(),
            lse: stream.alloc_zeros(batch * H_Q).unwrap(),
        }
    }

    fn logits(&mut self, k: &DsaKernels, d: &DenseStep, icache: &IndexerKCache) {
        self.step.index_logits(k, &d.batch(), icache).unwrap();
    }

    fn topk(&mut self, k: &DsaKernels, d: &DenseStep) {
        self.step.select(k, &d.batch()).unwrap();
    }

    fn sparse(&mut self, k: &DsaKernels, d: &DenseStep, cache: &dsa_kernels::cache::MlaFp8Cache) {
        self.step
            .attend(k, &d.batch(), cache, &d.q, &mut self.out, &mut self.lse)
            .unwrap();
    }

    fn layer(
        &mut self,
        k: &DsaKernels,
        d: &DenseStep,
        icache: &IndexerKCache,
        cache: &MlaFp8Cache,
    ) {
        self.step
            .decode_prepared(
                k,
                &d.batch(),
                icache,
                cache,
                &d.q,
                &mut self.out,
                &mut self.lse,
            )
            .unwrap();
    }
}

#[derive(Default, Clone)]
struct Row {
    batch: usize,
    ctx: usize,
    dense_bf16: f64,
    dense_fp8: f64,
    logits: f64,
    topk: f64,
    sparse: f64,
    dsa: f64,
}

fn mla_flops(batch: usize, tokens: usize) -> f64 {
    2.0 * (H_Q * (576 + 512)) as f64 * (batch * tokens) as f64
}

/// Rows back from a table this bench wrote (`dense_vs_dsa.md`), for re-plotting without a
/// GPU: `DSA_REPLOT=path/to/dense_vs_dsa.md cargo bench --bench dense_vs_dsa`.
fn parse_table(md: &str) -> Vec<Row> {
    md.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('|').map(str::trim).collect();
            let num = |i: usize| f.get(i)?.trim_end_matches(['K', 'x']).parse::<f64>().ok();
            let us = |i: usize| num(i).map(|v| v * 1e-6);
            Some(Row {
                batch: num(1)? as usize,
                ctx: num(2)? as usize * 1024,
                dense_bf16: us(3)?,
                dense_fp8: us(4)?,
                logits: us(5)?,
                topk: us(6)?,
                sparse: us(7)?,
                dsa: us(8)?,
            })
        })
        .collect()
}

fn benches(c: &mut Criterion) {
    if let Ok(path) = std::env::var("DSA_REPLOT") {
        let rows = parse_table(&std::fs::read_to_string(&path).expect("DSA_REPLOT table"));
        let out = std::path::Path::new(&path).with_extension("svg");
        std::fs::write(&out, svg(&rows)).unwrap();
        println!("wrote {} ({} rows)", out.display(), rows.len());
        return;
    }
    let Some(k) = common::kernels() else { return };
    let stream = k.stream().clone();
    let pages = BATCHES.iter().max().unwrap() * CTXS.iter().max().unwrap() / PAGE_SIZE;
    let bf = bf16_cache(&stream, pages);
    let f8 = fp8_cache(&stream, pages);
    let ic = indexer_cache(&stream, pages);
    let mut rows = Vec::new();
    for &batch in &BATCHES {
        for &ctx in &CTXS {
            let case = format!("b{batch}/ctx{}k", ctx / 1024);
            let mut d = DenseStep::new(&k, pages, batch, 1, ctx);
            let mut s = DsaStep::new(&k, &d, batch, ctx);
            let flush = batch * ctx * QK_DIM * 2 < (200 << 20);
            let mut r = Row {
                batch,
                ctx,
                ..Default::default()
            };
            let dense_work = |bpt: usize| common::Work {
                flops: mla_flops(batch, ctx),
                bytes: (batch * ctx * bpt) as f64,
                anchor: Some(common::anchors::FLASHMLA_DENSE_B32_128K.get()),
                anchor_unit: "TFLOP/s",
            };
            r.dense_bf16 = common::bench_case(
                c,
                "dense_vs_dsa/dense_bf16",
                &case,
                &stream,
                dense_work(QK_DIM * 2),
                flush,
                || d.layer(&k, &bf),
            );
            r.dense_fp8 = common::bench_case(
                c,
                "dense_vs_dsa/dense_fp8",
                &case,
                &stream,
                dense_work(MLA_FP8_BYTES_PER_TOKEN),
                flush,
                || d.layer(&k, &f8),
            );
            let logits_work = common::Work {
                flops: (2 * IDX_HEADS * INDEXER_DIM * batch * ctx) as f64,
                bytes: (batch * ctx * (132 + 4)) as f64,
                anchor: Some(common::anchors::COPY_GBS.get()),
                anchor_unit: "GB/s",
            };
            r.logits = common::bench_case(
                c,
                "dense_vs_dsa/indexer_logits",
                &case,
                &stream,
                logits_work,
                true,
                || s.logits(&k, &d, &ic),
            );
            let topk_work = common::Work {
                bytes: (batch * ctx * 4) as f64,
                anchor: Some(common::anchors::COPY_GBS.get()),
                anchor_unit: "GB/s",
                ..Default::default()
            };
            r.topk = common::bench_case(
                c,
                "dense_vs_dsa/topk",
                &case,
                &stream,
                topk_work,
                true,
                || s.topk(&k, &d),
            );
            let sparse_work = common::Work {
                flops: mla_flops(batch, TOPK),
                bytes: (batch * TOPK * MLA_FP8_BYTES_PER_TOKEN) as f64,
                anchor: Some(common::anchors::FLASHMLA_SPARSE_FP8_B32_SQ1.get()),
                anchor_unit: "TFLOP/s",
            };
            r.sparse = common::bench_case(
                c,
                "dense_vs_dsa/sparse_fp8",
                &case,
                &stream,
                sparse_work,
                true,
                || s.sparse(&k, &d, &f8),
            );
            r.dsa = common::bench_case(
                c,
                "dense_vs_dsa/dsa_step",
                &case,
                &stream,
                common::Work::default(),
                true,
                || s.layer(&k, &d, &ic, &f8),
            );
            println!(
                "STEP b={batch} ctx={}K: dense bf16 {:.1} us, dense fp8 {:.1} us, DSA {:.1} us (logits {:.1} + top-k {:.1} + sparse {:.1}): DSA {:.2}x faster than dense bf16",
                ctx / 1024,
                r.dense_bf16 * 1e6,
                r.dense_fp8 * 1e6,
                r.dsa * 1e6,
                r.logits * 1e6,
                r.topk * 1e6,
                r.sparse * 1e6,
                r.dense_bf16 / r.dsa
            );
            rows.push(r);
        }
    }
    let prefill = sparse_prefill(c, &k);
    write_outputs(&rows, prefill);
}

/// Sparse prefill at FlashMLA's shape: s_q = 4096, h_q = 128, topk 2048, s_kv = 128K.
fn sparse_prefill(c: &mut Criterion, k: &DsaKernels) -> f64 {
    let stream = k.stream().clone();
    let (s_q, s_kv) = (4096usize, 131072usize);
    let mut rng = StdRng::seed_from_u64(9);
    let q = dense::random_rows(&mut rng, s_q * H_Q);
    let kv = dense::random_rows(&mut rng, s_kv);
    let idx: Vec<i32> = (0..s_q * TOPK)
        .map(|_| rng.random_range(0..s_kv as i32))
        .collect();
    let q = stream.clone_htod(&q).unwrap();
    let kv = stream.clone_htod(&kv).unwrap();
    let idx = stream.clone_htod(&idx).unwrap();
    let mut out = stream.alloc_zeros::<bf16>(s_q * H_Q * 512).unwrap();
    let mut ml = stream.alloc_zeros::<f32>(s_q * H_Q).unwrap();
    let mut lse = stream.alloc_zeros::<f32>(s_q * H_Q).unwrap();
    let cfg = SparsePrefillConfig {
        s_q,
        s_kv,
        heads: H_Q,
        topk: TOPK,
        softmax_scale: SCALE,
    };
    let work = common::Work {
        flops: 2.0 * (H_Q * s_q * (576 + 512)) as f64 * TOPK as f64,
        bytes: 0.0,
        anchor: Some(common::anchors::FLASHMLA_SPARSE_PREFILL.get()),
        anchor_unit: "TFLOP/s",
    };
    common::bench_case(
        c,
        "dense_vs_dsa/sparse_prefill",
        "s_q4096/topk2048/s_kv128k",
        &stream,
        work,
        false,
        || {
            k.sparse_mla_prefill(
                &cfg,
                &q,
                &kv,
                &idx,
                SparseExtras::default(),
                &mut out,
                &mut ml,
                &mut lse,
            )
            .unwrap();
        },
    )
}

fn write_outputs(rows: &[Row], prefill: f64) {
    let mut md = String::new();
    let _ = writeln!(md, "| B | context | dense bf16 (us) | dense FP8 (us) | indexer logits (us) | top-k (us) | sparse FP8 decode (us) | DSA step (us) | DSA vs dense bf16 | DSA vs dense FP8 | dense bf16 TFLOP/s | sparse TFLOP/s |");
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    // A filtered run measures some shapes only: the others stay NaN and get no row.
    for r in rows.iter().filter(|r| r.dsa.is_finite()) {
        let _ = writeln!(
            md,
            "| {} | {}K | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2}x | {:.2}x | {:.0} | {:.0} |",
            r.batch,
            r.ctx / 1024,
            r.dense_bf16 * 1e6,
            r.dense_fp8 * 1e6,
            r.logits * 1e6,
            r.topk * 1e6,
            r.sparse * 1e6,
            r.dsa * 1e6,
            r.dense_bf16 / r.dsa,
            r.dense_fp8 / r.dsa,
            mla_flops(r.batch, r.ctx) / r.dense_bf16 / 1e12,
            mla_flops(r.batch, TOPK) / r.sparse / 1e12,
        );
    }
    let pf = 2.0 * (H_Q * 4096 * (576 + 512)) as f64 * TOPK as f64;
    if prefill.is_finite() {
        let _ = writeln!(
            md,
            "\nSparse prefill, s_q 4096, h_q 128, topk 2048, s_kv 128K: {:.1} us, {:.0} TFLOP/s (FlashMLA on the H200: 529).",
            prefill * 1e6,
            pf / prefill / 1e12
        );
    }
    println!("{md}");
    let dir = std::env::var("OUT").unwrap_or_else(|_| "target".into());
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(format!("{dir}/dense_vs_dsa.md"), &md);
    let _ = std::fs::write(format!("{dir}/dense_vs_dsa.svg"), svg(rows));
}

/// A plotted curve: legend name, colour, the time it reads from a row.
type Series = (&'static str, &'static str, fn(&Row) -> f64);

/// Per-layer decode time against context, one panel per batch size, log-scaled time:
/// dense bf16, dense FP8 and the DSA step (its three stages stacked as thin lines).
fn svg(rows: &[Row]) -> String {
    let (pw, ph, ml, mt, mb) = (300.0, 260.0, 60.0, 50.0, 60.0);
    let width = ml + BATCHES.len() as f64 * (pw + 40.0) + 160.0;
    let height = mt + ph + mb;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"##
    );
    let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="white"/>"##);
    let _ = writeln!(
        s,
        r##"<text x="{}" y="22" font-size="16" font-weight="bold">One MLA decode layer on H200: dense vs DSA (h_q 128, s_q 1, top-k 2048)</text>"##,
        ml
    );
    let series: [Series; 5] = [
        ("dense bf16", "#d62728", |r| r.dense_bf16),
        ("dense FP8", "#ff7f0e", |r| r.dense_fp8),
        ("DSA step", "#1f77b4", |r| r.dsa),
        ("  indexer logits", "#17becf", |r| r.logits),
        ("  sparse FP8 decode", "#2ca02c", |r| r.sparse),
    ];
    let all: Vec<f64> = rows
        .iter()
        .flat_map(|r| series.iter().map(move |(_, _, f)| f(r) * 1e6))
        .filter(|v| *v > 0.0)
        .collect();
    // Log axis fitted to the data (a tenth of a decade of margin), gridlines at decades.
    let lo = all
        .iter()
        .cloned()
        .fold(f64::MAX, f64::min)
        .max(1e-3)
        .log10()
        - 0.1;
    let hi = all.iter().cloned().fold(0.0, f64::max).max(1e-2).log10() + 0.1;
    let y = |us: f64| mt + ph - (us.max(1e-3).log10() - lo) / (hi - lo) * ph;
    for (pi, &b) in BATCHES.iter().enumerate() {
        let x0 = ml + pi as f64 * (pw + 40.0);
        let x = |i: usize| x0 + 20.0 + i as f64 * (pw - 40.0) / (CTXS.len() - 1) as f64;
        let _ = writeln!(
            s,
            r##"<rect x="{x0}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>"##
        );
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" text-anchor="middle" font-weight="bold">B = {b}</text>"##,
            x0 + pw / 2.0,
            mt - 8.0
        );
        let mut d = lo.ceil() as i32;
        while d <= hi.floor() as i32 {
            let yy = y(10f64.powi(d));
            let _ = writeln!(
                s,
                r##"<line x1="{x0}" x2="{}" y1="{yy}" y2="{yy}" stroke="#eee"/>"##,
                x0 + pw
            );
            if pi == 0 {
                let label = if d >= 3 {
                    format!("{} ms", 10f64.powi(d - 3))
                } else {
                    format!("{} us", 10f64.powi(d))
                };
                let _ = writeln!(
                    s,
                    r##"<text x="{}" y="{}" text-anchor="end">{label}</text>"##,
                    x0 - 4.0,
                    yy + 4.0
                );
            }
            d += 1;
        }
        for (i, &ctx) in CTXS.iter().enumerate() {
            let _ = writeln!(
                s,
                r##"<text x="{}" y="{}" text-anchor="middle">{}K</text>"##,
                x(i),
                mt + ph + 18.0,
                ctx / 1024
            );
        }
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" text-anchor="middle">context (tokens)</text>"##,
            x0 + pw / 2.0,
            mt + ph + 38.0
        );
        for (name, color, f) in series.iter() {
            let pts: Vec<String> = CTXS
                .iter()
                .enumerate()
                .filter_map(|(i, &ctx)| {
                    rows.iter()
                        .find(|r| r.batch == b && r.ctx == ctx && f(r).is_finite())
                        .map(|r| format!("{:.1},{:.1}", x(i), y(f(r) * 1e6)))
                })
                .collect();
            let thin = name.starts_with(' ');
            let _ = writeln!(
                s,
                r##"<polyline points="{}" fill="none" stroke="{color}" stroke-width="{}"{}/>"##,
                pts.join(" "),
                if thin { 1.5 } else { 3.0 },
                if thin {
                    r##" stroke-dasharray="4 3""##
                } else {
                    ""
                }
            );
        }
        // Speedup labels at 128K.
        if let Some(r) = rows
            .iter()
            .find(|r| r.batch == b && r.ctx == *CTXS.last().unwrap())
        {
            let _ = writeln!(
                s,
                r##"<text x="{}" y="{}" text-anchor="end" fill="#1f77b4" font-weight="bold">{:.1}x</text>"##,
                x(CTXS.len() - 1) - 6.0,
                // Halfway (in log time) between the dense bf16 and the DSA curve.
                (y(r.dsa * 1e6) + y(r.dense_bf16 * 1e6)) / 2.0 + 4.0,
                r.dense_bf16 / r.dsa
            );
        }
    }
    let lx = ml + BATCHES.len() as f64 * (pw + 40.0);
    for (i, (name, color, _)) in series.iter().enumerate() {
        let ly = mt + 20.0 + i as f64 * 22.0;
        let _ = writeln!(
            s,
            r##"<line x1="{lx}" x2="{}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="3"/>"##,
            lx + 24.0
        );
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}">{}</text>"##,
            lx + 30.0,
            ly + 4.0,
            name.trim()
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="{lx}" y="{}" fill="#555">label: DSA speedup</text>"##,
        mt + 20.0 + 5.0 * 22.0 + 10.0
    );
    let _ = writeln!(
        s,
        r##"<text x="{lx}" y="{}" fill="#555">over dense bf16</text>"##,
        mt + 20.0 + 5.0 * 22.0 + 26.0
    );
    s.push_str("</svg>\n");
    s
}

criterion_group!(dense_vs_dsa, benches);
criterion_main!(dense_vs_dsa);
