//! The model-layer ops (src/layers/) against the reference's arithmetic: random shapes,
//! strides and magnitudes, outputs poisoned before each launch.
use dsa_kernels::cudarc::driver::CudaSlice;
use dsa_kernels::indexer::{rope_tables, RopeTablesRef, YarnRope};
use dsa_kernels::layers::{NormInput, NormRows, RopeRows};
use dsa_reference::linear::quantize_act_1x128;
use dsa_reference::nn;
use dsa_reference::rope::RopeTables;
use half::bf16;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::common::{download, kernels, upload};

fn values(rng: &mut StdRng, n: usize) -> Vec<f32> {
    let mag = 10f32.powf(rng.random_range(-3.0..3.0));
    (0..n)
        .map(|_| rng.random_range(-1.0f32..1.0) * mag)
        .collect()
}

/// f32 results equal up to one ulp (the f64 statistics are summed in another order).
fn assert_ulp(got: &[f32], want: &[f32], what: &str) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let d = (g.to_bits() as i64 - w.to_bits() as i64).abs();
        assert!(d <= 1 || g == w, "{what}[{i}]: {g} vs {w}");
    }
}

fn assert_bf16_ulp(got: &[bf16], want: &[f32], what: &str) {
    for (i, (g, &w)) in got.iter().zip(want).enumerate() {
        let w = bf16::from_f32(w);
        let d = (g.to_bits() as i32 - w.to_bits() as i32).abs();
        assert!(d <= 1, "{what}[{i}]: {g} vs {w}");
    }
}

fn rms_norm_case(seed: u64, rows: usize, dim: usize, pad: usize, bf16_in: bool) {
    let k = kernels();
    let s = k.stream().clone();
    let mut rng = StdRng::seed_from_u64(seed);
    let stride = dim + pad;
    let mut x = values(&mut rng, rows * stride);
    if bf16_in {
        nn::round_bf16_slice(&mut x);
    }
    let w = values(&mut rng, dim);
    let dense: Vec<f32> = (0..rows)
        .flat_map(|r| x[r * stride..r * stride + dim].to_vec())
        .collect();
    let want = nn::rms_norm(&dense, &w, 1e-6);
    let d_w = upload(&s, &w);
    let mut out = upload(&s, &vec![f32::NAN; rows * dim]);
    let out_stride = dim + 8;
    let mut out_b = upload(&s, &vec![bf16::NAN; rows * out_stride]);
    let shape = NormRows { rows, dim, stride };
    if bf16_in {
        let xb: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
        let d_x = upload(&s, &xb);
        k.rms_norm(
            shape,
            NormInput::<CudaSlice<f32>, _>::Bf16(&d_x),
            &d_w,
            1e-6,
            Some(&mut out),
            Some((&mut out_b, out_stride)),
        )
        .unwrap();
    } else {
        let d_x = upload(&s, &x);
        k.rms_norm(
            shape,
            NormInput::<_, CudaSlice<bf16>>::F32(&d_x),
            &d_w,
            1e-6,
            Some(&mut out),
            Some((&mut out_b, out_stride)),
        )
        .unwrap();
    }
    assert_ulp(&download(&s, &out), &want, "rms_norm f32");
    let ob = download(&s, &out_b);
    let ob: Vec<bf16> = (0..rows)
        .flat_map(|r| ob[r * out_stride..r * out_stride + dim].to_vec())
        .collect();
    assert_bf16_ulp(&ob, &want, "rms_norm bf16");
}

fn layer_norm_case(seed: u64, rows: usize, pad: usize) {
    let k = kernels();
    let s = k.stream().clone();
    let mut rng = StdRng::seed_from_u64(seed);
    let (dim, stride) = (128, 128 + pad);
    let mut x = values(&mut rng, rows * stride);
    nn::round_bf16_slice(&mut x);
    let (w, b) = (values(&mut rng, dim), values(&mut rng, dim));
    let dense: Vec<f32> = (0..rows)
        .flat_map(|r| x[r * stride..r * stride + dim].to_vec())
        .collect();
    let want = nn::layer_norm(&dense, &w, &b, 1e-6);
    let xb: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
    let (d_x, d_w, d_b) = (upload(&s, &xb), upload(&s, &w), upload(&s, &b));
    let mut out = upload(&s, &vec![bf16::NAN; rows * dim]);
    k.layer_norm(
        NormRows { rows, dim, stride },
        &d_x,
        &d_w,
        &d_b,
        1e-6,
        &mut out,
    )
    .unwrap();
    assert_bf16_ulp(&download(&s, &out), &want, "layer_norm");
}

fn rope_case(seed: u64, tokens: usize, heads: usize) {
    let k = kernels();
    let s = k.stream().clone();
    let mut rng = StdRng::seed_from_u64(seed);
    let max_pos = 4096;
    let tables = RopeTables::deepseek_v32(max_pos);
    let (cos, sin) = rope_tables(&YarnRope::deepseek_v32(), max_pos).unwrap();
    let (src_hs, src_ts) = (192, heads * 192);
    let (dst_hs, dst_ts) = (576, heads * 576);
    let mut x = values(&mut rng, tokens * src_ts);
    nn::round_bf16_slice(&mut x);
    let pos: Vec<i32> = (0..tokens)
        .map(|_| rng.random_range(-2..max_pos as i32 + 2))
        .collect();
    let xb: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
    let (d_x, d_pos, d_cos, d_sin) = (
        upload(&s, &xb),
        upload(&s, &pos),
        upload(&s, &cos),
        upload(&s, &sin),
    );
    let mut dst = upload(&s, &vec![bf16::NAN; tokens * dst_ts]);
    let src = d_x.slice(128..);
    let mut dv = dst.slice_mut(512..);
    let rope = RopeTablesRef {
        cos: &d_cos,
        sin: &d_sin,
        max_pos,
    };
    k.mla_rope(
        tokens,
        heads,
        &src,
        RopeRows {
            token_stride: src_ts,
            head_stride: src_hs,
        },
        &mut dv,
        RopeRows {
            token_stride: dst_ts,
            head_stride: dst_hs,
        },
        &d_pos,
        rope,
    )
    .unwrap();
    let got = download(&s, &dst);
    for t in 0..tokens {
        for h in 0..heads {
            let o = t * src_ts + h * src_hs + 128;
            let mut want = x[o..o + 64].to_vec();
            if pos[t] >= 0 && (pos[t] as usize) < max_pos {
                tables.apply_interleaved(&mut want, pos[t] as usize);
            } else {
                want = vec![0.0; 64];
            }
            let g = &got[t * dst_ts + h * dst_hs + 512..][..64];
            for i in 0..64 {
                assert_eq!(g[i], bf16::from_f32(want[i]), "token {t} head {h} dim {i}");
            }
            assert!(got[t * dst_ts + h * dst_hs].is_nan(), "latent part written");
        }
    }
}

fn quant_case(seed: u64, rows: usize, kb: usize, pad: usize, pow2: bool) {
    let k = kernels();
    let s = k.stream().clone();
    let mut rng = StdRng::seed_from_u64(seed);
    let (cols, stride) = (kb * 128, kb * 128 + 4 * pad);
    let mut x = values(&mut rng, rows * stride);
    if rows > 1 {
        x[stride..stride + 128].fill(0.0); // a zero block: the amax floor
    }
    let dense: Vec<f32> = (0..rows)
        .flat_map(|r| x[r * stride..r * stride + cols].to_vec())
        .collect();
    let (codes, scales) = quantize_act_1x128(&dense, rows, cols, pow2);
    let sstride = rows.div_ceil(4) * 4;
    let d_x = upload(&s, &x);
    let mut d_c = upload(&s, &vec![0x7fu8; rows * cols]);
    let mut d_s = upload(&s, &vec![f32::NAN; kb * sstride]);
    k.act_quant_f32(rows, cols, stride, pow2, &d_x, &mut d_c, &mut d_s)
        .unwrap();
    assert_eq!(download(&s, &d_c), codes, "codes");
    let got = download(&s, &d_s);
    for r in 0..rows {
        for b in 0..kb {
            assert_eq!(got[b * sstride + r], scales[r * kb + b], "scale ({r}, {b})");
        }
    }
}

fn residual_case(seed: u64, rows: usize, dim4: usize) {
    let k = kernels();
    let s = k.stream().clone();
    let mut rng = StdRng::seed_from_u64(seed);
    let (vocab, dim) = (50, dim4 * 4);
    let table = values(&mut rng, vocab * dim);
    let tokens: Vec<i32> = (0..rows)
        .map(|_| rng.random_range(-1..vocab as i32 + 1))
        .collect();
    let y: Vec<bf16> = values(&mut rng, rows * dim)
        .iter()
        .map(|&v| bf16::from_f32(v))
        .collect();
    let (d_t, d_tok, d_y) = (upload(&s, &table), upload(&s, &tokens), upload(&s, &y));
    let mut x = upload(&s, &vec![f32::NAN; rows * dim]);
    k.embedding(&d_t, vocab, dim, &d_tok, rows, &mut x).unwrap();
    k.residual_add(&mut x, &d_y, rows * dim).unwrap();
    let got = download(&s, &x);
    for r in 0..rows {
        for i in 0..dim {
            let t = tokens[r];
            let e = if (0..vocab as i32).contains(&t) {
                table[t as usize * dim + i]
            } else {
                0.0
            };
            assert_eq!(
                got[r * dim + i],
                e + y[r * dim + i].to_f32(),
                "row {r} col {i}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn rms_norm_matches_reference(seed in any::<u64>(), rows in 1usize..40, dim in prop_oneof![1usize..1100, 8000usize..9000], pad in 0usize..5, bf16_in in any::<bool>()) {
        rms_norm_case(seed, rows, dim, pad, bf16_in);
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn layer_norm_matches_reference(seed in any::<u64>(), rows in 1usize..40, pad in 0usize..900) {
        layer_norm_case(seed, rows, pad);
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn mla_rope_matches_reference(seed in any::<u64>(), tokens in 1usize..30, heads in 1usize..20) {
        rope_case(seed, tokens, heads);
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn act_quant_f32_matches_reference(seed in any::<u64>(), rows in 1usize..40, kb in 1usize..9, pad in 0usize..3, pow2 in any::<bool>()) {
        quant_case(seed, rows, kb, pad, pow2);
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn embedding_and_residual_add_are_exact(seed in any::<u64>(), rows in 1usize..40, dim4 in 1usize..200) {
        residual_case(seed, rows, dim4);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn bad_layer_arguments_are_errors() {
    let k = kernels();
    let s = k.stream().clone();
    let x = upload(&s, &vec![0f32; 256]);
    let w = upload(&s, &vec![1f32; 128]);
    let mut out = upload(&s, &vec![0f32; 256]);
    // Input shorter than rows x stride.
    assert!(k
        .rms_norm(
            NormRows {
                rows: 2,
                dim: 128,
                stride: 200
            },
            NormInput::<_, CudaSlice<bf16>>::F32(&x),
            &w,
            1e-6,
            Some(&mut out),
            None,
        )
        .is_err());
    // No output.
    assert!(k
        .rms_norm(
            NormRows::contiguous(2, 128),
            NormInput::<_, CudaSlice<bf16>>::F32(&x),
            &w,
            1e-6,
            None,
            None,
        )
        .is_err());
    // Quantization of a width that is not a multiple of 128.
    let mut c = upload(&s, &vec![0u8; 256]);
    let mut sc = upload(&s, &[0f32; 8]);
    assert!(k
        .act_quant_f32(2, 100, 128, false, &x, &mut c, &mut sc)
        .is_err());
    // Embedding rows beyond the output.
    let tok = upload(&s, &[0i32; 4]);
    assert!(k.embedding(&x, 2, 128, &tok, 4, &mut out).is_err());
}
