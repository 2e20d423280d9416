//! MoE grouped GEMM (FP8 1x128 x 128x128 block scales, bf16 out): TFLOP/s on valid rows for
//! the contiguous and masked shapes DeepGEMM publishes, and GB/s of expert weight bytes
//! (codes + scales of every expert touched) for routed decode over 256 experts, against
//! the device copy bandwidth. L2 is flushed before every timed call.
//!
//! Anchors (H200 unless marked): cuBLASLt block-scaled FP8 GEMM 1250 / 1080 TFLOP/s
//! (8192 x 4096 x 7168 / 8192 x 7168 x 2048); PyTorch FP8 grouped GEMM (rowwise scales)
//! 1133 / 818 TFLOP/s at 8 x 4096 rows and 2811 GB/s with 256 experts x 16 rows; device
//! copy 4242 GB/s; DeepGEMM on an H800 (published): contiguous 1346 / 1214, masked 1233 /
//! 1040 / 932 TFLOP/s (1 x 1024 / 2 x 512 / 4 x 256, N 4096, K 7168).
mod common;

use common::{bench_case, Work};
use criterion::{criterion_group, criterion_main, Criterion};
use dsa_kernels::cudarc::driver::{CudaSlice, CudaStream};
use dsa_kernels::moe::gemm::{
    contiguous_capacity, grouped_gemm_contiguous, grouped_gemm_masked, sfa_row_stride,
    ContiguousShape, MaskedShape,
};
use dsa_kernels::DsaKernels;
use half::bf16;
use rand::rngs::StdRng;
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use std::sync::Arc;

fn copy_gbs() -> f64 {
    common::anchors::COPY_GBS.get().1
}
/// DeepSeek-V3.2 expert shapes: w13 [4096, 7168] and w2 [7168, 2048].
const W13: (usize, usize) = (4096, 7168);
const W2: (usize, usize) = (7168, 2048);

/// Fills device buffers with random e4m3 codes of moderate magnitude (never NaN): 32 MB
/// generated once, then copied on the device.
struct Filler {
    seed: CudaSlice<u8>,
}

impl Filler {
    fn new(stream: &Arc<CudaStream>, rng: &mut StdRng) -> Self {
        let host: Vec<u8> = (0..32 << 20)
            .map(|_| {
                let c: u8 = rng.random();
                (c & 0x80) | (0x20 + (c & 0x7f) % 0x40)
            })
            .collect();
        Self {
            seed: stream.clone_htod(&host).unwrap(),
        }
    }
    fn codes(&self, stream: &Arc<CudaStream>, n: usize) -> CudaSlice<u8> {
        let mut out = stream.alloc_zeros::<u8>(n.max(16)).unwrap();
        let mut off = 0;
        while off < n {
            let len = self.seed.len().min(n - off);
            stream
                .memcpy_dtod(&self.seed.slice(..len), &mut out.slice_mut(off..off + len))
                .unwrap();
            off += len;
        }
        out
    }
}

fn scales(stream: &Arc<CudaStream>, rng: &mut StdRng, n: usize) -> CudaSlice<f32> {
    let v: Vec<f32> = (0..n.max(4))
        .map(|_| 2f32.powi(rng.random_range(-12..-6)))
        .collect();
    stream.clone_htod(&v).unwrap()
}

/// Weights of `groups` experts of one GEMM: codes [g, n, k] and scales [g, n/128, k/128].
struct Weights {
    b: CudaSlice<u8>,
    sfb: CudaSlice<f32>,
}

fn weights(
    stream: &Arc<CudaStream>,
    f: &Filler,
    rng: &mut StdRng,
    g: usize,
    n: usize,
    k: usize,
) -> Weights {
    Weights {
        b: f.codes(stream, g * n * k),
        sfb: scales(stream, rng, g * (n / 128) * (k / 128)),
    }
}

fn weight_bytes(n: usize, k: usize) -> f64 {
    (n * k + (n / 128) * (k / 128) * 4) as f64
}

/// Activations and output of one contiguous GEMM over `rows` rows.
struct Contiguous {
    shape: ContiguousShape,
    a: CudaSlice<u8>,
    sfa: CudaSlice<f32>,
    ids: CudaSlice<i32>,
    d: CudaSlice<bf16>,
}

impl Contiguous {
    fn new(
        stream: &Arc<CudaStream>,
        f: &Filler,
        rng: &mut StdRng,
        ids: &[i32],
        groups: usize,
        nk: (usize, usize),
        align: usize,
    ) -> Self {
        let rows = ids.len();
        let (n, k) = nk;
        Self {
            shape: ContiguousShape {
                rows,
                groups,
                n,
                k,
                align,
            },
            a: f.codes(stream, rows * k),
            sfa: scales(stream, rng, (k / 128) * sfa_row_stride(rows)),
            ids: stream.clone_htod(ids).unwrap(),
            d: stream.alloc_zeros::<bf16>(rows * n).unwrap(),
        }
    }
    fn run(&mut self, k: &DsaKernels, w: &Weights) {
        grouped_gemm_contiguous(
            k,
            self.shape,
            &self.a,
            &self.sfa,
            &w.b,
            &w.sfb,
            &self.ids,
            &mut self.d,
        )
        .unwrap();
    }
}

/// `m_indices` of a contiguous layout: expert `e` gets `counts[e]` rows padded to `align`,
/// then -1 rows up to `capacity`.
fn layout(counts: &[usize], align: usize, capacity: usize) -> Vec<i32> {
    let mut ids = Vec::with_capacity(capacity);
    for (e, &c) in counts.iter().enumerate() {
        ids.extend(std::iter::repeat_n(e as i32, c));
        ids.extend(std::iter::repeat_n(-1, c.div_ceil(align) * align - c));
    }
    assert!(ids.len() <= capacity);
    ids.resize(capacity, -1);
    ids
}

fn contiguous(
    c: &mut Criterion,
    k: &DsaKernels,
    f: &Filler,
    groups: usize,
    m: usize,
    nk: (usize, usize),
    anchor: (&'static str, f64),
) {
    let stream = k.stream().clone();
    let mut rng = StdRng::seed_from_u64((groups * m + nk.0) as u64);
    let w = weights(&stream, f, &mut rng, groups, nk.0, nk.1);
    let ids = layout(&vec![m; groups], 128, groups * m);
    let mut x = Contiguous::new(&stream, f, &mut rng, &ids, groups, nk, 128);
    let work = Work {
        flops: 2.0 * (groups * m * nk.0 * nk.1) as f64,
        bytes: 0.0,
        anchor: Some(anchor),
        anchor_unit: "TFLOP/s",
    };
    let case = format!("{groups}x{m}_n{}_k{}", nk.0, nk.1);
    bench_case(c, "moe_gemm_contiguous", &case, &stream, work, true, || {
        x.run(k, &w)
    });
}

#[allow(clippy::too_many_arguments)]
/// Masked: `groups` experts with `max_m` slots, `valid[g]` rows each. Rates count valid
/// rows only; GB/s counts weight bytes.
fn masked(
    c: &mut Criterion,
    k: &DsaKernels,
    f: &Filler,
    case: &str,
    max_m: usize,
    valid: &[i32],
    nk: (usize, usize),
    anchor: Option<(&'static str, f64)>,
    unit: &'static str,
) {
    let stream = k.stream().clone();
    let groups = valid.len();
    let (n, kk) = nk;
    let mut rng = StdRng::seed_from_u64(max_m as u64 * 31 + groups as u64);
    let w = weights(&stream, f, &mut rng, groups, n, kk);
    let a = f.codes(&stream, groups * max_m * kk);
    let sfa = scales(&stream, &mut rng, groups * (kk / 128) * max_m);
    let mm = stream.clone_htod(valid).unwrap();
    let mut d = stream.alloc_zeros::<bf16>(groups * max_m * n).unwrap();
    let shape = MaskedShape {
        groups,
        max_m,
        n,
        k: kk,
    };
    let rows: usize = valid.iter().map(|&v| v as usize).sum();
    let work = Work {
        flops: 2.0 * (rows * n * kk) as f64,
        bytes: groups as f64 * weight_bytes(n, kk),
        anchor,
        anchor_unit: unit,
    };
    bench_case(c, "moe_gemm_masked", case, &stream, work, true, || {
        grouped_gemm_masked(k, shape, &a, &sfa, &w.b, &w.sfb, &mm, &mut d).unwrap()
    });
}

/// Per-expert row counts of `t` tokens routed uniformly to 8 distinct of 256 experts.
fn route_counts(t: usize, seed: u64) -> Vec<usize> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut counts = vec![0usize; 256];
    for _ in 0..t {
        for e in sample(&mut rng, 256, 8) {
            counts[e] += 1;
        }
    }
    counts
}

/// Both expert GEMMs of one MoE layer (w13 then w2) over the contiguous layout of a
/// uniform routing of `t` tokens, capacity from the worst-case formula. Decode: GB/s of
/// the touched experts' weights against the copy bandwidth; prefill: TFLOP/s.
fn routed(
    c: &mut Criterion,
    k: &DsaKernels,
    f: &Filler,
    w13: &Weights,
    w2: &Weights,
    t: usize,
    align: usize,
) {
    let stream = k.stream().clone();
    let counts = route_counts(t, t as u64);
    let touched = counts.iter().filter(|&&c| c > 0).count();
    let cap = contiguous_capacity(t, 8, 256, align).unwrap();
    let ids = layout(&counts, align, cap);
    let mut rng = StdRng::seed_from_u64(t as u64 + 99);
    let mut x1 = Contiguous::new(&stream, f, &mut rng, &ids, 256, W13, align);
    let mut x2 = Contiguous::new(&stream, f, &mut rng, &ids, 256, W2, align);
    let decode = t <= 512;
    let work = Work {
        flops: 2.0 * (t * 8) as f64 * (W13.0 * W13.1 + W2.0 * W2.1) as f64,
        bytes: touched as f64 * (weight_bytes(W13.0, W13.1) + weight_bytes(W2.0, W2.1)),
        anchor: decode.then_some(("device copy", copy_gbs())),
        anchor_unit: if decode { "GB/s" } else { "TFLOP/s" },
    };
    let case = format!("t{t}_align{align}_experts{touched}");
    bench_case(c, "moe_gemm_routed", &case, &stream, work, true, || {
        x1.run(k, w13);
        x2.run(k, w2);
    });
}

fn benches(c: &mut Criterion) {
    let Some(k) = common::kernels() else { return };
    let stream = k.stream().clone();
    let mut rng = StdRng::seed_from_u64(1);
    let f = Filler::new(&stream, &mut rng);
    for (g, m) in [(8, 4096), (4, 8192)] {
        let anchors = if g == 8 {
            [
                ("torch grouped H200", 1133.0),
                ("torch grouped H200", 818.0),
            ]
        } else {
            [("DeepGEMM H800", 1346.0), ("DeepGEMM H800", 1214.0)]
        };
        contiguous(c, &k, &f, g, m, W13, anchors[0]);
        contiguous(c, &k, &f, g, m, W2, anchors[1]);
    }
    for (g, m, anchor) in [(1, 1024, 1233.0), (2, 512, 1040.0), (4, 256, 932.0)] {
        let case = format!("{g}x{m}_n4096_k7168");
        masked(
            c,
            &k,
            &f,
            &case,
            m,
            &vec![m as i32; g],
            W13,
            Some(("DeepGEMM H800", anchor)),
            "TFLOP/s",
        );
    }
    // Expert-parallel decode: 32 local experts, 128 slots, 16-64 valid rows each.
    let mut r = StdRng::seed_from_u64(32);
    let valid: Vec<i32> = (0..32).map(|_| r.random_range(16..=64)).collect();
    masked(
        c,
        &k,
        &f,
        "ep_decode_32x128_n4096_k7168",
        128,
        &valid,
        W13,
        Some(("device copy", copy_gbs())),
        "GB/s",
    );

    // Routed decode / prefill over 256 experts: 11.3 GB of weights, allocated once.
    let w13 = weights(&stream, &f, &mut rng, 256, W13.0, W13.1);
    let w2 = weights(&stream, &f, &mut rng, 256, W2.0, W2.1);
    for t in [1, 32, 128, 512] {
        routed(c, &k, &f, &w13, &w2, t, 128);
        routed(c, &k, &f, &w13, &w2, t, 64);
    }
    for t in [4096, 16384] {
        routed(c, &k, &f, &w13, &w2, t, 128);
    }
    for t in [128, 4096] {
        moe_layer_and_ops(c, &k, &w13, &w2, t);
    }
}

// ---- MoE ops and the whole layer (routing to combine), DeepSeek-V3 shapes ----

/// Each op of the layer at `t` tokens (route, plan, permute + quant, SwiGLU + quant,
/// combine; GB/s of the bytes each must move) and the whole [`MoeLayer`] (routed experts
/// with a shared expert of width 2048, TFLOP/s on valid rows, and GB/s of the touched
/// experts' weights at decode sizes). The routed weights are the GEMM benches' w13 / w2.
fn moe_layer_and_ops(c: &mut Criterion, k: &DsaKernels, w13: &Weights, w2: &Weights, t: usize) {
    use dsa_kernels::moe::{
        Fp8Weights, MoeLayer, MoePlan, MoeShape, MoeWeights, RouteConfig, SharedExpert,
    };
    let stream = k.stream().clone();
    let mut rng = StdRng::seed_from_u64(t as u64 + 7);
    let shape = MoeShape::deepseek_v3(t);
    let cfg = RouteConfig::DEEPSEEK_V3;
    let (h, e, top_k, inter) = (shape.hidden, shape.experts, shape.top_k, shape.inter);
    let logits: Vec<f32> = (0..t * e).map(|_| rng.random_range(-4.0f32..4.0)).collect();
    let x: Vec<bf16> = (0..t * h)
        .map(|_| bf16::from_f32(rng.random_range(-1.0f32..1.0)))
        .collect();
    let logits = stream.clone_htod(&logits).unwrap();
    let x = stream.clone_htod(&x).unwrap();
    let bias = stream.alloc_zeros::<f32>(e).unwrap();
    let mut ids = stream.alloc_zeros::<i32>(t * top_k).unwrap();
    let mut rw = stream.alloc_zeros::<f32>(t * top_k).unwrap();
    let mut plan = MoePlan::new(&stream, &shape).unwrap();
    let mut a1 = stream.alloc_zeros::<u8>(shape.a1_len().unwrap()).unwrap();
    let mut s1 = stream
        .alloc_zeros::<f32>(shape.sfa1_len().unwrap())
        .unwrap();
    let hbuf = stream.alloc_zeros::<bf16>(shape.h_len().unwrap()).unwrap();
    let mut a2 = stream.alloc_zeros::<u8>(shape.a2_len().unwrap()).unwrap();
    let mut s2 = stream
        .alloc_zeros::<f32>(shape.sfa2_len().unwrap())
        .unwrap();
    let y = stream.alloc_zeros::<bf16>(shape.y_len().unwrap()).unwrap();
    let mut out = stream.alloc_zeros::<bf16>(t * h).unwrap();
    k.moe_route(&shape, &cfg, &logits, &bias, &mut ids, &mut rw)
        .unwrap();
    k.moe_plan(&shape, &ids, &mut plan).unwrap();
    let ops_work = |bytes: f64| Work {
        flops: 0.0,
        bytes,
        anchor: Some(("device copy", copy_gbs())),
        anchor_unit: "GB/s",
    };
    let slots = (t * top_k) as f64;
    bench_case(
        c,
        "moe_ops",
        &format!("route_t{t}"),
        &stream,
        ops_work((t * e * 4) as f64 + slots * 8.0),
        true,
        || {
            k.moe_route(&shape, &cfg, &logits, &bias, &mut ids, &mut rw)
                .unwrap()
        },
    );
    bench_case(
        c,
        "moe_ops",
        &format!("plan_t{t}"),
        &stream,
        ops_work(slots * 12.0),
        true,
        || k.moe_plan(&shape, &ids, &mut plan).unwrap(),
    );
    // Valid rows only: a row read as bf16 and written as e4m3 codes (+ scales).
    let row_bytes = |cols: usize, read: usize| slots * (cols * read + cols + cols / 32) as f64;
    bench_case(
        c,
        "moe_ops",
        &format!("permute_quant_t{t}"),
        &stream,
        ops_work(row_bytes(h, 2)),
        true,
        || {
            k.moe_permute_quant(&shape, &plan, &x, &mut a1, &mut s1)
                .unwrap()
        },
    );
    bench_case(
        c,
        "moe_ops",
        &format!("swiglu_quant_t{t}"),
        &stream,
        ops_work(row_bytes(inter, 4)),
        true,
        || {
            k.moe_swiglu_quant(&shape, &plan, &hbuf, &mut a2, &mut s2)
                .unwrap()
        },
    );
    bench_case(
        c,
        "moe_ops",
        &format!("combine_t{t}"),
        &stream,
        ops_work(slots * (h * 2) as f64 + (t * h * 2) as f64),
        true,
        || {
            k.moe_combine(&shape, &plan, &y, &rw, None, &mut out)
                .unwrap()
        },
    );

    // The whole layer; the shared expert reuses expert 0's weights (same shapes).
    let mut layer = MoeLayer::new(&stream, &shape, &cfg, Some(inter)).unwrap();
    let one13 = 2 * inter * h;
    let one13s = (2 * inter / 128) * (h / 128);
    let one2 = h * inter;
    let one2s = (h / 128) * (inter / 128);
    let weights = MoeWeights {
        bias: bias.as_view(),
        w13: Fp8Weights {
            codes: w13.b.as_view(),
            scales: w13.sfb.as_view(),
        },
        w2: Fp8Weights {
            codes: w2.b.as_view(),
            scales: w2.sfb.as_view(),
        },
        shared: Some(SharedExpert {
            inter,
            w13: Fp8Weights {
                codes: w13.b.slice(..one13),
                scales: w13.sfb.slice(..one13s),
            },
            w2: Fp8Weights {
                codes: w2.b.slice(..one2),
                scales: w2.sfb.slice(..one2s),
            },
        }),
    };
    layer.forward(k, &weights, &logits, &x, &mut out).unwrap();
    let counts: Vec<i32> = stream.clone_dtoh(&layer.plan().counts()).unwrap();
    let touched = counts.iter().filter(|&&c| c > 0).count();
    let per_token_flops = 2.0 * (top_k + 1) as f64 * (W13.0 * W13.1 + W2.0 * W2.1) as f64;
    let decode = t <= 512;
    let work = Work {
        flops: t as f64 * per_token_flops,
        bytes: (touched + 1) as f64 * (weight_bytes(W13.0, W13.1) + weight_bytes(W2.0, W2.1)),
        anchor: decode.then_some(("device copy", copy_gbs())),
        anchor_unit: if decode { "GB/s" } else { "TFLOP/s" },
    };
    bench_case(
        c,
        "moe_layer",
        &format!("t{t}_experts{touched}_shared"),
        &stream,
        work,
        true,
        || layer.forward(k, &weights, &logits, &x, &mut out).unwrap(),
    );
}

criterion_group!(moe, benches);
criterion_main!(moe);
