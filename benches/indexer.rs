//! Lightning-indexer logits: paged decode in GB/s (132 B per cached token read plus the
//! fp32 logits written) against the device copy bandwidth, ragged prefill in TFLOP/s
//! (`2 * H * 128` per causal-valid (query, key) pair) against the FP8 dense peak.
mod common;

use criterion::{criterion_group, criterion_main, Criterion};
use dsa_kernels::cache::SlotMapping;
use dsa_kernels::cache::{IndexerKCache, INDEXER_PAGE_BYTES, PAGE_SIZE};
use dsa_kernels::indexer::{
    decode_plan_len, prefill_out_stride, rope_tables, DecodeLogitsShape, IndexerPrepShape,
    PrefillLogitsShape, RopeTablesRef, YarnRope,
};
use dsa_kernels::topk::PagedTopkShape;
use dsa_kernels::{DsaKernels, PagedBatch, PagedBatchShape};
use half::bf16;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const H: usize = 64;
const D: usize = 128;

/// e4m3 codes of moderate magnitude (never NaN) and power-of-two scales: realistic data,
/// not zeros.
fn codes(rng: &mut StdRng, n: usize) -> Vec<u8> {
    (0..n)
        .map(|_| {
            let c: u8 = rng.random();
            (c & 0x80) | (0x20 + (c & 0x7f) % 0x40)
        })
        .collect()
}

fn scales(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| 2f32.powi(rng.random_range(-12..-6)))
        .collect()
}

/// A cache of `pages` pages: 256 random pages uploaded once, then copied on the device.
fn cache(k: &DsaKernels, rng: &mut StdRng, pages: usize) -> IndexerKCache {
    let stream = k.stream();
    let seed_pages = 256.min(pages);
    let mut host = vec![0u8; seed_pages * INDEXER_PAGE_BYTES];
    for p in 0..seed_pages {
        let b = p * INDEXER_PAGE_BYTES;
        host[b..b + 8192].copy_from_slice(&codes(rng, 8192));
        for (i, s) in scales(rng, PAGE_SIZE).into_iter().enumerate() {
            host[b + 8192 + 4 * i..b + 8196 + 4 * i].copy_from_slice(&s.to_le_bytes());
        }
    }
    let seed = stream.clone_htod(&host).unwrap();
    let mut data = stream
        .alloc_zeros::<u8>(pages * INDEXER_PAGE_BYTES)
        .unwrap();
    let chunk = seed_pages * INDEXER_PAGE_BYTES;
    let mut off = 0;
    while off < data.len() {
        let n = chunk.min(data.len() - off);
        stream
            .memcpy_dtod(&seed.slice(..n), &mut data.slice_mut(off..off + n))
            .unwrap();
        off += n;
    }
    IndexerKCache::from_slice(data).unwrap()
}

fn decode(c: &mut Criterion, k: &DsaKernels, batch: usize, ctx: usize, next_n: usize) {
    let stream = k.stream().clone();
    let mut rng = StdRng::seed_from_u64(batch as u64 * 1_000_003 + ctx as u64);
    let max_pages = ctx / PAGE_SIZE;
    let num_pages = batch * max_pages;
    let cache = cache(k, &mut rng, num_pages);
    // Shuffled page ids: a realistic, non-contiguous block table.
    let mut table: Vec<i32> = (0..num_pages as i32).collect();
    table.shuffle(&mut rng);
    let rows = batch * next_n;
    let q8 = stream.clone_htod(&codes(&mut rng, rows * H * D)).unwrap();
    let w = stream
        .clone_htod(
            &(0..rows * H)
                .map(|_| rng.random_range(-1e-3f32..1e-3))
                .collect::<Vec<_>>(),
        )
        .unwrap();
    let lens = stream.clone_htod(&vec![ctx as i32; batch]).unwrap();
    let table = stream.clone_htod(&table).unwrap();
    let mut plan = stream.alloc_zeros::<i32>(decode_plan_len(batch)).unwrap();
    let mut out = stream.alloc_zeros::<f32>(rows * ctx).unwrap();
    let shape = DecodeLogitsShape::new(H, ctx);
    let pb = PagedBatch::new(
        PagedBatchShape {
            batch,
            next_n,
            max_pages,
        },
        &table,
        &lens,
    )
    .unwrap();
    // Once per decode step, outside the per-layer timing.
    k.indexer_decode_plan(&pb, shape, &mut plan).unwrap();
    let work = common::Work {
        flops: (rows * ctx * 2 * H * D) as f64,
        bytes: (batch * ctx * 132 + rows * ctx * 4 + rows * H * (D + 4)) as f64,
        anchor: Some(common::anchors::COPY_GBS.get()),
        anchor_unit: "GB/s",
    };
    common::bench_case(
        c,
        "indexer_decode",
        &format!("b{batch}_ctx{}k_h{H}_n{next_n}", ctx / 1024),
        &stream,
        work,
        true,
        || {
            k.indexer_logits_decode(&pb, shape, &q8, &w, &cache, &plan, &mut out)
                .unwrap();
        },
    );
}

fn prefill(c: &mut Criterion, k: &DsaKernels, s: usize, s_kv: usize) {
    let stream = k.stream().clone();
    let mut rng = StdRng::seed_from_u64(s as u64 * 7 + s_kv as u64);
    // One sequence whose last s tokens are the queries (a prefill after a cached prefix):
    // query t sees keys [0, s_kv - s + t].
    let ks = vec![0i32; s];
    let ke: Vec<i32> = (0..s).map(|t| (s_kv - s + t + 1) as i32).collect();
    let pairs: usize = ke.iter().map(|&e| e as usize).sum();
    let q8 = stream.clone_htod(&codes(&mut rng, s * H * D)).unwrap();
    let w = stream
        .clone_htod(
            &(0..s * H)
                .map(|_| rng.random_range(-1e-3f32..1e-3))
                .collect::<Vec<_>>(),
        )
        .unwrap();
    let k8 = stream.clone_htod(&codes(&mut rng, s_kv * D)).unwrap();
    let ksc = stream.clone_htod(&scales(&mut rng, s_kv)).unwrap();
    let ks = stream.clone_htod(&ks).unwrap();
    let ke = stream.clone_htod(&ke).unwrap();
    let stride = prefill_out_stride(s_kv);
    let mut out = stream.alloc_zeros::<f32>(s * stride).unwrap();
    let shape = PrefillLogitsShape {
        s_q: s,
        s_kv,
        heads: H,
        out_stride: stride,
    };
    let work = common::Work {
        flops: (pairs * 2 * H * D) as f64,
        bytes: (s * s_kv * 4 + s * H * (D + 4) + s_kv * (D + 4)) as f64,
        anchor: Some(("FP8 dense peak 1979 TFLOP/s (floor 400)", 1979.0)),
        anchor_unit: "TFLOP/s",
    };
    common::bench_case(
        c,
        "indexer_prefill",
        &format!("s{s}_skv{}k_h{H}", s_kv / 1024),
        &stream,
        work,
        false,
        || {
            k.indexer_logits_prefill(shape, &q8, &w, &k8, &ksc, &ks, &ke, &mut out)
                .unwrap();
        },
    );
}

/// One whole decode indexer step of one layer at `batch` sequences of `ctx` tokens: q prep
/// (B x 64 heads), k prep into the cache, the plan, paged logits, top-2048 translated to
/// physical slots.
fn decode_step(c: &mut Criterion, k: &DsaKernels, batch: usize, ctx: usize) {
    let stream = k.stream().clone();
    let mut rng = StdRng::seed_from_u64(99);
    let max_pages = ctx / PAGE_SIZE;
    let num_pages = batch * max_pages;
    let mut cache = cache(k, &mut rng, num_pages);
    let mut pages: Vec<i32> = (0..num_pages as i32).collect();
    pages.shuffle(&mut rng);
    // The new token of sequence b is its last one.
    let slots: Vec<i32> = (0..batch)
        .map(|b| pages[b * max_pages + max_pages - 1] * PAGE_SIZE as i32 + PAGE_SIZE as i32 - 1)
        .collect();
    let slots = SlotMapping::new(&stream, &slots).unwrap();
    let max_pos = ctx;
    let (cos, sin) = rope_tables(&YarnRope::deepseek_v32(), max_pos).unwrap();
    let cos = stream.clone_htod(&cos).unwrap();
    let sin = stream.clone_htod(&sin).unwrap();
    let positions = stream.clone_htod(&vec![ctx as i32 - 1; batch]).unwrap();
    let bf = |rng: &mut StdRng, n: usize| -> Vec<bf16> {
        (0..n)
            .map(|_| bf16::from_f32(rng.random_range(-2.0f32..2.0)))
            .collect()
    };
    let q_in = stream.clone_htod(&bf(&mut rng, batch * H * D)).unwrap();
    let k_in = stream.clone_htod(&bf(&mut rng, batch * D)).unwrap();
    let w_in = stream
        .clone_htod(
            &(0..batch * H)
                .map(|_| rng.random_range(-0.1f32..0.1))
                .collect::<Vec<_>>(),
        )
        .unwrap();
    let mut q8 = stream.alloc_zeros::<u8>(batch * H * D).unwrap();
    let mut w = stream.alloc_zeros::<f32>(batch * H).unwrap();
    let lens = stream.clone_htod(&vec![ctx as i32; batch]).unwrap();
    let table = stream.clone_htod(&pages).unwrap();
    let mut plan = stream.alloc_zeros::<i32>(decode_plan_len(batch)).unwrap();
    let mut logits = stream.alloc_zeros::<f32>(batch * ctx).unwrap();
    let topk_k = 2048;
    let mut idx = stream.alloc_zeros::<i32>(batch * topk_k).unwrap();
    let shape = DecodeLogitsShape::new(H, ctx);
    let pb = PagedBatch::new(
        PagedBatchShape {
            batch,
            next_n: 1,
            max_pages,
        },
        &table,
        &lens,
    )
    .unwrap();
    let rope = RopeTablesRef {
        cos: &cos,
        sin: &sin,
        max_pos,
    };
    let work = common::Work {
        flops: (batch * ctx * 2 * H * D) as f64,
        // cache read, logits written and read back by top-k, indices written
        bytes: (batch * ctx * (132 + 8) + batch * topk_k * 4) as f64,
        anchor: Some(common::anchors::COPY_GBS.get()),
        anchor_unit: "GB/s",
    };
    common::bench_case(
        c,
        "indexer_decode_step",
        &format!("b{batch}_ctx{}k_h{H}_top{topk_k}", ctx / 1024),
        &stream,
        work,
        true,
        || {
            k.indexer_prepare_q(
                IndexerPrepShape {
                    tokens: batch,
                    heads: H,
                    token_stride: H * D,
                },
                &q_in,
                &positions,
                rope,
                &w_in,
                &mut q8,
                &mut w,
            )
            .unwrap();
            k.indexer_prepare_k(
                IndexerPrepShape {
                    tokens: batch,
                    heads: 1,
                    token_stride: D,
                },
                &k_in,
                &positions,
                rope,
                &mut cache,
                &slots,
            )
            .unwrap();
            k.indexer_decode_plan(&pb, shape, &mut plan).unwrap();
            k.indexer_logits_decode(&pb, shape, &q8, &w, &cache, &plan, &mut logits)
                .unwrap();
            k.topk_paged(
                &pb,
                &logits,
                PagedTopkShape {
                    cols: ctx,
                    row_stride: ctx,
                    topk: topk_k,
                    sorted: false,
                },
                &mut idx,
            )
            .unwrap();
        },
    );
}

fn benches(c: &mut Criterion) {
    let Some(k) = common::kernels() else { return };
    for s_kv in [8192, 32768, 131072] {
        prefill(c, &k, 4096, s_kv);
    }
    for batch in [1, 32, 128] {
        for ctx in [8192, 32768, 131072] {
            decode(c, &k, batch, ctx, 1);
        }
    }
    // Speculative decode (MTP): next_n query rows per sequence share each page.
    decode(c, &k, 128, 32768, 2);
    decode(c, &k, 128, 32768, 4);
    decode_step(c, &k, 128, 131072);
}

criterion_group!(indexer, benches);
criterion_main!(indexer);
