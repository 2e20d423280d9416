//! Dense paged MLA decode (plan once, then split + combine per layer): TFLOP/s and GB/s at
//! B in {1, 32, 128} x context in {8K, 32K, 64K, 128K}, h_q = 128, s_q = 1, over the bf16
//! and the FP8 cache. Anchor: FlashMLA's dense bf16 decode on the H200, 680
//! TFLOP/s at B = 128 / 32K and 664 at B = 32 / 128K (the other shapes are compared with
//! the nearer of the two; values in `common/anchors.rs`).
mod common;
#[path = "dense/mod.rs"]
mod dense;

use criterion::{criterion_group, criterion_main, Criterion};
use dsa_kernels::cache::{MLA_FP8_BYTES_PER_TOKEN, PAGE_SIZE, QK_DIM};

use dense::{bf16_cache, bytes, flops, fp8_cache, DenseStep};

const BATCHES: [usize; 3] = [1, 32, 128];
const CTXS: [usize; 4] = [8192, 32768, 65536, 131072];

fn anchor(batch: usize, ctx: usize) -> (&'static str, f64) {
    if batch == 32 && ctx == 131072 {
        common::anchors::FLASHMLA_DENSE_B32_128K.get()
    } else {
        common::anchors::FLASHMLA_DENSE_B128_32K.get()
    }
}

fn benches(c: &mut Criterion) {
    let Some(k) = common::kernels() else { return };
    let stream = k.stream().clone();
    let pages = BATCHES.iter().max().unwrap() * CTXS.iter().max().unwrap() / PAGE_SIZE;
    let bf = bf16_cache(&stream, pages);
    let f8 = fp8_cache(&stream, pages);
    for &batch in &BATCHES {
        for &ctx in &CTXS {
            let mut st = DenseStep::new(&k, pages, batch, 1, ctx);
            let case = format!("b{batch}/ctx{}k", ctx / 1024);
            // Inputs smaller than L2 would be timed from cache: flush.
            let flush = batch * ctx * QK_DIM * 2 < (200 << 20);
            let work = common::Work {
                flops: flops(batch, 1, ctx),
                bytes: bytes(batch, 1, ctx, QK_DIM * 2),
                anchor: Some(anchor(batch, ctx)),
                anchor_unit: "TFLOP/s",
            };
            common::bench_case(c, "dense_mla_bf16", &case, &stream, work, flush, || {
                st.layer(&k, &bf)
            });
            let work = common::Work {
                flops: flops(batch, 1, ctx),
                bytes: bytes(batch, 1, ctx, MLA_FP8_BYTES_PER_TOKEN),
                anchor: Some(anchor(batch, ctx)),
                anchor_unit: "TFLOP/s",
            };
            common::bench_case(c, "dense_mla_fp8", &case, &stream, work, flush, || {
                st.layer(&k, &f8)
            });
            if batch == 128 && ctx == 32768 {
                common::bench_case(
                    c,
                    "dense_mla_plan",
                    &case,
                    &stream,
                    common::Work::default(),
                    false,
                    || st.plan(&k),
                );
            }
        }
    }
}

criterion_group!(dense_mla, benches);
criterion_main!(dense_mla);
