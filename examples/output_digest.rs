//! Prints one FNV-1a digest per kernel output on fixed inputs (a seeded generator, no
//! files): run it on two builds and compare the lines to see which outputs changed bit
//! for bit. Covers the attention (sparse decode with and without splits and sink, sparse
//! prefill, dense decode), indexer logits (prefill and paged decode), top-k with
//! translation and the FP8 cache write.
//!
//!   cargo run --release --example output_digest
use std::sync::Arc;

use dsa_kernels::cache::{
    CacheRows, IndexerKCache, MlaBf16Cache, MlaFp8Cache, SlotMapping, INDEXER_PAGE_BYTES, PAGE_SIZE,
};
use dsa_kernels::cudarc::driver::{CudaSlice, CudaStream, DeviceRepr};
use dsa_kernels::indexer::{
    decode_plan_len, prefill_out_stride, DecodeLogitsShape, PrefillLogitsShape,
};
use dsa_kernels::sparse_mla::{SparseDecodeConfig, SparseExtras, SparsePrefillConfig};
use dsa_kernels::topk::PagedTopkShape;
use dsa_kernels::{device, DsaKernels, PagedBatch, PagedBatchShape};
use half::bf16;

const SCALE: f32 = 0.135234;

/// Seeded xorshift: the same inputs on every build.
struct Gen(u64);
impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    fn bf16s(&mut self, n: usize) -> Vec<bf16> {
        (0..n).map(|_| bf16::from_f32(self.unit())).collect()
    }
    fn f32s(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.unit()).collect()
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        // e4m3 codes without NaN (0x7f / 0xff).
        (0..n)
            .map(|_| (self.next() % 0x7f) as u8 | ((self.next() & 1) << 7) as u8)
            .collect()
    }
}

fn up<T: DeviceRepr + Unpin>(s: &Arc<CudaStream>, v: &[T]) -> CudaSlice<T> {
    s.clone_htod(v).unwrap()
}

fn digest<T: DeviceRepr + Default + Clone + Unpin>(
    s: &Arc<CudaStream>,
    what: &str,
    v: &CudaSlice<T>,
) {
    let host = s.clone_dtoh(v).unwrap();
    // SAFETY: plain-old-data element types (f32, bf16, i32, u8) viewed as their bytes.
    let bytes = unsafe {
        std::slice::from_raw_parts(host.as_ptr() as *const u8, std::mem::size_of_val(&host[..]))
    };
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    println!("{what:<40} {h:016x}");
}

fn sparse_decode(k: &DsaKernels, g: &mut Gen, batch: usize, sink: bool) {
    let s = k.stream().clone();
    let (s_q, h_q, topk, pages) = (1usize, 128usize, 2048usize, 80usize);
    let cap = pages * PAGE_SIZE;
    let rows = g.bf16s(cap * 576);
    let fp8: Vec<u8> = rows
        .chunks(576)
        .flat_map(|r| dsa_reference::cache::encode_mla_fp8_token_with(r, false))
        .collect();
    let fp8 = MlaFp8Cache::from_slice(up(&s, &fp8)).unwrap();
    let b16 = MlaBf16Cache::from_slice(up(&s, &rows)).unwrap();
    let idx: Vec<i32> = (0..batch * s_q * topk)
        .map(|_| {
            if g.below(17) == 0 {
                -1
            } else {
                g.below(cap) as i32
            }
        })
        .collect();
    let cfg = SparseDecodeConfig {
        heads: h_q,
        topk,
        softmax_scale: SCALE,
    };
    // The sparse decode reads only the translated indices; its batch still carries a
    // (one-page) block table and lengths.
    let bshape = PagedBatchShape {
        batch,
        next_n: s_q,
        max_pages: 1,
    };
    let (bt, bl) = (up(&s, &vec![0i32; batch]), up(&s, &vec![1i32; batch]));
    let pb = PagedBatch::new(bshape, &bt, &bl).unwrap();
    let (q, idx) = (up(&s, &g.bf16s(batch * s_q * h_q * 576)), up(&s, &idx));
    let sinkv = up(&s, &g.f32s(h_q));
    let ws_len = k.sparse_mla_decode_workspace_len(&bshape, &cfg);
    let splits = cfg.num_splits(batch * s_q, k.sm_count());
    for fp in [true, false] {
        let mut out: CudaSlice<bf16> = s.alloc_zeros(batch * s_q * h_q * 512).unwrap();
        let mut lse: CudaSlice<f32> = s.alloc_zeros(batch * s_q * h_q).unwrap();
        let mut ws: CudaSlice<f32> = s.alloc_zeros(ws_len.max(1)).unwrap();
        let extras: SparseExtras = SparseExtras {
            topk_length: None,
            attn_sink: sink.then_some(&sinkv),
        };
        if fp {
            k.sparse_mla_decode(
                &cfg, &pb, &fp8, &q, &idx, extras, &mut out, &mut lse, &mut ws,
            )
            .unwrap();
        } else {
            k.sparse_mla_decode(
                &cfg, &pb, &b16, &q, &idx, extras, &mut out, &mut lse, &mut ws,
            )
            .unwrap();
        }
        let tag = format!(
            "sparse_decode {} b{batch} splits{splits}{}",
            if fp { "fp8" } else { "bf16" },
            if sink { " sink" } else { "" }
        );
        digest(&s, &format!("{tag} out"), &out);
        digest(&s, &format!("{tag} lse"), &lse);
    }
}

fn sparse_prefill(k: &DsaKernels, g: &mut Gen) {
    let s = k.stream().clone();
    let (s_q, s_kv, h_q, topk) = (64usize, 4096usize, 128usize, 512usize);
    let cfg = SparsePrefillConfig {
        s_q,
        s_kv,
        heads: h_q,
        topk,
        softmax_scale: SCALE,
    };
    let q = up(&s, &g.bf16s(s_q * h_q * 576));
    let kv = up(&s, &g.bf16s(s_kv * 576));
    let idx: Vec<i32> = (0..s_q * topk).map(|_| g.below(s_kv + 50) as i32).collect();
    let idx = up(&s, &idx);
    let mut out: CudaSlice<bf16> = s.alloc_zeros(s_q * h_q * 512).unwrap();
    let mut ml: CudaSlice<f32> = s.alloc_zeros(s_q * h_q).unwrap();
    let mut lse: CudaSlice<f32> = s.alloc_zeros(s_q * h_q).unwrap();
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
    digest(&s, "sparse_prefill out", &out);
    digest(&s, "sparse_prefill max_logits", &ml);
    digest(&s, "sparse_prefill lse", &lse);
}

fn dense_decode(k: &DsaKernels, g: &mut Gen, batch: usize, ctx: usize) {
    let s = k.stream().clone();
    let (s_q, h_q) = (1usize, 128usize);
    let max_pages = ctx.div_ceil(PAGE_SIZE);
    let pages = batch * max_pages;
    let rows = g.bf16s(pages * PAGE_SIZE * 576);
    let fp8: Vec<u8> = rows
        .chunks(576)
        .flat_map(|r| dsa_reference::cache::encode_mla_fp8_token_with(r, false))
        .collect();
    let fp8 = MlaFp8Cache::from_slice(up(&s, &fp8)).unwrap();
    let b16 = MlaBf16Cache::from_slice(up(&s, &rows)).unwrap();
    let mut perm: Vec<i32> = (0..pages as i32).collect();
    for i in (1..perm.len()).rev() {
        perm.swap(i, g.below(i + 1));
    }
    let lens: Vec<i32> = (0..batch)
        .map(|b| {
            if b == 0 {
                ctx as i32
            } else {
                1 + g.below(ctx) as i32
            }
        })
        .collect();
    let bshape = PagedBatchShape {
        batch,
        next_n: s_q,
        max_pages,
    };
    let cfg = k.dense_mla_config(&bshape, h_q, SCALE);
    let q = up(&s, &g.bf16s(batch * s_q * h_q * 576));
    let (bt, d_lens) = (up(&s, &perm), up(&s, &lens));
    let pb = PagedBatch::new(bshape, &bt, &d_lens).unwrap();
    let mut plan: CudaSlice<i32> = s.alloc_zeros(cfg.plan_len(&bshape)).unwrap();
    k.dense_mla_plan(&cfg, &pb, &mut plan).unwrap();
    for fp in [true, false] {
        let mut ws: CudaSlice<f32> = s.alloc_zeros(cfg.workspace_len(&bshape)).unwrap();
        let mut out: CudaSlice<bf16> = s.alloc_zeros(batch * s_q * h_q * 512).unwrap();
        let mut lse: CudaSlice<f32> = s.alloc_zeros(batch * s_q * h_q).unwrap();
        if fp {
            k.dense_mla_decode(&cfg, &pb, &fp8, &q, &plan, &mut ws, &mut out, &mut lse)
                .unwrap();
        } else {
            k.dense_mla_decode(&cfg, &pb, &b16, &q, &plan, &mut ws, &mut out, &mut lse)
                .unwrap();
        }
        let tag = format!(
            "dense_decode {} b{batch} ctx{ctx}",
            if fp { "fp8" } else { "bf16" }
        );
        digest(&s, &format!("{tag} out"), &out);
        digest(&s, &format!("{tag} lse"), &lse);
    }
    digest(&s, &format!("dense_plan b{batch} ctx{ctx}"), &plan);
}

fn indexer(k: &DsaKernels, g: &mut Gen) {
    let s = k.stream().clone();
    let heads = 64usize;
    // Prefill: 256 queries over 3000 keys, ragged ranges.
    let (sq, s_kv) = (256usize, 3000usize);
    let q8 = up(&s, &g.bytes(sq * heads * 128));
    let w = up(&s, &g.f32s(sq * heads));
    let k8 = up(&s, &g.bytes(s_kv * 128));
    let ksc: Vec<f32> = (0..s_kv).map(|_| g.unit().abs() + 0.01).collect();
    let ksc = up(&s, &ksc);
    let ks: Vec<i32> = (0..sq).map(|t| (t * 5) as i32).collect();
    let ke: Vec<i32> = (0..sq).map(|t| (1000 + t * 7) as i32).collect();
    let (ks, ke) = (up(&s, &ks), up(&s, &ke));
    let stride = prefill_out_stride(s_kv);
    let mut out: CudaSlice<f32> = s.alloc_zeros(sq * stride).unwrap();
    let shape = PrefillLogitsShape {
        s_q: sq,
        s_kv,
        heads,
        out_stride: stride,
    };
    k.indexer_logits_prefill(shape, &q8, &w, &k8, &ksc, &ks, &ke, &mut out)
        .unwrap();
    digest(&s, "indexer_prefill logits", &out);

    // Decode: 8 sequences, next_n 2, paged.
    let (batch, next_n, max_pages, num_pages) = (8usize, 2usize, 40usize, 330usize);
    let cache =
        IndexerKCache::from_slice(up(&s, &g.bytes(num_pages * INDEXER_PAGE_BYTES))).unwrap();
    let lens: Vec<i32> = (0..batch)
        .map(|_| g.below(max_pages * PAGE_SIZE) as i32)
        .collect();
    let table: Vec<i32> = (0..batch * max_pages)
        .map(|_| g.below(num_pages) as i32)
        .collect();
    let rows = batch * next_n;
    let bshape = PagedBatchShape {
        batch,
        next_n,
        max_pages,
    };
    let shape = DecodeLogitsShape {
        heads,
        max_ctx: max_pages * PAGE_SIZE,
        out_stride: max_pages * PAGE_SIZE + 4,
    };
    let (q8, w) = (
        up(&s, &g.bytes(rows * heads * 128)),
        up(&s, &g.f32s(rows * heads)),
    );
    let (d_lens, d_table) = (up(&s, &lens), up(&s, &table));
    let pb = PagedBatch::new(bshape, &d_table, &d_lens).unwrap();
    let mut plan: CudaSlice<i32> = s.alloc_zeros(decode_plan_len(batch)).unwrap();
    k.indexer_decode_plan(&pb, shape, &mut plan).unwrap();
    let mut out: CudaSlice<f32> = s.alloc_zeros(rows * shape.out_stride).unwrap();
    k.indexer_logits_decode(&pb, shape, &q8, &w, &cache, &plan, &mut out)
        .unwrap();
    digest(&s, "indexer_decode plan", &plan);
    digest(&s, "indexer_decode logits", &out);

    // Top-k of those rows, translated through the block table (each row's length derived
    // on the device from its sequence's).
    let kk = 512usize;
    let mut idx: CudaSlice<i32> = s.alloc_zeros(rows * kk).unwrap();
    let tshape = PagedTopkShape {
        cols: shape.max_ctx,
        row_stride: shape.out_stride,
        topk: kk,
        sorted: true,
    };
    k.topk_paged(&pb, &out, tshape, &mut idx).unwrap();
    digest(&s, "topk translated", &idx);
}

fn cache_write(k: &DsaKernels, g: &mut Gen) {
    let s = k.stream().clone();
    let n = 300usize;
    let src = up(&s, &g.bf16s(n * 576));
    let slots: Vec<i32> = (0..(n as i32)).map(|i| i * 3 % 1280).collect();
    let slots = SlotMapping::new(&s, &slots).unwrap();
    let mut c = MlaFp8Cache::new(&s, 20).unwrap();
    s.memset_zeros(c.data_mut()).unwrap();
    k.write_cache(
        &mut c,
        CacheRows {
            src: &src,
            rows: n,
            row_stride: 576,
        },
        &slots,
        false,
    )
    .unwrap();
    digest(&s, "cache_write mla_fp8", c.data());
}

fn main() {
    let ctx = device::open_device(0).expect("a CUDA device");
    let k = DsaKernels::new(ctx.default_stream()).expect("kernel handle");
    let mut g = Gen(0x9e37_79b9_7f4a_7c15);
    sparse_decode(&k, &mut g, 128, false);
    sparse_decode(&k, &mut g, 4, false);
    sparse_decode(&k, &mut g, 4, true);
    sparse_prefill(&k, &mut g);
    dense_decode(&k, &mut g, 2, 5000);
    dense_decode(&k, &mut g, 16, 1000);
    indexer(&k, &mut g);
    cache_write(&k, &mut g);
}
