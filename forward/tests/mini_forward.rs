//! The mini model's GPU forward against `dsa-reference` (same seeded weights): per-layer
//! residual streams, top-k sets, logits and greedy decode tokens. `#[ignore]`d like every
//! GPU test of the workspace: run with `--include-ignored` on a Hopper GPU (cuBLAS's
//! library on the loader path); a missing device then fails the test.
//!
//! **Tolerances and why.** Both paths quantize at the same points with the same rules
//! (FP8 1x128 activations with f32 scales, 128x128 weight blocks, bf16 attention IO, the
//! indexer's Hadamard + UE8M0 FP8, the FP8 MLA cache), so what differs is rounding of
//! bf16 size: fp32 against f64 accumulation, the bf16 `kv_b_proj` of the absorbed products
//! (the reference multiplies by the f32 dequantized weight), the MoE input rounded to bf16
//! before its FP8 quantization and its output rounded to bf16 before the residual add. The
//! seeded mini model amplifies any such perturbation: a value moved across an e4m3
//! rounding boundary changes by 1/16, and a token whose gate scores move across a tie gets
//! another expert. So each run also measures the model's own sensitivity (the "floor"):
//! the reference against itself with its attention query and output kept in f32 instead of
//! rounded to bf16, one bf16 rounding at one place. In the long run below (H200,
//! 2026-12-02) the floor's cosine difference grew 1.95e-4 -> 8.6e-3 -> 2.6e-2 -> 5.1e-2
//! over the four layers and it agreed with itself on 531/942 prefill argmaxes; the GPU,
//! with its handful of such roundings, measured 3.4e-4 -> 1.06e-2 -> 3.0e-2 -> 5.7e-2
//! (1.75x, 1.2x, 1.16x, 1.13x the floor) and 497/942. Fed the reference's residual stream
//! layer by layer, each GPU layer alone is within 3.4e-4, 2.6e-3, 1.1e-3, 6.7e-4, and
//! its top-k sets overlap the reference's at 0.999 on average. The bounds:
//! * end to end, per layer and for the logits: cosine difference at most 3x the floor's;
//! * layer-local (each GPU layer fed the reference's residual stream, so nothing is
//!   amplified by earlier layers): cosine difference at most 3x the floor's, and the top-k
//!   sets, scored from identical inputs, overlapping >= 0.99 on average;
//! * greedy decode tokens (both paths fed the reference's tokens, so every step compares):
//!   at least half the floor's agreement over the 48 tokens of the long run (measured:
//!   21/48 against the floor's 22/48); every disagreement is printed with both margins;
//! * the decode step is deterministic: two eager runs and a CUDA-graph replay give the
//!   same bits.
use dsa_forward::compare::{self, Report};
use dsa_reference::Config;

fn check(r: &Report, greedy: bool) {
    println!("{r}");
    let within = |got: f64, floor: f64| got <= 3.0 * floor + 1e-6;
    for (l, lr) in r.layers.iter().enumerate() {
        let floor = r.floor_layers[l].cos_diff;
        assert!(
            within(lr.hidden.cos_diff, floor),
            "layer {l} end to end {:?}, floor {floor}",
            lr.hidden
        );
        let local = &r.layers_local[l];
        assert!(
            within(local.hidden.cos_diff, floor),
            "layer {l} local {:?}, floor {floor}",
            local.hidden
        );
        assert!(
            local.topk_overlap_mean >= 0.99,
            "layer {l} local top-k overlap {}",
            local.topk_overlap_mean
        );
    }
    assert!(
        within(r.prefill_logits.cos_diff, r.floor_prefill_logits.cos_diff),
        "prefill logits {:?}, floor {:?}",
        r.prefill_logits,
        r.floor_prefill_logits
    );
    assert!(
        !greedy || 2 * r.decode_tokens_agree.0 >= r.floor_decode_tokens_agree.0,
        "greedy agreement {:?} below half the floor's {:?}",
        r.decode_tokens_agree,
        r.floor_decode_tokens_agree
    );
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
    check(&r, true);
    // The step is deterministic, so a replay is the eager step bit for bit.
    assert_eq!(r.eager_vs_eager.max_abs, 0.0, "eager runs differ");
    assert_eq!(
        r.graph_vs_eager.max_abs, 0.0,
        "graph replay differs from the eager step"
    );
}

/// A short run for compute-sanitizer (one sequence past the top-k, one below it); its 4
/// greedy tokens are too few for the agreement bound, the rest is checked.
#[test]
#[ignore = "needs a CUDA GPU"]
fn mini_forward_short() {
    let k = compare::graph_ready_kernels().expect("a Hopper GPU and cuBLAS");
    let r = compare::run(k, &Config::mini(), 11, &[300, 65], 2, 1, &mut |s| {
        eprintln!("{s}")
    })
    .expect("forward");
    check(&r, false);
}
