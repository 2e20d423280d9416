//! The mini model's GPU forward against `dsa-reference` (same seeded weights): per-layer
//! residual streams, top-k sets, logits and greedy decode tokens. `#[ignore]`d like every
//! GPU test of the workspace: run with `--include-ignored` on a Hopper GPU (cuBLAS's
//! library on the loader path); a missing device then fails the test.
//!
//! **Tolerances and why.** Both paths quantize at the same points with the same rules
//! (FP8 1x128 activations with f32 scales, 128x128 weight blocks, bf16 attention IO, the
//! indexer's Hadamard + UE8M0 FP8, the FP8 MLA cache), so the differences are: fp32 vs
//! f64 accumulation order in the GEMMs and the attention, the bf16 `kv_b_proj` of the
//! absorbed products (the reference multiplies by the f32 dequantized weight), the MoE
//! input rounded to bf16 before its FP8 quantization (the library MoE takes bf16; the
//! reference quantizes the f32 norm output) and its output rounded to bf16 before the
//! residual add. Each of these is one bf16 ulp (2^-9 relative) or less on an element;
//! when one moves a value across an e4m3 rounding boundary the next linear sees a code one
//! e4m3 ulp (2^-4 relative) away. Such flips are rare and independent, so the residual
//! stream stays within ~1e-4 in cosine difference (FlashMLA's `1 - 2xy/(x^2+y^2)`); the
//! bounds below are that with a 10x margin. Top-k sets may differ only where two indexer
//! logits are within the accumulated error of each other: mean overlap >= 0.97. Greedy
//! tokens: every disagreement must be a near tie, i.e. the reference's own margin between
//! the two tokens below 2% of its logit range.
use dsa_forward::compare::{self, Report};
use dsa_reference::Config;

fn check(r: &Report) {
    println!("{r}");
    for (l, lr) in r.layers.iter().enumerate() {
        assert!(lr.hidden.cos_diff < 1e-3, "layer {l} hidden: {:?}", lr.hidden);
        assert!(lr.hidden.max_rel < 5e-2, "layer {l} hidden: {:?}", lr.hidden);
        assert!(lr.topk_overlap_mean >= 0.97, "layer {l} top-k overlap {}", lr.topk_overlap_mean);
    }
    assert!(r.prefill_logits.cos_diff < 1e-3, "prefill logits {:?}", r.prefill_logits);
    assert!(r.decode_logits.cos_diff < 1e-3, "decode logits {:?}", r.decode_logits);
    for d in &r.divergences {
        assert!(
            d.ref_margin < 0.02 * d.ref_range,
            "greedy divergence beyond a near tie: {d:?}"
        );
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn mini_forward_matches_reference() {
    let k = compare::graph_ready_kernels().expect("a Hopper GPU and cuBLAS");
    // A 512-token prefill and two shorter sequences, 16 greedy steps.
    let r = compare::run(k, &Config::mini(), 7, &[512, 300, 130], 16, 10, &mut |s| {
        eprintln!("{s}")
    })
    .expect("forward");
    check(&r);
    assert!(r.graph_argmax_equal, "graph replay changed the greedy tokens");
}

/// A short run for compute-sanitizer (one sequence past the top-k, one below it).
#[test]
#[ignore = "needs a CUDA GPU"]
fn mini_forward_short() {
    let k = compare::graph_ready_kernels().expect("a Hopper GPU and cuBLAS");
    let r = compare::run(k, &Config::mini(), 11, &[300, 65], 2, 1, &mut |s| eprintln!("{s}"))
        .expect("forward");
    check(&r);
}
