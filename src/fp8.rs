//! Host FP8 e4m3 numerics, bit-exact with the kernels.
//!
//! The conversion matches CUDA's `__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3)`:
//! round to nearest even, anything past +-448 (infinities included) saturates to +-448, NaN
//! becomes 0x7f. `float8::F8E4M3` is the storage type; its `MAX` constant says 416, which is
//! wrong for e4m3 (the largest finite value is 448), so this module uses [`E4M3_MAX`].
use float8::F8E4M3;

/// Largest finite e4m3 value (`DSA_FP8_E4M3_MAX` of the kernels' common_params.h).
pub const E4M3_MAX: f32 = crate::sys::common::DSA_FP8_E4M3_MAX as f32;
/// Smallest amax a block is scaled by, so an all-zero block gets a finite scale (the
/// indexer's rule, applied to every FP8 cache of the crate; `DSA_FP8_AMAX_FLOOR`). The
/// header's `1e-4f` and this f64-to-f32 conversion give the same float.
pub const AMAX_FLOOR: f32 = crate::sys::common::DSA_FP8_AMAX_FLOOR as f32;
/// Values per scale block along a row (1x128 activation blocks, 128-value cache blocks).
pub const BLOCK: usize = 128;

/// e4m3 code of `x`, saturating round-to-nearest-even.
pub fn f32_to_e4m3(x: f32) -> u8 {
    if x.is_nan() {
        return 0x7f;
    }
    let sign: u8 = if x.is_sign_negative() { 0x80 } else { 0 };
    let a = x.abs();
    if a > E4M3_MAX {
        return sign | 0x7e;
    }
    // Below the smallest normal (2^-6) the grid is uniform with step 2^-9.
    if a < 2f32.powi(-6) {
        return sign | (a * 512.0).round_ties_even() as u8;
    }
    let e = ((a.to_bits() >> 23) as i32) - 127;
    let frac = a / 2f32.powi(e) - 1.0; // exact: scaling by a power of two
    let mut q = (frac * 8.0).round_ties_even() as i32;
    let mut e = e;
    if q == 8 {
        q = 0;
        e += 1;
    }
    let code = (((e + 7) << 3) | q).min(0x7e) as u8;
    sign | code
}

/// Value of an e4m3 code (0x7f / 0xff are NaN).
pub fn e4m3_to_f32(code: u8) -> f32 {
    F8E4M3::from_bits(code).to_f32()
}

/// `x` as the crate's FP8 storage type.
pub fn to_f8(x: f32) -> F8E4M3 {
    F8E4M3::from_bits(f32_to_e4m3(x))
}

/// Scale of a block with absolute maximum `amax`: `max(amax, 1e-4) / 448`, optionally
/// rounded up to a power of two (UE8M0). Same bit manipulation as the kernels.
pub fn block_scale(amax: f32, pow2: bool) -> f32 {
    let s = amax.max(AMAX_FLOOR) / E4M3_MAX;
    if pow2 {
        let b = s.to_bits();
        if b & 0x007f_ffff != 0 {
            return f32::from_bits((b & 0xff80_0000) + 0x0080_0000);
        }
    }
    s
}

/// Quantizes one block: returns the e4m3 codes of `x / scale` and the scale
/// (dequantized value = e4m3 value x scale).
pub fn quantize_block(x: &[f32], pow2: bool) -> (Vec<u8>, f32) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let scale = block_scale(amax, pow2);
    (x.iter().map(|&v| f32_to_e4m3(v / scale)).collect(), scale)
}

/// Quantizes a row in blocks of 128 values (the last block may be shorter); one scale per
/// block.
pub fn quantize_row_blocks(x: &[f32], pow2: bool) -> (Vec<u8>, Vec<f32>) {
    let mut codes = Vec::with_capacity(x.len());
    let mut scales = Vec::with_capacity(x.len().div_ceil(BLOCK));
    for chunk in x.chunks(BLOCK) {
        let (c, s) = quantize_block(chunk, pow2);
        codes.extend_from_slice(&c);
        scales.push(s);
    }
    (codes, scales)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips() {
        for code in 0u8..=255 {
            let v = e4m3_to_f32(code);
            if code & 0x7f == 0x7f {
                assert!(v.is_nan(), "code {code:#x}");
                assert_eq!(f32_to_e4m3(v), 0x7f);
                continue;
            }
            assert_eq!(f32_to_e4m3(v), code, "code {code:#x} value {v}");
        }
    }

    #[test]
    fn ties_go_to_even_and_overflow_saturates() {
        // 1.0625 lies halfway between 1.0 (mantissa 0, even) and 1.125 (mantissa 1).
        assert_eq!(e4m3_to_f32(f32_to_e4m3(1.0625)), 1.0);
        // 1.1875 lies halfway between 1.125 (odd) and 1.25 (even).
        assert_eq!(e4m3_to_f32(f32_to_e4m3(1.1875)), 1.25);
        // Subnormal tie: 1.5 * 2^-9 rounds to 2 * 2^-9.
        assert_eq!(f32_to_e4m3(1.5 * 2f32.powi(-9)), 0x02);
        assert_eq!(f32_to_e4m3(0.5 * 2f32.powi(-9)), 0x00);
        assert_eq!(e4m3_to_f32(f32_to_e4m3(449.0)), 448.0);
        assert_eq!(e4m3_to_f32(f32_to_e4m3(1e9)), 448.0);
        assert_eq!(e4m3_to_f32(f32_to_e4m3(f32::NEG_INFINITY)), -448.0);
        assert_eq!(f32_to_e4m3(-0.0), 0x80);
        assert_eq!(f32_to_e4m3(f32::NAN), 0x7f);
    }

    #[test]
    fn nearest_value_between_neighbours() {
        // Every value strictly between two neighbouring codes goes to the nearer one.
        for code in 0u8..0x7e {
            let lo = e4m3_to_f32(code);
            let hi = e4m3_to_f32(code + 1);
            for t in [0.25f32, 0.49, 0.51, 0.75] {
                let x = lo + (hi - lo) * t;
                let want = if t < 0.5 { code } else { code + 1 };
                assert_eq!(f32_to_e4m3(x), want, "x={x}");
            }
        }
    }

    #[test]
    fn pow2_scale_rounds_up() {
        let s = block_scale(3.0, true);
        assert_eq!(s, 2f32.powi(-7)); // 3/448 = 0.0067 -> 2^-7 = 0.0078
        assert_eq!(block_scale(448.0, true), 1.0);
        assert_eq!(block_scale(0.0, false), AMAX_FLOOR / 448.0);
    }
}
