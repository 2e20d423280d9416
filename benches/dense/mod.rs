//! Shared setup of the dense MLA benches: one bf16 and one FP8 MLA cache big enough for
//! the largest case, filled with random (finite, valid FP8) tokens, and the per-case
//! buffers of a decode step over shuffled pages.
#![allow(dead_code)]
use std::sync::Arc;

use dsa_kernels::cache::{
    encode_mla_fp8_token, MlaBf16Cache, MlaCacheKind, MlaFp8Cache, PagedCache,
    MLA_FP8_BYTES_PER_TOKEN, PAGE_SIZE, QK_DIM,
};
use dsa_kernels::cudarc::driver::{CudaSlice, CudaStream, DeviceRepr};
use dsa_kernels::dense_mla::DenseMlaConfig;
use dsa_kernels::{DsaKernels, PagedBatch, PagedBatchShape};
use half::bf16;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

pub const SCALE: f32 = 0.135234;
pub const H_Q: usize = 128;

/// Pages of random content written once and replicated over the whole cache by
/// device-to-device copies (doubling), so filling tens of GB takes well under a second.
const PATTERN_PAGES: usize = 256;

pub fn fill<T: DeviceRepr + Copy + Unpin>(
    stream: &Arc<CudaStream>,
    data: &mut CudaSlice<T>,
    pattern: &[T],
) {
    let total = data.len();
    let n = pattern.len().min(total);
    stream
        .memcpy_htod(&pattern[..n], &mut data.slice_mut(..n))
        .unwrap();
    let mut have = n;
    while have < total {
        let m = have.min(total - have);
        let (src, mut dst) = data.split_at_mut(have);
        stream
            .memcpy_dtod(&src.slice(..m), &mut dst.slice_mut(..m))
            .unwrap();
        have += m;
    }
}

pub fn random_rows(rng: &mut StdRng, tokens: usize) -> Vec<bf16> {
    (0..tokens * QK_DIM)
        .map(|_| bf16::from_f32(rng.random_range(-1.0f32..1.0)))
        .collect()
}

pub fn bf16_cache(stream: &Arc<CudaStream>, pages: usize) -> MlaBf16Cache {
    let mut rng = StdRng::seed_from_u64(1);
    let rows = random_rows(&mut rng, PATTERN_PAGES * PAGE_SIZE);
    let mut c = MlaBf16Cache::new(stream, pages).unwrap();
    fill(stream, c.data_mut(), &rows);
    c
}

pub fn fp8_cache(stream: &Arc<CudaStream>, pages: usize) -> MlaFp8Cache {
    let mut rng = StdRng::seed_from_u64(2);
    let rows = random_rows(&mut rng, PATTERN_PAGES * PAGE_SIZE);
    let mut bytes = Vec::with_capacity(PATTERN_PAGES * PAGE_SIZE * MLA_FP8_BYTES_PER_TOKEN);
    for r in rows.chunks(QK_DIM) {
        bytes.extend_from_slice(&encode_mla_fp8_token(r.try_into().unwrap(), false));
    }
    let mut c = MlaFp8Cache::new(stream, pages).unwrap();
    fill(stream, c.data_mut(), &bytes);
    c
}

/// Buffers of one decode step: `batch` sequences of `ctx` tokens on shuffled pages.
pub struct DenseStep {
    pub shape: PagedBatchShape,
    pub cfg: DenseMlaConfig,
    pub q: CudaSlice<bf16>,
    pub bt: CudaSlice<i32>,
    pub lens: CudaSlice<i32>,
    pub plan: CudaSlice<i32>,
    pub ws: CudaSlice<f32>,
    pub out: CudaSlice<bf16>,
    pub lse: CudaSlice<f32>,
}

impl DenseStep {
    pub fn new(k: &DsaKernels, cache_pages: usize, batch: usize, s_q: usize, ctx: usize) -> Self {
        let stream = k.stream().clone();
        let mut rng = StdRng::seed_from_u64((batch * 31 + ctx) as u64);
        let max_pages = ctx.div_ceil(PAGE_SIZE);
        assert!(batch * max_pages <= cache_pages, "bench cache too small");
        let mut perm: Vec<i32> = (0..cache_pages as i32).collect();
        perm.shuffle(&mut rng);
        let bt: Vec<i32> = perm[..batch * max_pages].to_vec();
        let shape = PagedBatchShape {
            batch,
            next_n: s_q,
            max_pages,
        };
        let cfg = k.dense_mla_config(&shape, H_Q, SCALE);
        let q: Vec<bf16> = (0..batch * s_q * H_Q * QK_DIM)
            .map(|_| bf16::from_f32(rng.random_range(-1.0f32..1.0)))
            .collect();
        let rows = batch * s_q * H_Q;
        let mut s = Self {
            q: stream.clone_htod(&q).unwrap(),
            bt: stream.clone_htod(&bt).unwrap(),
            lens: stream.clone_htod(&vec![ctx as i32; batch]).unwrap(),
            plan: stream.alloc_zeros(cfg.plan_len(&shape)).unwrap(),
            ws: stream.alloc_zeros(cfg.workspace_len(&shape)).unwrap(),
            out: stream.alloc_zeros(rows * 512).unwrap(),
            lse: stream.alloc_zeros(rows).unwrap(),
            shape,
            cfg,
        };
        s.plan(k);
        s
    }

    /// The step's paged batch.
    pub fn batch(&self) -> PagedBatch<'_, CudaSlice<i32>, CudaSlice<i32>> {
        PagedBatch::new(self.shape, &self.bt, &self.lens).unwrap()
    }

    /// One layer: split + combine over the step's plan.
    pub fn layer<K: MlaCacheKind>(&mut self, k: &DsaKernels, cache: &PagedCache<K>) {
        let batch = PagedBatch::new(self.shape, &self.bt, &self.lens).unwrap();
        k.dense_mla_decode(
            &self.cfg,
            &batch,
            cache,
            &self.q,
            &self.plan,
            &mut self.ws,
            &mut self.out,
            &mut self.lse,
        )
        .unwrap();
    }

    pub fn plan(&mut self, k: &DsaKernels) {
        let batch = PagedBatch::new(self.shape, &self.bt, &self.lens).unwrap();
        k.dense_mla_plan(&self.cfg, &batch, &mut self.plan).unwrap();
    }
}

/// FLOPs of one dense decode: `2 h_q s_q (576 + 512)` per attended token.
pub fn flops(batch: usize, s_q: usize, ctx: usize) -> f64 {
    2.0 * (H_Q * s_q * (576 + 512)) as f64 * (batch * ctx) as f64
}

/// Bytes that must move: the cache once, q in, out and lse out.
pub fn bytes(batch: usize, s_q: usize, ctx: usize, bytes_per_token: usize) -> f64 {
    (batch * ctx * bytes_per_token + batch * s_q * H_Q * (576 * 2 + 512 * 2 + 4)) as f64
}
