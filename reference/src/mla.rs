//! Multi-head latent attention (spec 1.1) in its two forms.
//!
//! A token's cache entry is 576 values: the normalized latent `c_kv` (512) and the
//! roped `k_rope` (64), shared by all heads. `kv_b_proj` (`[H * (nope + v), 512]`) holds
//! per head `h` the rows `W_UK[h]` (`nope` rows) then `W_UV[h]` (`v` rows).
//!
//! * **MHA form** (prefill): `k_nope[h] = W_UK[h] c_kv`, `v[h] = W_UV[h] c_kv`; scores
//!   `scale * (q_nope[h] . k_nope[h] + q_rope[h] . k_rope)` over 192 dims; `o[h] = sum p
//!   v[h]`.
//! * **Absorbed form** (decode, and the DSA kernels): `q_lat[h] = W_UK[h]^T q_nope[h]`
//!   (512); query `[q_lat | q_rope]` (576) against key `[c_kv | k_rope]` (576); `o_lat =
//!   sum p c_kv` (512); `o[h] = W_UV[h] o_lat[h]` (128).
//!
//! Both forms use the dequantized `kv_b_proj` weight without activation quantization, so
//! they agree up to floating-point rounding (a property test). DeepSeek's inference code
//! instead runs the MHA form's `kv_b_proj` as an FP8 linear; this reference keeps the two
//! forms mathematically identical so the law is tight.

use crate::attention;
use crate::nn;
use rayon::prelude::*;

/// The dequantized `kv_b_proj` of one layer, split per head.
#[derive(Clone, Debug)]
pub struct KvB {
    /// Heads.
    pub heads: usize,
    /// `qk_nope_head_dim` (128).
    pub nope: usize,
    /// `v_head_dim` (128).
    pub v: usize,
    /// `kv_lora_rank` (512).
    pub rank: usize,
    /// `[heads * (nope + v), rank]` f32.
    pub w: Vec<f32>,
}

impl KvB {
    /// `W_UK[h]`: `[nope, rank]`.
    pub fn w_uk(&self, h: usize) -> &[f32] {
        let base = h * (self.nope + self.v) * self.rank;
        &self.w[base..base + self.nope * self.rank]
    }

    /// `W_UV[h]`: `[v, rank]`.
    pub fn w_uv(&self, h: usize) -> &[f32] {
        let base = (h * (self.nope + self.v) + self.nope) * self.rank;
        &self.w[base..base + self.v * self.rank]
    }

    /// `q_lat[h] = W_UK[h]^T q_nope[h]` for `q_nope [heads, nope]` -> `[heads, rank]`
    /// (f64 accumulation).
    pub fn absorb(&self, q_nope: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; self.heads * self.rank];
        out.par_chunks_mut(self.rank)
            .enumerate()
            .for_each(|(h, o)| {
                let wk = self.w_uk(h);
                let q = &q_nope[h * self.nope..(h + 1) * self.nope];
                let mut acc = vec![0f64; self.rank];
                for (i, &qi) in q.iter().enumerate() {
                    let qi = f64::from(qi);
                    for (a, &w) in acc.iter_mut().zip(&wk[i * self.rank..(i + 1) * self.rank]) {
                        *a += qi * f64::from(w);
                    }
                }
                for (o, a) in o.iter_mut().zip(acc) {
                    *o = a as f32;
                }
            });
        out
    }

    /// `o[h] = W_UV[h] o_lat[h]` for `o_lat [heads, rank]` -> `[heads, v]`.
    pub fn unabsorb(&self, o_lat: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; self.heads * self.v];
        out.par_chunks_mut(self.v).enumerate().for_each(|(h, o)| {
            let wv = self.w_uv(h);
            let x = &o_lat[h * self.rank..(h + 1) * self.rank];
            for (i, o) in o.iter_mut().enumerate() {
                *o = nn::dot_f64(x, &wv[i * self.rank..(i + 1) * self.rank]) as f32;
            }
        });
        out
    }

    /// `(k_nope [heads, nope], v [heads, v])` of one cache entry (its first `rank` values).
    pub fn project_key(&self, entry: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let c = &entry[..self.rank];
        let mut kn = vec![0f32; self.heads * self.nope];
        let mut vv = vec![0f32; self.heads * self.v];
        for h in 0..self.heads {
            let wk = self.w_uk(h);
            for i in 0..self.nope {
                kn[h * self.nope + i] =
                    nn::dot_f64(c, &wk[i * self.rank..(i + 1) * self.rank]) as f32;
            }
            let wv = self.w_uv(h);
            for i in 0..self.v {
                vv[h * self.v + i] = nn::dot_f64(c, &wv[i * self.rank..(i + 1) * self.rank]) as f32;
            }
        }
        (kn, vv)
    }
}

/// A key projected for the MHA form.
#[derive(Clone, Debug)]
pub struct MhaKey {
    /// `[heads, nope]`.
    pub k_nope: Vec<f32>,
    /// `[rope]`, shared by the heads.
    pub k_rope: Vec<f32>,
    /// `[heads, v]`.
    pub v: Vec<f32>,
}

impl MhaKey {
    /// Projects one 576-value cache entry.
    pub fn new(entry: &[f32], kvb: &KvB) -> Self {
        let (k_nope, v) = kvb.project_key(entry);
        MhaKey {
            k_nope,
            k_rope: entry[kvb.rank..].to_vec(),
            v,
        }
    }
}

/// MHA-form attention of one query (`q_nope [heads, nope]`, `q_rope [heads, rope]`) over
/// projected keys. Returns `[heads, v]` (0 for no key); softmax and sums in f64.
pub fn attend_mha(
    q_nope: &[f32],
    q_rope: &[f32],
    keys: &[&MhaKey],
    kvb: &KvB,
    scale: f32,
) -> Vec<f32> {
    let rope = q_rope.len() / kvb.heads;
    let mut out = vec![0f32; kvb.heads * kvb.v];
    if keys.is_empty() {
        return out;
    }
    out.par_chunks_mut(kvb.v).enumerate().for_each(|(h, o)| {
        let qn = &q_nope[h * kvb.nope..(h + 1) * kvb.nope];
        let qr = &q_rope[h * rope..(h + 1) * rope];
        let scores: Vec<f64> = keys
            .iter()
            .map(|k| {
                f64::from(scale)
                    * (nn::dot_f64(qn, &k.k_nope[h * kvb.nope..(h + 1) * kvb.nope])
                        + nn::dot_f64(qr, &k.k_rope))
            })
            .collect();
        let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let mut sum = 0f64;
        let mut acc = vec![0f64; kvb.v];
        for (s, k) in scores.iter().zip(keys) {
            let p = (s - m).exp();
            sum += p;
            for (a, &v) in acc.iter_mut().zip(&k.v[h * kvb.v..(h + 1) * kvb.v]) {
                *a += p * f64::from(v);
            }
        }
        for (o, a) in o.iter_mut().zip(acc) {
            *o = (a / sum) as f32;
        }
    });
    out
}

/// Absorbed-form attention of one query over cache entries (576 values each), without
/// any bf16 rounding: absorb, attend with the 576/512 oracle core, un-absorb. Returns
/// `[heads, v]`.
pub fn attend_absorbed(
    q_nope: &[f32],
    q_rope: &[f32],
    entries: &[Vec<f32>],
    kvb: &KvB,
    scale: f32,
) -> Vec<f32> {
    let rope = q_rope.len() / kvb.heads;
    let q_lat = kvb.absorb(q_nope);
    let mut o_lat = vec![0f32; kvb.heads * kvb.rank];
    for h in 0..kvb.heads {
        let mut q = q_lat[h * kvb.rank..(h + 1) * kvb.rank].to_vec();
        q.extend_from_slice(&q_rope[h * rope..(h + 1) * rope]);
        let (o, _) = attention::attend_partial(&q, entries, scale, kvb.rank);
        o_lat[h * kvb.rank..(h + 1) * kvb.rank].copy_from_slice(&o);
    }
    kvb.unabsorb(&o_lat)
}
