//! Sparse MLA decode (FP8 and bf16 paged caches) and prefill, in TFLOP/s against FlashMLA
//! (`common/anchors.rs`, the row of the GPU it runs on; H200: FP8 decode 394 TFLOP/s at
//! B=128, s_q=2; 380 at s_q=1; 276 at B=32, s_q=1; prefill 529 at s_q=4096, s_kv=128K).
//! FlashMLA has no paged sparse bf16 decode on Hopper: the bf16 B=128, s_q=2 row is set
//! against its sparse prefill kernel over the cache as flat kv (536), the other bf16 rows
//! against the FP8 numbers.
mod common;

use criterion::{criterion_group, criterion_main, Criterion};
use dsa_kernels::cache::{MlaCacheKind, PagedCache, PAGE_SIZE};
use dsa_kernels::cudarc::driver::CudaSlice;
use dsa_kernels::sparse_mla::{SparseDecodeConfig, SparseExtras, SparsePrefillConfig};
use dsa_kernels::{DsaKernels, PagedBatch, PagedBatchShape};
use half::bf16;

const TOPK: usize = 2048;
const SCALE: f32 = 0.135_234;
/// Context per sequence the decode indices are drawn from.
const CTX: usize = 8192;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bf16s(&mut self, n: usize) -> Vec<bf16> {
        (0..n)
            .map(|_| bf16::from_f32(((self.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0))
            .collect()
    }
}

/// `k` distinct values of `[0, n)` in random order.
fn distinct(rng: &mut Rng, n: usize, k: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    for i in 0..k {
        let j = i + rng.below(n - i);
        v.swap(i, j);
    }
    v.truncate(k);
    v
}

fn decode_case<K: MlaCacheKind>(
    c: &mut Criterion,
    k: &DsaKernels,
    batch: usize,
    s_q: usize,
    anchor: (&'static str, f64),
) where
    K::Elem: Unpin,
{
    let stream = k.stream().clone();
    let h_q = 128;
    let cfg = SparseDecodeConfig {
        heads: h_q,
        topk: TOPK,
        softmax_scale: SCALE,
    };
    let name = format!(
        "{}/b{batch}_sq{s_q}_h128_topk2048_splits{}",
        if K::FP8 { "fp8" } else { "bf16" },
        cfg.num_splits(batch * s_q, k.sm_count())
    );
    // A filtered run skips the setup (cache fill, indices) of the cases it does not time.
    if !common::selected("sparse_mla_decode", &name) {
        return;
    }
    let mut rng = Rng(0x5eed ^ (batch * 31 + s_q) as u64);
    let pages_per_seq = CTX / PAGE_SIZE;
    let cache = {
        // Random bytes in an FP8 cache would hold NaN codes and wild scales: fill through
        // the cache writer from bf16 rows instead.
        let mut cache = PagedCache::<K>::new(&stream, batch * pages_per_seq).unwrap();
        let tokens = batch * CTX;
        let chunk = 65536;
        let mut t0 = 0;
        while t0 < tokens {
            let n = chunk.min(tokens - t0);
            let src = stream.clone_htod(&rng.bf16s(n * 576)).unwrap();
            let slots: Vec<i32> = (t0..t0 + n).map(|s| s as i32).collect();
            let map = dsa_kernels::cache::SlotMapping::new(&stream, &slots).unwrap();
            k.write_cache(
                &mut cache,
                dsa_kernels::cache::CacheRows {
                    src: &src,
                    rows: n,
                    row_stride: 576,
                },
                &map,
                false,
            )
            .unwrap();
            t0 += n;
        }
        cache
    };
    // Each sequence owns a shuffled set of pages; each query picks TOPK distinct tokens of
    // its sequence's context.
    let page_perm = distinct(&mut rng, batch * pages_per_seq, batch * pages_per_seq);
    let mut indices = Vec::with_capacity(batch * s_q * TOPK);
    for b in 0..batch {
        for _ in 0..s_q {
            for t in distinct(&mut rng, CTX, TOPK) {
                let page = page_perm[b * pages_per_seq + t / PAGE_SIZE];
                indices.push((page * PAGE_SIZE + t % PAGE_SIZE) as i32);
            }
        }
    }
    // Only the batch's geometry matters here (the indices are physical slots already).
    let shape = PagedBatchShape {
        batch,
        next_n: s_q,
        max_pages: 1,
    };
    let dummy = stream.alloc_zeros::<i32>(batch).unwrap();
    let pb = PagedBatch::new(shape, &dummy, &dummy).unwrap();
    let q = stream
        .clone_htod(&rng.bf16s(batch * s_q * h_q * 576))
        .unwrap();
    let idx = stream.clone_htod(&indices).unwrap();
    let mut out: CudaSlice<bf16> = stream.alloc_zeros(batch * s_q * h_q * 512).unwrap();
    let mut lse: CudaSlice<f32> = stream.alloc_zeros(batch * s_q * h_q).unwrap();
    let ws_len = k.sparse_mla_decode_workspace_len(&shape, &cfg);
    let mut ws: CudaSlice<f32> = stream.alloc_zeros(ws_len.max(1)).unwrap();
    let rows = (batch * s_q) as f64;
    let token_bytes = if K::FP8 { 656.0 } else { 1152.0 };
    let work = common::Work {
        flops: 2.0 * h_q as f64 * rows * TOPK as f64 * (576.0 + 512.0),
        bytes: rows * TOPK as f64 * token_bytes
            + rows * h_q as f64 * (576.0 * 2.0 + 512.0 * 2.0 + 4.0),
        anchor: Some(anchor),
        anchor_unit: "TFLOP/s",
    };
    common::bench_case(c, "sparse_mla_decode", &name, &stream, work, true, || {
        k.sparse_mla_decode(
            &cfg,
            &pb,
            &cache,
            &q,
            &idx,
            SparseExtras::default(),
            &mut out,
            &mut lse,
            &mut ws,
        )
        .unwrap();
    });
}

fn prefill_case(c: &mut Criterion, k: &DsaKernels) {
    if !common::selected("sparse_mla_prefill", "sq4096_skv128k_h128_topk2048") {
        return;
    }
    let stream = k.stream().clone();
    let (s_q, s_kv, h_q) = (4096usize, 131072usize, 128usize);
    let mut rng = Rng(0xfeed);
    let q = stream.clone_htod(&rng.bf16s(s_q * h_q * 576)).unwrap();
    let kv = stream.clone_htod(&rng.bf16s(s_kv * 576)).unwrap();
    let mut indices = Vec::with_capacity(s_q * TOPK);
    for _ in 0..s_q {
        indices.extend(distinct(&mut rng, s_kv, TOPK).into_iter().map(|i| i as i32));
    }
    let idx = stream.clone_htod(&indices).unwrap();
    let mut out: CudaSlice<bf16> = stream.alloc_zeros(s_q * h_q * 512).unwrap();
    let mut ml: CudaSlice<f32> = stream.alloc_zeros(s_q * h_q).unwrap();
    let mut lse: CudaSlice<f32> = stream.alloc_zeros(s_q * h_q).unwrap();
    let cfg = SparsePrefillConfig {
        s_q,
        s_kv,
        heads: h_q,
        topk: TOPK,
        softmax_scale: SCALE,
    };
    let work = common::Work {
        flops: 2.0 * (h_q * s_q * TOPK) as f64 * (576.0 + 512.0),
        bytes: 0.0,
        anchor: Some(common::anchors::FLASHMLA_SPARSE_PREFILL.get()),
        anchor_unit: "TFLOP/s",
    };
    common::bench_case(
        c,
        "sparse_mla_prefill",
        "sq4096_skv128k_h128_topk2048",
        &stream,
        work,
        false,
        || {
            k.sparse_mla_prefill(
                &cfg,
                &q,
                &kv,
                &idx,
                SparseExtras::default(),
                &mut out,
                &mut ml,
                &mut lse,
            )
            .unwrap();
        },
    );
}

fn benches(c: &mut Criterion) {
    let Some(k) = common::kernels() else { return };
    use common::anchors as a;
    use dsa_kernels::cache::{MlaBf16, MlaFp8};
    decode_case::<MlaFp8>(c, &k, 128, 2, a::FLASHMLA_SPARSE_FP8_B128_SQ2.get());
    decode_case::<MlaFp8>(c, &k, 128, 1, a::FLASHMLA_SPARSE_FP8_B128_SQ1.get());
    decode_case::<MlaFp8>(c, &k, 32, 1, a::FLASHMLA_SPARSE_FP8_B32_SQ1.get());
    decode_case::<MlaBf16>(c, &k, 128, 2, a::FLASHMLA_SPARSE_BF16_B128_SQ2.get());
    decode_case::<MlaBf16>(c, &k, 128, 1, a::FLASHMLA_SPARSE_FP8_B128_SQ1.get());
    decode_case::<MlaBf16>(c, &k, 32, 1, a::FLASHMLA_SPARSE_FP8_B32_SQ1.get());
    prefill_case(c, &k);
}

criterion_group!(sparse_mla, benches);
criterion_main!(sparse_mla);
