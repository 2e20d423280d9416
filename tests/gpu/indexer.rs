//! Lightning indexer: q/k preparation, prefill and decode logits, the decode plan, against
//! the `dsa_reference` oracles.
//!
//! Tolerances.
//! * Prep: the kernel mirrors the reference's arithmetic (float RoPE without FMA, the
//!   Hadamard butterflies in double in the same order, one rounding), so codes and scales
//!   should be bit-equal. Accepted: >= 99.9% of codes equal and every other code one step
//!   away; folded weights and cache scales equal for >= 99.9% of rows.
//! * Logits share exact FP8 inputs with the reference (which sums exactly in f64). The
//!   kernel's error comes from the tensor cores' FP8 accumulation (Hopper keeps fewer than
//!   fp32's mantissa bits inside an FP8 wgmma, ~2^-13 of the running sum per step) and the
//!   fp32 head sum, both bounded by the sum of absolute products. We bound that sum by
//!   Cauchy-Schwarz: `B[t,s] = kscale[s] * |k_s| * sum_h |w'[t,h]| * |q_th|` and require
//!   `|out - ref| <= 1e-3 * B[t,s]` (about 1% of a typical |logit| for random data, so a
//!   wrong key, head, scale or weight fails), `-inf` exactly where the reference has it,
//!   and every untouched padding column still poisoned.
use dsa_kernels::cache::{IndexerKCache, SlotMapping, INDEXER_PAGE_BYTES, PAGE_SIZE};
use dsa_kernels::indexer::{
    decode_plan_len, rope_tables, DecodeLogitsShape, IndexerPrepShape, PrefillLogitsShape,
    RopeTablesRef, YarnRope,
};
use dsa_kernels::DsaError;
use dsa_kernels::{PagedBatch, PagedBatchShape};
use dsa_reference as reference;
use half::bf16;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};

use crate::common::{cos_diff, download, kernels, upload, Guarded};

const D: usize = 128;

fn rope(max_pos: usize) -> reference::rope::RopeTables {
    reference::rope::RopeTables::deepseek_v32(max_pos)
}

/// bf16 rows with a magnitude per row (1e-3 to 1e2) so scales vary.
fn bf16_rows(rng: &mut StdRng, rows: usize, stride: usize) -> Vec<bf16> {
    let mut v = vec![bf16::from_f32(f32::NAN); rows * stride];
    for r in 0..rows {
        let mag = 10f32.powf(rng.random_range(-3.0..2.0));
        for x in &mut v[r * stride..r * stride + D] {
            *x = bf16::from_f32(rng.random_range(-1.0f32..1.0) * mag);
        }
    }
    v
}

/// Random rows quantized like the indexer: `(codes [rows, 128], scales [rows])`.
fn fp8_rows(rng: &mut StdRng, rows: usize) -> (Vec<u8>, Vec<f32>) {
    let mut codes = Vec::with_capacity(rows * D);
    let mut scales = Vec::with_capacity(rows);
    for _ in 0..rows {
        let mag = 10f32.powf(rng.random_range(-2.0..1.0));
        let x: Vec<f32> = (0..D)
            .map(|_| rng.random_range(-1.0f32..1.0) * mag)
            .collect();
        let (c, s) = reference::fp8::quantize_block(&x, true);
        codes.extend_from_slice(&c);
        scales.push(s);
    }
    (codes, scales)
}

fn e4m3(c: u8) -> f64 {
    let v = reference::fp8::e4m3_to_f32(c);
    if v.is_nan() {
        0.0
    } else {
        v as f64
    }
}

fn norm(codes: &[u8]) -> f64 {
    codes.iter().map(|&c| e4m3(c).powi(2)).sum::<f64>().sqrt()
}

/// Codes equal or one step apart (same sign, magnitude codes adjacent).
fn near_code(a: u8, b: u8) -> bool {
    a == b
        || ((a & 0x80) == (b & 0x80) && (a & 0x7f).abs_diff(b & 0x7f) == 1)
        || ((a & 0x7f) == 0 && (b & 0x7f) <= 1)
        || ((b & 0x7f) == 0 && (a & 0x7f) <= 1)
}

/// Compares codes and reports the number of exact matches; panics past the tolerance.
fn check_codes(what: &str, got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len());
    let mut diff = 0usize;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if g != w {
            diff += 1;
            assert!(
                near_code(g, w),
                "{what}: code {i}: got {g:#04x}, want {w:#04x}"
            );
        }
    }
    let allowed = want.len() / 1000;
    assert!(
        diff <= allowed,
        "{what}: {diff} of {} codes differ (allowed {allowed})",
        want.len()
    );
}

fn check_f32_rows(what: &str, got: &[f32], want: &[f32]) {
    let diff = got
        .iter()
        .zip(want)
        .filter(|(g, w)| g.to_bits() != w.to_bits())
        .count();
    assert!(
        diff <= want.len() / 1000,
        "{what}: {diff} of {} values differ; first {:?}",
        want.len(),
        got.iter()
            .zip(want)
            .find(|(g, w)| g.to_bits() != w.to_bits())
    );
}

fn prep_q_case(seed: u64, tokens: usize, heads: usize, pad: usize, max_pos: usize) {
    let k = kernels();
    let stream = k.stream().clone();
    let mut rng = StdRng::seed_from_u64(seed);
    let stride = heads * D + 8 * pad;
    // Rows of the [tokens, heads] view laid out with a token stride.
    let mut x = vec![bf16::from_f32(f32::NAN); tokens * stride];
    let mut x_f32 = Vec::with_capacity(tokens * heads * D);
    for t in 0..tokens {
        let rows = bf16_rows(&mut rng, heads, D);
        x[t * stride..t * stride + heads * D].copy_from_slice(&rows);
        x_f32.extend(rows.iter().map(|v| v.to_f32()));
    }
    let positions: Vec<i32> = (0..tokens)
        .map(|_| {
            if rng.random_bool(0.05) {
                // out of the tables: zero codes, zero weight
                if rng.random_bool(0.5) {
                    -1
                } else {
                    max_pos as i32
                }
            } else {
                rng.random_range(0..max_pos as i32)
            }
        })
        .collect();
    let w: Vec<f32> = (0..tokens * heads)
        .map(|_| rng.random_range(-1.0f32..1.0) / (heads as f32).sqrt())
        .collect();
    let tables = rope(max_pos);
    let d_cos = upload(&stream, &tables.cos);
    let d_sin = upload(&stream, &tables.sin);
    let d_x = upload(&stream, &x);
    let d_pos = upload(&stream, &positions);
    let d_w = upload(&stream, &w);
    let mut d_q8 = upload(&stream, &vec![0xA5u8; tokens * heads * D]);
    let mut d_wo = upload(&stream, &vec![f32::NAN; tokens * heads]);
    k.indexer_prepare_q(
        IndexerPrepShape {
            tokens,
            heads,
            token_stride: stride,
        },
        &d_x,
        &d_pos,
        RopeTablesRef {
            cos: &d_cos,
            sin: &d_sin,
            max_pos,
        },
        &d_w,
        &mut d_q8,
        &mut d_wo,
    )
    .unwrap();
    let q8 = download(&stream, &d_q8);
    let wo = download(&stream, &d_wo);

    let mut want_codes = vec![0u8; tokens * heads * D];
    let mut want_w = vec![0f32; tokens * heads];
    for t in 0..tokens {
        let pos = positions[t];
        if pos < 0 || pos as usize >= max_pos {
            continue;
        }
        let rows = &x_f32[t * heads * D..(t + 1) * heads * D];
        let (c, s) = reference::indexer::prepare(rows, &vec![pos; heads], &tables);
        want_codes[t * heads * D..(t + 1) * heads * D].copy_from_slice(&c);
        let f = reference::indexer::fold_weights(&w[t * heads..(t + 1) * heads], &s);
        want_w[t * heads..(t + 1) * heads].copy_from_slice(&f);
    }
    check_codes("q8", &q8, &want_codes);
    check_f32_rows("folded weights", &wo, &want_w);
}

fn prep_k_case(seed: u64, pages: usize, tokens: usize, pad: usize) {
    let k = kernels();
    let stream = k.stream().clone();
    let mut rng = StdRng::seed_from_u64(seed);
    let capacity = pages * PAGE_SIZE;
    let tokens = tokens.min(capacity);
    let mut all: Vec<i32> = (0..capacity as i32).collect();
    all.shuffle(&mut rng);
    let slots = all[..tokens].to_vec();
    let stride = D + 8 * pad;
    let x = bf16_rows(&mut rng, tokens, stride);
    let max_pos = 5000;
    let positions: Vec<i32> = (0..tokens)
        .map(|_| rng.random_range(0..max_pos as i32))
        .collect();
    let tables = rope(max_pos);
    let d_cos = upload(&stream, &tables.cos);
    let d_sin = upload(&stream, &tables.sin);
    let mut expect = vec![0xA5u8; pages * INDEXER_PAGE_BYTES];
    let mut cache = IndexerKCache::from_slice(upload(&stream, &expect)).unwrap();
    let map = SlotMapping::new(&stream, &slots).unwrap();
    k.indexer_prepare_k(
        IndexerPrepShape {
            tokens,
            heads: 1,
            token_stride: stride,
        },
        &upload(&stream, &x),
        &upload(&stream, &positions),
        RopeTablesRef {
            cos: &d_cos,
            sin: &d_sin,
            max_pos,
        },
        &mut cache,
        &map,
    )
    .unwrap();
    let got = download(&stream, cache.data());
    let x_f32: Vec<f32> = (0..tokens)
        .flat_map(|t| x[t * stride..t * stride + D].iter().map(|v| v.to_f32()))
        .collect();
    let (codes, scales) = reference::indexer::prepare(&x_f32, &positions, &tables);
    for t in 0..tokens {
        let c: [u8; D] = codes[t * D..(t + 1) * D].try_into().unwrap();
        reference::cache::indexer_cache_write(&mut expect, slots[t] as usize, &c, scales[t]);
    }
    let mut got_codes = Vec::new();
    let mut want_codes = Vec::new();
    let mut got_scales = Vec::new();
    let mut want_scales = Vec::new();
    for p in 0..pages {
        let b = p * INDEXER_PAGE_BYTES;
        got_codes.extend_from_slice(&got[b..b + 8192]);
        want_codes.extend_from_slice(&expect[b..b + 8192]);
        for o in 0..PAGE_SIZE {
            let s = b + 8192 + 4 * o;
            got_scales.push(f32::from_le_bytes(got[s..s + 4].try_into().unwrap()));
            want_scales.push(f32::from_le_bytes(expect[s..s + 4].try_into().unwrap()));
        }
    }
    check_codes("k cache codes", &got_codes, &want_codes);
    check_f32_rows("k cache scales", &got_scales, &want_scales);
}

/// Elementwise logits check (module doc); `bound[i]` is the Cauchy-Schwarz bound.
fn check_logits(what: &str, got: &[f32], want: &[f32], bound: &[f64]) -> f64 {
    let mut worst = 0f64;
    for i in 0..want.len() {
        let (g, w) = (got[i], want[i]);
        if w == f32::NEG_INFINITY || !w.is_finite() {
            assert!(g == w, "{what}: element {i}: got {g}, want {w}");
            continue;
        }
        assert!(g.is_finite(), "{what}: element {i}: got {g}, want {w}");
        let e = (g as f64 - w as f64).abs();
        let tol = 1e-3 * bound[i] + 1e-30;
        assert!(
            e <= tol,
            "{what}: element {i}: got {g}, want {w}, |err| {e:e} > {tol:e}"
        );
        worst = worst.max(e / tol * 1e-3);
    }
    worst
}

#[derive(Debug, Clone)]
struct Ragged {
    ks: Vec<i32>,
    ke: Vec<i32>,
    s_kv: usize,
}

/// Sequences laid end to end in one key space; each query sees its sequence's keys up to
/// its causal end, plus a few rows with arbitrary (also inverted or out-of-range) ranges.
fn ragged(rng: &mut StdRng, nseq: usize, max_kv: usize, max_q: usize) -> Ragged {
    let mut ks = Vec::new();
    let mut ke = Vec::new();
    let mut off = 0i32;
    for _ in 0..nseq {
        let kv = match rng.random_range(0..6) {
            0 => 0,
            1 => 1,
            2 => 64 * rng.random_range(1..=(max_kv / 64).max(1)),
            _ => rng.random_range(0..=max_kv),
        };
        let q = rng.random_range(0..=kv.min(max_q));
        for j in 0..q {
            ks.push(off);
            ke.push(off + (kv - q + j + 1) as i32);
        }
        off += kv as i32;
    }
    let s_kv = off as usize;
    for _ in 0..rng.random_range(0..3) {
        ks.push(rng.random_range(-10..=s_kv as i32 + 10));
        ke.push(rng.random_range(-10..=s_kv as i32 + 10));
    }
    Ragged { ks, ke, s_kv }
}

fn prefill_case(seed: u64, heads: usize, nseq: usize, max_kv: usize, max_q: usize, pad: usize) {
    let k = kernels();
    let stream = k.stream().clone();
    let mut rng = StdRng::seed_from_u64(seed);
    let Ragged { ks, ke, s_kv } = ragged(&mut rng, nseq, max_kv, max_q);
    let s = ks.len();
    if s == 0 {
        return;
    }
    let (q8, qscale) = fp8_rows(&mut rng, s * heads);
    let w: Vec<f32> = (0..s * heads)
        .map(|_| rng.random_range(-1.0f32..1.0) / (heads as f32).sqrt())
        .collect();
    let wf = reference::indexer::fold_weights(&w, &qscale);
    let (k8, kscale) = fp8_rows(&mut rng, s_kv.max(1));
    let stride = s_kv + pad;
    let (d_q8, d_wf, d_k8, d_ksc, d_ks, d_ke) = (
        upload(&stream, &q8),
        upload(&stream, &wf),
        upload(&stream, &k8),
        upload(&stream, &kscale),
        upload(&stream, &ks),
        upload(&stream, &ke),
    );
    let mut d_out = upload(&stream, &vec![f32::NAN; s * stride]);
    k.indexer_logits_prefill(
        PrefillLogitsShape {
            s_q: s,
            s_kv,
            heads,
            out_stride: stride,
        },
        &d_q8,
        &d_wf,
        &d_k8,
        &d_ksc,
        &d_ks,
        &d_ke,
        &mut d_out,
    )
    .unwrap();
    let out = download(&stream, &d_out);
    let want = reference::indexer::logits_prefill(
        &q8,
        &wf,
        &k8[..s_kv * D],
        &kscale[..s_kv],
        &ks,
        &ke,
        s,
        heads,
        s_kv,
    );
    let qn: Vec<f64> = (0..s)
        .map(|t| {
            (0..heads)
                .map(|h| wf[t * heads + h].abs() as f64 * norm(&q8[(t * heads + h) * D..][..D]))
                .sum()
        })
        .collect();
    let kn: Vec<f64> = (0..s_kv)
        .map(|j| kscale[j] as f64 * norm(&k8[j * D..(j + 1) * D]))
        .collect();
    let mut bound = Vec::with_capacity(s * s_kv);
    for &q in &qn {
        bound.extend(kn.iter().map(|&b| b * q));
    }
    let mut got = Vec::with_capacity(s * s_kv);
    for t in 0..s {
        got.extend_from_slice(&out[t * stride..t * stride + s_kv]);
        for c in s_kv..stride {
            assert!(
                out[t * stride + c].is_nan(),
                "padding column {c} of row {t} written"
            );
        }
    }
    let worst = check_logits("prefill logits", &got, &want, &bound);
    let cd = cos_diff(&got, &want);
    assert!(cd < 1e-6, "cos diff {cd}");
    eprintln!("prefill h{heads} s {s} s_kv {s_kv}: worst err/bound {worst:.2e}, cos diff {cd:.1e}");
}

#[allow(clippy::too_many_arguments)]
fn decode_case(
    seed: u64,
    heads: usize,
    batch: usize,
    next_n: usize,
    max_len: usize,
    zero_all: bool,
    corrupt: bool,
) {
    let k = kernels();
    let stream = k.stream().clone();
    let mut rng = StdRng::seed_from_u64(seed);
    let lens: Vec<i32> = (0..batch)
        .map(|_| {
            if zero_all {
                return 0;
            }
            match rng.random_range(0..7) {
                0 => 0,
                1 => 1,
                2 => next_n as i32 - 1,
                3 => 64 * rng.random_range(1..=(max_len / 64).max(1)) as i32,
                4 => (64 * rng.random_range(1..=(max_len / 64).max(1)) + 1) as i32,
                _ => rng.random_range(0..=max_len) as i32,
            }
        })
        .collect();
    let longest = lens.iter().copied().max().unwrap_or(0).max(0) as usize;
    // Sometimes shorter than the longest sequence: keys past max_ctx are not represented.
    let max_ctx = if rng.random_bool(0.2) && longest > 0 {
        rng.random_range(0..=longest)
    } else {
        longest + rng.random_range(0..70)
    };
    // A block table has at least one column (PagedBatchShape's rule), even when every
    // sequence is empty.
    let max_pages = (longest.div_ceil(PAGE_SIZE) + rng.random_range(0..3)).max(1);
    let needed: usize = lens
        .iter()
        .map(|&l| (l.max(0) as usize).div_ceil(PAGE_SIZE))
        .sum();
    let num_pages = needed + rng.random_range(1..5);
    let mut pages: Vec<i32> = (0..num_pages as i32).collect();
    pages.shuffle(&mut rng);
    let mut block_table = vec![-1i32; batch * max_pages.max(1)];
    let mut next = 0;
    for b in 0..batch {
        for p in 0..(lens[b].max(0) as usize).div_ceil(PAGE_SIZE) {
            block_table[b * max_pages + p] = pages[next];
            next += 1;
        }
    }
    // Every slot of the cache holds a random key, so a wrong page read shows.
    let mut cache = vec![0u8; num_pages * INDEXER_PAGE_BYTES];
    let (codes, scales) = fp8_rows(&mut rng, num_pages * PAGE_SIZE);
    for slot in 0..num_pages * PAGE_SIZE {
        let c: [u8; D] = codes[slot * D..(slot + 1) * D].try_into().unwrap();
        reference::cache::indexer_cache_write(&mut cache, slot, &c, scales[slot]);
    }
    let rows = batch * next_n;
    let (q8, qscale) = fp8_rows(&mut rng, rows * heads);
    let w: Vec<f32> = (0..rows * heads)
        .map(|_| rng.random_range(-1.0f32..1.0) / (heads as f32).sqrt())
        .collect();
    let wf = reference::indexer::fold_weights(&w, &qscale);
    let mut want = reference::indexer::logits_decode(
        &q8,
        &wf,
        &cache,
        &lens,
        &block_table[..batch * max_pages],
        max_pages,
        next_n,
        heads,
        max_ctx,
    );
    // A corrupt (out-of-range) entry of a used page: that page's keys become -inf.
    let mut table = block_table.clone();
    if corrupt {
        let used: Vec<(usize, usize)> = (0..batch)
            .flat_map(|b| {
                let n = (lens[b].max(0) as usize).div_ceil(PAGE_SIZE).min(max_pages);
                (0..n).map(move |p| (b, p))
            })
            .collect();
        if let Some(&(b, p)) = used.choose(&mut rng) {
            table[b * max_pages + p] = if rng.random_bool(0.5) {
                num_pages as i32 + 3
            } else {
                -7
            };
            for j in 0..next_n {
                let row = &mut want[(b * next_n + j) * max_ctx..][..max_ctx];
                let page = (p * PAGE_SIZE).min(max_ctx)..((p + 1) * PAGE_SIZE).min(max_ctx);
                row[page].fill(f32::NEG_INFINITY);
            }
        }
    }
    let shape = DecodeLogitsShape {
        heads,
        max_ctx,
        out_stride: max_ctx + rng.random_range(0..5),
    };
    let stride = shape.out_stride;
    let d_cache = IndexerKCache::from_slice(upload(&stream, &cache)).unwrap();
    let d_lens = upload(&stream, &lens);
    let d_table = upload(&stream, &table);
    let pb = PagedBatch::new(
        PagedBatchShape {
            batch,
            next_n,
            max_pages,
        },
        &d_table,
        &d_lens,
    )
    .unwrap();
    let mut d_plan = upload(&stream, &vec![-99i32; decode_plan_len(batch)]);
    k.indexer_decode_plan(&pb, shape, &mut d_plan).unwrap();
    let d_q8 = upload(&stream, &q8);
    let d_w = upload(&stream, &wf);
    let mut d_out = upload(&stream, &vec![f32::NAN; rows * stride]);
    // Twice with one plan: the plan is reusable across layers.
    for _ in 0..2 {
        k.indexer_logits_decode(&pb, shape, &d_q8, &d_w, &d_cache, &d_plan, &mut d_out)
            .unwrap();
    }
    let out = download(&stream, &d_out);
    let plan = download(&stream, &d_plan);
    let cap = max_pages.min(max_ctx.div_ceil(PAGE_SIZE));
    let mut acc = 0i32;
    let mut want_plan = vec![0i32];
    for &l in &lens {
        acc += (l.max(0) as usize).div_ceil(PAGE_SIZE).min(cap) as i32;
        want_plan.push(acc);
    }
    assert_eq!(plan, want_plan, "decode plan");
    let qn: Vec<f64> = (0..rows)
        .map(|r| {
            (0..heads)
                .map(|h| wf[r * heads + h].abs() as f64 * norm(&q8[(r * heads + h) * D..][..D]))
                .sum()
        })
        .collect();
    let mut bound = Vec::with_capacity(rows * max_ctx);
    for (r, &q) in qn.iter().enumerate() {
        let b = r / next_n;
        for s in 0..max_ctx {
            let kb = if s / PAGE_SIZE < max_pages && block_table[b * max_pages + s / PAGE_SIZE] >= 0
            {
                let slot =
                    block_table[b * max_pages + s / PAGE_SIZE] as usize * PAGE_SIZE + s % PAGE_SIZE;
                scales[slot] as f64 * norm(&codes[slot * D..(slot + 1) * D])
            } else {
                0.0
            };
            bound.push(kb * q);
        }
    }
    let mut got = Vec::with_capacity(rows * max_ctx);
    for r in 0..rows {
        got.extend_from_slice(&out[r * stride..r * stride + max_ctx]);
        for c in max_ctx..stride {
            assert!(
                out[r * stride + c].is_nan(),
                "padding column {c} of row {r} written"
            );
        }
    }
    let worst = check_logits("decode logits", &got, &want, &bound);
    eprintln!(
        "decode h{heads} b {batch} next_n {next_n} max_ctx {max_ctx}: worst err/bound {worst:.2e}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn indexer_prep_q_matches_reference(seed in any::<u64>(), tokens in 1usize..40, hsel in 0usize..3, pad in 0usize..3, max_pos in 1usize..20000) {
        prep_q_case(seed, tokens, [16, 32, 64][hsel], pad, max_pos);
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn indexer_prep_k_matches_reference(seed in any::<u64>(), pages in 1usize..6, tokens in 1usize..400, pad in 0usize..3) {
        prep_k_case(seed, pages, tokens, pad);
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn indexer_logits_prefill_matches_reference(seed in any::<u64>(), hsel in 0usize..3, nseq in 1usize..4, max_kv in 1usize..1200, pad in 0usize..6) {
        prefill_case(seed, [16, 32, 64][hsel], nseq, max_kv, 96, pad);
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn indexer_logits_decode_matches_reference(seed in any::<u64>(), hsel in 0usize..3, batch in 1usize..7, next_n in 1usize..=4, max_len in 1usize..1500, corrupt in any::<bool>()) {
        decode_case(seed, [16, 32, 64][hsel], batch, next_n, max_len, false, corrupt);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn indexer_logits_prefill_long_rows() {
    // One sequence with several query blocks and key tiles on both sides of the causal
    // edge, for every head count.
    for (i, heads) in [16, 32, 64].into_iter().enumerate() {
        prefill_case(1000 + i as u64, heads, 1, 3000, 200, 3);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn indexer_logits_decode_all_lengths_zero() {
    for next_n in 1..=4 {
        decode_case(7 + next_n as u64, 64, 5, next_n, 300, true, false);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn indexer_logits_decode_many_sequences() {
    // More sequences than CTAs, so splits span several sequences and sequences span
    // several splits.
    decode_case(42, 64, 300, 2, 700, false, false);
    decode_case(43, 32, 40, 3, 2500, false, true);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn indexer_bad_arguments_are_errors_before_launch() {
    let k = kernels();
    let stream = k.stream().clone();
    let q8 = upload(&stream, &vec![0u8; 4 * 64 * D]);
    let w = upload(&stream, &vec![0f32; 4 * 64]);
    let k8 = upload(&stream, &vec![0u8; 100 * D]);
    let ksc = upload(&stream, &vec![1f32; 100]);
    let r = upload(&stream, &[0i32; 4]);
    let mut out = upload(&stream, &vec![0f32; 4 * 100]);
    let shape = PrefillLogitsShape {
        s_q: 4,
        s_kv: 100,
        heads: 48,
        out_stride: 100,
    };
    let e = k.indexer_logits_prefill(shape, &q8, &w, &k8, &ksc, &r, &r, &mut out);
    assert!(matches!(e, Err(DsaError::Unsupported { .. })), "{e:?}");
    let e = k.indexer_logits_prefill(
        PrefillLogitsShape {
            heads: 64,
            s_q: 5,
            ..shape
        },
        &q8,
        &w,
        &k8,
        &ksc,
        &r,
        &r,
        &mut out,
    );
    assert!(matches!(e, Err(DsaError::Shape { .. })), "{e:?}");
    let e = k.indexer_logits_prefill(
        PrefillLogitsShape {
            heads: 64,
            out_stride: 99,
            ..shape
        },
        &q8,
        &w,
        &k8,
        &ksc,
        &r,
        &r,
        &mut out,
    );
    assert!(matches!(e, Err(DsaError::Unsupported { .. })), "{e:?}");

    let cache = IndexerKCache::new(&stream, 2).unwrap();
    let lens = upload(&stream, &[10i32; 2]);
    let table = upload(&stream, &[0i32; 2]);
    let mut plan = upload(&stream, &[0i32; 3]);
    let b5 = PagedBatchShape {
        batch: 2,
        next_n: 5,
        max_pages: 1,
    };
    let dshape = DecodeLogitsShape::new(64, 64);
    let pb = PagedBatch::new(b5, &table, &lens).unwrap();
    let e = k.indexer_decode_plan(&pb, dshape, &mut plan);
    assert!(matches!(e, Err(DsaError::Unsupported { .. })), "{e:?}");
    let pb = PagedBatch::new(PagedBatchShape { next_n: 2, ..b5 }, &table, &lens).unwrap();
    let mut small = upload(&stream, &[0i32; 2]);
    let e = k.indexer_decode_plan(&pb, dshape, &mut small);
    assert!(matches!(e, Err(DsaError::Shape { .. })), "{e:?}");
    let e = PagedBatch::new(
        PagedBatchShape {
            next_n: 2,
            max_pages: 2,
            ..b5
        },
        &table,
        &lens,
    );
    assert!(matches!(e, Err(DsaError::Shape { .. })), "{e:?}");
    let mut dout = upload(&stream, &vec![0f32; 4 * 64]);
    let e = k.indexer_logits_decode(
        &pb,
        DecodeLogitsShape::new(64, 65),
        &q8,
        &w,
        &cache,
        &plan,
        &mut dout,
    );
    assert!(matches!(e, Err(DsaError::Shape { .. })), "{e:?}");

    let tables = rope(8);
    let cos = upload(&stream, &tables.cos);
    let x = upload(&stream, &[bf16::ZERO; 2 * D]);
    let pos = upload(&stream, &[0i32; 2]);
    let mut kc = IndexerKCache::new(&stream, 1).unwrap();
    let far = SlotMapping::new(&stream, &[0, 64]).unwrap();
    let e = k.indexer_prepare_k(
        IndexerPrepShape {
            tokens: 2,
            heads: 1,
            token_stride: D,
        },
        &x,
        &pos,
        RopeTablesRef {
            cos: &cos,
            sin: &cos,
            max_pos: 8,
        },
        &mut kc,
        &far,
    );
    assert!(matches!(e, Err(DsaError::OutOfRange { .. })), "{e:?}");
    let e = k.indexer_prepare_k(
        IndexerPrepShape {
            tokens: 2,
            heads: 1,
            token_stride: D,
        },
        &x,
        &pos,
        RopeTablesRef {
            cos: &cos,
            sin: &cos,
            max_pos: 9,
        },
        &mut kc,
        &far,
    );
    assert!(matches!(e, Err(DsaError::Shape { .. })), "{e:?}");
}

/// The crate's host YaRN tables equal the reference's bit for bit (no GPU needed).
#[test]
fn indexer_rope_tables_match_reference() {
    let (cos, sin) = rope_tables(&YarnRope::deepseek_v32(), 3000).unwrap();
    let r = rope(3000);
    assert_eq!(cos, r.cos);
    assert_eq!(sin, r.sin);
}

/// Small cases of every kernel, for compute-sanitizer (memcheck, racecheck).
#[test]
#[ignore = "needs a CUDA GPU"]
fn indexer_sanitizer_small() {
    prep_q_case(5, 3, 64, 1, 100);
    prep_k_case(6, 2, 70, 0);
    prefill_case(8, 64, 2, 200, 40, 1);
    prefill_case(9, 16, 1, 150, 40, 0);
    decode_case(10, 64, 3, 2, 200, false, true);
    decode_case(11, 32, 2, 3, 130, false, false);
}

/// Plans that are not this step's (not monotonic, negative, huge, from a larger batch,
/// random words) and a block table of garbage: the logits may be wrong but nothing is
/// read or written outside the buffers (run under memcheck; the guards around `out` and
/// the padding columns past `max_ctx` stay untouched).
#[test]
#[ignore = "needs a CUDA GPU"]
fn indexer_logits_decode_survives_corrupt_plans_and_tables() {
    let k = kernels();
    let stream = k.stream().clone();
    let mut rng = StdRng::seed_from_u64(77);
    let (batch, next_n, heads, max_pages, num_pages) = (3usize, 2usize, 64usize, 6usize, 9usize);
    let shape = DecodeLogitsShape {
        heads,
        max_ctx: 300,
        out_stride: 305,
    };
    let pshape = PagedBatchShape {
        batch,
        next_n,
        max_pages,
    };
    let lens = vec![130i32, 0, 257];
    let table: Vec<i32> = (0..batch * max_pages)
        .map(|_| match rng.random_range(0..4) {
            0 => rng.random_range(0..num_pages as i32),
            1 => -rng.random_range(1..1000),
            2 => i32::MAX - rng.random_range(0..10),
            _ => rng.random(),
        })
        .collect();
    let cache_bytes: Vec<u8> = (0..num_pages * INDEXER_PAGE_BYTES)
        .map(|_| rng.random_range(0..0x7e))
        .collect();
    let d_cache = IndexerKCache::from_slice(upload(&stream, &cache_bytes)).unwrap();
    let rows = batch * next_n;
    let q8: Vec<u8> = (0..rows * heads * D)
        .map(|_| rng.random_range(0..0x7e))
        .collect();
    let w: Vec<f32> = (0..rows * heads)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    let (d_q8, d_w, d_lens, d_table) = (
        upload(&stream, &q8),
        upload(&stream, &w),
        upload(&stream, &lens),
        upload(&stream, &table),
    );
    let plans: Vec<Vec<i32>> = vec![
        vec![0, 5, 2, 9],
        vec![0, -4, -8, -12],
        vec![7, 3, i32::MAX, 1],
        vec![i32::MIN, i32::MAX, i32::MIN, i32::MAX],
        vec![0, 6, 12, 18, 24, 30, 36],
        (0..4).map(|_| rng.random()).collect(),
        (0..4).map(|_| rng.random_range(-20..40)).collect(),
    ];
    for plan in plans {
        let d_plan = upload(&stream, &plan);
        let mut out = Guarded::new(&stream, rows * shape.out_stride, f32::NAN);
        let pb = PagedBatch::new(pshape, &d_table, &d_lens).unwrap();
        k.indexer_logits_decode(&pb, shape, &d_q8, &d_w, &d_cache, &d_plan, &mut out.inner())
            .unwrap();
        let got = out.check(&stream, &format!("decode logits, plan {plan:?}"), |v| {
            v.is_nan()
        });
        for r in 0..rows {
            for c in shape.max_ctx..shape.out_stride {
                assert!(
                    got[r * shape.out_stride + c].is_nan(),
                    "plan {plan:?}: padding {r},{c} written"
                );
            }
        }
    }
}
