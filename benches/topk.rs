//! Top-k of 2048: GB/s of logits read (each row once, the floor of any selection).
//!
//! Anchors: 128-row cases against the H200's measured copy rate (4242 GB/s); the 4-row case against vLLM's radix top-k, ~22 us for 4 x 128K keys on a
//! B200 (4 * 131072 * 4 B / 22 us = 95 GB/s).
mod common;

use criterion::{criterion_group, criterion_main, Criterion};
use dsa_kernels::topk::{TopkOptions, TopkRanges, TopkShape};
use dsa_kernels::DsaKernels;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Indexer-like logits: a weighted sum of ReLUs is mostly small and positive with a long
/// tail, both signs possible; normal-ish values with a heavier right tail stand in.
fn logits(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u: f32 = rng.random_range(-1.0..1.0);
            let v: f32 = rng.random_range(0.0..1.0);
            u + v * v * v * 4.0
        })
        .collect()
}

/// Sixteen distinct values: thousands of exact ties at the threshold, so the sampled
/// estimate cannot isolate ~2k candidates and the full select (more passes) runs.
fn few_distinct(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(0..16) as f32).collect()
}

fn case(c: &mut Criterion, k: &DsaKernels, rows: usize, cols: usize, sorted: bool, ties: bool) {
    let stream = k.stream().clone();
    let mut rng = StdRng::seed_from_u64(rows as u64 * 31 + cols as u64);
    let host = if ties {
        few_distinct(&mut rng, rows * cols)
    } else {
        logits(&mut rng, rows * cols)
    };
    let d_logits = stream.clone_htod(&host).unwrap();
    let lens = stream.clone_htod(&vec![cols as i32; rows]).unwrap();
    let mut out = stream.alloc_zeros::<i32>(rows * 2048).unwrap();
    let bytes = (rows * cols * 4) as f64;
    let anchor = if rows <= 4 {
        ("vLLM B200 4x128K 22us = 95 GB/s", 95.3)
    } else {
        common::anchors::COPY_GBS.get()
    };
    let work = common::Work {
        bytes,
        anchor: Some(anchor),
        anchor_unit: "GB/s",
        ..Default::default()
    };
    let name = format!(
        "k2048/{rows}x{}K{}",
        cols / 1024,
        if sorted { "/sorted" } else { "" }
    ) + if ties { "/ties" } else { "" };
    common::bench_case(c, "topk", &name, &stream, work, true, || {
        k.topk(
            &d_logits,
            TopkRanges::Lengths(&lens),
            TopkShape::new(rows, cols),
            TopkOptions {
                sorted,
                ..Default::default()
            },
            &mut out,
        )
        .unwrap();
    });
}

fn benches(c: &mut Criterion) {
    let Some(k) = common::kernels() else { return };
    case(c, &k, 128, 32 * 1024, false, false);
    case(c, &k, 128, 128 * 1024, false, false);
    case(c, &k, 4, 128 * 1024, false, false);
    case(c, &k, 128, 128 * 1024, true, false);
    case(c, &k, 4096, 8 * 1024, false, false);
    case(c, &k, 128, 128 * 1024, false, true);
}

criterion_group!(topk, benches);
criterion_main!(topk);
