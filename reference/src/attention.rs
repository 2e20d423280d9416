//! MLA attention oracles with the kernels' semantics (spec section 3).
//!
//! Common rules:
//! * scores are `scale * (q . k)` over all 576 dims (the absorbed form), the value is the
//!   first 512 dims of the key row; the scale is always explicit (DeepSeek-V3.2 uses
//!   0.135234, see [`crate::rope::mla_softmax_scale`]);
//! * dot products, softmax and the weighted sum are accumulated in f64 and rounded to f32
//!   at the end, so the oracle is more exact than any kernel;
//! * `lse` is the natural-log log-sum-exp of the valid scores, laid out `[.., h_q]`
//!   (FlashMLA's decode API returns it transposed, `[b, h_q, s_q]`);
//! * a query with no valid key (the "lonely query" rule) gets output 0, lse `+inf` and
//!   max_logits `-inf`;
//! * a duplicated index is attended twice, as a kernel would.
//!
//! **Attention sink** (FlashMLA semantics, per head `h`): the sink adds `exp(sink[h])` to
//! the softmax denominator only: `out = sum_i exp(s_i) v_i / (sum_i exp(s_i) +
//! exp(sink[h]))`, i.e. the sink-free output times `1 / (1 + exp(sink[h] - lse))`. The
//! returned `lse` does not include the sink. A lonely query still gets 0 and `+inf`.

use crate::cache::{self, MLA_DIM, PAGE_SIZE};
use crate::nn;
use half::bf16;
use rayon::prelude::*;

/// Width of the value (the latent part of a key row).
pub const D_V: usize = 512;

/// Unnormalized softmax state over a set of keys: running max, sum of `exp(s - max)`,
/// and `sum exp(s - max) * v`.
#[derive(Clone, Debug)]
struct Softmax {
    max: f64,
    sum: f64,
    acc: Vec<f64>,
}

impl Softmax {
    fn over(q: &[f64], keys: &[&[f32]], scale: f64, d_v: usize) -> Self {
        let keys64: Vec<Vec<f64>> = keys
            .iter()
            .map(|k| k.iter().map(|&v| f64::from(v)).collect())
            .collect();
        Self::over64(q, &keys64, scale, d_v)
    }

    /// Same, with keys already widened (the gather of a query row is shared by its heads).
    fn over64(q: &[f64], keys: &[Vec<f64>], scale: f64, d_v: usize) -> Self {
        let scores: Vec<f64> = keys
            .iter()
            .map(|k| scale * nn::dot_f64x(q, &k[..q.len()]))
            .collect();
        let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let mut sum = 0f64;
        let mut acc = vec![0f64; d_v];
        if max > f64::NEG_INFINITY {
            for (s, k) in scores.iter().zip(keys) {
                let p = (s - max).exp();
                sum += p;
                for (a, &v) in acc.iter_mut().zip(&k[..d_v]) {
                    *a += p * v;
                }
            }
        }
        Softmax { max, sum, acc }
    }

    fn empty(&self) -> bool {
        self.max == f64::NEG_INFINITY
    }

    /// `(out, lse, max)` with the lonely-query rule and an optional sink.
    fn finish(&self, sink: Option<f32>) -> (Vec<f32>, f32, f32) {
        if self.empty() || self.sum == 0.0 {
            return (vec![0.0; self.acc.len()], f32::INFINITY, f32::NEG_INFINITY);
        }
        let denom = self.sum + sink.map_or(0.0, |s| (f64::from(s) - self.max).exp());
        let out = self.acc.iter().map(|a| (a / denom) as f32).collect();
        ((out), (self.max + self.sum.ln()) as f32, self.max as f32)
    }
}

/// Attention of one query over an explicit key set, in the split-KV partial convention:
/// returns `(out [d_v], lse)` normalized over these keys only, with `lse = -inf` and out 0
/// when `keys` is empty (an empty split contributes nothing to [`combine_splits`]).
/// `q` and every key have the same width (576 for MLA); values are `key[..d_v]`.
pub fn attend_partial(q: &[f32], keys: &[Vec<f32>], scale: f32, d_v: usize) -> (Vec<f32>, f32) {
    let qd: Vec<f64> = q.iter().map(|&v| f64::from(v)).collect();
    let refs: Vec<&[f32]> = keys.iter().map(|k| k.as_slice()).collect();
    let sm = Softmax::over(&qd, &refs, f64::from(scale), d_v);
    if sm.empty() {
        return (vec![0.0; d_v], f32::NEG_INFINITY);
    }
    let (out, lse, _) = sm.finish(None);
    (out, lse)
}

/// Closure reading physical slots of an MLA FP8 cache (`pages x 64 x 656` bytes), for the
/// decode oracles; `None` outside the cache.
pub fn kv_from_fp8_cache(cache: &[u8]) -> impl Fn(usize) -> Option<Vec<f32>> + Sync + '_ {
    move |slot| cache::mla_fp8_cache_read(cache, slot)
}

/// Closure reading physical slots of an MLA bf16 cache (`[pages, 64, 576]`); `None`
/// outside the cache.
pub fn kv_from_bf16_cache(cache: &[bf16]) -> impl Fn(usize) -> Option<Vec<f32>> + Sync + '_ {
    move |slot| cache::mla_bf16_cache_read(cache, slot)
}

/// Attention of one `(batch, query)` over gathered rows, all heads in parallel.
fn heads(
    q: &[f32],
    rows: &[&[f32]],
    sink: Option<&[f32]>,
    scale: f32,
    h_q: usize,
    out: &mut [f32],
    lse: &mut [f32],
    max_logits: Option<&mut [f32]>,
) {
    let rows64: Vec<Vec<f64>> = rows
        .iter()
        .map(|k| k.iter().map(|&v| f64::from(v)).collect())
        .collect();
    let res: Vec<(Vec<f32>, f32, f32)> = (0..h_q)
        .into_par_iter()
        .map(|h| {
            let qh: Vec<f64> = q[h * MLA_DIM..(h + 1) * MLA_DIM]
                .iter()
                .map(|&v| f64::from(v))
                .collect();
            Softmax::over64(&qh, &rows64, f64::from(scale), D_V).finish(sink.map(|s| s[h]))
        })
        .collect();
    let mut ml = max_logits;
    for (h, (o, l, m)) in res.into_iter().enumerate() {
        out[h * D_V..(h + 1) * D_V].copy_from_slice(&o);
        lse[h] = l;
        if let Some(ml) = ml.as_deref_mut() {
            ml[h] = m;
        }
    }
}

/// Sparse MLA decode (FlashMLA `flash_mla_with_kvcache` with indices).
///
/// * `q`: `[b, s_q, h_q, 576]` bf16;
/// * `kv(slot)`: the 576 dequantized values of a physical slot, `None` if out of range
///   (see [`kv_from_fp8_cache`], [`kv_from_bf16_cache`]);
/// * `indices`: `[b, s_q, topk]` physical slots; an entry is unused if it is negative
///   (`-1`), if `kv` returns `None` for it, or if its position is `>= topk_length[b]`;
/// * `attn_sink`: optional `[h_q]` (module docs).
///
/// Returns `(out [b, s_q, h_q, 512], lse [b, s_q, h_q])`, f32.
#[allow(clippy::too_many_arguments)]
pub fn sparse_mla_decode(
    q: &[bf16],
    kv: &dyn Fn(usize) -> Option<Vec<f32>>,
    indices: &[i32],
    topk_length: Option<&[i32]>,
    attn_sink: Option<&[f32]>,
    scale: f32,
    b: usize,
    s_q: usize,
    h_q: usize,
    topk: usize,
) -> (Vec<f32>, Vec<f32>) {
    let qf: Vec<f32> = q.iter().map(|v| v.to_f32()).collect();
    sparse_mla_decode_f32(
        &qf,
        kv,
        indices,
        topk_length,
        attn_sink,
        scale,
        b,
        s_q,
        h_q,
        topk,
    )
}

/// [`sparse_mla_decode`] with an f32 query (the reference model's exact mode; the kernel
/// API takes bf16).
pub fn sparse_mla_decode_f32(
    q: &[f32],
    kv: &dyn Fn(usize) -> Option<Vec<f32>>,
    indices: &[i32],
    topk_length: Option<&[i32]>,
    attn_sink: Option<&[f32]>,
    scale: f32,
    b: usize,
    s_q: usize,
    h_q: usize,
    topk: usize,
) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(
        q.len(),
        b * s_q * h_q * MLA_DIM,
        "q must be [b, s_q, h_q, 576]"
    );
    assert_eq!(
        indices.len(),
        b * s_q * topk,
        "indices must be [b, s_q, topk]"
    );
    if let Some(t) = topk_length {
        assert_eq!(t.len(), b, "topk_length must be [b]");
    }
    if let Some(s) = attn_sink {
        assert_eq!(s.len(), h_q, "attn_sink must be [h_q]");
    }
    let mut out = vec![0f32; b * s_q * h_q * D_V];
    let mut lse = vec![0f32; b * s_q * h_q];
    for bi in 0..b {
        let limit = topk_length.map_or(topk, |t| t[bi].clamp(0, topk as i32) as usize);
        for si in 0..s_q {
            let r = bi * s_q + si;
            let rows: Vec<Vec<f32>> = indices[r * topk..r * topk + limit]
                .iter()
                .filter(|&&i| i >= 0)
                .filter_map(|&i| kv(i as usize))
                .collect();
            let refs: Vec<&[f32]> = rows.iter().map(|v| v.as_slice()).collect();
            heads(
                &q[r * h_q * MLA_DIM..(r + 1) * h_q * MLA_DIM],
                &refs,
                attn_sink,
                scale,
                h_q,
                &mut out[r * h_q * D_V..(r + 1) * h_q * D_V],
                &mut lse[r * h_q..(r + 1) * h_q],
                None,
            );
        }
    }
    (out, lse)
}

/// Sparse MLA prefill (FlashMLA `flash_mla_sparse_fwd`).
///
/// * `q`: `[s_q, h_q, 576]` bf16; `kv`: flat `[s_kv, 576]` bf16;
/// * `indices`: `[s_q, topk]` rows of `kv`; `-1` (any negative) or `>= s_kv` is unused.
///
/// Returns `(out [s_q, h_q, 512], max_logits [s_q, h_q], lse [s_q, h_q])`, f32;
/// max_logits is the largest `scale * q.k` over the valid indices.
#[allow(clippy::too_many_arguments)]
pub fn sparse_mla_prefill(
    q: &[bf16],
    kv: &[bf16],
    indices: &[i32],
    scale: f32,
    s_q: usize,
    s_kv: usize,
    h_q: usize,
    topk: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    sparse_mla_prefill_with_sink(q, kv, indices, None, scale, s_q, s_kv, h_q, topk)
}

/// [`sparse_mla_prefill`] with an optional attention sink `[h_q]` (module docs).
#[allow(clippy::too_many_arguments)]
pub fn sparse_mla_prefill_with_sink(
    q: &[bf16],
    kv: &[bf16],
    indices: &[i32],
    attn_sink: Option<&[f32]>,
    scale: f32,
    s_q: usize,
    s_kv: usize,
    h_q: usize,
    topk: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    assert_eq!(q.len(), s_q * h_q * MLA_DIM, "q must be [s_q, h_q, 576]");
    assert_eq!(kv.len(), s_kv * MLA_DIM, "kv must be [s_kv, 576]");
    assert_eq!(indices.len(), s_q * topk, "indices must be [s_q, topk]");
    let kvf: Vec<f32> = kv.iter().map(|v| v.to_f32()).collect();
    let q: Vec<f32> = q.iter().map(|v| v.to_f32()).collect();
    let mut out = vec![0f32; s_q * h_q * D_V];
    let mut ml = vec![0f32; s_q * h_q];
    let mut lse = vec![0f32; s_q * h_q];
    out.par_chunks_mut(h_q * D_V)
        .zip(ml.par_chunks_mut(h_q))
        .zip(lse.par_chunks_mut(h_q))
        .enumerate()
        .for_each(|(r, ((o, m), l))| {
            let refs: Vec<&[f32]> = indices[r * topk..(r + 1) * topk]
                .iter()
                .filter(|&&i| i >= 0 && (i as usize) < s_kv)
                .map(|&i| &kvf[i as usize * MLA_DIM..(i as usize + 1) * MLA_DIM])
                .collect();
            heads(
                &q[r * h_q * MLA_DIM..(r + 1) * h_q * MLA_DIM],
                &refs,
                attn_sink,
                scale,
                h_q,
                o,
                l,
                Some(m),
            );
        });
    (out, ml, lse)
}

/// Dense paged MLA decode (FlashMLA `flash_mla_with_kvcache` without indices), causal
/// for `s_q > 1`.
///
/// * `q`: `[b, s_q, h_q, 576]` bf16 (the last `s_q` tokens of each sequence);
/// * `kv(slot)`: see [`sparse_mla_decode`]; `block_table`: `[b, max_pages]`;
/// * `seq_lens`: `[b]`, counting the `s_q` new tokens.
///
/// Query `j` of sequence `bi` sees logical keys `0 ..= seq_lens[bi] - s_q + j` (none if
/// negative), at slots `block_table[bi * max_pages + s / 64] * 64 + s % 64`. Returns
/// `(out [b, s_q, h_q, 512], lse [b, s_q, h_q])`. Panics if a needed slot is unreadable.
#[allow(clippy::too_many_arguments)]
pub fn dense_mla_decode(
    q: &[bf16],
    kv: &dyn Fn(usize) -> Option<Vec<f32>>,
    block_table: &[i32],
    max_pages: usize,
    seq_lens: &[i32],
    scale: f32,
    b: usize,
    s_q: usize,
    h_q: usize,
) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(
        q.len(),
        b * s_q * h_q * MLA_DIM,
        "q must be [b, s_q, h_q, 576]"
    );
    assert_eq!(seq_lens.len(), b, "seq_lens must be [b]");
    assert_eq!(
        block_table.len(),
        b * max_pages,
        "block_table must be [b, max_pages]"
    );
    let q: Vec<f32> = q.iter().map(|v| v.to_f32()).collect();
    let mut out = vec![0f32; b * s_q * h_q * D_V];
    let mut lse = vec![0f32; b * s_q * h_q];
    for bi in 0..b {
        let bt = &block_table[bi * max_pages..(bi + 1) * max_pages];
        let len = seq_lens[bi].max(0) as usize;
        let rows = gather_sequence(kv, bt, len);
        for j in 0..s_q {
            let r = bi * s_q + j;
            let n = causal_visible(seq_lens[bi], s_q, j, len);
            let refs: Vec<&[f32]> = rows[..n].iter().map(|v| v.as_slice()).collect();
            heads(
                &q[r * h_q * MLA_DIM..(r + 1) * h_q * MLA_DIM],
                &refs,
                None,
                scale,
                h_q,
                &mut out[r * h_q * D_V..(r + 1) * h_q * D_V],
                &mut lse[r * h_q..(r + 1) * h_q],
                None,
            );
        }
    }
    (out, lse)
}

/// Split-KV partials of dense paged decode: the keys of each sequence (the causal range
/// of each query, as in [`dense_mla_decode`]) are cut into splits of `split_len` logical
/// tokens, `split i` covering keys `[i * split_len, (i + 1) * split_len)`. Returns
/// `(partial_out [b, s_q, h_q, n_splits, 512], partial_lse [b, s_q, h_q, n_splits],
/// n_splits)` with `n_splits = ceil(max(seq_lens) / split_len)` (at least 1); each
/// partial is normalized over its split, and a split with no visible key has out 0 and
/// lse `-inf`. [`combine_splits`] over the splits of a row gives [`dense_mla_decode`].
pub fn dense_mla_decode_partials(
    q: &[bf16],
    kv: &dyn Fn(usize) -> Option<Vec<f32>>,
    block_table: &[i32],
    max_pages: usize,
    seq_lens: &[i32],
    scale: f32,
    b: usize,
    s_q: usize,
    h_q: usize,
    split_len: usize,
) -> (Vec<f32>, Vec<f32>, usize) {
    assert!(split_len > 0, "split_len must be positive");
    assert_eq!(
        q.len(),
        b * s_q * h_q * MLA_DIM,
        "q must be [b, s_q, h_q, 576]"
    );
    assert_eq!(seq_lens.len(), b, "seq_lens must be [b]");
    assert_eq!(
        block_table.len(),
        b * max_pages,
        "block_table must be [b, max_pages]"
    );
    let max_len = seq_lens
        .iter()
        .map(|&l| l.max(0) as usize)
        .max()
        .unwrap_or(0);
    let n_splits = max_len.div_ceil(split_len).max(1);
    let mut out = vec![0f32; b * s_q * h_q * n_splits * D_V];
    let mut lse = vec![f32::NEG_INFINITY; b * s_q * h_q * n_splits];
    for bi in 0..b {
        let bt = &block_table[bi * max_pages..(bi + 1) * max_pages];
        let len = seq_lens[bi].max(0) as usize;
        let rows = gather_sequence(kv, bt, len);
        for j in 0..s_q {
            let r = bi * s_q + j;
            let visible = causal_visible(seq_lens[bi], s_q, j, len);
            for h in 0..h_q {
                let qh: Vec<f32> = q[(r * h_q + h) * MLA_DIM..(r * h_q + h + 1) * MLA_DIM]
                    .iter()
                    .map(|v| v.to_f32())
                    .collect();
                for sp in 0..n_splits {
                    let lo = (sp * split_len).min(visible);
                    let hi = ((sp + 1) * split_len).min(visible);
                    let (o, l) = attend_partial(&qh, &rows[lo..hi], scale, D_V);
                    let at = (r * h_q + h) * n_splits + sp;
                    out[at * D_V..(at + 1) * D_V].copy_from_slice(&o);
                    lse[at] = l;
                }
            }
        }
    }
    (out, lse, n_splits)
}

/// The split-KV combine law. `partial_out`: `[n_splits, d]`, each normalized over its
/// split; `partial_lse`: `[n_splits]` natural-log, `-inf` for an empty split (which
/// contributes nothing). Returns `(out [d], lse)` with `lse = ln sum_i exp(lse_i)` and
/// `out = sum_i exp(lse_i - lse) * out_i`, in f64. If every split is empty the result
/// follows the lonely-query rule: out 0, lse `+inf`.
pub fn combine_splits(
    partial_out: &[f32],
    partial_lse: &[f32],
    n_splits: usize,
    d: usize,
) -> (Vec<f32>, f32) {
    assert_eq!(
        partial_out.len(),
        n_splits * d,
        "partial_out must be [n_splits, d]"
    );
    assert_eq!(
        partial_lse.len(),
        n_splits,
        "partial_lse must be [n_splits]"
    );
    let max = partial_lse
        .iter()
        .map(|&l| f64::from(l))
        .fold(f64::NEG_INFINITY, f64::max);
    if max == f64::NEG_INFINITY {
        return (vec![0.0; d], f32::INFINITY);
    }
    let w: Vec<f64> = partial_lse
        .iter()
        .map(|&l| (f64::from(l) - max).exp())
        .collect();
    let sum: f64 = w.iter().sum();
    let mut out = vec![0f64; d];
    for (i, wi) in w.iter().enumerate() {
        if *wi == 0.0 {
            continue;
        }
        for (o, &p) in out.iter_mut().zip(&partial_out[i * d..(i + 1) * d]) {
            *o += wi * f64::from(p);
        }
    }
    (
        out.iter().map(|o| (o / sum) as f32).collect(),
        (max + sum.ln()) as f32,
    )
}

/// The dequantized keys of a sequence's first `len` tokens, read through its block-table
/// row. Panics (an oracle's precondition) when a token lies past the table or its slot
/// past the cache.
fn gather_sequence(
    kv: &dyn Fn(usize) -> Option<Vec<f32>>,
    block_table_row: &[i32],
    len: usize,
) -> Vec<Vec<f32>> {
    (0..len)
        .map(|s| {
            assert!(
                s / PAGE_SIZE < block_table_row.len(),
                "token {s} beyond the block table"
            );
            let slot = cache::slot_of(block_table_row, s);
            kv(slot).unwrap_or_else(|| panic!("slot {slot} outside the cache"))
        })
        .collect()
}

/// Keys query `j` of `s_q` sees under the causal rule for `s_q > 1` (the last `s_q`
/// positions of a sequence of `seq_len`): `0..=seq_len - s_q + j`, capped at `len`.
fn causal_visible(seq_len: i32, s_q: usize, j: usize, len: usize) -> usize {
    let last = seq_len as i64 - s_q as i64 + j as i64;
    if last < 0 {
        0
    } else {
        (last as usize + 1).min(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rnd(n: usize, seed: u64, amp: f32) -> Vec<f32> {
        let mut x = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * amp
            })
            .collect()
    }

    fn to_bf16(v: &[f32]) -> Vec<bf16> {
        v.iter().map(|&x| bf16::from_f32(x)).collect()
    }

    #[test]
    fn prefill_matches_naive_softmax() {
        let (s_q, s_kv, h_q, topk) = (2, 5, 3, 4);
        let q = to_bf16(&rnd(s_q * h_q * 576, 1, 2.0));
        let kv = to_bf16(&rnd(s_kv * 576, 2, 2.0));
        let idx = vec![0, 3, -1, 9, 4, 4, 1, -1];
        let scale = 0.1;
        let (out, ml, lse) = sparse_mla_prefill(&q, &kv, &idx, scale, s_q, s_kv, h_q, topk);
        for r in 0..s_q {
            let valid: Vec<usize> = idx[r * topk..(r + 1) * topk]
                .iter()
                .filter(|&&i| i >= 0 && (i as usize) < s_kv)
                .map(|&i| i as usize)
                .collect();
            for h in 0..h_q {
                let qh = &q[(r * h_q + h) * 576..(r * h_q + h + 1) * 576];
                let sc: Vec<f64> = valid
                    .iter()
                    .map(|&i| {
                        let k = &kv[i * 576..(i + 1) * 576];
                        scale as f64
                            * qh.iter()
                                .zip(k)
                                .map(|(a, b)| a.to_f64() * b.to_f64())
                                .sum::<f64>()
                    })
                    .collect();
                let z: f64 = sc.iter().map(|s| s.exp()).sum();
                assert!((lse[r * h_q + h] as f64 - z.ln()).abs() < 1e-5);
                let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                assert!((ml[r * h_q + h] as f64 - m).abs() < 1e-5);
                for d in [0, 100, 511] {
                    let o: f64 = valid
                        .iter()
                        .zip(&sc)
                        .map(|(&i, s)| s.exp() / z * kv[i * 576 + d].to_f64())
                        .sum();
                    assert!((out[(r * h_q + h) * 512 + d] as f64 - o).abs() < 1e-5);
                }
            }
        }
    }

    #[test]
    fn lonely_query_rule() {
        let q = to_bf16(&rnd(2 * 576, 3, 1.0));
        let kv = to_bf16(&rnd(3 * 576, 4, 1.0));
        let (out, ml, lse) = sparse_mla_prefill(&q, &kv, &[-1, 3, 7], 0.1, 1, 3, 2, 3);
        assert!(out.iter().all(|&v| v == 0.0));
        assert!(ml.iter().all(|&v| v == f32::NEG_INFINITY));
        assert!(lse.iter().all(|&v| v == f32::INFINITY));
        let cache = vec![bf16::ZERO; 64 * 576];
        let f = kv_from_bf16_cache(&cache);
        let (out, lse) = sparse_mla_decode(
            &q,
            &f,
            &[5, -1],
            Some(&[0]),
            Some(&[0.5, 1.0]),
            0.1,
            1,
            1,
            2,
            2,
        );
        assert!(out.iter().all(|&v| v == 0.0));
        assert!(lse.iter().all(|&v| v == f32::INFINITY));
    }

    #[test]
    fn sink_scales_output_only() {
        let q = to_bf16(&rnd(2 * 576, 5, 1.0));
        let mut cache = vec![bf16::ZERO; 64 * 576];
        cache[..5 * 576].copy_from_slice(&to_bf16(&rnd(5 * 576, 6, 1.0)));
        let f = kv_from_bf16_cache(&cache);
        let idx = [0, 1, 2, 4];
        let (o0, l0) = sparse_mla_decode(&q, &f, &idx, None, None, 0.2, 1, 1, 2, 4);
        let sink = [0.3f32, -2.0];
        let (o1, l1) = sparse_mla_decode(&q, &f, &idx, None, Some(&sink), 0.2, 1, 1, 2, 4);
        assert_eq!(l0, l1);
        for h in 0..2 {
            let f = 1.0 / (1.0 + (sink[h] as f64 - l0[h] as f64).exp());
            for d in 0..512 {
                let want = o0[h * 512 + d] as f64 * f;
                assert!((o1[h * 512 + d] as f64 - want).abs() < 1e-6);
            }
        }
        // topk_length cuts the tail.
        let (o2, _) = sparse_mla_decode(&q, &f, &idx, Some(&[2]), None, 0.2, 1, 1, 2, 4);
        let (o3, _) = sparse_mla_decode(&q, &f, &[0, 1, -1, -1], None, None, 0.2, 1, 1, 2, 4);
        assert_eq!(o2, o3);
    }

    #[test]
    fn dense_causal_rows() {
        // seq_len 3 and s_q 2: query 0 sees keys 0..=1, query 1 sees 0..=2.
        let q = to_bf16(&rnd(2 * 576, 7, 1.0));
        let mut cache = vec![bf16::ZERO; 2 * 64 * 576];
        let keys = to_bf16(&rnd(3 * 576, 8, 1.0));
        for s in 0..3 {
            cache::mla_bf16_cache_write(&mut cache, 64 + s, &keys[s * 576..(s + 1) * 576]);
        }
        let f = kv_from_bf16_cache(&cache);
        let (out, lse) = dense_mla_decode(&q, &f, &[1, 0], 2, &[3], 0.1, 1, 2, 1);
        let (o_s, l_s) = sparse_mla_decode(
            &q,
            &f,
            &[64, 65, -1, 64, 65, 66],
            None,
            None,
            0.1,
            1,
            2,
            1,
            3,
        );
        assert_eq!(out, o_s);
        assert_eq!(lse, l_s);
        // An empty sequence is lonely.
        let (o_e, l_e) = dense_mla_decode(&q[..576], &f, &[1, 0], 2, &[0], 0.1, 1, 1, 1);
        assert!(o_e.iter().all(|&v| v == 0.0) && l_e[0] == f32::INFINITY);
    }

    #[test]
    fn dense_partials_combine_to_dense() {
        let q = to_bf16(&rnd(2 * 2 * 576, 21, 1.0));
        let mut cache = vec![bf16::ZERO; 3 * 64 * 576];
        let keys = to_bf16(&rnd(130 * 576, 22, 1.0));
        let bt = [2, 0, 1];
        for s in 0..130 {
            cache::mla_bf16_cache_write(
                &mut cache,
                cache::slot_of(&bt, s),
                &keys[s * 576..(s + 1) * 576],
            );
        }
        let f = kv_from_bf16_cache(&cache);
        let (want, wl) = dense_mla_decode(&q, &f, &bt, 3, &[130], 0.2, 1, 2, 2);
        let (po, pl, n) = dense_mla_decode_partials(&q, &f, &bt, 3, &[130], 0.2, 1, 2, 2, 64);
        assert_eq!(n, 3);
        for row in 0..4 {
            let (o, l) = combine_splits(
                &po[row * n * 512..(row + 1) * n * 512],
                &pl[row * n..(row + 1) * n],
                n,
                512,
            );
            assert!((l - wl[row]).abs() < 1e-5);
            for d in 0..512 {
                assert!((o[d] - want[row * 512 + d]).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn combine_law() {
        let q = rnd(576, 9, 1.0);
        let keys: Vec<Vec<f32>> = (0..7).map(|i| rnd(576, 10 + i, 1.0)).collect();
        let (full, lfull) = attend_partial(&q, &keys, 0.3, 512);
        let splits = [&keys[..3], &keys[3..3], &keys[3..]];
        let mut po = Vec::new();
        let mut pl = Vec::new();
        for s in splits {
            let (o, l) = attend_partial(&q, s, 0.3, 512);
            po.extend(o);
            pl.push(l);
        }
        assert_eq!(pl[1], f32::NEG_INFINITY);
        let (out, lse) = combine_splits(&po, &pl, 3, 512);
        assert!((lse - lfull).abs() < 1e-5);
        for d in 0..512 {
            assert!((out[d] - full[d]).abs() < 1e-5);
        }
        let (o, l) = combine_splits(&[1.0, 2.0], &[f32::NEG_INFINITY], 1, 2);
        assert_eq!((o, l), (vec![0.0, 0.0], f32::INFINITY));
    }
}
