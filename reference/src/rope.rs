//! YaRN rotary position embedding tables and the two pair layouts DeepSeek-V3.2 uses.
//!
//! * MLA applies RoPE to its 64 rope dims with **interleaved** pairs `(2i, 2i+1)`.
//! * The lightning indexer applies it to dims 0..64 of its 128-dim vectors with the
//!   **non-interleaved** (rotate-half) layout, pairs `(i, i+32)`.
//!
//! In both layouts pair `i` rotates by angle `pos * freq[i]`, `i < rotary_dim / 2`.
//!
//! YaRN frequencies follow DeepSeek's `precompute_freqs_cis`: `freq[i] =
//! theta^(-2i/d)`, blended with `freq[i] / factor` through a linear ramp between the
//! correction dims of `beta_fast` and `beta_slow` (floor / ceil, clamped to `[0, d-1]`).
//! The blend is applied whenever `factor > 1`, as Hugging Face's implementation does.
//!
//! **mscale.** Hugging Face multiplies cos/sin by `yarn_mscale(factor, mscale) /
//! yarn_mscale(factor, mscale_all_dim)`; DeepSeek-V3.2 sets `mscale = mscale_all_dim =
//! 1`, so that ratio is exactly 1 and DeepSeek's own code applies none. The tables here
//! include the ratio (1.0 for the real config) and the attention magnitude correction
//! enters the MLA softmax scale instead: `qk_head_dim^-0.5 * yarn_mscale(factor,
//! mscale_all_dim)^2` = 0.135234 (see [`mla_softmax_scale`]).
//!
//! Tables are computed in f64 and stored as f32 (`cos`, `sin`: `[positions,
//! rotary_dim / 2]` row-major); the rotation itself is done in f32, like the reference
//! PyTorch code (`x * cos - y * sin`, `x * sin + y * cos`).

/// YaRN parameters (the `rope_scaling` block of `config.json` plus `rope_theta`).
#[derive(Clone, Debug, PartialEq)]
pub struct YarnParams {
    /// `rope_theta`.
    pub theta: f64,
    /// `rope_scaling.factor`.
    pub factor: f64,
    /// `rope_scaling.original_max_position_embeddings`.
    pub original_max_position: usize,
    /// `rope_scaling.beta_fast`.
    pub beta_fast: f64,
    /// `rope_scaling.beta_slow`.
    pub beta_slow: f64,
    /// `rope_scaling.mscale`.
    pub mscale: f64,
    /// `rope_scaling.mscale_all_dim`.
    pub mscale_all_dim: f64,
}

impl YarnParams {
    /// DeepSeek-V3.2's values: theta 10000, factor 40, original 4096, beta_fast 32,
    /// beta_slow 1, mscale 1, mscale_all_dim 1.
    pub fn deepseek_v32() -> Self {
        YarnParams {
            theta: 10000.0,
            factor: 40.0,
            original_max_position: 4096,
            beta_fast: 32.0,
            beta_slow: 1.0,
            mscale: 1.0,
            mscale_all_dim: 1.0,
        }
    }

    /// Plain RoPE (no YaRN scaling) with base `theta`.
    pub fn plain(theta: f64) -> Self {
        YarnParams {
            theta,
            factor: 1.0,
            original_max_position: 4096,
            beta_fast: 32.0,
            beta_slow: 1.0,
            mscale: 1.0,
            mscale_all_dim: 1.0,
        }
    }
}

/// YaRN's attention magnitude factor `0.1 * mscale * ln(factor) + 1` (1 when `factor <= 1`).
pub fn yarn_mscale(factor: f64, mscale: f64) -> f64 {
    if factor <= 1.0 {
        1.0
    } else {
        0.1 * mscale * factor.ln() + 1.0
    }
}

/// MLA softmax scale: `qk_head_dim^-0.5 * yarn_mscale(factor, mscale_all_dim)^2`; with
/// qk_head_dim 192 and DeepSeek-V3.2's YaRN this is 0.135234.
pub fn mla_softmax_scale(qk_head_dim: usize, yarn: &YarnParams) -> f32 {
    let m = yarn_mscale(yarn.factor, yarn.mscale_all_dim);
    ((qk_head_dim as f64).powf(-0.5) * m * m) as f32
}

/// The (possibly YaRN-blended) inverse frequencies, `rotary_dim / 2` of them, in f64.
pub fn yarn_inv_freq(p: &YarnParams, rotary_dim: usize) -> Vec<f64> {
    let d = rotary_dim as f64;
    let half = rotary_dim / 2;
    let base: Vec<f64> = (0..half)
        .map(|i| 1.0 / p.theta.powf((2 * i) as f64 / d))
        .collect();
    if p.factor <= 1.0 {
        return base;
    }
    let corr_dim = |rot: f64| {
        d * ((p.original_max_position as f64) / (rot * 2.0 * std::f64::consts::PI)).ln()
            / (2.0 * p.theta.ln())
    };
    let low = corr_dim(p.beta_fast).floor().max(0.0);
    let high = corr_dim(p.beta_slow).ceil().min(d - 1.0);
    let high = if low == high { high + 0.001 } else { high };
    base.iter()
        .enumerate()
        .map(|(i, &f)| {
            let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
            let smooth = 1.0 - ramp;
            f / p.factor * (1.0 - smooth) + f * smooth
        })
        .collect()
}

/// Precomputed cos/sin per position for one rotary width.
#[derive(Clone, Debug)]
pub struct RopeTables {
    /// Number of rotated dims (64 in DeepSeek-V3.2); pairs = `rotary_dim / 2`.
    pub rotary_dim: usize,
    /// `[positions, rotary_dim / 2]` cosines (times the mscale ratio).
    pub cos: Vec<f32>,
    /// `[positions, rotary_dim / 2]` sines (times the mscale ratio).
    pub sin: Vec<f32>,
}

impl RopeTables {
    /// YaRN tables for positions `0..max_positions`. Panics if `rotary_dim` is odd or 0.
    pub fn yarn(p: &YarnParams, rotary_dim: usize, max_positions: usize) -> Self {
        assert!(
            rotary_dim > 0 && rotary_dim.is_multiple_of(2),
            "rotary_dim must be even"
        );
        let inv = yarn_inv_freq(p, rotary_dim);
        let ratio = yarn_mscale(p.factor, p.mscale) / yarn_mscale(p.factor, p.mscale_all_dim);
        let half = rotary_dim / 2;
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        for pos in 0..max_positions {
            for f in &inv {
                let a = pos as f64 * f;
                cos.push((a.cos() * ratio) as f32);
                sin.push((a.sin() * ratio) as f32);
            }
        }
        RopeTables {
            rotary_dim,
            cos,
            sin,
        }
    }

    /// DeepSeek-V3.2's YaRN tables (rotary dim 64).
    pub fn deepseek_v32(max_positions: usize) -> Self {
        Self::yarn(&YarnParams::deepseek_v32(), 64, max_positions)
    }

    /// Number of positions the tables cover.
    pub fn positions(&self) -> usize {
        self.cos.len() / (self.rotary_dim / 2)
    }

    /// `(cos, sin)` rows of position `pos`. Panics if `pos` is out of range.
    pub fn row(&self, pos: usize) -> (&[f32], &[f32]) {
        let h = self.rotary_dim / 2;
        assert!(
            pos < self.positions(),
            "position {pos} beyond the RoPE tables"
        );
        (
            &self.cos[pos * h..(pos + 1) * h],
            &self.sin[pos * h..(pos + 1) * h],
        )
    }

    /// Rotates `x[..rotary_dim]` in place, interleaved pairs `(2i, 2i+1)` (MLA).
    pub fn apply_interleaved(&self, x: &mut [f32], pos: usize) {
        let (c, s) = self.row(pos);
        for i in 0..self.rotary_dim / 2 {
            let (a, b) = (x[2 * i], x[2 * i + 1]);
            x[2 * i] = a * c[i] - b * s[i];
            x[2 * i + 1] = a * s[i] + b * c[i];
        }
    }

    /// Rotates `x[..rotary_dim]` in place, rotate-half pairs `(i, i + rotary_dim/2)`
    /// (the indexer's layout).
    pub fn apply_rotate_half(&self, x: &mut [f32], pos: usize) {
        let (c, s) = self.row(pos);
        let h = self.rotary_dim / 2;
        for i in 0..h {
            let (a, b) = (x[i], x[i + h]);
            x[i] = a * c[i] - b * s[i];
            x[i + h] = a * s[i] + b * c[i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_scale_is_0_135234() {
        let s = mla_softmax_scale(192, &YarnParams::deepseek_v32());
        assert!((s - 0.135234).abs() < 1e-6, "{s}");
        assert!((yarn_mscale(40.0, 1.0) - 1.36889).abs() < 1e-5);
    }

    #[test]
    fn yarn_frequencies() {
        let p = YarnParams::deepseek_v32();
        let f = yarn_inv_freq(&p, 64);
        let base = yarn_inv_freq(&YarnParams::plain(10000.0), 64);
        // low = floor(10.47) = 10, high = ceil(22.5) = 23: fast dims keep their
        // frequency, slow ones are divided by the factor.
        for i in 0..=10 {
            assert_eq!(f[i], base[i]);
        }
        for i in 23..32 {
            assert!((f[i] - base[i] / 40.0).abs() <= 1e-15 * base[i]);
        }
        assert!(f[16] < base[16] && f[16] > base[16] / 40.0);
    }

    #[test]
    fn layouts() {
        let t = RopeTables::deepseek_v32(8);
        let x: Vec<f32> = (0..64).map(|i| i as f32 * 0.1 - 1.0).collect();
        let (c, s) = t.row(5);
        let mut a = x.clone();
        t.apply_interleaved(&mut a, 5);
        assert_eq!(a[6], x[6] * c[3] - x[7] * s[3]);
        let mut b = x.clone();
        t.apply_rotate_half(&mut b, 5);
        assert_eq!(b[35], x[35] * c[3] + x[3] * s[3]);
        let mut z = x.clone();
        t.apply_rotate_half(&mut z, 0);
        assert_eq!(z, x);
    }
}
