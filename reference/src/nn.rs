//! Small numeric building blocks: norms, activations, dense matrix products, bf16
//! rounding. Row-major everywhere: a matrix `[m, k]` is `m` rows of `k` values, a weight
//! `[n, k]` maps `k` inputs to `n` outputs (PyTorch's `Linear.weight` layout).
//!
//! Reductions (norm statistics, dot products) accumulate in f64; elementwise results
//! are f32.

use half::bf16;
use rayon::prelude::*;

/// Rounds an f32 to the nearest bf16 (ties to even) and back.
pub fn round_bf16(x: f32) -> f32 {
    bf16::from_f32(x).to_f32()
}

/// Rounds every element to bf16 in place.
pub fn round_bf16_slice(x: &mut [f32]) {
    for v in x {
        *v = round_bf16(*v);
    }
}

/// RMSNorm of each row of `x` (`[rows, w.len()]`): `x * (mean(x^2) + eps)^-0.5 * w`; the
/// mean and the reciprocal square root are computed in f64, the products in f32.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let d = w.len();
    assert_eq!(x.len() % d, 0, "rms_norm: rows must have {d} values");
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(d)
        .zip(x.par_chunks(d))
        .for_each(|(o, r)| {
            let ms = r.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / d as f64;
            let inv = (1.0 / (ms + f64::from(eps)).sqrt()) as f32;
            for ((o, &v), &g) in o.iter_mut().zip(r).zip(w) {
                *o = v * inv * g;
            }
        });
    out
}

/// LayerNorm of each row (biased variance, as PyTorch): `(x - mean) * (var + eps)^-0.5 *
/// w + b`, statistics in f64.
pub fn layer_norm(x: &[f32], w: &[f32], b: &[f32], eps: f32) -> Vec<f32> {
    let d = w.len();
    assert_eq!(b.len(), d, "layer_norm: bias width");
    assert_eq!(x.len() % d, 0, "layer_norm: rows must have {d} values");
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(d)
        .zip(x.par_chunks(d))
        .for_each(|(o, r)| {
            let mean = r.iter().map(|&v| f64::from(v)).sum::<f64>() / d as f64;
            let var = r
                .iter()
                .map(|&v| (f64::from(v) - mean).powi(2))
                .sum::<f64>()
                / d as f64;
            let inv = 1.0 / (var + f64::from(eps)).sqrt();
            for (i, o) in o.iter_mut().enumerate() {
                *o = ((f64::from(r[i]) - mean) * inv) as f32 * w[i] + b[i];
            }
        });
    out
}

/// `x * sigmoid(x)`.
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// `1 / (1 + exp(-x))`.
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Dot product with f64 products and eight f64 accumulators (the grouping lets the
/// compiler pipeline the adds; it is exact for e4m3-valued inputs, see
/// [`crate::linear`]).
#[inline]
pub fn dot_f64(a: &[f32], b: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let n8 = a.len() / 8 * 8;
    for (ca, cb) in a[..n8].chunks_exact(8).zip(b[..n8].chunks_exact(8)) {
        for l in 0..8 {
            acc[l] += f64::from(ca[l]) * f64::from(cb[l]);
        }
    }
    let mut tail = 0f64;
    for i in n8..a.len() {
        tail += f64::from(a[i]) * f64::from(b[i]);
    }
    acc.iter().sum::<f64>() + tail
}

/// Dot product of two vectors of e4m3 values (decoded codes): each product is exact in
/// f32 (4 x 4 significant bits) and is widened once; the f64 sum of up to 2^10 such
/// products is exact too (they are multiples of `2^-18` below `2^18`), so the result
/// does not depend on the summation order. Not exact for general f32 inputs.
#[inline]
pub fn dot_e4m3(a: &[f32], b: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let n8 = a.len() / 8 * 8;
    for (ca, cb) in a[..n8].chunks_exact(8).zip(b[..n8].chunks_exact(8)) {
        for l in 0..8 {
            acc[l] += f64::from(ca[l] * cb[l]);
        }
    }
    let mut tail = 0f64;
    for i in n8..a.len() {
        tail += f64::from(a[i] * b[i]);
    }
    acc.iter().sum::<f64>() + tail
}

/// Dot product of f64 vectors with eight accumulators.
#[inline]
pub fn dot_f64x(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0f64; 8];
    let n8 = a.len() / 8 * 8;
    for (ca, cb) in a[..n8].chunks_exact(8).zip(b[..n8].chunks_exact(8)) {
        for l in 0..8 {
            acc[l] += ca[l] * cb[l];
        }
    }
    let mut tail = 0f64;
    for i in n8..a.len() {
        tail += a[i] * b[i];
    }
    acc.iter().sum::<f64>() + tail
}

/// `x [m, k] @ w[n, k]^T -> [m, n]`, f64 accumulation, f32 result.
pub fn matmul_t(x: &[f32], m: usize, w: &[f32], n: usize) -> Vec<f32> {
    if m == 0 || n == 0 {
        return vec![0.0; m * n];
    }
    let k = x.len() / m;
    assert_eq!(x.len(), m * k, "matmul_t: x must be [m, k]");
    assert_eq!(w.len(), n * k, "matmul_t: w must be [n, k]");
    let mut out = vec![0f32; m * n];
    out.par_iter_mut()
        .with_min_len(64)
        .enumerate()
        .for_each(|(i, o)| {
            let (r, c) = (i / n, i % n);
            *o = dot_f64(&x[r * k..(r + 1) * k], &w[c * k..(c + 1) * k]) as f32;
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn norms() {
        let x = [1.0f32, 2.0, 3.0, 4.0];
        let y = rms_norm(&x, &[1.0, 1.0], 0.0);
        let r0 = (2.5f64).sqrt();
        assert!((y[0] as f64 - 1.0 / r0).abs() < 1e-6);
        let z = layer_norm(&x, &[1.0, 2.0], &[0.0, 1.0], 0.0);
        assert!((z[0] + 1.0).abs() < 1e-6 && (z[1] - 3.0).abs() < 1e-6);
        assert_eq!(silu(0.0), 0.0);
        assert_eq!(sigmoid(0.0), 0.5);
    }

    #[test]
    fn matmul() {
        let x = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let w = [1.0f32, 0.0, -1.0, 0.5, 0.5, 0.5];
        assert_eq!(matmul_t(&x, 2, &w, 2), vec![-2.0, 3.0, -2.0, 7.5]);
    }
}
