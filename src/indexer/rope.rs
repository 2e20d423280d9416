//! Host-side YaRN RoPE tables for the indexer (rotary dim 64, rotate-half pairs `(i, i+32)`).
//!
//! The prep kernels read caller-owned device tables `cos`, `sin`: f32 `[max_pos, 32]`
//! row-major, entry `[p, i]` = `cos(p * freq[i]) * r` (`sin` likewise), where `freq` is
//! DeepSeek's YaRN-blended inverse frequency of pair `i` and `r = yarn_mscale(factor,
//! mscale) / yarn_mscale(factor, mscale_all_dim)` (exactly 1 for DeepSeek-V3.2). Build them
//! once with [`rope_tables`] and upload; they are the same for every layer.

/// Rotated pairs per row (64 rope dims / 2): the width of the cos/sin tables.
pub const INDEXER_ROPE_PAIRS: usize = 32;

/// YaRN parameters (`rope_theta` and the `rope_scaling` block of `config.json`).
#[derive(Clone, Debug, PartialEq)]
pub struct YarnRope {
    pub theta: f64,
    pub factor: f64,
    pub original_max_position: usize,
    pub beta_fast: f64,
    pub beta_slow: f64,
    pub mscale: f64,
    pub mscale_all_dim: f64,
}

impl YarnRope {
    /// DeepSeek-V3.2: theta 10000, factor 40, original 4096, beta 32 / 1, mscale 1 / 1.
    pub fn deepseek_v32() -> Self {
        Self {
            theta: 10000.0,
            factor: 40.0,
            original_max_position: 4096,
            beta_fast: 32.0,
            beta_slow: 1.0,
            mscale: 1.0,
            mscale_all_dim: 1.0,
        }
    }
}

fn yarn_mscale(factor: f64, mscale: f64) -> f64 {
    if factor <= 1.0 {
        1.0
    } else {
        0.1 * mscale * factor.ln() + 1.0
    }
}

/// Inverse frequencies of the 32 pairs: `theta^(-2i/64)`, blended with `/ factor` by a
/// linear ramp between the correction dims of `beta_fast` (floor) and `beta_slow` (ceil).
fn inv_freq(p: &YarnRope) -> Vec<f64> {
    let d = (2 * INDEXER_ROPE_PAIRS) as f64;
    let base: Vec<f64> = (0..INDEXER_ROPE_PAIRS)
        .map(|i| 1.0 / p.theta.powf((2 * i) as f64 / d))
        .collect();
    if p.factor <= 1.0 {
        return base;
    }
    let corr = |rot: f64| {
        d * ((p.original_max_position as f64) / (rot * 2.0 * std::f64::consts::PI)).ln()
            / (2.0 * p.theta.ln())
    };
    let low = corr(p.beta_fast).floor().max(0.0);
    let high = corr(p.beta_slow).ceil().min(d - 1.0);
    let high = if low == high { high + 0.001 } else { high };
    base.iter()
        .enumerate()
        .map(|(i, &f)| {
            let smooth = 1.0 - ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
            f / p.factor * (1.0 - smooth) + f * smooth
        })
        .collect()
}

/// `(cos, sin)`, each f32 `[max_pos, 32]` row-major, computed in f64 and rounded once.
/// `max_pos` must fit the kernels' i32 positions.
pub fn rope_tables(p: &YarnRope, max_pos: usize) -> crate::Result<(Vec<f32>, Vec<f32>)> {
    crate::check::fits_i32("rope positions", max_pos)?;
    let inv = inv_freq(p);
    let r = yarn_mscale(p.factor, p.mscale) / yarn_mscale(p.factor, p.mscale_all_dim);
    let mut cos = Vec::with_capacity(max_pos * INDEXER_ROPE_PAIRS);
    let mut sin = Vec::with_capacity(max_pos * INDEXER_ROPE_PAIRS);
    for pos in 0..max_pos {
        for f in &inv {
            let a = pos as f64 * f;
            cos.push((a.cos() * r) as f32);
            sin.push((a.sin() * r) as f32);
        }
    }
    Ok((cos, sin))
}
