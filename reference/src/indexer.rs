//! The lightning indexer (spec 1.2): q/k preparation, weight folding, and the FP8 logits
//! of the prefill (ragged) and decode (paged) kernels.
//!
//! **Exactness of the logits.** Every e4m3 value is an integer multiple of `2^-9` below
//! `2^9`, so every product in `q8 . k8` is a multiple of `2^-18` below `2^18` and any
//! f64 sum of 128 of them (at most 44 significant bits) is exact. The weighted sum over heads, `sum_h w'[t,h] *
//! relu(dot_h)`, is accumulated in f64, multiplied by `kscale[s]` in f64 and rounded to
//! f32 once. A kernel's fp32 accumulation differs from this only by its own rounding.

use crate::cache::{self, INDEXER_DIM, PAGE_SIZE};
use crate::fp8;
use crate::hadamard;
use crate::nn;
use crate::rope::RopeTables;
use rayon::prelude::*;

/// Dims of the indexer vector that get RoPE (the first 64: `[rope 64 | nope 64]`).
pub const INDEXER_ROPE_DIM: usize = 64;

/// Decodes e4m3 codes to their (exact) f32 values; NaN codes become 0.
fn decode(codes: &[u8]) -> Vec<f32> {
    codes
        .iter()
        .map(|&c| {
            let v = fp8::e4m3_to_f32(c);
            if v.is_nan() {
                0.0
            } else {
                v
            }
        })
        .collect()
}

/// Exact `dot(a, b)` of two e4m3 code vectors, in f64.
pub fn fp8_dot_exact(a: &[u8], b: &[u8]) -> f64 {
    nn::dot_e4m3(&decode(a), &decode(b))
}

/// Logit of one (query, key) pair: `kscale * sum_h w[h] * relu(q[h] . k)`, with `q` the
/// decoded `[H, 128]` query and `k` the decoded key. The per-head dot products are exact
/// (products of e4m3 values are multiples of `2^-18` below `2^18`, so any order of f64
/// summation of 128 of them is exact).
fn pair_logit(q: &[f32], w: &[f32], k: &[f32], kscale: f32) -> f32 {
    let mut acc = 0f64;
    for (h, &wh) in w.iter().enumerate() {
        let d = nn::dot_e4m3(&q[h * INDEXER_DIM..(h + 1) * INDEXER_DIM], k);
        if d > 0.0 {
            acc += f64::from(wh) * d;
        }
    }
    (acc * f64::from(kscale)) as f32
}

/// Indexer logits of the ragged prefill kernel.
///
/// * `q8`: `[s, h, 128]` e4m3 codes; `w`: `[s, h]` folded weights w' (see
///   [`fold_weights`]); `k8`: `[s_kv, 128]` codes; `kscale`: `[s_kv]`;
/// * `ks`, `ke`: `[s]`, query `t` sees keys `ks[t] <= key < ke[t]` (clamped to
///   `[0, s_kv]`).
///
/// Returns row-major `[s, s_kv]` f32: `I[t,k] = kscale[k] * sum_h w[t,h] *
/// relu(q8[t,h] . k8[k])` inside the range, `-inf` outside. Panics on inconsistent lengths.
#[allow(clippy::too_many_arguments)]
pub fn logits_prefill(
    q8: &[u8],
    w: &[f32],
    k8: &[u8],
    kscale: &[f32],
    ks: &[i32],
    ke: &[i32],
    s: usize,
    h: usize,
    s_kv: usize,
) -> Vec<f32> {
    assert_eq!(q8.len(), s * h * INDEXER_DIM, "q8 must be [s, h, 128]");
    assert_eq!(w.len(), s * h, "w must be [s, h]");
    assert_eq!(k8.len(), s_kv * INDEXER_DIM, "k8 must be [s_kv, 128]");
    assert_eq!(kscale.len(), s_kv, "kscale must be [s_kv]");
    assert!(ks.len() == s && ke.len() == s, "ks and ke must be [s]");
    let kv = decode(k8);
    let mut out = vec![f32::NEG_INFINITY; s * s_kv];
    out.par_chunks_mut(s_kv.max(1))
        .take(s)
        .enumerate()
        .for_each(|(row, o)| {
            let lo = ks[row].clamp(0, s_kv as i32) as usize;
            let hi = (ke[row].clamp(0, s_kv as i32) as usize).max(lo);
            let q = decode(&q8[row * h * INDEXER_DIM..(row + 1) * h * INDEXER_DIM]);
            let wr = &w[row * h..(row + 1) * h];
            for k in lo..hi {
                o[k] = pair_logit(
                    &q,
                    wr,
                    &kv[k * INDEXER_DIM..(k + 1) * INDEXER_DIM],
                    kscale[k],
                );
            }
        });
    out
}

/// Indexer logits of the paged decode kernel.
///
/// * `q8`: `[b, next_n, h, 128]` codes; `w`: `[b * next_n, h]` folded weights;
/// * `k_cache`: the paged indexer cache (per-page layout of [`crate::cache`]);
/// * `context_lens`: `[b]`, each counting the `next_n` new tokens;
/// * `block_table`: `[b, max_pages]` int32 page ids.
///
/// Returns `[b * next_n, max_ctx]` f32. Row `b * next_n + j` holds logical keys `0 ..=
/// context_lens[b] - next_n + j` (none if that is negative; keys at or past `max_ctx` are
/// not represented); logical key `s` is read at physical slot `block_table[b *
/// max_pages + s / 64] * 64 + s % 64`. Every other entry is `-inf`.
#[allow(clippy::too_many_arguments)]
pub fn logits_decode(
    q8: &[u8],
    w: &[f32],
    k_cache: &[u8],
    context_lens: &[i32],
    block_table: &[i32],
    max_pages: usize,
    next_n: usize,
    h: usize,
    max_ctx: usize,
) -> Vec<f32> {
    let b = context_lens.len();
    let rows = b * next_n;
    assert_eq!(
        q8.len(),
        rows * h * INDEXER_DIM,
        "q8 must be [b, next_n, h, 128]"
    );
    assert_eq!(w.len(), rows * h, "w must be [b * next_n, h]");
    assert_eq!(
        block_table.len(),
        b * max_pages,
        "block_table must be [b, max_pages]"
    );
    let mut out = vec![f32::NEG_INFINITY; rows * max_ctx];
    for bi in 0..b {
        // Keys this sequence's rows can see, decoded once and shared by its rows.
        let visible = i64::from(context_lens[bi]).clamp(0, max_ctx as i64) as usize;
        assert!(
            visible.div_ceil(PAGE_SIZE) <= max_pages,
            "context of sequence {bi} beyond the block table"
        );
        let bt = &block_table[bi * max_pages..(bi + 1) * max_pages];
        let mut kv = Vec::with_capacity(visible * INDEXER_DIM);
        let mut ksc = Vec::with_capacity(visible);
        for s in 0..visible {
            let (k8, sc) = cache::indexer_cache_read(k_cache, cache::slot_of(bt, s));
            kv.extend(decode(&k8));
            ksc.push(sc);
        }
        out[bi * next_n * max_ctx..(bi + 1) * next_n * max_ctx]
            .par_chunks_mut(max_ctx.max(1))
            .enumerate()
            .for_each(|(j, o)| {
                let row = bi * next_n + j;
                let last = i64::from(context_lens[bi]) - next_n as i64 + j as i64;
                if last < 0 {
                    return;
                }
                let end = ((last + 1) as usize).min(visible);
                let q = decode(&q8[row * h * INDEXER_DIM..(row + 1) * h * INDEXER_DIM]);
                let wr = &w[row * h..(row + 1) * h];
                for (s, slot_out) in o.iter_mut().enumerate().take(end) {
                    *slot_out =
                        pair_logit(&q, wr, &kv[s * INDEXER_DIM..(s + 1) * INDEXER_DIM], ksc[s]);
                }
            });
    }
    out
}

/// The fused q/k preparation: for each row of `x` (`[rows, 128]`, the bf16 projections
/// widened to f32) at `positions[row]`: rotate-half YaRN RoPE on dims 0..64 (pairs
/// `(i, i+32)`, f32 arithmetic), Hadamard over all 128 dims scaled by `128^-0.5`
/// (computed in f64, rounded to f32 once), then the indexer FP8 quantization (amax
/// floored at 1e-4, power-of-two scale). Returns `(codes [rows, 128], scales [rows])`.
/// A q tensor `[S, H, 128]` is `S * H` rows with each token's position repeated H times.
/// Panics if `rope.rotary_dim != 64` or the lengths disagree.
pub fn prepare(x: &[f32], positions: &[i32], rope: &RopeTables) -> (Vec<u8>, Vec<f32>) {
    let rows = positions.len();
    assert_eq!(x.len(), rows * INDEXER_DIM, "x must be [rows, 128]");
    assert_eq!(
        rope.rotary_dim, INDEXER_ROPE_DIM,
        "indexer RoPE covers 64 dims"
    );
    let per_row: Vec<(Vec<u8>, f32)> = (0..rows)
        .into_par_iter()
        .map(|r| {
            let y = prepare_f32(
                &x[r * INDEXER_DIM..(r + 1) * INDEXER_DIM],
                positions[r],
                rope,
            );
            fp8::quantize_block(&y, true)
        })
        .collect();
    let mut codes = Vec::with_capacity(rows * INDEXER_DIM);
    let mut scales = Vec::with_capacity(rows);
    for (c, s) in per_row {
        codes.extend_from_slice(&c);
        scales.push(s);
    }
    (codes, scales)
}

/// RoPE (rotate-half, dims 0..64) and the scaled Hadamard transform of one 128-dim row,
/// before quantization.
pub fn prepare_f32(x: &[f32], position: i32, rope: &RopeTables) -> Vec<f32> {
    assert!(position >= 0, "negative position");
    let mut v = x.to_vec();
    rope.apply_rotate_half(&mut v[..INDEXER_ROPE_DIM], position as usize);
    hadamard::transform_scaled(&v)
}

/// Folds the q scales into the head weights: `w'[i] = (w[i] * qscale[i]) * 128^-0.5`
/// in f32, in that order (DeepSeek's order). `w` is the head-weight projection already
/// multiplied by `n_heads^-0.5` (spec 1.2 step 6).
pub fn fold_weights(w: &[f32], qscale: &[f32]) -> Vec<f32> {
    assert_eq!(w.len(), qscale.len(), "one q scale per head weight");
    let s = (INDEXER_DIM as f32).powf(-0.5);
    w.iter().zip(qscale).map(|(&a, &q)| a * q * s).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let c = (x >> 33) as u8;
                // Avoid NaN codes and keep magnitudes moderate.
                (c & 0x80) | ((c & 0x7f) % 0x60)
            })
            .collect()
    }

    #[test]
    fn exact_dot_matches_naive() {
        let a = codes(128, 1);
        let b = codes(128, 2);
        let naive: f64 = a
            .iter()
            .zip(&b)
            .map(|(&x, &y)| f64::from(fp8::e4m3_to_f32(x)) * f64::from(fp8::e4m3_to_f32(y)))
            .sum();
        assert_eq!(fp8_dot_exact(&a, &b), naive);
        let max = vec![0x7eu8; 128];
        assert_eq!(fp8_dot_exact(&max, &max), 448.0 * 448.0 * 128.0);
    }

    #[test]
    fn prefill_logits_definition_and_mask() {
        let (s, h, s_kv) = (3, 2, 5);
        let q8 = codes(s * h * 128, 3);
        let k8 = codes(s_kv * 128, 4);
        let w = vec![0.5, -0.25, 1.0, 2.0, -1.0, 0.125];
        let kscale = vec![0.5, 1.0, 2.0, 0.25, 4.0];
        let ks = vec![0, 1, 5];
        let ke = vec![2, 5, 5];
        let out = logits_prefill(&q8, &w, &k8, &kscale, &ks, &ke, s, h, s_kv);
        for t in 0..s {
            for k in 0..s_kv {
                let v = out[t * s_kv + k];
                if (k as i32) < ks[t] || (k as i32) >= ke[t] {
                    assert_eq!(v, f32::NEG_INFINITY);
                    continue;
                }
                let mut acc = 0f64;
                for hh in 0..h {
                    let d = fp8_dot_exact(
                        &q8[(t * h + hh) * 128..(t * h + hh + 1) * 128],
                        &k8[k * 128..(k + 1) * 128],
                    );
                    acc += f64::from(w[t * h + hh]) * d.max(0.0);
                }
                assert_eq!(v, (acc * f64::from(kscale[k])) as f32);
            }
        }
    }

    #[test]
    fn decode_matches_prefill_through_pages() {
        // Two sequences, next_n = 2, shuffled pages; decode rows must equal prefill
        // logits with the causal ranges of the new tokens.
        let (h, next_n, max_pages) = (3, 2, 3);
        let lens = [70i32, 3];
        let bt = [2i32, 0, 4, 1, 3, 5];
        let mut cache = vec![0u8; 6 * cache::INDEXER_PAGE_BYTES];
        let mut k8s = Vec::new();
        let mut kss = Vec::new();
        for (bi, &len) in lens.iter().enumerate() {
            let k8 = codes(len as usize * 128, 10 + bi as u64);
            let ksc: Vec<f32> = (0..len).map(|i| 2f32.powi(i % 5 - 2)).collect();
            for p in 0..len as usize {
                let slot = cache::slot_of(&bt[bi * max_pages..], p);
                let c: [u8; 128] = k8[p * 128..(p + 1) * 128].try_into().unwrap();
                cache::indexer_cache_write(&mut cache, slot, &c, ksc[p]);
            }
            k8s.push(k8);
            kss.push(ksc);
        }
        let q8 = codes(2 * next_n * h * 128, 20);
        let w: Vec<f32> = (0..2 * next_n * h).map(|i| i as f32 * 0.1 - 0.3).collect();
        let max_ctx = 80;
        let out = logits_decode(&q8, &w, &cache, &lens, &bt, max_pages, next_n, h, max_ctx);
        for bi in 0..2 {
            let len = lens[bi] as usize;
            let rows = bi * next_n..(bi + 1) * next_n;
            let ks = vec![0; next_n];
            let ke: Vec<i32> = (0..next_n)
                .map(|j| lens[bi] - next_n as i32 + j as i32 + 1)
                .collect();
            let want = logits_prefill(
                &q8[rows.start * h * 128..rows.end * h * 128],
                &w[rows.start * h..rows.end * h],
                &k8s[bi],
                &kss[bi],
                &ks,
                &ke,
                next_n,
                h,
                len,
            );
            for j in 0..next_n {
                for s in 0..max_ctx {
                    let got = out[(bi * next_n + j) * max_ctx + s];
                    let exp = if s < len {
                        want[j * len + s]
                    } else {
                        f32::NEG_INFINITY
                    };
                    assert_eq!(got, exp, "b {bi} j {j} s {s}");
                }
            }
        }
    }

    #[test]
    fn prepare_pipeline() {
        let rope = RopeTables::deepseek_v32(16);
        let x: Vec<f32> = (0..256)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let (c, s) = prepare(&x, &[3, 9], &rope);
        assert_eq!(c.len(), 256);
        for r in 0..2 {
            let y = prepare_f32(&x[r * 128..(r + 1) * 128], [3, 9][r], &rope);
            let (cc, ss) = fp8::quantize_block(&y, true);
            assert_eq!(&c[r * 128..(r + 1) * 128], &cc[..]);
            assert_eq!(s[r], ss);
            // Orthonormal transform + rotation keep the norm.
            let n0: f32 = x[r * 128..(r + 1) * 128].iter().map(|v| v * v).sum();
            let n1: f32 = y.iter().map(|v| v * v).sum();
            assert!((n0 - n1).abs() < 1e-3 * n0);
        }
    }

    #[test]
    fn fold_order() {
        let w = fold_weights(&[3.0, -1.5], &[0.25, 2.0]);
        let s = 128f32.powf(-0.5);
        assert_eq!(w, vec![3.0 * 0.25 * s, -1.5 * 2.0 * s]);
    }
}
