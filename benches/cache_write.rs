//! Cache-write kernels: GB/s of bf16 rows read plus cache bytes written.
mod common;

use criterion::{criterion_group, criterion_main, Criterion};
use dsa_kernels::cache::{
    CacheKind, CacheRows, IndexerK, MlaBf16, MlaFp8, PagedCache, SlotMapping,
};
use half::bf16;

fn case<K: CacheKind>(c: &mut Criterion, k: &dsa_kernels::DsaKernels, tokens: usize) {
    let stream = k.stream().clone();
    let pages = tokens.div_ceil(64) * 2;
    let mut cache = PagedCache::<K>::new(&stream, pages).unwrap();
    // Every other page, so writes are scattered as in a real block table.
    let slots: Vec<i32> = (0..tokens)
        .map(|t| ((t / 64) * 128 + t % 64) as i32)
        .collect();
    let map = SlotMapping::new(&stream, &slots).unwrap();
    let src = stream
        .clone_htod(&vec![bf16::from_f32(0.5); tokens * K::SRC_DIM])
        .unwrap();
    let out_bytes = K::ELEMS_PER_PAGE * std::mem::size_of::<K::Elem>() / 64;
    let work = common::Work {
        bytes: (tokens * (K::SRC_DIM * 2 + out_bytes + 4)) as f64,
        anchor: Some(common::anchors::COPY_GBS.get()),
        anchor_unit: "GB/s",
        ..Default::default()
    };
    common::bench_case(
        c,
        "cache_write",
        &format!("{}/{tokens}", K::NAME),
        &stream,
        work,
        true,
        || {
            k.write_cache(
                &mut cache,
                CacheRows {
                    src: &src,
                    rows: tokens,
                    row_stride: K::SRC_DIM,
                },
                &map,
                K::FP8,
            )
            .unwrap();
        },
    );
}

fn benches(c: &mut Criterion) {
    let Some(k) = common::kernels() else { return };
    for tokens in [128, 16384] {
        case::<MlaFp8>(c, &k, tokens);
        case::<MlaBf16>(c, &k, tokens);
        case::<IndexerK>(c, &k, tokens);
    }
}

criterion_group!(cache_write, benches);
criterion_main!(cache_write);
