//! GPU tests: one executable for every kernel family (kept to one binary so the compiled
//! test set stays small). Each test is `#[ignore]`d: on a machine without a GPU they are
//! reported as ignored, never as passed. Run them with `--include-ignored`; then a missing
//! device fails them (as does `DSA_REQUIRE_GPU=1`).
mod common;

mod adversarial;
mod cache;
mod dense_mla;
mod dsa_step;
mod grouped_gemm;
mod indexer;
mod layers;
mod moe;
mod moe_ep;
mod moe_layer;
mod sparse_mla;
mod topk;
