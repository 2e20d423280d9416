//! FP8 e4m3 (`e4m3fn`: 1 sign bit, 4 exponent bits with bias 7, 3 mantissa bits, no
//! infinities, `0x7f`/`0xff` are NaN, largest finite value 448) and block quantization.
//!
//! The conversion [`f32_to_e4m3`] is bit-exact with CUDA's
//! `__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3)` as the GPU executes it
//! (`cvt.rn.satfinite.e4m3x2.f32`): round to nearest, ties to even, finite values past
//! the largest code saturate to +-448, and NaN becomes the canonical `0x7f` whatever its
//! sign. (CUDA's host fallback keeps the sign of a NaN, giving `0xff` for a negative
//! one; no kernel input of this crate contains NaN, so the difference never shows.)
//!
//! Quantization is per block of values (128 in every layout of this crate): `scale =
//! amax / 448` in f32, optionally rounded up to a power of two (the UE8M0 format that
//! DeepGEMM and the indexer use), and `code = e4m3(x / scale)` with an f32 division.
//! Dequantization is `e4m3_to_f32(code) * scale`.

/// Largest finite e4m3 value. (`float8::F8E4M3::MAX` is wrong for this purpose.)
pub const E4M3_MAX: f32 = 448.0;

/// The amax floor of the indexer quantization rule (spec 1.2 step 5) and of the MLA FP8
/// cache: an all-zero block gets scale `1e-4 / 448` instead of a division by zero.
pub const AMAX_FLOOR: f32 = 1e-4;

/// The canonical e4m3 NaN code.
pub const E4M3_NAN: u8 = 0x7f;

/// Decodes one e4m3 code. Exact: every code is representable in f32. `0x7f` and `0xff`
/// decode to NaN; `0x80` decodes to `-0.0`.
pub fn e4m3_to_f32(code: u8) -> f32 {
    let sign = u32::from(code & 0x80) << 24;
    let exp = u32::from((code >> 3) & 0x0f);
    let man = u32::from(code & 0x07);
    if exp == 0x0f && man == 0x07 {
        return f32::NAN;
    }
    let mag = if exp == 0 {
        // Subnormal: man * 2^-9, exact.
        man as f32 * (1.0 / 512.0)
    } else {
        // Normal: rebias the exponent (7 -> 127) and widen the mantissa (3 -> 23 bits).
        f32::from_bits(((exp + 120) << 23) | (man << 20))
    };
    f32::from_bits(mag.to_bits() | sign)
}

/// Encodes an f32 as e4m3: round to nearest even, saturate to +-448, NaN -> `0x7f`.
/// Values of magnitude at most `2^-10` (half the smallest subnormal) become a signed
/// zero (`0x00` or `0x80`).
pub fn f32_to_e4m3(x: f32) -> u8 {
    if x.is_nan() {
        return E4M3_NAN;
    }
    let sign: u8 = if x.is_sign_negative() { 0x80 } else { 0x00 };
    let a = x.abs();
    // 464 = 448 + half an ulp (32/2): above it the nearest code would be 480, which is
    // the NaN pattern, so SATFINITE clamps. Exactly 464 rounds to the even 448.
    if a > 464.0 {
        return sign | 0x7e;
    }
    // Quantum (ulp) of the target binade: 2^-9 in the subnormal range (a < 2^-6), else
    // 2^(e - 3) for a in [2^e, 2^(e+1)); `e` is read from the f32 exponent bits.
    let (base_code, quantum_exp, lead) = if a < 1.0 / 64.0 {
        (0i32, -9i32, 0.0f32)
    } else {
        let e = ((a.to_bits() >> 23) & 0xff) as i32 - 127;
        ((e + 7) * 8, e - 3, 8.0)
    };
    // Scaling by a power of two is exact here (no underflow: a >= 2^-149 lands at >= 2^-140),
    // and ties go to even steps, which are the even mantissas of the result.
    let scaled = a * f32::from_bits(((127 - quantum_exp) as u32) << 23);
    let steps = scaled.round_ties_even() - lead;
    // A carry out of the mantissa (steps == 8) lands on the next binade's code, since
    // codes are ordered like the values they encode.
    let code = base_code + steps as i32;
    sign | (code as u8)
}

/// Rounds a positive normal f32 up to the next power of two (itself if it is one):
/// the UE8M0 scale rule `2^ceil(log2(s))`, done on the bits so it is exact.
pub fn round_up_pow2(s: f32) -> f32 {
    debug_assert!(s > 0.0 && s.is_finite());
    let bits = s.to_bits();
    if bits & 0x007f_ffff == 0 {
        s
    } else {
        f32::from_bits((bits & 0x7f80_0000) + 0x0080_0000)
    }
}

/// Quantizes one block with the indexer rule (spec 1.2 step 5): `amax = max(max|x|,
/// 1e-4)`, `scale = amax / 448` (rounded up to a power of two when `pow2_scale`),
/// `codes[i] = e4m3(x[i] / scale)`. Returns `(codes, scale)`; dequantize with
/// `e4m3_to_f32(code) * scale`. NaN inputs do not take part in amax and encode as `0x7f`.
pub fn quantize_block(x: &[f32], pow2_scale: bool) -> (Vec<u8>, f32) {
    quantize_block_with_floor(x, pow2_scale, AMAX_FLOOR)
}

/// [`quantize_block`] with an explicit amax floor (`floor > 0`). The MLA FP8 cache and
/// the indexer both use [`AMAX_FLOOR`]; FP8 activations of the block-scaled linear use
/// the same floor as DeepSeek's `act_quant`.
pub fn quantize_block_with_floor(x: &[f32], pow2_scale: bool, floor: f32) -> (Vec<u8>, f32) {
    let scale = block_scale(x, pow2_scale, floor);
    (x.iter().map(|&v| f32_to_e4m3(v / scale)).collect(), scale)
}

/// The scale [`quantize_block_with_floor`] uses for `x`.
pub fn block_scale(x: &[f32], pow2_scale: bool, floor: f32) -> f32 {
    let amax = x.iter().fold(floor, |m, v| m.max(v.abs()));
    let scale = amax / E4M3_MAX;
    if pow2_scale {
        round_up_pow2(scale)
    } else {
        scale
    }
}

/// Dequantizes a block: `e4m3_to_f32(code) * scale` (one f32 product each).
pub fn dequantize_block(codes: &[u8], scale: f32) -> Vec<f32> {
    codes.iter().map(|&c| e4m3_to_f32(c) * scale).collect()
}

/// Rounds an f32 to the nearest e4m3 value (saturating), returned as f32.
pub fn round_to_e4m3(x: f32) -> f32 {
    e4m3_to_f32(f32_to_e4m3(x))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The finite codes in increasing value order (positive half).
    fn positive_values() -> Vec<(u8, f32)> {
        (0u8..0x7f).map(|c| (c, e4m3_to_f32(c))).collect()
    }

    #[test]
    fn every_code_round_trips() {
        for c in 0..=255u8 {
            let v = e4m3_to_f32(c);
            if c & 0x7f == 0x7f {
                assert!(v.is_nan());
                assert_eq!(f32_to_e4m3(v), 0x7f);
            } else {
                assert_eq!(f32_to_e4m3(v), c, "code {c:#04x} value {v}");
            }
        }
    }

    #[test]
    fn known_values() {
        assert_eq!(e4m3_to_f32(0x7e), 448.0);
        assert_eq!(e4m3_to_f32(0x01), 2f32.powi(-9));
        assert_eq!(e4m3_to_f32(0x08), 2f32.powi(-6));
        assert_eq!(e4m3_to_f32(0x38), 1.0);
        assert_eq!(e4m3_to_f32(0xb8), -1.0);
        assert_eq!(f32_to_e4m3(1e9), 0x7e);
        assert_eq!(f32_to_e4m3(f32::INFINITY), 0x7e);
        assert_eq!(f32_to_e4m3(f32::NEG_INFINITY), 0xfe);
        assert_eq!(f32_to_e4m3(464.0), 0x7e);
        assert_eq!(f32_to_e4m3(463.9), 0x7e);
        assert_eq!(f32_to_e4m3(-f32::NAN), 0x7f);
        assert_eq!(f32_to_e4m3(-0.0), 0x80);
        assert_eq!(f32_to_e4m3(2f32.powi(-10)), 0x00);
        assert_eq!(f32_to_e4m3(2f32.powi(-10) * 1.0001), 0x01);
        // 1.0625 is the midpoint of 1.0 (even mantissa) and 1.125.
        assert_eq!(f32_to_e4m3(1.0625), 0x38);
        assert_eq!(f32_to_e4m3(1.1875), 0x3a);
    }

    #[test]
    fn midpoints_round_to_even() {
        let vals = positive_values();
        for w in vals.windows(2) {
            let (c0, v0) = w[0];
            let (c1, v1) = w[1];
            let mid = (v0 + v1) / 2.0; // exact in f32
            let want = if c0 % 2 == 0 { c0 } else { c1 };
            assert_eq!(f32_to_e4m3(mid), want, "mid {mid}");
            assert_eq!(f32_to_e4m3(-mid), want | 0x80);
            assert_eq!(f32_to_e4m3(f32::from_bits(mid.to_bits() - 1)), c0);
            assert_eq!(f32_to_e4m3(f32::from_bits(mid.to_bits() + 1)), c1);
        }
    }

    /// Cross-check with the `float8` crate's port of CUDA's conversion over a sweep of
    /// f32 bit patterns (it differs only in the sign of NaN).
    #[test]
    fn matches_float8_crate_on_a_bit_sweep() {
        let mut bits: u32 = 0;
        loop {
            let x = f32::from_bits(bits);
            if !x.is_nan() {
                let want = float8::F8E4M3::from_f32(x).to_bits();
                assert_eq!(f32_to_e4m3(x), want, "x = {x:e} ({bits:#010x})");
            }
            match bits.checked_add(40_503) {
                Some(b) => bits = b,
                None => break,
            }
        }
    }

    #[test]
    fn pow2_rounding() {
        assert_eq!(round_up_pow2(1.0), 1.0);
        assert_eq!(round_up_pow2(1.000_001), 2.0);
        assert_eq!(round_up_pow2(0.75), 1.0);
        assert_eq!(round_up_pow2(2f32.powi(-20)), 2f32.powi(-20));
    }

    #[test]
    fn quantize_block_rules() {
        let (codes, s) = quantize_block(&[0.0; 128], false);
        assert_eq!(s, 1e-4f32 / 448.0);
        assert!(codes.iter().all(|&c| c == 0));
        let x: Vec<f32> = (0..128).map(|i| (i as f32 - 60.0) * 0.37).collect();
        let (codes, s) = quantize_block(&x, true);
        assert_eq!(s, round_up_pow2(x[127] / 448.0));
        assert_eq!(s.to_bits() & 0x007f_ffff, 0);
        for (c, v) in codes.iter().zip(&x) {
            assert_eq!(*c, f32_to_e4m3(v / s));
        }
        let (codes, s) = quantize_block(&x, false);
        // The amax element maps to (almost exactly) 448.
        assert_eq!(e4m3_to_f32(codes[127]) * s, 448.0 * s);
    }
}
