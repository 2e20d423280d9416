//! Shared harness of the benches: CUDA-event timing inside criterion's `iter_custom`, L2
//! flushing, and one result line per case (time, TFLOP/s, GB/s, anchor ratio), also
//! appended as JSON to `$DSA_BENCH_OUT` (default `target/bench-results.jsonl`).
#![allow(dead_code)]
pub mod anchors;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use criterion::Criterion;
use dsa_kernels::cudarc::driver::{sys, CudaSlice, CudaStream};
use dsa_kernels::{device, DsaKernels};

/// The handle, or `None` (with a message) on a machine without a usable GPU, so `cargo
/// bench` on a CPU machine reports the benches as skipped.
pub fn kernels() -> Option<DsaKernels> {
    let opened = device::open_device(0).and_then(|ctx| {
        // The anchors' row is the one of this GPU.
        if let Ok(name) = ctx.name() {
            anchors::set_gpu(&name);
        }
        DsaKernels::new(ctx.default_stream())
    });
    match opened {
        Ok(k) => Some(k),
        Err(e) => {
            eprintln!("benches skipped: {e}");
            None
        }
    }
}

/// A buffer larger than Hopper's 50 MB L2; writing it evicts everything else.
pub struct L2Flush(CudaSlice<u8>);

impl L2Flush {
    pub fn new(stream: &Arc<CudaStream>) -> Self {
        Self(
            stream
                .alloc_zeros::<u8>(128 << 20)
                .expect("L2 flush buffer"),
        )
    }
    pub fn flush(&mut self, stream: &Arc<CudaStream>) {
        stream.memset_zeros(&mut self.0).expect("L2 flush");
    }
}

/// Device time of `f` (which enqueues work on `stream`), in seconds, measured with CUDA
/// events around each call, L2 flushed before each when `flush` is given. Returns every
/// sample.
pub fn time_samples(
    stream: &Arc<CudaStream>,
    reps: usize,
    mut flush: Option<&mut L2Flush>,
    mut f: impl FnMut(),
) -> Vec<f64> {
    let ctx = stream.context();
    let start = ctx
        .new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
        .unwrap();
    let end = ctx
        .new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT))
        .unwrap();
    let mut out = Vec::with_capacity(reps);
    for _ in 0..reps {
        if let Some(l2) = flush.as_deref_mut() {
            l2.flush(stream);
        }
        start.record(stream).unwrap();
        f();
        end.record(stream).unwrap();
        end.synchronize().unwrap();
        out.push(start.elapsed_ms(&end).unwrap() as f64 * 1e-3);
    }
    out
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// What one case does, for the printed rates.
#[derive(Clone, Debug, Default)]
pub struct Work {
    /// Floating-point operations per call (0 when not meaningful).
    pub flops: f64,
    /// Bytes that must move through HBM per call (0 when not meaningful).
    pub bytes: f64,
    /// The anchor: its name and its rate in the same unit as `anchor_unit`.
    pub anchor: Option<(&'static str, f64)>,
    /// "TFLOP/s" or "GB/s": which rate the anchor ratio compares.
    pub anchor_unit: &'static str,
}

/// Benchmarks `f` under criterion (CUDA-event time per call via `iter_custom`), and prints
/// and records one line: median time, TFLOP/s, GB/s, anchor ratio.
pub fn bench_case(
    c: &mut Criterion,
    group: &str,
    case: &str,
    stream: &Arc<CudaStream>,
    work: Work,
    flush_l2: bool,
    mut f: impl FnMut(),
) -> f64 {
    if !selected(group, case) {
        return f64::NAN;
    }
    let mut l2 = flush_l2.then(|| L2Flush::new(stream));
    // Warm-up: module load and first-touch costs stay out of the numbers.
    for _ in 0..3 {
        f();
    }
    stream.synchronize().unwrap();
    let mut samples = time_samples(stream, 30, l2.as_mut(), &mut f);
    let t = median(&mut samples);
    report(group, case, t, &work);
    let mut g = c.benchmark_group(group);
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_secs(1));
    g.bench_function(case, |b| {
        b.iter_custom(|iters| {
            let s = time_samples(stream, iters as usize, l2.as_mut(), &mut f);
            Duration::from_secs_f64(s.iter().sum())
        })
    });
    g.finish();
    t
}

/// Whether `group/case` passes the bench binary's name filter (criterion's positional
/// argument), so a filtered run neither times nor prints the cases it skips.
pub fn selected(group: &str, case: &str) -> bool {
    let id = format!("{group}/{case}");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a.starts_with("--") {
            // Flags of criterion/libtest that take a value.
            if matches!(
                a.as_str(),
                "--save-baseline"
                    | "--baseline"
                    | "--load-baseline"
                    | "--profile-time"
                    | "--sample-size"
                    | "--warm-up-time"
                    | "--measurement-time"
                    | "--output-format"
                    | "--color"
                    | "--plotting-backend"
                    | "--noise-threshold"
                    | "--confidence-level"
                    | "--significance-level"
                    | "--nresamples"
            ) {
                args.next();
            }
            continue;
        }
        return id.contains(&a);
    }
    true
}

/// Prints and records one result line.
pub fn report(group: &str, case: &str, secs: f64, w: &Work) {
    let tflops = if w.flops > 0.0 {
        w.flops / secs / 1e12
    } else {
        0.0
    };
    let gbs = if w.bytes > 0.0 {
        w.bytes / secs / 1e9
    } else {
        0.0
    };
    let (anchor_name, ratio) = match w.anchor {
        Some((name, rate)) => {
            let mine = if w.anchor_unit == "GB/s" { gbs } else { tflops };
            (name, mine / rate)
        }
        None => ("-", f64::NAN),
    };
    println!(
        "RESULT {group}/{case}: {:.2} us  {:.1} TFLOP/s  {:.0} GB/s  anchor {} ratio {:.2}",
        secs * 1e6,
        tflops,
        gbs,
        anchor_name,
        ratio
    );
    let path = std::env::var("DSA_BENCH_OUT").unwrap_or_else(|_| {
        std::env::var("OUT")
            .map(|o| format!("{o}/bench-results.jsonl"))
            .unwrap_or_else(|_| "target/bench-results.jsonl".into())
    });
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(
            file,
            "{{\"group\":\"{group}\",\"case\":\"{case}\",\"us\":{:.3},\"tflops\":{tflops:.2},\"gbs\":{gbs:.1},\"anchor\":\"{anchor_name}\",\"ratio\":{}}}",
            secs * 1e6,
            if ratio.is_finite() { format!("{ratio:.3}") } else { "null".into() }
        );
    }
}
