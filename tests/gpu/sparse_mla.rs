//! Sparse MLA decode and prefill against the dsa_reference oracles.
//!
//! Tolerances (FlashMLA's comparison trio): the kernel rounds the dequantized keys, P and
//! the output to bf16 (relative 2^-9 each) while the oracle works in f64, so the bf16
//! output must satisfy cos_diff < 1e-5 and max |out - ref| <= 1e-2 * max |ref|; lse and
//! max_logits are fp32 sums of exp2 of fp32 logits computed from bf16 products: within
//! 1e-3 absolute. inf/NaN positions must match exactly (lonely queries: out 0, lse +inf).
use dsa_kernels::cache::{MlaBf16Cache, MlaFp8Cache, PAGE_SIZE};
use dsa_kernels::cudarc::driver::{sys, CudaSlice};
use dsa_kernels::sparse_mla::{SparseDecodeConfig, SparseExtras, SparsePrefillConfig};
use dsa_kernels::{DsaError, DsaKernels, PagedBatch, PagedBatchShape};
use dsa_reference::attention as ra;
use dsa_reference::cache as rc;
use half::bf16;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::common::{cos_diff, download, kernels, upload};

const D: usize = 576;
const DV: usize = 512;
const SCALE: f32 = 0.135_234;

fn rand_bf16(rng: &mut StdRng, n: usize, amp: f32) -> Vec<bf16> {
    (0..n)
        .map(|_| bf16::from_f32(rng.random_range(-amp..amp)))
        .collect()
}

/// Asserts the comparison trio on one output set.
fn check_out(what: &str, out: &[bf16], lse: &[f32], r_out: &[f32], r_lse: &[f32]) {
    let o: Vec<f32> = out.iter().map(|v| v.to_f32()).collect();
    assert!(o.iter().all(|v| v.is_finite()), "{what}: non-finite output");
    let cd = cos_diff(&o, r_out);
    let maxref = r_out.iter().fold(0f32, |m, v| m.max(v.abs()));
    let maxerr = o
        .iter()
        .zip(r_out)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(cd < 1e-5, "{what}: cos_diff {cd:e}");
    assert!(
        maxerr <= 1e-2 * maxref.max(1e-6),
        "{what}: max abs err {maxerr} vs max |ref| {maxref}"
    );
    check_f32(what, "lse", lse, r_lse);
}

fn check_f32(what: &str, name: &str, got: &[f32], want: &[f32]) {
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if w.is_finite() {
            assert!(
                (g - w).abs() <= 1e-3,
                "{what}: {name}[{i}] = {g}, reference {w}"
            );
        } else {
            assert!(g == w, "{what}: {name}[{i}] = {g}, reference {w}");
        }
    }
}

fn nan_bf16(
    stream: &std::sync::Arc<dsa_kernels::cudarc::driver::CudaStream>,
    n: usize,
) -> CudaSlice<bf16> {
    upload(stream, &vec![bf16::NAN; n])
}
fn nan_f32(
    stream: &std::sync::Arc<dsa_kernels::cudarc::driver::CudaStream>,
    n: usize,
) -> CudaSlice<f32> {
    upload(stream, &vec![f32::NAN; n])
}

/// A paged batch of `batch` sequences of `next_n` rows for calls that only need its
/// geometry (the indices are already physical slots): a one-page table and lengths.
fn dummy_batch(
    stream: &std::sync::Arc<dsa_kernels::cudarc::driver::CudaStream>,
    batch: usize,
    next_n: usize,
) -> (PagedBatchShape, CudaSlice<i32>, CudaSlice<i32>) {
    let shape = PagedBatchShape {
        batch,
        next_n,
        max_pages: 1,
    };
    (
        shape,
        upload(stream, &vec![0i32; batch]),
        upload(stream, &vec![0i32; batch]),
    )
}

/// Host images of both caches holding the same random tokens in every slot.
struct Caches {
    fp8: Vec<u8>,
    bf16: Vec<bf16>,
    capacity: usize,
}

fn make_caches(rng: &mut StdRng, pages: usize) -> Caches {
    let capacity = pages * PAGE_SIZE;
    let mut fp8 = vec![0u8; capacity * 656];
    let mut b = vec![bf16::ZERO; capacity * D];
    for s in 0..capacity {
        // Per-token magnitude so the FP8 scales differ from token to token.
        let amp = rng.random_range(0.25f32..2.0);
        let v = rand_bf16(rng, D, amp);
        rc::mla_fp8_cache_write(&mut fp8, s, &v);
        rc::mla_bf16_cache_write(&mut b, s, &v);
    }
    Caches {
        fp8,
        bf16: b,
        capacity,
    }
}

/// The FP8 oracle on the keys the kernel multiplies: each latent value dequantized in f32
/// (`e4m3 * scale`, as `kv_from_fp8_cache`) and then rounded to bf16, the documented input
/// of the bf16 tensor-core MMA. Against the unrounded f32 keys the difference is that one
/// rounding (relative 2^-9 per key value), which moves logits of this test's magnitudes by
/// ~1e-2 and so would hide kernel errors of the size the tolerances are meant to catch.
fn fp8_keys_as_kernel(cache: &[u8]) -> impl Fn(usize) -> Option<Vec<f32>> + '_ {
    move |slot| {
        rc::mla_fp8_cache_read(cache, slot).map(|mut v| {
            for x in &mut v[..DV] {
                *x = bf16::from_f32(*x).to_f32();
            }
            v
        })
    }
}

struct DecodeCase {
    batch: usize,
    s_q: usize,
    h_q: usize,
    topk: usize,
    q: Vec<bf16>,
    indices: Vec<i32>,
    topk_length: Option<Vec<i32>>,
    sink: Option<Vec<f32>>,
}

/// Runs the decode kernel on both caches and compares each with the oracle.
fn run_decode(k: &DsaKernels, c: &DecodeCase, caches: &Caches) {
    let stream = k.stream().clone();
    let cfg = SparseDecodeConfig {
        heads: c.h_q,
        topk: c.topk,
        softmax_scale: SCALE,
    };
    let (shape, bt, lens) = dummy_batch(&stream, c.batch, c.s_q);
    let pb = PagedBatch::new(shape, &bt, &lens).unwrap();
    let rows = shape.rows();
    let d_q = upload(&stream, &c.q);
    let d_idx = upload(&stream, &c.indices);
    let d_tl = c.topk_length.as_ref().map(|t| upload(&stream, t));
    let d_sink = c.sink.as_ref().map(|s| upload(&stream, s));
    let extras = SparseExtras {
        topk_length: d_tl.as_ref(),
        attn_sink: d_sink.as_ref(),
    };
    let ws_len = k.sparse_mla_decode_workspace_len(&shape, &cfg);
    let mut ws = nan_f32(&stream, ws_len.max(1));
    let fp8_cache = MlaFp8Cache::from_slice(upload(&stream, &caches.fp8)).unwrap();
    let bf16_cache = MlaBf16Cache::from_slice(upload(&stream, &caches.bf16)).unwrap();
    for fmt in ["fp8", "bf16"] {
        let mut out = nan_bf16(&stream, rows * c.h_q * DV);
        let mut lse = nan_f32(&stream, rows * c.h_q);
        let r = if fmt == "fp8" {
            k.sparse_mla_decode(
                &cfg, &pb, &fp8_cache, &d_q, &d_idx, extras, &mut out, &mut lse, &mut ws,
            )
        } else {
            k.sparse_mla_decode(
                &cfg,
                &pb,
                &bf16_cache,
                &d_q,
                &d_idx,
                extras,
                &mut out,
                &mut lse,
                &mut ws,
            )
        };
        r.unwrap();
        let out = download(&stream, &out);
        let lse = download(&stream, &lse);
        let (r_out, r_lse) = if fmt == "fp8" {
            let kv = fp8_keys_as_kernel(&caches.fp8);
            ra::sparse_mla_decode(
                &c.q,
                &kv,
                &c.indices,
                c.topk_length.as_deref(),
                c.sink.as_deref(),
                SCALE,
                c.batch,
                c.s_q,
                c.h_q,
                c.topk,
            )
        } else {
            let kv = ra::kv_from_bf16_cache(&caches.bf16);
            ra::sparse_mla_decode(
                &c.q,
                &kv,
                &c.indices,
                c.topk_length.as_deref(),
                c.sink.as_deref(),
                SCALE,
                c.batch,
                c.s_q,
                c.h_q,
                c.topk,
            )
        };
        let what = format!(
            "{fmt} b={} s_q={} h_q={} topk={} splits={}",
            c.batch,
            c.s_q,
            c.h_q,
            c.topk,
            cfg.num_splits(rows, k.sm_count())
        );
        check_out(&what, &out, &lse, &r_out, &r_lse);
    }
}

#[allow(clippy::too_many_arguments)]
fn random_decode_case(
    rng: &mut StdRng,
    batch: usize,
    s_q: usize,
    h_q: usize,
    topk: usize,
    capacity: usize,
    with_len: bool,
    with_sink: bool,
) -> DecodeCase {
    let rows = batch * s_q;
    let q_amp = rng.random_range(0.5f32..3.0);
    let q = rand_bf16(rng, rows * h_q * D, q_amp);
    let mut indices = Vec::with_capacity(rows * topk);
    for r in 0..rows {
        let lonely = r % 5 == 3 && rng.random_bool(0.5);
        for _ in 0..topk {
            let x = rng.random_range(0.0f64..1.0);
            indices.push(if lonely || x < 0.1 {
                -1
            } else if x < 0.13 {
                // Past the cache: must be treated as unused, never read.
                (capacity + rng.random_range(0..100_000)) as i32
            } else {
                rng.random_range(0..capacity) as i32
            });
        }
    }
    let topk_length = with_len.then(|| {
        (0..batch)
            .map(|_| rng.random_range(0..=topk as i32 + 10))
            .collect()
    });
    let sink = with_sink.then(|| (0..h_q).map(|_| rng.random_range(-2.0f32..4.0)).collect());
    DecodeCase {
        batch,
        s_q,
        h_q,
        topk,
        q,
        indices,
        topk_length,
        sink,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 8, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random batch, s_q 1-4, h_q, topk multiples of 64 with holes, out-of-range slots,
    /// lonely queries, topk_length and sink; both cache formats; split and unsplit shapes.
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn sparse_decode_matches_reference(
        seed in any::<u64>(),
        batch in 1usize..5,
        s_q in 1usize..5,
        h_idx in 0usize..4,
        topk_blocks in 1usize..6,
        pages in 2usize..24,
        with_len in any::<bool>(),
        with_sink in any::<bool>(),
    ) {
        let k = kernels();
        let mut rng = StdRng::seed_from_u64(seed);
        let h_q = [16, 32, 64, 128][h_idx];
        let caches = make_caches(&mut rng, pages);
        let c = random_decode_case(&mut rng, batch, s_q, h_q, topk_blocks * 64, caches.capacity, with_len, with_sink);
        run_decode(&k, &c, &caches);
    }

    /// Prefill over a flat kv: holes, indices past s_kv, optional sink, max_logits.
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn sparse_prefill_matches_reference(
        seed in any::<u64>(),
        s_q in 1usize..40,
        s_kv in 1usize..3000,
        h_idx in 0usize..3,
        topk_blocks in 1usize..5,
        with_sink in any::<bool>(),
    ) {
        let k = kernels();
        let stream = k.stream().clone();
        let mut rng = StdRng::seed_from_u64(seed);
        let h_q = [32, 64, 128][h_idx];
        let topk = topk_blocks * 64;
        let q = rand_bf16(&mut rng, s_q * h_q * D, 2.0);
        let kv = rand_bf16(&mut rng, s_kv * D, 1.0);
        let indices: Vec<i32> = (0..s_q * topk)
            .map(|i| {
                let x = rng.random_range(0.0f64..1.0);
                if (i / topk) % 7 == 5 || x < 0.1 { -1 }
                else if x < 0.13 { (s_kv + rng.random_range(0..1000)) as i32 }
                else { rng.random_range(0..s_kv) as i32 }
            })
            .collect();
        let sink: Option<Vec<f32>> = with_sink.then(|| (0..h_q).map(|_| rng.random_range(-2.0f32..4.0)).collect());
        let cfg = SparsePrefillConfig { s_q, s_kv, heads: h_q, topk, softmax_scale: SCALE };
        let d_q = upload(&stream, &q);
        let d_kv = upload(&stream, &kv);
        let d_idx = upload(&stream, &indices);
        let d_sink = sink.as_ref().map(|s| upload(&stream, s));
        let mut out = nan_bf16(&stream, s_q * h_q * DV);
        let mut ml = nan_f32(&stream, s_q * h_q);
        let mut lse = nan_f32(&stream, s_q * h_q);
        let extras = SparseExtras::<CudaSlice<i32>, _> { topk_length: None, attn_sink: d_sink.as_ref() };
        k.sparse_mla_prefill(&cfg, &d_q, &d_kv, &d_idx, extras, &mut out, &mut ml, &mut lse).unwrap();
        let (r_out, r_ml, r_lse) =
            ra::sparse_mla_prefill_with_sink(&q, &kv, &indices, sink.as_deref(), SCALE, s_q, s_kv, h_q, topk);
        let what = format!("prefill s_q={s_q} s_kv={s_kv} h_q={h_q} topk={topk}");
        check_out(&what, &download(&stream, &out), &download(&stream, &lse), &r_out, &r_lse);
        check_f32(&what, "max_logits", &download(&stream, &ml), &r_ml);
    }

    /// The law: sparse decode with indices = every causal token equals dense decode.
    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn sparse_decode_over_all_causal_tokens_equals_dense(
        seed in any::<u64>(),
        batch in 1usize..4,
        s_q in 1usize..3,
        h_idx in 0usize..2,
    ) {
        let k = kernels();
        let mut rng = StdRng::seed_from_u64(seed);
        let h_q = [64, 128][h_idx];
        let seq_lens: Vec<i32> = (0..batch).map(|i| if i == 0 { rng.random_range(0..3) } else { rng.random_range(1..700) }).collect();
        let max_len = *seq_lens.iter().max().unwrap() as usize;
        let max_pages = max_len.div_ceil(PAGE_SIZE).max(1);
        let pages = batch * max_pages + 3;
        let caches = make_caches(&mut rng, pages);
        // Shuffled, non-contiguous pages per sequence.
        let mut all: Vec<i32> = (0..pages as i32).collect();
        all.shuffle(&mut rng);
        let block_table: Vec<i32> = all[..batch * max_pages].to_vec();
        let topk = max_len.div_ceil(64).max(1) * 64;
        let mut indices = vec![-1i32; batch * s_q * topk];
        for b in 0..batch {
            for j in 0..s_q {
                let last = seq_lens[b] as i64 - s_q as i64 + j as i64;
                let r = b * s_q + j;
                for s in 0..=last.max(-1) {
                    if s < 0 { break; }
                    let s = s as usize;
                    indices[r * topk + s] = block_table[b * max_pages + s / PAGE_SIZE] * PAGE_SIZE as i32 + (s % PAGE_SIZE) as i32;
                }
            }
        }
        let q = rand_bf16(&mut rng, batch * s_q * h_q * D, 2.0);
        let stream = k.stream().clone();
        let cfg = SparseDecodeConfig { heads: h_q, topk, softmax_scale: SCALE };
        let shape = PagedBatchShape { batch, next_n: s_q, max_pages };
        let d_bt = upload(&stream, &block_table);
        let d_lens = upload(&stream, &seq_lens);
        let pb = PagedBatch::new(shape, &d_bt, &d_lens).unwrap();
        let d_q = upload(&stream, &q);
        let d_idx = upload(&stream, &indices);
        let mut ws = nan_f32(&stream, k.sparse_mla_decode_workspace_len(&shape, &cfg).max(1));
        let cache = MlaBf16Cache::from_slice(upload(&stream, &caches.bf16)).unwrap();
        let mut out = nan_bf16(&stream, batch * s_q * h_q * DV);
        let mut lse = nan_f32(&stream, batch * s_q * h_q);
        k.sparse_mla_decode(&cfg, &pb, &cache, &d_q, &d_idx, SparseExtras::default(), &mut out, &mut lse, &mut ws).unwrap();
        let kv = ra::kv_from_bf16_cache(&caches.bf16);
        let (r_out, r_lse) = ra::dense_mla_decode(&q, &kv, &block_table, max_pages, &seq_lens, SCALE, batch, s_q, h_q);
        check_out("sparse over all causal tokens vs dense", &download(&stream, &out), &download(&stream, &lse), &r_out, &r_lse);
    }
}

/// Large-batch decode (no split, several waves of CTAs), h_q 128, FP8 and bf16.
#[test]
#[ignore = "needs a CUDA GPU"]
fn sparse_decode_large_batch() {
    let k = kernels();
    let mut rng = StdRng::seed_from_u64(7);
    let caches = make_caches(&mut rng, 40);
    let c = random_decode_case(&mut rng, 80, 2, 128, 256, caches.capacity, true, false);
    run_decode(&k, &c, &caches);
}

/// Several head groups per query: four (h_q = 256), two with a partial second one
/// (h_q = 96), two over many rows; split and unsplit, both caches, sink and topk_length.
#[test]
#[ignore = "needs a CUDA GPU"]
fn sparse_decode_many_head_groups() {
    let k = kernels();
    let mut rng = StdRng::seed_from_u64(11);
    let caches = make_caches(&mut rng, 12);
    for (batch, s_q, h_q, topk) in [(3, 2, 256, 384), (2, 1, 96, 640), (40, 1, 128, 192)] {
        let c = random_decode_case(&mut rng, batch, s_q, h_q, topk, caches.capacity, true, true);
        run_decode(&k, &c, &caches);
    }
}

/// A decode step captured in a CUDA graph and replayed gives the eager result (the split
/// path, so the combine kernel and the workspace are in the graph too).
#[test]
#[ignore = "needs a CUDA GPU"]
fn sparse_decode_graph_capture_replay() {
    // Capture needs a stream other than the legacy default one; cudarc then records events
    // on every buffer use, and waiting inside a capture on an event recorded before it is
    // illegal, so event tracking is off before anything is allocated (one stream only).
    let ctx = dsa_kernels::device::open_device(0).expect("CUDA device");
    // SAFETY: every buffer of this test is used on this one stream only.
    unsafe { ctx.disable_event_tracking() };
    let stream = ctx.new_stream().unwrap();
    let k = DsaKernels::new(stream.clone()).unwrap();
    let mut rng = StdRng::seed_from_u64(11);
    let caches = make_caches(&mut rng, 8);
    let c = random_decode_case(&mut rng, 1, 1, 128, 1024, caches.capacity, false, true);
    let cfg = SparseDecodeConfig {
        heads: 128,
        topk: 1024,
        softmax_scale: SCALE,
    };
    let (shape, bt, lens) = dummy_batch(&stream, 1, 1);
    let pb = PagedBatch::new(shape, &bt, &lens).unwrap();
    assert!(cfg.num_splits(1, k.sm_count()) > 1, "the case should split");
    let cache = MlaFp8Cache::from_slice(upload(&stream, &caches.fp8)).unwrap();
    let d_q = upload(&stream, &c.q);
    let d_idx = upload(&stream, &c.indices);
    let d_sink = upload(&stream, c.sink.as_ref().unwrap());
    let extras = SparseExtras::<CudaSlice<i32>, _> {
        topk_length: None,
        attn_sink: Some(&d_sink),
    };
    let mut ws = nan_f32(&stream, k.sparse_mla_decode_workspace_len(&shape, &cfg));
    let mut out = nan_bf16(&stream, 128 * DV);
    let mut lse = nan_f32(&stream, 128);
    k.sparse_mla_decode(
        &cfg, &pb, &cache, &d_q, &d_idx, extras, &mut out, &mut lse, &mut ws,
    )
    .unwrap();
    let eager = (download(&stream, &out), download(&stream, &lse));
    let mut out2 = nan_bf16(&stream, 128 * DV);
    let mut lse2 = nan_f32(&stream, 128);
    stream.synchronize().unwrap();
    stream
        .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .unwrap();
    k.sparse_mla_decode(
        &cfg, &pb, &cache, &d_q, &d_idx, extras, &mut out2, &mut lse2, &mut ws,
    )
    .unwrap();
    let graph = stream
        .end_capture(sys::CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH)
        .unwrap()
        .expect("a captured graph");
    for _ in 0..3 {
        graph.launch().unwrap();
    }
    let replay = (download(&stream, &out2), download(&stream, &lse2));
    assert_eq!(
        eager.0.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        replay.0.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
    assert_eq!(
        eager.1.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        replay.1.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
}

/// Bad arguments are typed errors raised before any launch.
#[test]
#[ignore = "needs a CUDA GPU"]
fn sparse_mla_argument_errors() {
    let k = kernels();
    let stream = k.stream().clone();
    let cfg = SparseDecodeConfig {
        heads: 64,
        topk: 128,
        softmax_scale: SCALE,
    };
    let (shape, bt, lens) = dummy_batch(&stream, 2, 1);
    let pb = PagedBatch::new(shape, &bt, &lens).unwrap();
    let cache = MlaFp8Cache::new(&stream, 2).unwrap();
    let q = upload(&stream, &vec![bf16::ZERO; 2 * 64 * D]);
    let short_q = upload(&stream, &vec![bf16::ZERO; 64 * D]);
    let idx = upload(&stream, &vec![0i32; 2 * 128]);
    let mut out = upload(&stream, &vec![bf16::ZERO; 2 * 64 * DV]);
    let mut lse = upload(&stream, &vec![0f32; 2 * 64]);
    let mut no_ws = upload(&stream, &[0f32; 1]);
    let none = SparseExtras::default;
    let e = k.sparse_mla_decode(
        &cfg,
        &pb,
        &cache,
        &short_q,
        &idx,
        none(),
        &mut out,
        &mut lse,
        &mut no_ws,
    );
    assert!(matches!(e, Err(DsaError::Shape { .. })), "{e:?}");
    let bad = SparseDecodeConfig { topk: 0, ..cfg };
    let e = k.sparse_mla_decode(
        &bad,
        &pb,
        &cache,
        &q,
        &idx,
        none(),
        &mut out,
        &mut lse,
        &mut no_ws,
    );
    assert!(matches!(e, Err(DsaError::Unsupported { .. })), "{e:?}");
    let short_len = upload(&stream, &[5i32]);
    let ex = SparseExtras::<_, CudaSlice<f32>> {
        topk_length: Some(&short_len),
        attn_sink: None,
    };
    let e = k.sparse_mla_decode(
        &cfg, &pb, &cache, &q, &idx, ex, &mut out, &mut lse, &mut no_ws,
    );
    assert!(matches!(e, Err(DsaError::Shape { .. })), "{e:?}");
    // (The indexer K cache is not an MLA cache: passing it does not compile.)
    let small = SparseDecodeConfig { topk: 4096, ..cfg };
    let (one, bt1, lens1) = dummy_batch(&stream, 1, 1);
    let pb1 = PagedBatch::new(one, &bt1, &lens1).unwrap();
    if k.sparse_mla_decode_workspace_len(&one, &small) > 0 {
        let idx = upload(&stream, &vec![0i32; 4096]);
        let e = k.sparse_mla_decode(
            &small,
            &pb1,
            &cache,
            &q,
            &idx,
            none(),
            &mut out,
            &mut lse,
            &mut no_ws,
        );
        assert!(matches!(e, Err(DsaError::Shape { .. })), "{e:?}");
    }
    let pcfg = SparsePrefillConfig {
        s_q: 2,
        s_kv: 10,
        heads: 64,
        topk: 128,
        softmax_scale: SCALE,
    };
    let kv = upload(&stream, &vec![bf16::ZERO; 9 * D]);
    let mut ml = upload(&stream, &vec![0f32; 2 * 64]);
    let e = k.sparse_mla_prefill(&pcfg, &q, &kv, &idx, none(), &mut out, &mut ml, &mut lse);
    assert!(matches!(e, Err(DsaError::Shape { .. })), "{e:?}");
}
