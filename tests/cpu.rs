//! CPU-only checks of the runtime: they pass on any machine.
use dsa_kernels::{device, kernels, DsaError};

#[test]
fn device_discovery_never_panics() {
    let n = device::device_count();
    match device::open_device(n) {
        Err(DsaError::NoDriver) | Err(DsaError::NoDevice) => {}
        other => panic!("opening a device past the last one gave {other:?}"),
    }
}

#[test]
fn kernels_are_embedded_when_nvcc_was_found() {
    // CI sets DSA_EXPECT_KERNELS=1 after installing the toolchain, so a silent no-nvcc
    // build cannot pass there.
    if std::env::var("DSA_EXPECT_KERNELS").is_ok_and(|v| v == "1") {
        assert!(!kernels::FATBINS.is_empty(), "no fatbin embedded");
        for (name, image) in kernels::FATBINS {
            assert!(
                image.len() > 1024,
                "fatbin {name} is only {} bytes",
                image.len()
            );
        }
    }
    assert!(kernels::BUILT_ARCHS == "none" || kernels::BUILT_ARCHS.contains("90a"));
}

mod host_encoders {
    //! The crate's host encoders and the reference's are written independently; they must
    //! produce the same bytes (the GPU tests then tie the kernels to the crate's encoders).
    use dsa_kernels::cache::{encode_indexer_k_token, encode_mla_fp8_token};
    use dsa_kernels::fp8;
    use half::bf16;
    use proptest::prelude::*;

    fn values(seed: u64, n: usize, log_mag: f32) -> Vec<bf16> {
        // xorshift: cheap, deterministic per case
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let u = (s >> 11) as f64 / (1u64 << 53) as f64;
                bf16::from_f32(((u * 2.0 - 1.0) as f32) * 10f32.powf(log_mag))
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn mla_fp8_token_matches_reference(seed in any::<u64>(), log_mag in -7.0f32..5.0, pow2 in any::<bool>()) {
            let kv = values(seed, 576, log_mag);
            let arr: [bf16; 576] = kv.clone().try_into().unwrap();
            let ours = encode_mla_fp8_token(&arr, pow2);
            let theirs = dsa_reference::cache::encode_mla_fp8_token_with(&kv, pow2);
            prop_assert_eq!(ours.to_vec(), theirs.to_vec());
        }

        #[test]
        fn indexer_token_matches_reference(seed in any::<u64>(), log_mag in -7.0f32..5.0) {
            let k = values(seed, 128, log_mag);
            let arr: [bf16; 128] = k.clone().try_into().unwrap();
            let (codes, scale) = encode_indexer_k_token(&arr, true);
            let f: Vec<f32> = k.iter().map(|v| v.to_f32()).collect();
            let (rc, rs) = dsa_reference::cache::encode_indexer_token(&f);
            prop_assert_eq!(codes.to_vec(), rc.to_vec());
            prop_assert_eq!(scale.to_bits(), rs.to_bits());
        }

        #[test]
        fn e4m3_matches_reference(bits in any::<u32>()) {
            let x = f32::from_bits(bits);
            prop_assert_eq!(fp8::f32_to_e4m3(x), dsa_reference::fp8::f32_to_e4m3(x));
        }
    }

    #[test]
    fn layout_constants_agree_with_the_kernel_headers() {
        use dsa_kernels::cache::*;
        use dsa_kernels::sys::common::*;
        assert_eq!(DSA_PAGE_SIZE as usize, PAGE_SIZE);
        assert_eq!(
            DSA_MLA_FP8_BYTES_PER_TOKEN as usize,
            MLA_FP8_BYTES_PER_TOKEN
        );
        assert_eq!(DSA_QK_DIM as usize, QK_DIM);
        assert_eq!(DSA_INDEXER_PAGE_BYTES as usize, INDEXER_PAGE_BYTES);
        assert_eq!(dsa_reference::cache::INDEXER_PAGE_BYTES, INDEXER_PAGE_BYTES);
        assert_eq!(
            dsa_reference::cache::MLA_FP8_BYTES_PER_TOKEN,
            MLA_FP8_BYTES_PER_TOKEN
        );
    }
}
