//! Device data that lies: slot lists, block tables, lengths, positions, top-k indices and
//! plans full of negative, huge, duplicated and out-of-cache values. The docs promise no
//! access outside the buffers whatever their content; these tests run each kernel on such
//! data (run them under compute-sanitizer memcheck) and check what the docs say comes out
//! (skipped writes stay untouched, masked keys are -inf, bad slots come back -1).
use dsa_kernels::cache::{
    write_host_token, CacheRows, IndexerKCache, MlaBf16Cache, MlaFp8, MlaFp8Cache,
    INDEXER_PAGE_BYTES, MLA_FP8_BYTES_PER_TOKEN, PAGE_SIZE, QK_DIM,
};
use dsa_kernels::cudarc::driver::CudaSlice;
use dsa_kernels::indexer::{
    decode_plan_len, rope_tables, DecodeLogitsShape, RopeTablesRef, YarnRope,
};
use dsa_kernels::sparse_mla::{SparseDecodeConfig, SparseExtras};
use dsa_kernels::topk::PagedTopkShape;
use dsa_kernels::{
    DsaDecodeStep, DsaDecodeStepConfig, DsaError, DsaLayerInputs, PagedBatch, PagedBatchShape,
};
use half::bf16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::common::{download, kernels, upload};

/// Values that break naive index arithmetic.
const LIARS: [i32; 10] = [
    -1,
    -2,
    -64,
    i32::MIN,
    i32::MIN + 1,
    i32::MAX,
    i32::MAX - 63,
    1 << 30,
    65,
    4096,
];

fn liar(rng: &mut StdRng, valid_below: i32) -> i32 {
    if rng.random_bool(0.5) {
        LIARS[rng.random_range(0..LIARS.len())]
    } else {
        rng.random_range(0..valid_below.max(1))
    }
}

fn bf16s(rng: &mut StdRng, n: usize) -> Vec<bf16> {
    (0..n)
        .map(|_| bf16::from_f32(rng.random_range(-1.0f32..1.0)))
        .collect()
}

/// Cache writes through device slots: every out-of-cache slot is skipped, the rest are
/// written exactly as the host encoder writes them.
#[test]
#[ignore = "needs a CUDA GPU"]
fn adversarial_cache_write_slots() {
    let k = kernels();
    let s = k.stream().clone();
    let mut rng = StdRng::seed_from_u64(1);
    let pages = 3;
    let cap = (pages * PAGE_SIZE) as i32;
    let rows = 40;
    // Duplicated valid slots race by design (last writer wins): keep valid ones distinct.
    let mut seen = std::collections::HashSet::new();
    let slots: Vec<i32> = (0..rows)
        .map(|i| {
            if i % 3 == 0 {
                i as i32
            } else {
                liar(&mut rng, cap)
            }
        })
        .map(|x| {
            if (0..cap).contains(&x) && !seen.insert(x) {
                -1
            } else {
                x
            }
        })
        .collect();
    let src = bf16s(&mut rng, rows * QK_DIM);
    let mut want = vec![0u8; pages * PAGE_SIZE * MLA_FP8_BYTES_PER_TOKEN];
    for (r, &slot) in slots.iter().enumerate() {
        if (0..cap).contains(&slot) {
            write_host_token::<MlaFp8>(
                &mut want,
                slot as usize,
                &src[r * QK_DIM..][..QK_DIM],
                false,
            )
            .unwrap();
        }
    }
    let mut cache = MlaFp8Cache::new(&s, pages).unwrap();
    let d_src = upload(&s, &src);
    let d_slots = upload(&s, &slots);
    let rows_in = CacheRows {
        src: &d_src,
        rows,
        row_stride: QK_DIM,
    };
    k.write_cache_device_slots(&mut cache, rows_in, &d_slots, false)
        .unwrap();
    assert_eq!(
        download(&s, cache.data()),
        want,
        "only in-cache slots are written"
    );
}

/// Indexer k prep through device slots and positions that lie.
#[test]
#[ignore = "needs a CUDA GPU"]
fn adversarial_indexer_k_slots_and_positions() {
    let k = kernels();
    let s = k.stream().clone();
    let mut rng = StdRng::seed_from_u64(2);
    let pages = 2;
    let cap = (pages * PAGE_SIZE) as i32;
    let max_pos = 50usize;
    let (cos, sin) = rope_tables(&YarnRope::deepseek_v32(), max_pos).unwrap();
    let (cos, sin) = (upload(&s, &cos), upload(&s, &sin));
    let tokens = 64;
    let slots: Vec<i32> = (0..tokens).map(|_| liar(&mut rng, cap)).collect();
    let positions: Vec<i32> = (0..tokens)
        .map(|_| liar(&mut rng, max_pos as i32))
        .collect();
    let x = upload(&s, &bf16s(&mut rng, tokens * 128));
    let mut cache = IndexerKCache::new(&s, pages).unwrap();
    let before = download(&s, cache.data());
    k.indexer_prepare_k_device_slots(
        dsa_kernels::indexer::IndexerPrepShape {
            tokens,
            heads: 1,
            token_stride: 128,
        },
        &x,
        &upload(&s, &positions),
        RopeTablesRef {
            cos: &cos,
            sin: &sin,
            max_pos,
        },
        &mut cache,
        &upload(&s, &slots),
    )
    .unwrap();
    let after = download(&s, cache.data());
    assert_eq!(after.len(), pages * INDEXER_PAGE_BYTES);
    // A page no valid (slot, position) pair targets is untouched.
    for p in 0..pages {
        let written = slots.iter().zip(&positions).any(|(&sl, &pos)| {
            (0..cap).contains(&sl)
                && sl as usize / PAGE_SIZE == p
                && (0..max_pos as i32).contains(&pos)
        });
        if !written {
            assert_eq!(
                after[p * INDEXER_PAGE_BYTES..][..INDEXER_PAGE_BYTES],
                before[p * INDEXER_PAGE_BYTES..][..INDEXER_PAGE_BYTES]
            );
        }
    }
}

/// A paged batch whose table and lengths lie: indexer logits, paged top-k, sparse and
/// dense decode all run inside their buffers; top-k returns only -1 or slots of pages the
/// table names.
#[test]
#[ignore = "needs a CUDA GPU"]
fn adversarial_paged_batch_tables_and_indices() {
    let k = kernels();
    let s = k.stream().clone();
    let mut rng = StdRng::seed_from_u64(3);
    let (batch, next_n, max_pages, pages) = (5usize, 2usize, 4usize, 6usize);
    let shape = PagedBatchShape {
        batch,
        next_n,
        max_pages,
    };
    let table: Vec<i32> = (0..batch * max_pages)
        .map(|_| liar(&mut rng, pages as i32))
        .collect();
    let lens: Vec<i32> = (0..batch)
        .map(|_| liar(&mut rng, (max_pages * PAGE_SIZE) as i32 + 1))
        .collect();
    let d_table = upload(&s, &table);
    let d_lens = upload(&s, &lens);
    let pb = PagedBatch::new(shape, &d_table, &d_lens).unwrap();
    let rows = shape.rows();
    let max_ctx = max_pages * PAGE_SIZE;

    // Indexer logits with a correct plan, then with plans that lie.
    let icache = IndexerKCache::new(&s, pages).unwrap();
    let q8 = upload(&s, &vec![0x38u8; rows * 64 * 128]);
    let w = upload(&s, &vec![0.01f32; rows * 64]);
    let lshape = DecodeLogitsShape::new(64, max_ctx);
    let mut plan = upload(&s, &vec![0i32; decode_plan_len(batch)]);
    let mut logits = upload(&s, &vec![f32::NAN; rows * max_ctx]);
    k.indexer_decode_plan(&pb, lshape, &mut plan).unwrap();
    k.indexer_logits_decode(&pb, lshape, &q8, &w, &icache, &plan, &mut logits)
        .unwrap();

    // Paged top-k over the real logits: every output is -1 or a slot of a table page
    // inside [0, pages).
    let topk = 64;
    let mut idx = upload(&s, &vec![i32::MIN; rows * topk]);
    let tshape = PagedTopkShape {
        cols: max_ctx,
        row_stride: max_ctx,
        topk,
        sorted: false,
    };
    k.topk_paged(&pb, &logits, tshape, &mut idx).unwrap();
    let got = download(&s, &idx);
    for (i, &slot) in got.iter().enumerate() {
        let b = i / topk / next_n;
        let row_pages = &table[b * max_pages..][..max_pages];
        assert!(
            slot == -1
                || (slot >= 0
                    && row_pages
                        .iter()
                        .any(|&p| p >= 0 && p == slot / PAGE_SIZE as i32)),
            "index {i}: slot {slot} is not from sequence {b}'s table {row_pages:?}"
        );
    }

    // Sparse decode over indices that lie, with topk_length that lies, both caches.
    let heads = 64;
    let cfg = SparseDecodeConfig {
        heads,
        topk,
        softmax_scale: 0.1,
    };
    let cap = (pages * PAGE_SIZE) as i32;
    let lying: Vec<i32> = (0..rows * topk).map(|_| liar(&mut rng, cap)).collect();
    let tl: Vec<i32> = (0..batch)
        .map(|_| liar(&mut rng, topk as i32 + 1))
        .collect();
    let (d_lying, d_tl) = (upload(&s, &lying), upload(&s, &tl));
    let q = upload(&s, &bf16s(&mut rng, rows * heads * QK_DIM));
    let fp8 = MlaFp8Cache::new(&s, pages).unwrap();
    let b16 = MlaBf16Cache::new(&s, pages).unwrap();
    let mut ws = upload(
        &s,
        &vec![f32::NAN; k.sparse_mla_decode_workspace_len(&shape, &cfg).max(1)],
    );
    let mut out = upload(&s, &vec![bf16::NAN; rows * heads * 512]);
    let mut lse = upload(&s, &vec![f32::NAN; rows * heads]);
    for indices in [&d_lying, &idx] {
        let ex = SparseExtras::<_, CudaSlice<f32>> {
            topk_length: Some(&d_tl),
            attn_sink: None,
        };
        k.sparse_mla_decode(
            &cfg, &pb, &fp8, &q, indices, ex, &mut out, &mut lse, &mut ws,
        )
        .unwrap();
        k.sparse_mla_decode(
            &cfg, &pb, &b16, &q, indices, ex, &mut out, &mut lse, &mut ws,
        )
        .unwrap();
    }
    let o = download(&s, &out);
    assert!(
        o.iter().all(|v| v.to_f32().is_finite()),
        "sparse decode output not finite"
    );

    // Dense decode over the lying table and lengths, with the real plan and with plans
    // that lie.
    let dcfg = k.dense_mla_config(&shape, heads, 0.1);
    let mut dplan = upload(&s, &vec![0i32; dcfg.plan_len(&shape)]);
    let mut dws = upload(&s, &vec![f32::NAN; dcfg.workspace_len(&shape)]);
    k.dense_mla_plan(&dcfg, &pb, &mut dplan).unwrap();
    k.dense_mla_decode(&dcfg, &pb, &b16, &q, &dplan, &mut dws, &mut out, &mut lse)
        .unwrap();
}

/// The library step on a batch that lies (table, lengths, slots, positions), and the
/// host-side plan rules: a layer of another batch than the plan's, or a batch past the
/// configuration, is an error before any launch.
#[test]
#[ignore = "needs a CUDA GPU"]
fn adversarial_decode_step() {
    let k = kernels();
    let s = k.stream().clone();
    let mut rng = StdRng::seed_from_u64(4);
    let (max_batch, max_pages, pages) = (6usize, 3usize, 8usize);
    let cfg = DsaDecodeStepConfig {
        topk: 128,
        ..DsaDecodeStepConfig::deepseek_v32(max_batch, 1, max_pages)
    };
    let mut step = DsaDecodeStep::new(&k, cfg).unwrap();
    let mut icache = IndexerKCache::new(&s, pages).unwrap();
    let mut mla = MlaFp8Cache::new(&s, pages).unwrap();
    let max_pos = 200;
    let (cos, sin) = rope_tables(&YarnRope::deepseek_v32(), max_pos).unwrap();
    let (cos, sin) = (upload(&s, &cos), upload(&s, &sin));
    let cap = (pages * PAGE_SIZE) as i32;
    for batch in [max_batch, 1, 4] {
        let shape = PagedBatchShape {
            batch,
            next_n: 1,
            max_pages,
        };
        let table = upload(
            &s,
            &(0..batch * max_pages)
                .map(|_| liar(&mut rng, pages as i32))
                .collect::<Vec<_>>(),
        );
        let lens = upload(
            &s,
            &(0..batch).map(|_| liar(&mut rng, 200)).collect::<Vec<_>>(),
        );
        let pb = PagedBatch::new(shape, &table, &lens).unwrap();
        let rows = shape.rows();
        let index_q = upload(&s, &bf16s(&mut rng, rows * 64 * 128));
        let index_w = upload(&s, &vec![0.05f32; rows * 64]);
        let index_k = upload(&s, &bf16s(&mut rng, rows * 128));
        let kv = upload(&s, &bf16s(&mut rng, rows * QK_DIM));
        let positions = upload(
            &s,
            &(0..rows)
                .map(|_| liar(&mut rng, max_pos as i32))
                .collect::<Vec<_>>(),
        );
        let slots = upload(
            &s,
            &(0..rows).map(|_| liar(&mut rng, cap)).collect::<Vec<_>>(),
        );
        let q = upload(&s, &bf16s(&mut rng, rows * 128 * QK_DIM));
        let mut out = upload(&s, &vec![bf16::NAN; rows * 128 * 512]);
        let mut lse = upload(&s, &vec![f32::NAN; rows * 128]);
        let inputs = DsaLayerInputs {
            index_q: &index_q,
            index_weights: &index_w,
            index_k: &index_k,
            kv: &kv,
            positions: &positions,
            slots: &slots,
            rope: RopeTablesRef {
                cos: &cos,
                sin: &sin,
                max_pos,
            },
        };
        // Before this batch's plan, the step refuses to run it (the plan is another
        // batch's, or none).
        let e = step.layer(
            &k,
            &pb,
            &inputs,
            &mut icache,
            &mut mla,
            &q,
            &mut out,
            &mut lse,
        );
        assert!(matches!(e, Err(DsaError::Unsupported { .. })), "{e:?}");
        step.plan(&k, &pb).unwrap();
        for _layer in 0..2 {
            step.layer(
                &k,
                &pb,
                &inputs,
                &mut icache,
                &mut mla,
                &q,
                &mut out,
                &mut lse,
            )
            .unwrap();
        }
        let o = download(&s, &out);
        assert!(
            o.iter().all(|v| v.to_f32().is_finite()),
            "batch {batch}: output not finite"
        );
    }
    // A batch past the configuration is refused before any launch.
    let table = upload(&s, &vec![0i32; (max_batch + 1) * max_pages]);
    let lens = upload(&s, &vec![1i32; max_batch + 1]);
    let big = PagedBatch::new(
        PagedBatchShape {
            batch: max_batch + 1,
            next_n: 1,
            max_pages,
        },
        &table,
        &lens,
    )
    .unwrap();
    assert!(step.plan(&k, &big).is_err());
    let wide = PagedBatch::new(
        PagedBatchShape {
            batch: 1,
            next_n: 1,
            max_pages: max_pages + 1,
        },
        &table,
        &lens,
    )
    .unwrap();
    assert!(step.plan(&k, &wide).is_err());
    s.synchronize().unwrap();
}

/// A lying batch (as above) with a small cache and queries, shared by the plan tests.
fn lying_batch(rng: &mut StdRng) -> (PagedBatchShape, Vec<i32>, Vec<i32>, usize) {
    let (batch, next_n, max_pages, pages) = (5usize, 2usize, 4usize, 6usize);
    let shape = PagedBatchShape {
        batch,
        next_n,
        max_pages,
    };
    let table = (0..batch * max_pages)
        .map(|_| liar(rng, pages as i32))
        .collect();
    let lens = (0..batch)
        .map(|_| liar(rng, (max_pages * PAGE_SIZE) as i32 + 1))
        .collect();
    (shape, table, lens, pages)
}

/// Indexer decode plans that lie (non-monotonic, negative, huge, from a larger batch):
/// the logits kernel must stay inside `out` (the plan is device data; the kernel re-checks
/// what it reads from it). Needs the kernel's guard on a non-monotonic plan in its `-inf`
/// tail loop: without it this test writes before `out`, and the fault poisons the context
/// of every test running beside it.
#[test]
#[ignore = "needs a CUDA GPU"]
fn adversarial_indexer_decode_lying_plans() {
    let k = kernels();
    let s = k.stream().clone();
    let mut rng = StdRng::seed_from_u64(5);
    let (shape, table, lens, pages) = lying_batch(&mut rng);
    let (d_table, d_lens) = (upload(&s, &table), upload(&s, &lens));
    let pb = PagedBatch::new(shape, &d_table, &d_lens).unwrap();
    let (rows, max_ctx) = (shape.rows(), shape.max_tokens());
    let icache = IndexerKCache::new(&s, pages).unwrap();
    let q8 = upload(&s, &vec![0x38u8; rows * 64 * 128]);
    let w = upload(&s, &vec![0.01f32; rows * 64]);
    let lshape = DecodeLogitsShape::new(64, max_ctx);
    for lie in [
        vec![0, 3, 1, 7, 2, 9],
        vec![0, -5, 4, i32::MIN, 8, 30],
        vec![i32::MAX, 0, i32::MAX, 1, 0, i32::MAX],
        vec![0, 1000, 2000, 3000, 4000, 5000],
    ] {
        let bad_plan = upload(&s, &lie);
        let mut out = upload(&s, &vec![f32::NAN; rows * max_ctx]);
        k.indexer_logits_decode(&pb, lshape, &q8, &w, &icache, &bad_plan, &mut out)
            .unwrap();
        s.synchronize().unwrap();
    }
}

/// Dense decode plans that lie: the split and combine kernels clamp what they read.
#[test]
#[ignore = "needs a CUDA GPU"]
fn adversarial_dense_decode_lying_plans() {
    let k = kernels();
    let s = k.stream().clone();
    let mut rng = StdRng::seed_from_u64(6);
    let (shape, table, lens, pages) = lying_batch(&mut rng);
    let (d_table, d_lens) = (upload(&s, &table), upload(&s, &lens));
    let pb = PagedBatch::new(shape, &d_table, &d_lens).unwrap();
    let (rows, heads) = (shape.rows(), 64);
    let q = upload(&s, &bf16s(&mut rng, rows * heads * QK_DIM));
    let fp8 = MlaFp8Cache::new(&s, pages).unwrap();
    let mut out = upload(&s, &vec![bf16::NAN; rows * heads * 512]);
    let mut lse = upload(&s, &vec![f32::NAN; rows * heads]);
    let dcfg = k.dense_mla_config(&shape, heads, 0.1);
    let mut dws = upload(&s, &vec![f32::NAN; dcfg.workspace_len(&shape)]);
    let n = dcfg.plan_len(&shape);
    for lie in [
        (0..n).map(|_| liar(&mut rng, 8)).collect::<Vec<i32>>(),
        vec![i32::MAX; n],
        vec![-1; n],
    ] {
        let bad = upload(&s, &lie);
        k.dense_mla_decode(&dcfg, &pb, &fp8, &q, &bad, &mut dws, &mut out, &mut lse)
            .unwrap();
        s.synchronize().unwrap();
    }
}
