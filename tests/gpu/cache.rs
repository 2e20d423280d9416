//! Cache writes: kernel bytes equal the host encoders' bytes exactly.
use dsa_kernels::cache::{
    write_host_token, CacheKind, CacheRows, IndexerK, MlaBf16, MlaFp8, PagedCache, SlotMapping,
    PAGE_SIZE,
};
use half::bf16;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::common::{download, kernels, upload};

/// Values spanning the FP8 range: each 128-value block gets its own magnitude (1e-6 to
/// 1e4, so some blocks sit at the amax floor and some saturate nothing but scale hard),
/// with a few all-zero blocks.
fn token_values(rng: &mut StdRng, dim: usize) -> Vec<bf16> {
    let mut v = Vec::with_capacity(dim);
    for block in 0..dim.div_ceil(128) {
        let n = (dim - block * 128).min(128);
        let mag = 10f32.powf(rng.random_range(-6.0..4.0));
        let zero = rng.random_bool(0.05);
        for _ in 0..n {
            let x = if zero {
                0.0
            } else {
                rng.random_range(-1.0f32..1.0) * mag
            };
            v.push(bf16::from_f32(x));
        }
    }
    v
}

fn round_trip<K: CacheKind>(seed: u64, pages: usize, tokens: usize, extra_stride: usize, pow2: bool)
where
    K::Elem: Unpin,
{
    let k = kernels();
    let stream = k.stream().clone();
    let mut rng = StdRng::seed_from_u64(seed);
    let capacity = pages * PAGE_SIZE;
    let tokens = tokens.min(capacity);
    // Shuffled, non-contiguous slots over the whole cache.
    let mut all: Vec<i32> = (0..capacity as i32).collect();
    all.shuffle(&mut rng);
    let slots: Vec<i32> = all[..tokens].to_vec();
    let stride = K::SRC_DIM + 8 * extra_stride;
    let mut src = vec![bf16::from_f32(f32::NAN); tokens * stride];
    let mut rows = Vec::new();
    for t in 0..tokens {
        let v = token_values(&mut rng, K::SRC_DIM);
        src[t * stride..t * stride + K::SRC_DIM].copy_from_slice(&v);
        rows.push(v);
    }
    // Poison the cache so an unwritten or stray byte shows.
    let page_bytes = K::ELEMS_PER_PAGE * std::mem::size_of::<K::Elem>();
    let mut expect = vec![0xA5u8; pages * page_bytes];
    let mut cache = PagedCache::<K>::new(&stream, pages).unwrap();
    {
        let bytes = unsafe { cache.data_mut().transmute_mut::<u8>(pages * page_bytes) }.unwrap();
        let mut bytes = bytes;
        stream.memcpy_htod(&expect, &mut bytes).unwrap();
    }
    let d_src = upload(&stream, &src);
    let map = SlotMapping::new(&stream, &slots).unwrap();
    k.write_cache(
        &mut cache,
        CacheRows {
            src: &d_src,
            rows: tokens,
            row_stride: stride,
        },
        &map,
        pow2,
    )
    .unwrap();
    for (t, &s) in slots.iter().enumerate() {
        write_host_token::<K>(&mut expect, s as usize, &rows[t], pow2).unwrap();
    }
    let got = {
        let view = unsafe { cache.data().transmute::<u8>(pages * page_bytes) }.unwrap();
        stream.clone_dtoh(&view).unwrap()
    };
    if let Some(i) = got.iter().zip(&expect).position(|(a, b)| a != b) {
        panic!(
            "{}: first byte mismatch at {i} (page {}, byte {} of the page): kernel {:#04x}, host {:#04x}",
            K::NAME,
            i / page_bytes,
            i % page_bytes,
            got[i],
            expect[i]
        );
    }
    let _ = download(&stream, &d_src);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn mla_fp8_write_is_bit_exact(seed in any::<u64>(), pages in 1usize..6, tokens in 1usize..400, pad in 0usize..3, pow2 in any::<bool>()) {
        round_trip::<MlaFp8>(seed, pages, tokens, pad, pow2);
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn mla_bf16_write_is_bit_exact(seed in any::<u64>(), pages in 1usize..6, tokens in 1usize..400, pad in 0usize..3) {
        round_trip::<MlaBf16>(seed, pages, tokens, pad, false);
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn indexer_k_write_is_bit_exact(seed in any::<u64>(), pages in 1usize..6, tokens in 1usize..400, pad in 0usize..3, pow2 in any::<bool>()) {
        round_trip::<IndexerK>(seed, pages, tokens, pad, pow2);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn bad_slots_are_errors_before_launch() {
    let k = kernels();
    let stream = k.stream().clone();
    let mut cache = PagedCache::<MlaFp8>::new(&stream, 2).unwrap();
    assert!(
        SlotMapping::new(&stream, &[0, -1]).is_err(),
        "negative slot accepted"
    );
    let map = SlotMapping::new(&stream, &[0, 128]).unwrap(); // capacity is 128 tokens
    let src = upload(&stream, &vec![bf16::ZERO; 2 * 576]);
    let err = k.write_cache(
        &mut cache,
        CacheRows {
            src: &src,
            rows: 2,
            row_stride: 576,
        },
        &map,
        false,
    );
    assert!(
        matches!(err, Err(dsa_kernels::DsaError::OutOfRange { .. })),
        "{err:?}"
    );
    let map = SlotMapping::new(&stream, &[0]).unwrap();
    let err = k.write_cache(
        &mut cache,
        CacheRows {
            src: &src,
            rows: 2,
            row_stride: 576,
        },
        &map,
        false,
    );
    assert!(
        matches!(err, Err(dsa_kernels::DsaError::Shape { .. })),
        "{err:?}"
    );
    let err = k.write_cache(
        &mut cache,
        CacheRows {
            src: &src,
            rows: 1,
            row_stride: 580,
        },
        &map,
        false,
    );
    assert!(
        matches!(err, Err(dsa_kernels::DsaError::Alignment { .. })),
        "{err:?}"
    );
    let short = upload(&stream, &vec![bf16::ZERO; 500]);
    let err = k.write_cache(
        &mut cache,
        CacheRows {
            src: &short,
            rows: 1,
            row_stride: 576,
        },
        &map,
        false,
    );
    assert!(
        matches!(err, Err(dsa_kernels::DsaError::Shape { .. })),
        "{err:?}"
    );
}
