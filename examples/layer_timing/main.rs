//! One real-size DeepSeek-V3.2 MoE layer on one GPU, timed stage by stage: hidden 7168,
//! 128 heads, q_lora 1536, kv_lora 512, rope 64, indexer 64 x 128 with top-2048, 256
//! routed experts (top 8) + 1 shared, expert width 2048, seeded FP8 weights with 128x128
//! scales (~12 GB with the dense MLP of layers 0-2), full-size paged caches filled with
//! valid random tokens. Built from the library's public ops only (and cuBLAS for the plain
//! bf16 products): read `layer.rs` for the call sequence an engine enqueues.
//!
//! ```sh
//! cargo run --release --example layer_timing -- --batch 32 --ctx 128k
//! cargo run --release --example layer_timing -- --all          # B 1/32/128 x 32K/128K + prefill
//! ```
//!
//! Options: `--batch 1,32,128`, `--ctx 32k,128k` (decode: every sequence at that context),
//! `--prefill 4k,128k` (a 4096-token chunk ending a prompt of that length; `--chunk N`),
//! `--all`, `--reps N` (timed passes, median; default 20), `--no-bf16` (skip the dense bf16
//! comparison and its cache), `--out DIR` (default `$LAYER_TIMING_OUT`, `$OUT`, or
//! `target/layer_timing`), `--replot FILE.json` (re-render a run's tables, plot and
//! projection from its JSON, no GPU needed).
//!
//! Each stage is timed with CUDA events inside a pass of the whole layer (so the L2 holds
//! what the previous stage left, as in a real step; it is not flushed between stages), the
//! layer again as one back-to-back sequence without events; every pass starts after a 4 GB
//! memset, which empties the L2 and lets the host enqueue the pass ahead of the device.
//! cuBLAS is loaded at run time: `libcublas.so` and `libcublasLt.so` must be on
//! `LD_LIBRARY_PATH`.
#[path = "../../benches/common/anchors.rs"]
#[allow(dead_code)]
mod anchors;
mod blas;
#[path = "../../benches/dense/mod.rs"]
mod dense;
mod layer;
mod model;
mod report;
mod timing;

use std::path::PathBuf;
use std::time::Instant;

use dsa_kernels::cache::{write_host_token, CacheKind, IndexerK, IndexerKCache, PAGE_SIZE};
use dsa_kernels::cudarc::cublas::CudaBlas;
use dsa_kernels::indexer::{rope_tables, YarnRope};
use dsa_kernels::{device, DsaKernels};
use rand::rngs::StdRng;
use rand::SeedableRng;

use layer::{Env, Layer};
use model::{random_bf16, Error, Weights, IDX_DIM};
use report::CaseResult;
use timing::{median, Timer};

const USAGE: &str = "usage: layer_timing [--batch 1,32,128] [--ctx 32k,128k] [--prefill 4k,128k] [--chunk 4096] [--all] [--reps N] [--no-bf16] [--out DIR] [--replot layer_timing.json]";

struct Args {
    batches: Vec<usize>,
    ctxs: Vec<usize>,
    prefills: Vec<usize>,
    chunk: usize,
    reps: usize,
    bf16: bool,
    out: PathBuf,
    /// A `layer_timing.json` to re-render (tables, plot, projection) without a GPU.
    replot: Option<PathBuf>,
}

fn tokens(s: &str) -> Result<usize, Error> {
    let l = s.to_ascii_lowercase();
    Ok(match l.strip_suffix('k') {
        Some(n) => n.parse::<usize>()? * 1024,
        None => l.parse()?,
    })
}

fn list(s: &str) -> Result<Vec<usize>, Error> {
    s.split(',').map(tokens).collect()
}

impl Args {
    fn parse() -> Result<Self, Error> {
        let mut a = Args {
            batches: vec![32],
            ctxs: vec![131072],
            prefills: vec![],
            chunk: 4096,
            reps: 20,
            bf16: true,
            replot: None,
            out: std::env::var("LAYER_TIMING_OUT")
                .or_else(|_| std::env::var("OUT"))
                .map(PathBuf::from)
                .unwrap_or_else(|_| PathBuf::from("target/layer_timing")),
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let mut value = || it.next().ok_or(format!("{flag} needs a value"));
            match flag.as_str() {
                "--batch" => a.batches = list(&value()?)?,
                "--ctx" => a.ctxs = list(&value()?)?,
                "--prefill" => a.prefills = list(&value()?)?,
                "--chunk" => a.chunk = tokens(&value()?)?,
                "--reps" => a.reps = value()?.parse()?,
                "--out" => a.out = PathBuf::from(value()?),
                "--no-bf16" => a.bf16 = false,
                "--replot" => a.replot = Some(PathBuf::from(value()?)),
                "--all" => {
                    a.batches = vec![1, 32, 128];
                    a.ctxs = vec![32768, 131072];
                    a.prefills = vec![4096, 131072];
                }
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => return Err(format!("unknown argument {other}\n{USAGE}").into()),
            }
        }
        let bad_ctx = a.ctxs.iter().any(|&c| c == 0 || c % PAGE_SIZE != 0);
        let bad_prefill = a.prefills.iter().any(|&p| p < a.chunk);
        if bad_ctx || bad_prefill || a.reps == 0 || a.chunk == 0 || a.batches.contains(&0) {
            return Err(format!(
                "contexts must be positive multiples of {PAGE_SIZE}, prefill contexts at least the chunk, reps and batches positive\n{USAGE}"
            )
            .into());
        }
        Ok(a)
    }
}

/// An indexer cache of `pages` pages tiled with 64 pages of valid random keys.
fn indexer_cache(
    s: &std::sync::Arc<dsa_kernels::cudarc::driver::CudaStream>,
    pages: usize,
) -> Result<IndexerKCache, Error> {
    let mut rng = StdRng::seed_from_u64(3);
    let pattern_pages = 64;
    let mut bytes = vec![0u8; pattern_pages * IndexerK::ELEMS_PER_PAGE];
    for slot in 0..pattern_pages * PAGE_SIZE {
        write_host_token::<IndexerK>(&mut bytes, slot, &random_bf16(&mut rng, IDX_DIM, 1.0), true)?;
    }
    let mut c = IndexerKCache::new(s, pages)?;
    dense::fill(s, c.data_mut(), &bytes);
    Ok(c)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("layer_timing: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Error> {
    let args = Args::parse()?;
    if let Some(path) = &args.replot {
        let cases = report::parse_json(&std::fs::read_to_string(path)?)?;
        return write(&args, &cases);
    }
    let t0 = Instant::now();
    let say = |msg: String| println!("[{:7.2} s] {msg}", t0.elapsed().as_secs_f64());
    let ctx = match device::open_device(0) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("layer_timing needs a CUDA GPU: {e}");
            std::process::exit(2);
        }
    };
    // One stream for everything: no cross-stream event tracking needed.
    // SAFETY: every buffer below is used on `stream` only.
    unsafe { ctx.disable_event_tracking() };
    let stream = ctx.new_stream()?;
    let k = DsaKernels::new(stream.clone())?;
    k.preload()?;
    say(format!(
        "{} ({} SMs), kernels loaded",
        k.device().name,
        k.device().sm_count
    ));
    let blas = std::panic::catch_unwind(|| CudaBlas::new(stream.clone())).map_err(|_| {
        "cuBLAS could not be loaded: put libcublas.so and libcublasLt.so on LD_LIBRARY_PATH"
    })??;

    let w = Weights::new(&stream, 11)?;
    stream.synchronize()?;
    let sizes = model::Sizes::deepseek_v32();
    say(format!(
        "weights: {:.2} GB for the MoE layer + {:.2} GB for the dense MLP, seeded FP8 with 128x128 scales",
        sizes.moe_layer() / 1e9,
        sizes.dense_mlp / 1e9
    ));

    let max_decode = args
        .batches
        .iter()
        .flat_map(|&b| args.ctxs.iter().map(move |&c| b * c))
        .max()
        .unwrap_or(0);
    let max_prefill = args.prefills.iter().copied().max().unwrap_or(0);
    let pages = max_decode.max(max_prefill).div_ceil(PAGE_SIZE).max(1);
    let mla = dense::fp8_cache(&stream, pages);
    let idx = indexer_cache(&stream, pages)?;
    let mla_bf16 = (args.bf16 && !args.ctxs.is_empty() && !args.batches.is_empty())
        .then(|| dense::bf16_cache(&stream, pages));
    let max_pos = args
        .ctxs
        .iter()
        .chain(&args.prefills)
        .copied()
        .max()
        .unwrap_or(1);
    let (cos, sin) = rope_tables(&YarnRope::deepseek_v32(), max_pos)?;
    stream.synchronize()?;
    say(format!(
        "caches: {} pages = {} tokens: MLA FP8 {:.2} GB, indexer {:.2} GB{}",
        pages,
        pages * PAGE_SIZE,
        mla.data().len() as f64 / 1e9,
        idx.data().len() as f64 / 1e9,
        mla_bf16
            .as_ref()
            .map(|c| format!(
                ", MLA bf16 (dense comparison) {:.2} GB",
                c.data().len() as f64 * 2.0 / 1e9
            ))
            .unwrap_or_default()
    ));
    let mut rng = StdRng::seed_from_u64(5);
    let mut env = Env {
        blas,
        w,
        mla,
        idx,
        mla_bf16,
        cos: stream.clone_htod(&cos)?,
        sin: stream.clone_htod(&sin)?,
        max_pos,
        act_pattern: random_bf16(&mut rng, (1 << 20) + 24, 1.0),
        k,
    };
    let mut timer = Timer::new(&stream, 40)?;
    let mut cases = Vec::new();
    for &b in &args.batches {
        for &c in &args.ctxs {
            say(format!(
                "decode B {b}, context {}: setting up",
                report::ctx_label(c)
            ));
            match Layer::decode(&env, b, c)
                .and_then(|l| measure(&mut env, &mut timer, l, args.reps))
            {
                Ok(r) => {
                    progress(&say, &r);
                    cases.push(r);
                }
                Err(e) => say(format!("decode B {b}, context {c}: failed: {e}")),
            }
        }
    }
    for &s_kv in &args.prefills {
        say(format!(
            "prefill {} tokens ending a {} prompt: setting up",
            args.chunk,
            report::ctx_label(s_kv)
        ));
        match Layer::prefill(&env, args.chunk, s_kv)
            .and_then(|l| measure(&mut env, &mut timer, l, args.reps))
        {
            Ok(r) => {
                progress(&say, &r);
                cases.push(r);
            }
            Err(e) => say(format!("prefill of {s_kv}: failed: {e}")),
        }
    }
    say(format!(
        "host enqueue of a pass took at most {:.2} ms; the head-start memset lasts {:.2} ms{}",
        timer.max_enqueue * 1e3,
        timer.head_start_s * 1e3,
        if timer.max_enqueue > timer.head_start_s {
            " (some stages may include launch gaps)"
        } else {
            ""
        }
    ));
    write(&args, &cases)
}

fn progress(say: &impl Fn(String), c: &CaseResult) {
    println!("{}", report::case_table(c));
    let (r, e) = c.furthest();
    say(format!(
        "{}: layer {:.1} us, floors {:.1} us ({:.2}x); furthest (floors >= 1 us): {} ({:.1}x), most time above floor: {} (+{:.1} us)",
        c.label(),
        c.total * 1e6,
        c.floor_sum() * 1e6,
        c.total / c.floor_sum(),
        r.name,
        r.time / r.floor,
        e.name,
        (e.time - e.floor) * 1e6
    ));
}

/// Warm-up, `reps` evented passes (per-stage medians), `reps` back-to-back passes of the
/// layer's stages (the layer time).
fn measure(
    env: &mut Env,
    timer: &mut Timer,
    mut layer: Layer,
    reps: usize,
) -> Result<CaseResult, Error> {
    // Each stage once on its own first: a stage the library refuses (a host check) is
    // reported and left out instead of ending the run.
    let mut ops = Vec::new();
    for op in layer::ops(layer.decode, env.mla_bf16.is_some()) {
        match layer.run(env, op) {
            Ok(()) => ops.push(op),
            Err(e) => println!("  stage '{}' left out: {e}", op.name(layer.decode)),
        }
    }
    env.stream().synchronize()?;
    for _ in 0..2 {
        timer.stages(ops.len(), |i| layer.run(env, ops[i]))?;
    }
    let routing = layer.routing(env.stream())?;
    let mut samples = vec![Vec::with_capacity(reps); ops.len()];
    for _ in 0..reps {
        for (s, t) in samples
            .iter_mut()
            .zip(timer.stages(ops.len(), |i| layer.run(env, ops[i]))?)
        {
            s.push(t);
        }
    }
    let in_layer: Vec<_> = ops.iter().copied().filter(|o| o.in_layer()).collect();
    let mut totals = Vec::with_capacity(reps);
    for _ in 0..reps {
        totals.push(
            timer
                .sequence(in_layer.len(), |i| layer.run(env, in_layer[i]))?
                .1,
        );
    }
    let stages = ops
        .iter()
        .zip(samples)
        .map(|(&op, s)| {
            let f = layer.floor(op, &env.w, routing);
            report::StageResult {
                op,
                name: op.name(layer.decode),
                time: median(s),
                floor: f.seconds(),
                basis: f.basis(),
            }
        })
        .collect();
    Ok(CaseResult {
        decode: layer.decode,
        tokens: layer.t,
        ctx: layer.ctx,
        stages,
        total: median(totals),
        routing,
        untimed: Vec::new(),
        reps,
    })
}

fn write(args: &Args, cases: &[CaseResult]) -> Result<(), Error> {
    let mut md = String::from("## One DeepSeek-V3.2 layer on one H200, stage by stage\n\n");
    md.push_str(&format!(
        "Floors: bytes / {:.0} GB/s (device copy, read + write) or FLOPs / {:.0} TFLOP/s bf16, {:.0} TFLOP/s FP8 \
         (132 SMs x 4096 / 8192 FLOP per clock at ~1.46 GHz; the spec sheet's 989 / 1979 at the 1.98 GHz boost \
         would lower the FLOP-bound floors by a fifth), whichever is larger. Stage times: CUDA events between the \
         stages of one pass of the layer (median of {} passes; L2 not flushed between stages, emptied before \
         each pass by a 4 GB memset that also lets the host enqueue the pass ahead of the device); layer: the \
         same stages back to back without events. Decode: every sequence at the full context, pages \
         shuffled over full-size caches (MLA FP8 656 B and indexer 132 B per token), MoE rows aligned to 64; \
         prefill: a 4096-token chunk, MoE rows aligned to 128. Routing: uniform random gate logits from \
         seeded weights (experts touched per case in its table).\n\n",
        model::COPY_BPS / 1e9,
        model::BF16_PEAK / 1e12,
        model::FP8_PEAK / 1e12,
        cases.first().map_or(args.reps, |c| c.reps)
    ));
    md.push_str(&report::summary_table(cases));
    md.push('\n');
    for c in cases {
        md.push_str(&report::case_table(c));
        md.push('\n');
    }
    md.push_str("### 61-layer decode step\n\n");
    md.push_str(&report::projection_notes());
    md.push('\n');
    for c in cases.iter().filter(|c| c.decode) {
        md.push_str(&report::projection(c));
        md.push('\n');
    }
    println!("\n{md}");
    std::fs::create_dir_all(&args.out)?;
    let base = args.out.join("layer_timing");
    std::fs::write(base.with_extension("md"), &md)?;
    std::fs::write(base.with_extension("json"), report::json(cases))?;
    std::fs::write(base.with_extension("svg"), report::svg(cases))?;
    println!("wrote {}.{{md,json,svg}}", base.display());
    Ok(())
}
