//! The FP8 block-scaled linear layer (spec 1.3 "FP8 linear"; DeepSeek's `fp8_gemm`,
//! DeepGEMM's 1x128 x 128x128 scaling).
//!
//! * Weights `[n, k]` are e4m3 codes with one f32 scale per 128x128 block
//!   (`weight_scale_inv`, shape `[ceil(n/128), ceil(k/128)]`; dequantized weight =
//!   code x scale).
//! * Activations are quantized per token per 128 columns (1x128 blocks, shape of the
//!   scales `[m, ceil(k/128)]`) with [`crate::fp8::quantize_block`]'s rule.
//! * Per 128-wide K block `kb` the product of codes is a fresh fragment, then `acc +=
//!   frag * sa[m, kb] * sb[n / 128, kb]` (the two-level accumulation of the kernels).
//!
//! Exactness: a product of two e4m3 values is exact in f32 and a 128-long sum of them is
//! exact in f64 (every product is a multiple of `2^-18` below `2^18`), so each fragment
//! here is exact; `acc` is accumulated in f64. A kernel's fp32 accumulation differs only
//! by its own rounding. The result is rounded to bf16 (the kernels' output type) by
//! [`fp8_linear`], and returned unrounded by [`fp8_gemm`].

use crate::fp8;
use crate::nn;
use half::bf16;
use rayon::prelude::*;

/// FP8 block size (both dims of a weight block, the width of an activation block).
pub const BLOCK: usize = 128;

/// An FP8 weight with 128x128 block scales.
#[derive(Clone, Debug)]
pub struct Fp8Weight {
    /// Output features `n`.
    pub out_features: usize,
    /// Input features `k`.
    pub in_features: usize,
    /// `[n, k]` e4m3 codes.
    pub codes: Vec<u8>,
    /// `[ceil(n/128), ceil(k/128)]` f32 block scales.
    pub scale_inv: Vec<f32>,
    /// The codes decoded to f32 (exact), kept for speed.
    values: Vec<f32>,
}

impl Fp8Weight {
    /// Wraps codes and block scales. Panics if the lengths do not match the shape.
    pub fn new(
        out_features: usize,
        in_features: usize,
        codes: Vec<u8>,
        scale_inv: Vec<f32>,
    ) -> Self {
        assert_eq!(
            codes.len(),
            out_features * in_features,
            "codes must be [n, k]"
        );
        assert_eq!(
            scale_inv.len(),
            out_features.div_ceil(BLOCK) * in_features.div_ceil(BLOCK),
            "scale_inv must be [ceil(n/128), ceil(k/128)]"
        );
        let values = codes.iter().map(|&c| fp8::e4m3_to_f32(c)).collect();
        Fp8Weight {
            out_features,
            in_features,
            codes,
            scale_inv,
            values,
        }
    }

    /// Quantizes a dense `[n, k]` weight per 128x128 block: `scale = max(amax, 1e-4) /
    /// 448`, codes `e4m3(w / scale)`.
    pub fn quantize(out_features: usize, in_features: usize, w: &[f32]) -> Self {
        assert_eq!(w.len(), out_features * in_features, "w must be [n, k]");
        let (nb, kb) = (out_features.div_ceil(BLOCK), in_features.div_ceil(BLOCK));
        let mut scale_inv = vec![0f32; nb * kb];
        let mut codes = vec![0u8; w.len()];
        for bn in 0..nb {
            for bk in 0..kb {
                let rows = bn * BLOCK..((bn + 1) * BLOCK).min(out_features);
                let cols = bk * BLOCK..((bk + 1) * BLOCK).min(in_features);
                let block: Vec<f32> = rows
                    .clone()
                    .flat_map(|r| {
                        w[r * in_features + cols.start..r * in_features + cols.end]
                            .iter()
                            .copied()
                    })
                    .collect();
                let s = fp8::block_scale(&block, false, fp8::AMAX_FLOOR);
                scale_inv[bn * kb + bk] = s;
                for r in rows {
                    for c in cols.clone() {
                        codes[r * in_features + c] = fp8::f32_to_e4m3(w[r * in_features + c] / s);
                    }
                }
            }
        }
        Self::new(out_features, in_features, codes, scale_inv)
    }

    /// Block scale of weight element `(row, col)`.
    pub fn scale_at(&self, row: usize, col: usize) -> f32 {
        self.scale_inv[(row / BLOCK) * self.in_features.div_ceil(BLOCK) + col / BLOCK]
    }

    /// The dequantized `[n, k]` weight, `code * scale` in f32.
    pub fn dequantize(&self) -> Vec<f32> {
        let k = self.in_features;
        self.values
            .iter()
            .enumerate()
            .map(|(i, &v)| v * self.scale_at(i / k, i % k))
            .collect()
    }

    /// The decoded (unscaled) code values, `[n, k]`.
    pub fn code_values(&self) -> &[f32] {
        &self.values
    }
}

/// Quantizes activations `[m, k]` per row in 1x128 blocks. Returns `(codes [m, k],
/// scales [m, ceil(k/128)])`.
pub fn quantize_act_1x128(x: &[f32], m: usize, k: usize, pow2_scale: bool) -> (Vec<u8>, Vec<f32>) {
    assert_eq!(x.len(), m * k, "x must be [m, k]");
    let kb = k.div_ceil(BLOCK);
    let mut codes = vec![0u8; m * k];
    let mut scales = vec![0f32; m * kb];
    for r in 0..m {
        for b in 0..kb {
            let cols = b * BLOCK..((b + 1) * BLOCK).min(k);
            let (c, s) = fp8::quantize_block(&x[r * k + cols.start..r * k + cols.end], pow2_scale);
            codes[r * k + cols.start..r * k + cols.end].copy_from_slice(&c);
            scales[r * kb + b] = s;
        }
    }
    (codes, scales)
}

/// One output element of the two-level accumulation: `sum_kb frag(kb) * sa[kb] * sb[kb]`.
fn gemm_elem(a_vals: &[f32], a_scales: &[f32], b_vals: &[f32], b_scales_row: &[f32]) -> f64 {
    let k = a_vals.len();
    let mut acc = 0f64;
    for (kb, (&sa, &sb)) in a_scales.iter().zip(b_scales_row).enumerate() {
        let cols = kb * BLOCK..((kb + 1) * BLOCK).min(k);
        let frag = nn::dot_e4m3(&a_vals[cols.clone()], &b_vals[cols]);
        acc += frag * f64::from(sa) * f64::from(sb);
    }
    acc
}

/// The FP8 GEMM of pre-quantized activations: `a_codes [m, k]`, `a_scales [m, k/128]`
/// against `w`. Returns `[m, n]` f32 (f64-accumulated, not rounded to bf16).
pub fn fp8_gemm(a_codes: &[u8], a_scales: &[f32], m: usize, w: &Fp8Weight) -> Vec<f32> {
    let (n, k) = (w.out_features, w.in_features);
    let kb = k.div_ceil(BLOCK);
    assert_eq!(a_codes.len(), m * k, "a_codes must be [m, k]");
    assert_eq!(a_scales.len(), m * kb, "a_scales must be [m, ceil(k/128)]");
    let a_vals: Vec<f32> = a_codes.iter().map(|&c| fp8::e4m3_to_f32(c)).collect();
    let mut out = vec![0f32; m * n];
    out.par_iter_mut()
        .with_min_len(32)
        .enumerate()
        .for_each(|(i, o)| {
            let (r, c) = (i / n, i % n);
            let sb = &w.scale_inv[(c / BLOCK) * kb..(c / BLOCK + 1) * kb];
            *o = gemm_elem(
                &a_vals[r * k..(r + 1) * k],
                &a_scales[r * kb..(r + 1) * kb],
                &w.values[c * k..(c + 1) * k],
                sb,
            ) as f32;
        });
    out
}

/// The FP8 linear layer: quantize `x [m, k]` in 1x128 blocks (power-of-two scales when
/// `pow2_scale`), [`fp8_gemm`], round the output to bf16. Returns `[m, n]`.
pub fn fp8_linear(x: &[f32], m: usize, w: &Fp8Weight, pow2_scale: bool) -> Vec<f32> {
    let (codes, scales) = quantize_act_1x128(x, m, w.in_features, pow2_scale);
    let mut y = fp8_gemm(&codes, &scales, m, w);
    for v in &mut y {
        *v = bf16::from_f32(*v).to_f32();
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_is_the_blockwise_definition() {
        let (m, n, k) = (3, 130, 200);
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let wd: Vec<f32> = (0..n * k)
            .map(|i| ((i * 104729) % 997) as f32 / 4000.0 - 0.12)
            .collect();
        let w = Fp8Weight::quantize(n, k, &wd);
        let (ac, asc) = quantize_act_1x128(&x, m, k, false);
        let y = fp8_gemm(&ac, &asc, m, &w);
        let deq = w.dequantize();
        for r in 0..m {
            for c in [0, 64, 127, 128, 129] {
                let mut acc = 0f64;
                for kb in 0..2 {
                    let mut frag = 0f64;
                    for j in kb * 128..((kb + 1) * 128).min(k) {
                        frag += f64::from(fp8::e4m3_to_f32(ac[r * k + j]))
                            * f64::from(fp8::e4m3_to_f32(w.codes[c * k + j]));
                    }
                    acc += frag * f64::from(asc[r * 2 + kb]) * f64::from(w.scale_at(c, kb * 128));
                }
                assert_eq!(y[r * n + c], acc as f32);
                // And close to the unquantized product.
                let exact: f64 = (0..k)
                    .map(|j| f64::from(x[r * k + j]) * f64::from(deq[c * k + j]))
                    .sum();
                assert!(
                    (acc - exact).abs() < 0.05 * (1.0 + exact.abs()),
                    "{acc} vs {exact}"
                );
            }
        }
        let yl = fp8_linear(&x, m, &w, false);
        assert_eq!(yl[5], bf16::from_f32(y[5]).to_f32());
    }
}
