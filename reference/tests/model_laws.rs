//! Laws of the reference model: decode reproduces prefill, page assignment does not
//! matter, the two MLA forms agree, an MoE of identical experts is one MLP, the MoE
//! kernel pipeline equals the layer, and checkpoints round-trip through safetensors.

use dsa_reference::linear::{self, Fp8Weight};
use dsa_reference::mla::{self, KvB, MhaKey};
use dsa_reference::moe::{self, Mlp, Moe, RouteParams};
use dsa_reference::{loader, nn, weights};
use dsa_reference::{
    AttentionForm, CacheDtype, Config, ForwardOptions, KvCache, Model, ModelError, Sequence,
};
use proptest::prelude::*;
use std::sync::OnceLock;

/// The tiny model, built once (seeded weights are the slow part in debug builds).
fn tiny() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| Model::seeded(Config::tiny(), 11).expect("tiny model"))
}

fn shuffled(n: usize, seed: u64) -> Vec<i32> {
    let mut p: Vec<i32> = (0..n as i32).collect();
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p.swap(i, (x % (i as u64 + 1)) as usize);
    }
    p
}

fn tokens(n: usize, seed: u64, vocab: usize) -> Vec<u32> {
    (0..n)
        .map(|i| {
            ((i as u64)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(seed.wrapping_mul(97))
                % vocab as u64) as u32
        })
        .collect()
}

fn lcg(seed: u64) -> impl FnMut() -> f32 {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }
}

/// Prefill logits `[n, vocab]` of `toks` on a fresh cache with the given page order.
fn prefill(
    m: &Model,
    toks: &[u32],
    dtype: CacheDtype,
    pages: Vec<i32>,
    opts: ForwardOptions,
) -> Vec<f32> {
    let n_pages = pages.iter().map(|&p| p as usize + 1).max().unwrap_or(0);
    let mut cache = KvCache::new(&m.cfg, dtype, n_pages);
    let mut seq = Sequence::new(pages);
    m.forward(toks, &mut cache, &mut seq, &opts)
        .expect("prefill")
        .0
}

/// Prefills `toks[..split]`, decodes the rest token by token on other shuffled pages,
/// and compares every logit row with a one-shot prefill, bit for bit.
fn decode_vs_prefill(
    len: usize,
    split: usize,
    seed: u64,
    dtype: CacheDtype,
) -> Result<(), TestCaseError> {
    let m = tiny();
    let toks = tokens(len, seed, m.cfg.vocab_size);
    let v = m.cfg.vocab_size;
    let full = prefill(
        m,
        &toks,
        dtype,
        shuffled(4, seed),
        ForwardOptions::default(),
    );
    let mut cache = KvCache::new(&m.cfg, dtype, 4);
    let mut seq = Sequence::new(shuffled(4, seed ^ 5));
    let (first, _) = m
        .forward(
            &toks[..split],
            &mut cache,
            &mut seq,
            &ForwardOptions::default(),
        )
        .unwrap();
    prop_assert_eq!(&first[..], &full[..split * v]);
    for t in split..len {
        let (l, st) = m
            .forward(
                &toks[t..t + 1],
                &mut cache,
                &mut seq,
                &ForwardOptions::default(),
            )
            .unwrap();
        prop_assert_eq!(
            &l[..],
            &full[t * v..(t + 1) * v],
            "{:?} position {}",
            dtype,
            t
        );
        let per_layer = st.keys_attended / st.queries;
        prop_assert_eq!(per_layer, (t as u64 + 1).min(m.cfg.index_topk as u64));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4))]

    /// Cache consistency: prefilling a prompt and then decoding token by token gives,
    /// bit for bit, the logits of prefilling the whole sequence, with the FP8 and the
    /// bf16 cache, shuffled pages, and DSA selecting fewer keys than the context.
    #[test]
    fn decode_reproduces_prefill(len in 20usize..40, split in 1usize..20, seed in any::<u64>()) {
        for dtype in [CacheDtype::Fp8, CacheDtype::Bf16] {
            decode_vs_prefill(len, split, seed, dtype)?;
        }
    }

    /// The paged caches give the same logits under any page assignment.
    #[test]
    fn shuffled_pages_do_not_matter(len in 1usize..70, seed in any::<u64>(), fp8 in any::<bool>()) {
        let m = tiny();
        let dtype = if fp8 { CacheDtype::Fp8 } else { CacheDtype::Bf16 };
        let toks = tokens(len, seed, m.cfg.vocab_size);
        let a = prefill(m, &toks, dtype, (0..3).collect(), ForwardOptions::default());
        let mut pages = shuffled(5, seed);
        pages.truncate(3);
        let b = prefill(m, &toks, dtype, pages, ForwardOptions::default());
        prop_assert_eq!(a, b);
    }
}

/// Maximum of |a - b| relative to the largest |b|.
fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let scale = b
        .iter()
        .fold(0f64, |m, &v| m.max(f64::from(v).abs()))
        .max(1e-30);
    a.iter().zip(b).fold(0f64, |m, (&x, &y)| {
        m.max((f64::from(x) - f64::from(y)).abs())
    }) / scale
}

/// Decode over the absorbed form follows a prefill in the MHA form closely (the forms
/// differ by bf16 rounding of the absorbed query and output only), with dense and sparse
/// selection while the context is within top-k.
#[test]
fn decode_follows_mha_prefill() {
    let m = tiny();
    let v = m.cfg.vocab_size;
    let toks = tokens(14, 3, v);
    for dtype in [CacheDtype::Fp8, CacheDtype::Bf16] {
        let mha = ForwardOptions {
            form: AttentionForm::Mha,
            bf16_attention_io: false,
            ..Default::default()
        };
        let absorbed = ForwardOptions {
            bf16_attention_io: false,
            ..Default::default()
        };
        let full = prefill(m, &toks, dtype, vec![1, 0], mha);
        let mut cache = KvCache::new(&m.cfg, dtype, 2);
        let mut seq = Sequence::new(vec![0, 1]);
        for (t, &tok) in toks.iter().enumerate() {
            let (l, _) = m.forward(&[tok], &mut cache, &mut seq, &absorbed).unwrap();
            let e = rel_err(&l, &full[t * v..(t + 1) * v]);
            eprintln!("{dtype:?} {t} {e}");
            assert!(e < 2e-2, "{dtype:?} position {t}: relative error {e}");
        }
    }
}

/// Dense attention (DSA off) equals DSA while the context fits in top-k, and differs
/// after, reading fewer keys.
#[test]
fn dsa_equals_dense_within_topk() {
    let m = tiny();
    let k = m.cfg.index_topk;
    let toks = tokens(k + 8, 9, m.cfg.vocab_size);
    let v = m.cfg.vocab_size;
    let dense = ForwardOptions {
        sparse: false,
        ..Default::default()
    };
    let mut c1 = KvCache::new(&m.cfg, CacheDtype::Fp8, 1);
    let mut s1 = Sequence::contiguous(1);
    let (a, sa) = m
        .forward(&toks, &mut c1, &mut s1, &ForwardOptions::default())
        .unwrap();
    let mut c2 = KvCache::new(&m.cfg, CacheDtype::Fp8, 1);
    let mut s2 = Sequence::contiguous(1);
    let (b, sb) = m.forward(&toks, &mut c2, &mut s2, &dense).unwrap();
    assert_eq!(&a[..k * v], &b[..k * v]);
    assert!(sa.keys_attended < sb.keys_attended);
    assert_eq!(sb.keys_attended, sb.keys_causal);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(8))]

    /// Absorbed MLA == MHA form for random latents, queries and `kv_b_proj`.
    #[test]
    fn absorbed_mla_equals_mha(heads in 1usize..3, n in 1usize..12, seed in any::<u64>()) {
        let mut r = lcg(seed);
        let kvb = KvB { heads, nope: 128, v: 128, rank: 512, w: (0..heads * 256 * 512).map(|_| r() * 0.1).collect() };
        let entries: Vec<Vec<f32>> = (0..n).map(|_| (0..576).map(|_| r() * 2.0).collect()).collect();
        let q_nope: Vec<f32> = (0..heads * 128).map(|_| r()).collect();
        let q_rope: Vec<f32> = (0..heads * 64).map(|_| r()).collect();
        let keys: Vec<MhaKey> = entries.iter().map(|e| MhaKey::new(e, &kvb)).collect();
        let refs: Vec<&MhaKey> = keys.iter().collect();
        let a = mla::attend_mha(&q_nope, &q_rope, &refs, &kvb, 0.135234);
        let b = mla::attend_absorbed(&q_nope, &q_rope, &entries, &kvb, 0.135234);
        prop_assert!(rel_err(&a, &b) < 1e-5, "relative error {}", rel_err(&a, &b));
    }

    /// An MoE whose experts are all the same MLP (no shared expert, route scale 1)
    /// equals that MLP.
    #[test]
    fn moe_of_identical_experts_is_one_mlp(m in 1usize..5, seed in any::<u64>()) {
        let (hidden, inter, e) = (128, 128, 8);
        let mut r = lcg(seed);
        let mut w = |o: usize, i: usize| Fp8Weight::quantize(o, i, &(0..o * i).map(|_| r() * 0.2).collect::<Vec<_>>());
        let mlp = Mlp { w1: w(inter, hidden), w3: w(inter, hidden), w2: w(hidden, inter) };
        let gate: Vec<f32> = (0..e * hidden).map(|_| r()).collect();
        let bias: Vec<f32> = (0..e).map(|_| r() * 0.1).collect();
        let layer = Moe {
            gate, bias, experts: vec![mlp.clone(); e], shared: None,
            route: RouteParams { n_group: 4, topk_group: 2, top_k: 3, renormalize: true, route_scale: 1.0 },
        };
        let x: Vec<f32> = (0..m * hidden).map(|_| r() * 2.0).collect();
        let a = layer.forward(&x, m, false);
        let b = mlp.forward(&x, m, false);
        prop_assert!(rel_err(&a, &b) < 1e-6, "relative error {}", rel_err(&a, &b));
    }

    /// The MoE kernel pipeline (route, contiguous permute padded to 64 or 128 rows,
    /// grouped GEMM of the fused gate|up weights, SwiGLU + quant, grouped GEMM of the
    /// down weights, combine) reproduces the MoE layer bit for bit, and the masked
    /// layout gives the same GEMM rows as the contiguous one.
    #[test]
    fn moe_kernel_pipeline_equals_layer(m in 1usize..6, align128 in any::<bool>(), seed in any::<u64>()) {
        let (hidden, inter, e, top_k) = (128, 256, 4, 2);
        let mut r = lcg(seed);
        let mut w = |o: usize, i: usize| Fp8Weight::quantize(o, i, &(0..o * i).map(|_| r() * 0.2).collect::<Vec<_>>());
        let experts: Vec<Mlp> = (0..e).map(|_| Mlp { w1: w(inter, hidden), w3: w(inter, hidden), w2: w(hidden, inter) }).collect();
        let gate: Vec<f32> = (0..e * hidden).map(|_| r()).collect();
        let route = RouteParams { n_group: 2, topk_group: 1, top_k, renormalize: true, route_scale: 2.5 };
        let layer = Moe { gate: gate.clone(), bias: vec![0.0; e], experts: experts.clone(), shared: None, route };
        let x: Vec<f32> = (0..m * hidden).map(|_| r() * 2.0).collect();
        let want = layer.forward(&x, m, false);

        let logits = nn::matmul_t(&x, m, &gate, e);
        let (ids, wts) = moe::route(&logits, &vec![0.0; e], m, &route);
        let lay = moe::permute_contiguous(&ids, top_k, e, if align128 { 128 } else { 64 });
        let rows = lay.m_indices.len();
        let xin = moe::gather_rows(&x, hidden, top_k, &lay.src);
        let (ac, asc) = linear::quantize_act_1x128(&xin, rows, hidden, false);
        // Fused [gate | up] weight per expert: [2 * inter, hidden].
        let mut b13 = Vec::new();
        let mut s13 = Vec::new();
        for ex in &experts {
            let fused = Fp8Weight::new(2 * inter, hidden, [ex.w1.codes.clone(), ex.w3.codes.clone()].concat(), [ex.w1.scale_inv.clone(), ex.w3.scale_inv.clone()].concat());
            b13.extend(fused.codes);
            s13.extend(fused.scale_inv);
        }
        let mut h = moe::grouped_gemm_contiguous(&ac, &asc, &b13, &s13, &lay.m_indices, e, 2 * inter, hidden);
        nn::round_bf16_slice(&mut h);
        let (_, a2, s2) = moe::swiglu_quant(&h, rows, inter, false);
        let b2: Vec<u8> = experts.iter().flat_map(|ex| ex.w2.codes.clone()).collect();
        let sb2: Vec<f32> = experts.iter().flat_map(|ex| ex.w2.scale_inv.clone()).collect();
        let mut y = moe::grouped_gemm_contiguous(&a2, &s2, &b2, &sb2, &lay.m_indices, e, hidden, inter);
        nn::round_bf16_slice(&mut y);
        for (row, &mi) in lay.m_indices.iter().enumerate() {
            if mi < 0 {
                prop_assert!(y[row * hidden..(row + 1) * hidden].iter().all(|&v| v == 0.0));
            }
        }
        let got = moe::combine(&y, &lay.src, &wts, m, top_k, hidden);
        prop_assert_eq!(got, want);

        // Masked layout: same rows.
        let mk = moe::permute_masked(&ids, e, m);
        let xm = moe::gather_rows(&x, hidden, top_k, &mk.src);
        let (mc, ms) = linear::quantize_act_1x128(&xm, e * m, hidden, false);
        let hm = moe::grouped_gemm_masked(&mc, &ms, &b13, &s13, &mk.masked_m, m, 2 * inter, hidden);
        for g in 0..e {
            for i in 0..m {
                let src = mk.src[g * m + i];
                let row_m = &hm[(g * m + i) * 2 * inter..(g * m + i + 1) * 2 * inter];
                if src < 0 {
                    prop_assert!(row_m.iter().all(|&v| v == 0.0));
                } else {
                    let rc = lay.src.iter().position(|&s| s == src).unwrap();
                    let mut row_c = h[rc * 2 * inter..(rc + 1) * 2 * inter].to_vec();
                    let mut row_m = row_m.to_vec();
                    nn::round_bf16_slice(&mut row_m);
                    nn::round_bf16_slice(&mut row_c);
                    prop_assert_eq!(row_m, row_c);
                }
            }
        }
    }
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("dsa-reference-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// A checkpoint written as safetensors (single file and sharded with an index) loads
/// back into a model with bit-identical logits; broken checkpoints give typed errors.
#[test]
fn safetensors_checkpoint_round_trip() {
    let cfg = Config::tiny();
    let tensors = weights::seeded(&cfg, 11);
    let toks = tokens(10, 1, cfg.vocab_size);
    let want = prefill(
        tiny(),
        &toks,
        CacheDtype::Fp8,
        vec![0],
        ForwardOptions::default(),
    );
    for shards in [1, 3] {
        let dir = temp_dir(&format!("ckpt{shards}"));
        loader::save_dir(&dir, &cfg, &tensors, shards).unwrap();
        let (cfg2, t2) = loader::load_dir(&dir).unwrap();
        assert_eq!(cfg2, cfg);
        assert_eq!(t2, tensors);
        let m2 = Model::from_tensors(cfg2, &t2).unwrap();
        assert_eq!(
            prefill(
                &m2,
                &toks,
                CacheDtype::Fp8,
                vec![0],
                ForwardOptions::default()
            ),
            want
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
    // Missing tensor, wrong shape, wrong dtype.
    let mut t = tensors.clone();
    t.remove("model.layers.1.mlp.experts.3.up_proj.weight");
    assert!(
        matches!(Model::from_tensors(cfg.clone(), &t), Err(ModelError::MissingTensor(n)) if n.contains("experts.3.up_proj"))
    );
    let mut t = tensors.clone();
    t.insert(
        weights::names::FINAL_NORM.into(),
        weights::Tensor::F32 {
            shape: vec![3],
            data: vec![1.0; 3],
        },
    );
    assert!(matches!(
        Model::from_tensors(cfg.clone(), &t),
        Err(ModelError::Shape { .. })
    ));
    let mut t = tensors;
    t.insert(
        weights::names::FINAL_NORM.into(),
        weights::Tensor::F8E4M3 {
            shape: vec![256],
            data: vec![0; 256],
        },
    );
    assert!(matches!(
        Model::from_tensors(cfg.clone(), &t),
        Err(ModelError::Dtype { .. })
    ));
    // A corrupt file and a missing config.
    let dir = temp_dir("bad");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), cfg.to_json()).unwrap();
    std::fs::write(dir.join("model.safetensors"), b"not a safetensors file").unwrap();
    assert!(matches!(
        loader::load_dir(&dir),
        Err(ModelError::Safetensors(_))
    ));
    std::fs::remove_file(dir.join("config.json")).unwrap();
    assert!(matches!(loader::load_dir(&dir), Err(ModelError::Config(_))));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Bad inputs are errors, not panics.
#[test]
fn forward_errors() {
    let m = tiny();
    let mut cache = KvCache::new(&m.cfg, CacheDtype::Bf16, 1);
    let mut seq = Sequence::contiguous(1);
    let o = ForwardOptions::default();
    assert!(matches!(
        m.forward(&[9999], &mut cache, &mut seq, &o),
        Err(ModelError::Token { .. })
    ));
    let long = vec![1u32; 65];
    assert!(matches!(
        m.forward(&long, &mut cache, &mut seq, &o),
        Err(ModelError::Capacity(_))
    ));
    let mut bad = Sequence::new(vec![5]);
    assert!(matches!(
        m.forward(&[1], &mut cache, &mut bad, &o),
        Err(ModelError::Capacity(_))
    ));
    assert_eq!(seq.len, 0);
}
