//! Mixture of experts (spec 1.3): the gate, the SwiGLU MLP used by experts, the shared
//! expert and the dense layers, and the oracles of the MoE kernels (route, permute into
//! the contiguous or masked grouped-GEMM layouts, grouped GEMM, SwiGLU + quant, combine).
//!
//! Layouts (spec section 2):
//! * **contiguous**: rows of all experts stacked, each expert's segment padded to a
//!   multiple of `align` (128, or 64) rows; `m_indices[row]` is the expert id, `-1` on
//!   padding rows, whose GEMM output is zero;
//! * **masked**: `[G, max_m, K]` with `masked_m[G]` valid rows per expert;
//! * activation scales `[M, K/128]` f32, weight scales `[G, N/128, K/128]` f32.
//!
//! Within an expert's segment, rows are in (token, slot) order.

use crate::fp8;
use crate::linear::{self, Fp8Weight, BLOCK};
use crate::nn;
use rayon::prelude::*;
use std::cmp::Ordering;

/// The SwiGLU MLP `W2(silu(W1 x) * W3 x)` (`gate_proj` = W1, `up_proj` = W3, `down_proj`
/// = W2) with FP8 linears; the elementwise product is rounded to bf16 as in the bf16
/// reference model before it is quantized again.
#[derive(Clone, Debug)]
pub struct Mlp {
    /// `gate_proj`: `[inter, hidden]`.
    pub w1: Fp8Weight,
    /// `up_proj`: `[inter, hidden]`.
    pub w3: Fp8Weight,
    /// `down_proj`: `[hidden, inter]`.
    pub w2: Fp8Weight,
}

impl Mlp {
    /// Applies the MLP to `x [m, hidden]`; `pow2_scale` selects UE8M0 activation scales.
    pub fn forward(&self, x: &[f32], m: usize, pow2_scale: bool) -> Vec<f32> {
        let g = linear::fp8_linear(x, m, &self.w1, pow2_scale);
        let u = linear::fp8_linear(x, m, &self.w3, pow2_scale);
        let a: Vec<f32> = g
            .iter()
            .zip(&u)
            .map(|(&g, &u)| nn::round_bf16(nn::silu(g) * u))
            .collect();
        linear::fp8_linear(&a, m, &self.w2, pow2_scale)
    }
}

/// Routing parameters of the gate.
#[derive(Clone, Copy, Debug)]
pub struct RouteParams {
    /// Expert groups (8).
    pub n_group: usize,
    /// Groups kept per token (4).
    pub topk_group: usize,
    /// Experts per token (8).
    pub top_k: usize,
    /// Renormalise the chosen scores to sum 1 (`norm_topk_prob`).
    pub renormalize: bool,
    /// Multiplier of the combine weights (2.5).
    pub route_scale: f32,
}

fn desc_then_index(a: &(f32, usize), b: &(f32, usize)) -> Ordering {
    b.0.partial_cmp(&a.0)
        .unwrap_or(Ordering::Equal)
        .then(a.1.cmp(&b.1))
}

/// The gate's routing of one token from its raw gate logits `[E]` (`x Wg^T`, fp32):
/// `s = sigmoid(logit)`; selection uses `s + bias`: groups of `E / n_group` experts,
/// group score = sum of its top-2 biased scores, keep the best `topk_group` groups, pick
/// the `top_k` experts of largest biased score inside them. Ties go to the smaller group
/// or expert index. Weights are the unbiased `s` of the chosen experts, divided by their
/// sum (f32, in selection order) when `renormalize`, times `route_scale`. Returns `(ids,
/// weights)` in selection order (biased score descending).
pub fn route_token(logits: &[f32], bias: &[f32], p: &RouteParams) -> (Vec<i32>, Vec<f32>) {
    let e = logits.len();
    assert_eq!(bias.len(), e, "one bias per expert");
    assert!(
        p.n_group > 0 && e.is_multiple_of(p.n_group),
        "experts must split into groups"
    );
    let per = e / p.n_group;
    let s: Vec<f32> = logits.iter().map(|&x| nn::sigmoid(x)).collect();
    let biased: Vec<f32> = s.iter().zip(bias).map(|(a, b)| a + b).collect();
    let mut groups: Vec<(f32, usize)> = (0..p.n_group)
        .map(|g| {
            let mut v: Vec<f32> = biased[g * per..(g + 1) * per].to_vec();
            v.sort_by(|a, b| b.partial_cmp(a).unwrap_or(Ordering::Equal));
            (v.iter().take(2).sum::<f32>(), g)
        })
        .collect();
    groups.sort_by(desc_then_index);
    let mut cand: Vec<(f32, usize)> = groups[..p.topk_group.min(p.n_group)]
        .iter()
        .flat_map(|&(_, g)| (g * per..(g + 1) * per).map(|i| (biased[i], i)))
        .collect();
    cand.sort_by(desc_then_index);
    cand.truncate(p.top_k);
    let ids: Vec<i32> = cand.iter().map(|&(_, i)| i as i32).collect();
    let mut w: Vec<f32> = cand.iter().map(|&(_, i)| s[i]).collect();
    if p.renormalize {
        let sum: f32 = w.iter().sum();
        for v in &mut w {
            *v /= sum;
        }
    }
    for v in &mut w {
        *v *= p.route_scale;
    }
    (ids, w)
}

/// [`route_token`] for `t` tokens: `logits [t, e]`. Returns `(ids [t, top_k], weights [t,
/// top_k])`.
pub fn route(logits: &[f32], bias: &[f32], t: usize, p: &RouteParams) -> (Vec<i32>, Vec<f32>) {
    let e = bias.len();
    assert_eq!(logits.len(), t * e, "logits must be [t, e]");
    let per: Vec<(Vec<i32>, Vec<f32>)> = (0..t)
        .into_par_iter()
        .map(|i| route_token(&logits[i * e..(i + 1) * e], bias, p))
        .collect();
    let mut ids = Vec::with_capacity(t * p.top_k);
    let mut w = Vec::with_capacity(t * p.top_k);
    for (a, b) in per {
        ids.extend(a);
        w.extend(b);
    }
    (ids, w)
}

/// The contiguous grouped-GEMM layout of a routing.
#[derive(Clone, Debug, PartialEq)]
pub struct ContiguousLayout {
    /// `[rows]` expert of each row, `-1` on padding rows.
    pub m_indices: Vec<i32>,
    /// `[rows]` source `(token * top_k + slot)` of each row, `-1` on padding rows.
    pub src: Vec<i32>,
    /// `[E + 1]` first row of each expert's segment (the last entry is the row count).
    pub offsets: Vec<usize>,
}

/// Permutes a routing (`ids [t, top_k]`, negative ids dropped) into the contiguous
/// layout, each expert's segment padded to a multiple of `align` rows (an expert with no
/// token gets no rows).
pub fn permute_contiguous(
    ids: &[i32],
    top_k: usize,
    num_experts: usize,
    align: usize,
) -> ContiguousLayout {
    assert!(align > 0, "align must be positive");
    let mut per: Vec<Vec<i32>> = vec![Vec::new(); num_experts];
    for (j, &e) in ids.iter().enumerate() {
        if e >= 0 {
            per[e as usize].push(j as i32);
        }
    }
    let _ = top_k;
    let mut m_indices = Vec::new();
    let mut src = Vec::new();
    let mut offsets = vec![0];
    for (e, rows) in per.iter().enumerate() {
        let padded = rows.len().div_ceil(align) * align;
        for i in 0..padded {
            if i < rows.len() {
                m_indices.push(e as i32);
                src.push(rows[i]);
            } else {
                m_indices.push(-1);
                src.push(-1);
            }
        }
        offsets.push(m_indices.len());
    }
    ContiguousLayout {
        m_indices,
        src,
        offsets,
    }
}

/// The masked grouped-GEMM layout of a routing.
#[derive(Clone, Debug, PartialEq)]
pub struct MaskedLayout {
    /// `[G]` valid rows per expert.
    pub masked_m: Vec<i32>,
    /// `[G, max_m]` source `(token * top_k + slot)` of each row, `-1` past `masked_m`.
    pub src: Vec<i32>,
    /// Rows per expert.
    pub max_m: usize,
}

/// Permutes a routing into the masked layout `[G, max_m]`. Panics if an expert gets more
/// than `max_m` rows.
pub fn permute_masked(ids: &[i32], num_experts: usize, max_m: usize) -> MaskedLayout {
    let mut masked_m = vec![0i32; num_experts];
    let mut src = vec![-1i32; num_experts * max_m];
    for (j, &e) in ids.iter().enumerate() {
        if e >= 0 {
            let e = e as usize;
            let r = masked_m[e] as usize;
            assert!(
                r < max_m,
                "expert {e} receives more than max_m = {max_m} rows"
            );
            src[e * max_m + r] = j as i32;
            masked_m[e] += 1;
        }
    }
    MaskedLayout {
        masked_m,
        src,
        max_m,
    }
}

/// Gathers the rows of `x [t, hidden]` named by `src` (`token * top_k + slot`, `-1` ->
/// zero row) into `[src.len(), hidden]`.
pub fn gather_rows(x: &[f32], hidden: usize, top_k: usize, src: &[i32]) -> Vec<f32> {
    let mut out = vec![0f32; src.len() * hidden];
    for (r, &s) in src.iter().enumerate() {
        if s >= 0 {
            let tok = s as usize / top_k;
            out[r * hidden..(r + 1) * hidden].copy_from_slice(&x[tok * hidden..(tok + 1) * hidden]);
        }
    }
    out
}

/// One FP8 GEMM row: `a` codes/scales of one row against expert weight `b` (`[n, k]`
/// codes of expert g and its `[n/128, k/128]` scales), exact fragments, f64 accumulation.
fn gemm_row(
    a_codes: &[u8],
    a_scales: &[f32],
    b_codes: &[u8],
    b_scales: &[f32],
    n: usize,
    k: usize,
    out: &mut [f32],
) {
    let kb = k.div_ceil(BLOCK);
    let av: Vec<f32> = a_codes.iter().map(|&c| fp8::e4m3_to_f32(c)).collect();
    for (c, o) in out.iter_mut().enumerate().take(n) {
        let bv: Vec<f32> = b_codes[c * k..(c + 1) * k]
            .iter()
            .map(|&x| fp8::e4m3_to_f32(x))
            .collect();
        let mut acc = 0f64;
        for b in 0..kb {
            let cols = b * BLOCK..((b + 1) * BLOCK).min(k);
            let frag = nn::dot_e4m3(&av[cols.clone()], &bv[cols]);
            acc += frag * f64::from(a_scales[b]) * f64::from(b_scales[(c / BLOCK) * kb + b]);
        }
        *o = acc as f32;
    }
}

/// Grouped FP8 GEMM, contiguous layout: `a_codes [m, k]`, `a_scales [m, ceil(k/128)]`,
/// `b_codes [g, n, k]`, `b_scales [g, ceil(n/128), ceil(k/128)]`, `m_indices [m]`.
/// Returns `[m, n]` f32 (exact fragments, f64 accumulation, not rounded); rows with
/// `m_indices == -1` are zero.
pub fn grouped_gemm_contiguous(
    a_codes: &[u8],
    a_scales: &[f32],
    b_codes: &[u8],
    b_scales: &[f32],
    m_indices: &[i32],
    g: usize,
    n: usize,
    k: usize,
) -> Vec<f32> {
    let m = m_indices.len();
    let (nb, kb) = (n.div_ceil(BLOCK), k.div_ceil(BLOCK));
    assert_eq!(a_codes.len(), m * k, "a_codes must be [m, k]");
    assert_eq!(a_scales.len(), m * kb, "a_scales must be [m, k/128]");
    assert_eq!(b_codes.len(), g * n * k, "b_codes must be [g, n, k]");
    assert_eq!(
        b_scales.len(),
        g * nb * kb,
        "b_scales must be [g, n/128, k/128]"
    );
    let mut out = vec![0f32; m * n];
    out.par_chunks_mut(n.max(1)).enumerate().for_each(|(r, o)| {
        let e = m_indices[r];
        if e < 0 {
            return;
        }
        let e = e as usize;
        assert!(e < g, "m_indices[{r}] = {e} is not an expert");
        gemm_row(
            &a_codes[r * k..(r + 1) * k],
            &a_scales[r * kb..(r + 1) * kb],
            &b_codes[e * n * k..(e + 1) * n * k],
            &b_scales[e * nb * kb..(e + 1) * nb * kb],
            n,
            k,
            o,
        );
    });
    out
}

/// Grouped FP8 GEMM, masked layout: `a_codes [g, max_m, k]`, `a_scales [g, max_m,
/// ceil(k/128)]`, `masked_m [g]`, weights as in [`grouped_gemm_contiguous`]. Returns `[g,
/// max_m, n]`; rows at or past `masked_m[e]` are zero.
pub fn grouped_gemm_masked(
    a_codes: &[u8],
    a_scales: &[f32],
    b_codes: &[u8],
    b_scales: &[f32],
    masked_m: &[i32],
    max_m: usize,
    n: usize,
    k: usize,
) -> Vec<f32> {
    let g = masked_m.len();
    let m_indices: Vec<i32> = (0..g * max_m)
        .map(|r| {
            let e = r / max_m;
            if ((r % max_m) as i32) < masked_m[e] {
                e as i32
            } else {
                -1
            }
        })
        .collect();
    grouped_gemm_contiguous(a_codes, a_scales, b_codes, b_scales, &m_indices, g, n, k)
}

/// SwiGLU + quant: `h [m, 2n]` holds `[gate | up]` per row; `a = bf16(silu(gate) * up)`,
/// then 1x128 FP8 quantization. Returns `(a [m, n], codes [m, n], scales [m,
/// ceil(n/128)])`.
pub fn swiglu_quant(
    h: &[f32],
    m: usize,
    n: usize,
    pow2_scale: bool,
) -> (Vec<f32>, Vec<u8>, Vec<f32>) {
    assert_eq!(h.len(), m * 2 * n, "h must be [m, 2n]");
    let a: Vec<f32> = (0..m * n)
        .map(|i| {
            let (r, c) = (i / n, i % n);
            nn::round_bf16(nn::silu(h[r * 2 * n + c]) * h[r * 2 * n + n + c])
        })
        .collect();
    let (codes, scales) = linear::quantize_act_1x128(&a, m, n, pow2_scale);
    (a, codes, scales)
}

/// Combine: `out[t] = sum_j weights[t, j] * expert_out[row of (t, j)]`, in f64 in slot
/// order `j`, for `expert_out [rows, hidden]` in a permuted layout whose `src` maps rows
/// to `t * top_k + j`. Returns `[t, hidden]` f32. Slots with no row contribute nothing.
pub fn combine(
    expert_out: &[f32],
    src: &[i32],
    weights: &[f32],
    t: usize,
    top_k: usize,
    hidden: usize,
) -> Vec<f32> {
    assert_eq!(weights.len(), t * top_k, "weights must be [t, top_k]");
    let mut row_of = vec![usize::MAX; t * top_k];
    for (r, &s) in src.iter().enumerate() {
        if s >= 0 {
            row_of[s as usize] = r;
        }
    }
    let mut out = vec![0f32; t * hidden];
    out.par_chunks_mut(hidden.max(1))
        .enumerate()
        .for_each(|(tok, o)| {
            let mut acc = vec![0f64; hidden];
            for j in 0..top_k {
                let r = row_of[tok * top_k + j];
                if r == usize::MAX {
                    continue;
                }
                let w = f64::from(weights[tok * top_k + j]);
                for (a, &v) in acc
                    .iter_mut()
                    .zip(&expert_out[r * hidden..(r + 1) * hidden])
                {
                    *a += w * f64::from(v);
                }
            }
            for (o, a) in o.iter_mut().zip(acc) {
                *o = a as f32;
            }
        });
    out
}

/// A routed-MoE layer: gate (`[E, hidden]` f32 weights + bias), experts, shared experts.
#[derive(Clone, Debug)]
pub struct Moe {
    /// Gate weight `[E, hidden]` (fp32 math, as DeepSeek's gate).
    pub gate: Vec<f32>,
    /// `e_score_correction_bias` `[E]`.
    pub bias: Vec<f32>,
    /// The routed experts.
    pub experts: Vec<Mlp>,
    /// The shared expert (all shared experts fused into one wider MLP), if any.
    pub shared: Option<Mlp>,
    /// Routing parameters.
    pub route: RouteParams,
}

impl Moe {
    /// `x [m, hidden] -> [m, hidden]`: route, run each expert on its tokens, combine with
    /// the routing weights in selection order (f64), add the shared expert.
    pub fn forward(&self, x: &[f32], m: usize, pow2_scale: bool) -> Vec<f32> {
        let hidden = x.len() / m.max(1);
        let logits = nn::matmul_t(x, m, &self.gate, self.experts.len());
        let (ids, w) = route(&logits, &self.bias, m, &self.route);
        let k = self.route.top_k;
        let layout = permute_contiguous(&ids, k, self.experts.len(), 1);
        let mut expert_out = vec![0f32; layout.src.len() * hidden];
        for (e, ex) in self.experts.iter().enumerate() {
            let rows = layout.offsets[e]..layout.offsets[e + 1];
            if rows.is_empty() {
                continue;
            }
            let xin = gather_rows(x, hidden, k, &layout.src[rows.clone()]);
            let y = ex.forward(&xin, rows.len(), pow2_scale);
            expert_out[rows.start * hidden..rows.end * hidden].copy_from_slice(&y);
        }
        let mut out = combine(&expert_out, &layout.src, &w, m, k, hidden);
        if let Some(sh) = &self.shared {
            let y = sh.forward(x, m, pow2_scale);
            for (o, s) in out.iter_mut().zip(y) {
                *o += s;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_limited_routing() {
        // 4 groups of 2; biases make group 3 win although expert 0 has the top score.
        let logits = [3.0, -3.0, 0.0, 0.0, 1.0, 1.0, 0.5, 0.5];
        let bias = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.2, 0.2];
        let p = RouteParams {
            n_group: 4,
            topk_group: 1,
            top_k: 2,
            renormalize: true,
            route_scale: 2.5,
        };
        let (ids, w) = route_token(&logits, &bias, &p);
        assert_eq!(ids, vec![6, 7]);
        assert!((w[0] - 1.25).abs() < 1e-6 && (w[1] - 1.25).abs() < 1e-6);
        let p2 = RouteParams {
            topk_group: 2,
            top_k: 3,
            ..p
        };
        let (ids, w) = route_token(&logits, &bias, &p2);
        // Group 2 (1.46) and group 3 (1.645); group 0 scores 0.95 + 0.047.
        assert_eq!(ids, vec![6, 7, 4]);
        let s = |x: f32| nn::sigmoid(x);
        let tot = s(0.5) * 2.0 + s(1.0);
        assert!((w[2] - s(1.0) / tot * 2.5).abs() < 1e-6);
    }

    #[test]
    fn layouts() {
        let ids = [2, 0, 2, -1, 1, 2];
        let c = permute_contiguous(&ids, 2, 3, 4);
        assert_eq!(c.offsets, vec![0, 4, 8, 12]);
        assert_eq!(c.m_indices, vec![0, -1, -1, -1, 1, -1, -1, -1, 2, 2, 2, -1]);
        assert_eq!(c.src, vec![1, -1, -1, -1, 4, -1, -1, -1, 0, 2, 5, -1]);
        let mk = permute_masked(&ids, 3, 4);
        assert_eq!(mk.masked_m, vec![1, 1, 3]);
        assert_eq!(&mk.src[8..12], &[0, 2, 5, -1]);
    }
}
