//! One DSA decode step end to end through the library's [`DsaDecodeStep`]: indexer plan +
//! paged logits + top-k with block-table translation + sparse FP8 MLA decode, checked
//! stage by stage against the reference, and replayed from a CUDA graph.
use std::sync::Arc;

use dsa_kernels::cache::{
    write_host_token, IndexerK, IndexerKCache, MlaFp8, MlaFp8Cache, PAGE_SIZE,
};
use dsa_kernels::cudarc::driver::{sys as cu, CudaSlice, CudaStream};
use dsa_kernels::{
    device, fp8, DsaDecodeStep, DsaDecodeStepConfig, DsaKernels, PagedBatch, PagedBatchShape,
};
use dsa_reference as reference;
use half::bf16;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::common::{cos_diff, download, max_rel_err, upload};

const IDX_HEADS: usize = 64;
const H_Q: usize = 64;
const SCALE: f32 = 0.135234;

/// Host inputs of one step.
struct Problem {
    batch: usize,
    topk: usize,
    max_ctx: usize,
    max_pages: usize,
    lens: Vec<i32>,
    block_table: Vec<i32>,
    index_cache: Vec<u8>,
    mla_cache: Vec<u8>,
    q8: Vec<u8>,
    w: Vec<f32>,
    q: Vec<bf16>,
}

impl Problem {
    fn new(seed: u64, batch: usize, topk: usize, max_len: usize) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        // Lengths below, at and above top-k, and an empty sequence when batch > 2.
        let mut lens: Vec<i32> = (0..batch)
            .map(|_| rng.random_range(1..=max_len) as i32)
            .collect();
        if batch > 2 {
            lens[1] = 0;
        }
        let max_pages = (*lens.iter().max().unwrap() as usize)
            .max(1)
            .div_ceil(PAGE_SIZE);
        // The step's logits rows cover the whole block table.
        let max_ctx = max_pages * PAGE_SIZE;
        // Shuffled, non-contiguous pages with spare ones no sequence uses.
        let used: usize = lens.iter().map(|&l| (l as usize).div_ceil(PAGE_SIZE)).sum();
        let total_pages = used + 3;
        let mut pages: Vec<i32> = (0..total_pages as i32).collect();
        pages.shuffle(&mut rng);
        let mut block_table = vec![0i32; batch * max_pages];
        let mut next = 0;
        for b in 0..batch {
            for p in 0..(lens[b] as usize).div_ceil(PAGE_SIZE) {
                block_table[b * max_pages + p] = pages[next];
                next += 1;
            }
        }
        let slots = total_pages * PAGE_SIZE;
        let mut index_cache = vec![0u8; total_pages * dsa_kernels::cache::INDEXER_PAGE_BYTES];
        let mut mla_cache = vec![0u8; slots * dsa_kernels::cache::MLA_FP8_BYTES_PER_TOKEN];
        for slot in 0..slots {
            let k: Vec<bf16> = (0..128)
                .map(|_| bf16::from_f32(rng.random_range(-1.0f32..1.0)))
                .collect();
            write_host_token::<IndexerK>(&mut index_cache, slot, &k, true).unwrap();
            let kv: Vec<bf16> = (0..576)
                .map(|_| bf16::from_f32(rng.random_range(-1.0f32..1.0)))
                .collect();
            write_host_token::<MlaFp8>(&mut mla_cache, slot, &kv, false).unwrap();
        }
        let q8 = (0..batch * IDX_HEADS * 128)
            .map(|_| fp8::f32_to_e4m3(rng.random_range(-4.0f32..4.0)))
            .collect();
        let w = (0..batch * IDX_HEADS)
            .map(|_| rng.random_range(0.0f32..0.05))
            .collect();
        let q = (0..batch * H_Q * 576)
            .map(|_| bf16::from_f32(rng.random_range(-1.0f32..1.0)))
            .collect();
        Self {
            batch,
            topk,
            max_ctx,
            max_pages,
            lens,
            block_table,
            index_cache,
            mla_cache,
            q8,
            w,
            q,
        }
    }

    fn shape(&self) -> PagedBatchShape {
        PagedBatchShape {
            batch: self.batch,
            next_n: 1,
            max_pages: self.max_pages,
        }
    }

    fn step_config(&self) -> DsaDecodeStepConfig {
        DsaDecodeStepConfig {
            max_batch: self.batch,
            next_n: 1,
            max_pages: self.max_pages,
            index_heads: IDX_HEADS,
            heads: H_Q,
            topk: self.topk,
            softmax_scale: SCALE,
            sorted_topk: false,
        }
    }
}

/// Device buffers of one step; outputs poisoned at creation.
struct Step {
    shape: PagedBatchShape,
    lens: CudaSlice<i32>,
    block_table: CudaSlice<i32>,
    index_cache: IndexerKCache,
    mla_cache: MlaFp8Cache,
    q: CudaSlice<bf16>,
    step: DsaDecodeStep,
    out: CudaSlice<bf16>,
    lse: CudaSlice<f32>,
}

impl Step {
    fn new(k: &DsaKernels, p: &Problem) -> Self {
        let s = k.stream();
        let mut step = DsaDecodeStep::new(k, p.step_config()).unwrap();
        // The test starts from prepared indexer queries (the prep kernels have their own
        // tests): write them where the step's prep would.
        let (q8, w) = step.prepared_queries_mut();
        s.memcpy_htod(&p.q8, &mut q8.slice_mut(..p.q8.len()))
            .unwrap();
        s.memcpy_htod(&p.w, &mut w.slice_mut(..p.w.len())).unwrap();
        let mut st = Self {
            shape: p.shape(),
            lens: upload(s, &p.lens),
            block_table: upload(s, &p.block_table),
            index_cache: IndexerKCache::from_slice(upload(s, &p.index_cache)).unwrap(),
            mla_cache: MlaFp8Cache::from_slice(upload(s, &p.mla_cache)).unwrap(),
            q: upload(s, &p.q),
            step,
            out: upload(s, &vec![bf16::NAN; p.batch * H_Q * 512]),
            lse: upload(s, &vec![f32::NAN; p.batch * H_Q]),
        };
        st.poison(s);
        st
    }

    fn poison(&mut self, s: &Arc<CudaStream>) {
        let (plan, logits, indices) = self.step.buffers_mut();
        s.memcpy_htod(&vec![-7i32; plan.len()], plan).unwrap();
        s.memcpy_htod(&vec![f32::NAN; logits.len()], logits)
            .unwrap();
        s.memcpy_htod(&vec![i32::MIN; indices.len()], indices)
            .unwrap();
        s.memcpy_htod(&vec![bf16::NAN; self.out.len()], &mut self.out)
            .unwrap();
        s.memcpy_htod(&vec![f32::NAN; self.lse.len()], &mut self.lse)
            .unwrap();
    }

    /// The whole step: the plan once, then what a decode engine enqueues per layer.
    fn run(&mut self, k: &DsaKernels) {
        let batch = PagedBatch::new(self.shape, &self.block_table, &self.lens).unwrap();
        self.step.plan(k, &batch).unwrap();
        self.step
            .decode_prepared(
                k,
                &batch,
                &self.index_cache,
                &self.mla_cache,
                &self.q,
                &mut self.out,
                &mut self.lse,
            )
            .unwrap();
    }

    fn results(
        &self,
        p: &Problem,
        s: &Arc<CudaStream>,
    ) -> (Vec<f32>, Vec<i32>, Vec<f32>, Vec<f32>) {
        let out = download(s, &self.out).iter().map(|v| v.to_f32()).collect();
        let logits = download(s, self.step.logits());
        let indices = download(s, self.step.indices());
        (
            logits[..p.batch * p.max_ctx].to_vec(),
            indices[..p.batch * p.topk].to_vec(),
            out,
            download(s, &self.lse),
        )
    }
}

/// Checks every stage of `got` against the reference.
fn check(p: &Problem, got: &(Vec<f32>, Vec<i32>, Vec<f32>, Vec<f32>)) {
    let (logits, indices, out, lse) = got;
    // 1. Logits: same FP8 inputs and fp32 head sums on both sides, but Hopper's FP8 MMA
    //    accumulates each 128-long dot product with fewer mantissa bits than fp32 (the
    //    reason DeepGEMM promotes partial sums), which shows as ~1e-4 of the largest
    //    logit; 1e-3 leaves headroom without hiding a wrong key or weight (those move
    //    logits by O(1) relative). -inf positions must match exactly.
    let r_logits = reference::indexer::logits_decode(
        &p.q8,
        &p.w,
        &p.index_cache,
        &p.lens,
        &p.block_table,
        p.max_pages,
        1,
        IDX_HEADS,
        p.max_ctx,
    );
    let e = max_rel_err(logits, &r_logits);
    assert!(e < 1e-3, "indexer logits: max rel err {e:.3e}");

    // 2. Top-k: a set of valid, distinct slots of the right size whose reference logits
    //    are all at least the reference k-th largest (up to the logits tolerance), so a
    //    boundary tie may resolve either way.
    for b in 0..p.batch {
        let len = p.lens[b] as usize;
        let row = &r_logits[b * p.max_ctx..b * p.max_ctx + p.max_ctx];
        let mut vals: Vec<f32> = row[..len].to_vec();
        vals.sort_by(|a, b| b.partial_cmp(a).unwrap());
        let want = len.min(p.topk);
        let kth = if want > 0 {
            vals[want - 1]
        } else {
            f32::INFINITY
        };
        let amax = vals.first().map_or(0.0, |v| v.abs());
        let sel = &indices[b * p.topk..(b + 1) * p.topk];
        let valid: Vec<i32> = sel.iter().copied().filter(|&i| i >= 0).collect();
        assert_eq!(valid.len(), want, "batch {b}: selected count");
        assert!(sel.iter().all(|&i| i >= -1), "batch {b}: unwritten index");
        let mut seen = std::collections::HashSet::new();
        for &slot in &valid {
            // Translate back: which logical position of this sequence has this slot?
            let page = slot as usize / PAGE_SIZE;
            let pos = (0..(len.div_ceil(PAGE_SIZE)))
                .find(|&lp| p.block_table[b * p.max_pages + lp] as usize == page)
                .map(|lp| lp * PAGE_SIZE + slot as usize % PAGE_SIZE)
                .unwrap_or_else(|| {
                    panic!("batch {b}: slot {slot} is not in this sequence's pages")
                });
            assert!(
                pos < len,
                "batch {b}: slot {slot} is position {pos} past the length {len}"
            );
            assert!(seen.insert(pos), "batch {b}: position {pos} selected twice");
            assert!(
                row[pos] >= kth - 1e-3 * amax,
                "batch {b}: position {pos} below the k-th largest"
            );
        }
    }

    // 3. Sparse attention over the selected slots (the kernel's own indices, so the check
    //    is of attention, not of top-k again). The kernel rounds dequantized keys to bf16
    //    before the MMA; the oracle reads the cache through the same rounding. bf16 P and
    //    output: cosine difference < 1e-5, max abs error <= 1e-2 of max |ref|, lse 1e-3.
    let kv = |slot: usize| {
        reference::cache::mla_fp8_cache_read(&p.mla_cache, slot).map(|v| {
            v.into_iter()
                .map(|x| bf16::from_f32(x).to_f32())
                .collect::<Vec<f32>>()
        })
    };
    let (r_out, r_lse) = reference::attention::sparse_mla_decode(
        &p.q, &kv, indices, None, None, SCALE, p.batch, 1, H_Q, p.topk,
    );
    let cd = cos_diff(out, &r_out);
    let re = max_rel_err(out, &r_out);
    assert!(
        cd < 1e-5 && re < 1e-2,
        "sparse out: cos diff {cd:.3e}, max rel err {re:.3e}"
    );
    for (i, (&a, &b)) in lse.iter().zip(&r_lse).enumerate() {
        assert!(
            (a == b) || (a - b).abs() < 1e-3,
            "lse[{i}]: kernel {a}, reference {b}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(6))]

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn dsa_decode_step_matches_reference(seed in any::<u64>(), batch in 1usize..5, topk_blocks in 1usize..4, max_len in 1usize..700) {
        let k = crate::common::kernels();
        let p = Problem::new(seed, batch, 64 * topk_blocks, max_len);
        let mut st = Step::new(&k, &p);
        st.run(&k);
        check(&p, &st.results(&p, k.stream()));
    }
}

/// The step captured in a CUDA graph: the replay, over poisoned outputs and plan, equals
/// the eager run bit for bit.
#[test]
#[ignore = "needs a CUDA GPU"]
fn dsa_decode_step_replays_from_cuda_graph() {
    let ctx = device::open_device(0).expect("CUDA device");
    // SAFETY: every buffer of this test lives on one stream; cudarc's cross-stream event
    // waits would be illegal inside a capture.
    unsafe { ctx.disable_event_tracking() };
    let stream = ctx.new_stream().unwrap();
    let k = DsaKernels::new(stream.clone()).unwrap();
    let p = Problem::new(7, 4, 128, 600);
    let mut st = Step::new(&k, &p);
    st.run(&k);
    let eager = st.results(&p, &stream);
    check(&p, &eager);

    stream
        .begin_capture(cu::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .unwrap();
    st.run(&k);
    let graph = stream
        .end_capture(cu::CUgraphInstantiate_flags(0))
        .unwrap()
        .expect("captured graph");
    st.poison(&stream);
    graph.launch().unwrap();
    let replay = st.results(&p, &stream);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&eager.0), bits(&replay.0), "logits differ on replay");
    // Top-k output order is unspecified, so compare per-row sets.
    for b in 0..p.batch {
        let mut e = eager.1[b * p.topk..(b + 1) * p.topk].to_vec();
        let mut r = replay.1[b * p.topk..(b + 1) * p.topk].to_vec();
        e.sort_unstable();
        r.sort_unstable();
        assert_eq!(e, r, "top-k set of batch {b} differs on replay");
    }
    // The top-k kernel may emit a set in another order (shared-memory atomics), which
    // reorders the softmax accumulation: equal up to rounding, not bit for bit.
    for (i, (&a, &b)) in eager.3.iter().zip(&replay.3).enumerate() {
        assert!(
            a == b || (a - b).abs() < 1e-5,
            "lse[{i}] on replay: {b}, eager {a}"
        );
    }
    let e = max_rel_err(&replay.2, &eager.2);
    assert!(e < 1e-2, "output on replay: {e:.3e} from the eager run");
}
