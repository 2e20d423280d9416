//! Property laws of the kernel-level oracles.

use dsa_reference::{attention, cache, fp8, hadamard, indexer, rope, topk};
use half::bf16;
use proptest::prelude::*;

fn cfg(cases: u32) -> ProptestConfig {
    ProptestConfig::with_cases(cases)
}

/// Half an ulp of the e4m3 grid at magnitude `a` (for `a <= 448`).
fn e4m3_half_ulp(a: f32) -> f32 {
    let min_normal = 2f32.powi(-6);
    if a < min_normal {
        2f32.powi(-10)
    } else {
        2f32.powi(a.log2().floor() as i32 - 4)
    }
}

fn lcg(seed: u64) -> impl FnMut() -> f32 {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }
}

fn shuffled_pages(n: usize, seed: u64) -> Vec<i32> {
    let mut r = lcg(seed);
    let mut p: Vec<i32> = (0..n as i32).collect();
    for i in (1..n).rev() {
        let j = ((r() + 0.5) * (i + 1) as f32) as usize % (i + 1);
        p.swap(i, j);
    }
    p
}

proptest! {
    #![proptest_config(cfg(256))]

    /// FP8 round-trip: |e4m3(x) - x| <= half an ulp of the e4m3 grid at |x|.
    #[test]
    fn fp8_round_trip_within_half_ulp(x in -448f32..448f32) {
        let y = fp8::round_to_e4m3(x);
        prop_assert!((y - x).abs() <= e4m3_half_ulp(x.abs()), "x {x} y {y}");
        prop_assert_eq!(y.is_sign_negative(), x.is_sign_negative());
    }

    /// Block quantization: each dequantized value is within half an ulp of the scaled
    /// value, times the scale; the scale obeys the amax rule.
    #[test]
    fn fp8_block_round_trip(xs in prop::collection::vec(-1e3f32..1e3f32, 128), pow2 in any::<bool>()) {
        let (codes, s) = fp8::quantize_block(&xs, pow2);
        let amax = xs.iter().fold(1e-4f32, |m, v| m.max(v.abs()));
        prop_assert!(s >= amax / 448.0);
        if pow2 { prop_assert!(s < amax / 448.0 * 2.0); } else { prop_assert_eq!(s, amax / 448.0); }
        for (c, x) in codes.iter().zip(&xs) {
            let scaled = x / s;
            let back = fp8::e4m3_to_f32(*c);
            prop_assert!((back - scaled).abs() <= e4m3_half_ulp(scaled.abs().min(448.0)) * 1.0001);
        }
    }
}

proptest! {
    #![proptest_config(cfg(64))]

    /// The scaled Hadamard transform is orthonormal and its own inverse.
    #[test]
    fn hadamard_orthonormal_involution(xs in prop::collection::vec(-10f32..10f32, 128)) {
        let y = hadamard::transform_scaled(&xs);
        let n0: f64 = xs.iter().map(|v| f64::from(*v).powi(2)).sum();
        let n1: f64 = y.iter().map(|v| f64::from(*v).powi(2)).sum();
        prop_assert!((n0 - n1).abs() <= 1e-5 * n0.max(1.0));
        let z = hadamard::transform_scaled(&y);
        for (a, b) in z.iter().zip(&xs) {
            prop_assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0));
        }
    }

    /// RoPE (both layouts) preserves norms, and `<R(p)x, R(q)y>` depends only on `p - q`.
    #[test]
    fn rope_norm_and_relative_position(
        xs in prop::collection::vec(-2f32..2f32, 64),
        ys in prop::collection::vec(-2f32..2f32, 64),
        p in 0usize..200, q in 0usize..200, shift in 0usize..200, interleaved in any::<bool>(),
    ) {
        let t = rope::RopeTables::deepseek_v32(400);
        let rot = |v: &[f32], pos: usize| {
            let mut v = v.to_vec();
            if interleaved { t.apply_interleaved(&mut v, pos) } else { t.apply_rotate_half(&mut v, pos) }
            v
        };
        let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum::<f64>();
        let rx = rot(&xs, p);
        prop_assert!((dot(&rx, &rx) - dot(&xs, &xs)).abs() <= 1e-4 * dot(&xs, &xs).max(1.0));
        let d0 = dot(&rot(&xs, p), &rot(&ys, q));
        let d1 = dot(&rot(&xs, p + shift), &rot(&ys, q + shift));
        prop_assert!((d0 - d1).abs() <= 1e-3, "{d0} vs {d1}");
    }

    /// Top-k with k >= the number of valid entries returns every valid index (largest
    /// first, ties by index) and then -1.
    #[test]
    fn topk_k_ge_len_returns_all_valid(
        row in prop::collection::vec(prop_oneof![4 => (-8i32..8).prop_map(|v| v as f32), 1 => Just(f32::NEG_INFINITY)], 0..40),
        a in 0usize..40, b in 0usize..40, extra in 0usize..5,
    ) {
        let (start, end) = (a.min(b).min(row.len()), a.max(b).min(row.len()));
        let valid: Vec<usize> = (start..end).filter(|&i| row[i].is_finite()).collect();
        let k = valid.len() + extra;
        let out = topk::topk_row(&row, start, end, k);
        prop_assert_eq!(out.len(), k);
        let mut got: Vec<usize> = out[..valid.len()].iter().map(|&i| i as usize).collect();
        prop_assert!(out[valid.len()..].iter().all(|&i| i == -1));
        for w in got.windows(2) {
            prop_assert!(row[w[0]] > row[w[1]] || (row[w[0]] == row[w[1]] && w[0] < w[1]));
        }
        got.sort();
        prop_assert_eq!(got, valid);
    }

    /// Top-k with k < len picks a set no element outside of which is larger.
    #[test]
    fn topk_selects_largest(row in prop::collection::vec((-50i32..50).prop_map(|v| v as f32), 1..60), k in 0usize..20) {
        let out = topk::topk_row(&row, 0, row.len(), k);
        let chosen: Vec<usize> = out.iter().filter(|&&i| i >= 0).map(|&i| i as usize).collect();
        prop_assert_eq!(chosen.len(), k.min(row.len()));
        if let Some(&last) = chosen.last() {
            for i in 0..row.len() {
                if !chosen.contains(&i) {
                    prop_assert!(row[i] < row[last] || (row[i] == row[last] && i > last));
                }
            }
        }
    }
}

/// A random paged batch: per sequence length, shuffled page ids, and bf16 key rows.
struct Paged {
    lens: Vec<i32>,
    block_table: Vec<i32>,
    max_pages: usize,
    bf16_cache: Vec<bf16>,
    fp8_cache: Vec<u8>,
}

fn paged(lens: &[i32], seed: u64) -> Paged {
    let max_pages = lens
        .iter()
        .map(|&l| (l as usize).div_ceil(64))
        .max()
        .unwrap_or(0)
        .max(1);
    let n_pages = lens.len() * max_pages + 1;
    let perm = shuffled_pages(n_pages, seed);
    let block_table: Vec<i32> = (0..lens.len() * max_pages).map(|i| perm[i]).collect();
    let mut bf16_cache = vec![bf16::ZERO; n_pages * 64 * 576];
    let mut fp8_cache = vec![0u8; n_pages * cache::MLA_FP8_PAGE_BYTES];
    let mut r = lcg(seed ^ 0xabc);
    for (b, &len) in lens.iter().enumerate() {
        for s in 0..len as usize {
            let row: Vec<bf16> = (0..576).map(|_| bf16::from_f32(r() * 2.0)).collect();
            let slot = cache::slot_of(&block_table[b * max_pages..], s);
            cache::mla_bf16_cache_write(&mut bf16_cache, slot, &row);
            cache::mla_fp8_cache_write(&mut fp8_cache, slot, &row);
        }
    }
    Paged {
        lens: lens.to_vec(),
        block_table,
        max_pages,
        bf16_cache,
        fp8_cache,
    }
}

fn close(a: &[f32], b: &[f32], tol: f32) -> Result<(), TestCaseError> {
    prop_assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        if x.is_infinite() || y.is_infinite() {
            prop_assert_eq!(x, y, "at {}", i);
        } else {
            prop_assert!(
                (x - y).abs() <= tol * (1.0 + y.abs()),
                "at {}: {} vs {}",
                i,
                x,
                y
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(cfg(24))]

    /// Sparse decode with every causal token selected (shuffled, padded with -1, over
    /// shuffled pages) equals dense paged decode, for the FP8 and the bf16 cache.
    #[test]
    fn sparse_with_all_causal_tokens_equals_dense(
        lens in prop::collection::vec(0i32..150, 1..3), s_q in 1usize..3, h_q in 1usize..3,
        seed in any::<u64>(), use_fp8 in any::<bool>(),
    ) {
        let b = lens.len();
        let pg = paged(&lens, seed);
        let mut r = lcg(seed);
        let q: Vec<bf16> = (0..b * s_q * h_q * 576).map(|_| bf16::from_f32(r())).collect();
        let topk = lens.iter().map(|&l| l as usize).max().unwrap() + 3;
        let mut idx = vec![-1i32; b * s_q * topk];
        for bi in 0..b {
            for j in 0..s_q {
                let last = lens[bi] as i64 - s_q as i64 + j as i64;
                let n = if last < 0 { 0 } else { last as usize + 1 };
                let mut logical: Vec<i32> = (0..n as i32).collect();
                let perm = shuffled_pages(n, seed ^ j as u64);
                logical = perm.iter().map(|&p| logical[p as usize]).collect();
                let slots = topk::translate_to_slots(&logical, &pg.block_table[bi * pg.max_pages..(bi + 1) * pg.max_pages]);
                let row = &mut idx[(bi * s_q + j) * topk..(bi * s_q + j + 1) * topk];
                row[..n].copy_from_slice(&slots);
            }
        }
        let kv: Box<dyn Fn(usize) -> Option<Vec<f32>>> = if use_fp8 {
            Box::new(attention::kv_from_fp8_cache(&pg.fp8_cache))
        } else {
            Box::new(attention::kv_from_bf16_cache(&pg.bf16_cache))
        };
        let scale = 0.135234;
        let (od, ld) = attention::dense_mla_decode(&q, &*kv, &pg.block_table, pg.max_pages, &pg.lens, scale, b, s_q, h_q);
        let (os, ls) = attention::sparse_mla_decode(&q, &*kv, &idx, None, None, scale, b, s_q, h_q, topk);
        close(&os, &od, 1e-5)?;
        close(&ls, &ld, 1e-5)?;
    }

    /// Splitting the keys anywhere and combining the partials equals attending to all.
    #[test]
    fn split_kv_combine_law(n in 0usize..40, cuts in prop::collection::vec(0usize..40, 0..4), seed in any::<u64>()) {
        let mut r = lcg(seed);
        let q: Vec<f32> = (0..576).map(|_| r() * 4.0).collect();
        let keys: Vec<Vec<f32>> = (0..n).map(|_| (0..576).map(|_| r() * 4.0).collect()).collect();
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(n)).collect();
        cuts.push(0);
        cuts.push(n);
        cuts.sort();
        let mut po = Vec::new();
        let mut pl = Vec::new();
        for w in cuts.windows(2) {
            let (o, l) = attention::attend_partial(&q, &keys[w[0]..w[1]], 0.1, 512);
            po.extend(o);
            pl.push(l);
        }
        let (out, lse) = attention::combine_splits(&po, &pl, cuts.len() - 1, 512);
        let (full, lfull) = attention::attend_partial(&q, &keys, 0.1, 512);
        let lfull = if lfull == f32::NEG_INFINITY { f32::INFINITY } else { lfull };
        close(&out, &full, 1e-5)?;
        close(&[lse], &[lfull], 1e-5)?;
    }

    /// Paged indexer decode logits equal the ragged prefill logits of the same keys, under
    /// any shuffled page assignment.
    #[test]
    fn indexer_decode_equals_prefill_under_shuffled_pages(
        len in 1i32..140, next_n in 1usize..3, h in 1usize..4, seed in any::<u64>(),
    ) {
        let len = len.max(next_n as i32);
        let mut r = lcg(seed);
        let keys: Vec<f32> = (0..len as usize * 128).map(|_| r() * 3.0).collect();
        let rope_t = rope::RopeTables::deepseek_v32(len as usize);
        let pos: Vec<i32> = (0..len).collect();
        let (k8, ks) = indexer::prepare(&keys, &pos, &rope_t);
        let qpos: Vec<i32> = (0..next_n).flat_map(|j| std::iter::repeat_n(len - next_n as i32 + j as i32, h)).collect();
        let qx: Vec<f32> = (0..next_n * h * 128).map(|_| r() * 3.0).collect();
        let (q8, qs) = indexer::prepare(&qx, &qpos, &rope_t);
        let w: Vec<f32> = (0..next_n * h).map(|_| r()).collect();
        let w = indexer::fold_weights(&w, &qs);
        let max_pages = (len as usize).div_ceil(64);
        let bt = shuffled_pages(max_pages + 2, seed)[..max_pages].to_vec();
        let mut kc = vec![0u8; (max_pages + 2) * cache::INDEXER_PAGE_BYTES];
        for s in 0..len as usize {
            let c: [u8; 128] = k8[s * 128..(s + 1) * 128].try_into().unwrap();
            cache::indexer_cache_write(&mut kc, cache::slot_of(&bt, s), &c, ks[s]);
        }
        let dec = indexer::logits_decode(&q8, &w, &kc, &[len], &bt, max_pages, next_n, h, len as usize);
        let kss = vec![0; next_n];
        let kee: Vec<i32> = (0..next_n as i32).map(|j| len - next_n as i32 + j + 1).collect();
        let pre = indexer::logits_prefill(&q8, &w, &k8, &ks, &kss, &kee, next_n, h, len as usize);
        prop_assert_eq!(dec, pre);
    }
}
