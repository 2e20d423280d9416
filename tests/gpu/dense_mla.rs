//! Dense paged MLA decode (plan + split + combine) against the f64 reference oracle.
//!
//! Tolerances (FlashMLA's trio) and why:
//! * out: cosine difference < 1e-5 and max |out - ref| <= 1e-2 * max |ref|: the kernel
//!   rounds P to bf16 before the PV product and the output to bf16 (relative 2^-9 each),
//!   everything else accumulates in f32;
//! * lse: |lse - ref| <= 1e-3: the scores are exact bf16 x bf16 products summed in f32, and
//!   the denominator is summed in f32 from unrounded probabilities;
//! * inf/NaN positions must match exactly (lonely queries: out 0, lse +inf).
//!
//! FP8 caches: the kernel dequantizes each value to bf16 (value x scale, rounded) before
//! the bf16 MMA, so the oracle reads the cache through the same rounding; what is tested is
//! the attention, the dequantization is pinned bit for bit by the cache tests.
use dsa_kernels::cache::{MlaBf16Cache, MlaFp8Cache, PAGE_SIZE};
use dsa_kernels::cudarc::driver::{sys as cu, CudaSlice, CudaStream};
use dsa_kernels::dense_mla::DenseMlaConfig;
use dsa_kernels::{device, DsaError, DsaKernels};
use dsa_kernels::{PagedBatch, PagedBatchShape};
use dsa_reference::attention;
use dsa_reference::cache as rcache;
use half::bf16;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::sync::Arc;

use crate::common::{cos_diff, download, kernels, max_rel_err, upload, Guarded};

const SCALE: f32 = 0.135234;
const DIM: usize = 576;
const DV: usize = 512;

fn cases(default: u32) -> u32 {
    std::env::var("DSA_TEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Host copy of a paged MLA cache and the block table of one step.
struct Step {
    batch: usize,
    s_q: usize,
    h_q: usize,
    lens: Vec<i32>,
    max_pages: usize,
    num_pages: usize,
    block_table: Vec<i32>,
    q: Vec<bf16>,
    /// bf16 rows of every slot, `[num_pages * 64, 576]` (NaN rows past each length).
    rows: Vec<bf16>,
}

fn rand_bf16(rng: &mut StdRng, n: usize) -> Vec<bf16> {
    (0..n)
        .map(|_| bf16::from_f32(rng.random_range(-1.0f32..1.0)))
        .collect()
}

/// Random lengths with the edge sizes mixed in: 0, 1, 63, 64, 65 and up to `max_len`.
fn rand_len(rng: &mut StdRng, max_len: usize) -> usize {
    match rng.random_range(0..8) {
        0 => 0,
        1 => 1,
        2 => [63, 64, 65, 127, 129][rng.random_range(0..5)],
        _ => rng.random_range(2..=max_len),
    }
}

impl Step {
    fn new(seed: u64, batch: usize, s_q: usize, h_q: usize, max_len: usize) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let lens: Vec<i32> = (0..batch)
            .map(|_| rand_len(&mut rng, max_len) as i32)
            .collect();
        let pages_of = |l: i32| (l as usize).div_ceil(PAGE_SIZE);
        let max_pages =
            lens.iter().map(|&l| pages_of(l)).max().unwrap_or(0).max(1) + rng.random_range(0..3);
        let used: usize = lens.iter().map(|&l| pages_of(l)).sum();
        let num_pages = used + rng.random_range(1..6);
        // Shuffled, non-contiguous pages; unused table entries hold garbage (out of range
        // or valid), which the kernel must never dereference past a sequence's length.
        let mut perm: Vec<i32> = (0..num_pages as i32).collect();
        perm.shuffle(&mut rng);
        let mut block_table = vec![0i32; batch * max_pages];
        let mut next = 0;
        for b in 0..batch {
            for i in 0..max_pages {
                block_table[b * max_pages + i] = if i < pages_of(lens[b]) {
                    next += 1;
                    perm[next - 1]
                } else {
                    [-1, i32::MAX, num_pages as i32, perm[0]][rng.random_range(0..4)]
                };
            }
        }
        let mut rows = rand_bf16(&mut rng, num_pages * PAGE_SIZE * DIM);
        // Slots past each length in its last page are NaN: masked tokens must not leak.
        for b in 0..batch {
            let l = lens[b] as usize;
            if !l.is_multiple_of(PAGE_SIZE) {
                let page = block_table[b * max_pages + l / PAGE_SIZE] as usize;
                for off in l % PAGE_SIZE..PAGE_SIZE {
                    let s = (page * PAGE_SIZE + off) * DIM;
                    rows[s..s + DIM].fill(bf16::NAN);
                }
            }
        }
        let q = rand_bf16(&mut rng, batch * s_q * h_q * DIM);
        Step {
            batch,
            s_q,
            h_q,
            lens,
            max_pages,
            num_pages,
            block_table,
            q,
            rows,
        }
    }

    fn shape(&self) -> PagedBatchShape {
        PagedBatchShape {
            batch: self.batch,
            next_n: self.s_q,
            max_pages: self.max_pages,
        }
    }

    fn fp8_bytes(&self, pow2: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.num_pages * PAGE_SIZE * 656);
        for r in self.rows.chunks(DIM) {
            out.extend_from_slice(&rcache::encode_mla_fp8_token_with(r, pow2));
        }
        out
    }

    fn reference(&self, kv: &dyn Fn(usize) -> Option<Vec<f32>>) -> (Vec<f32>, Vec<f32>) {
        attention::dense_mla_decode(
            &self.q,
            kv,
            &self.block_table,
            self.max_pages,
            &self.lens,
            SCALE,
            self.batch,
            self.s_q,
            self.h_q,
        )
    }
}

/// Device buffers of one step, outputs poisoned with NaN.
struct Bufs {
    shape: PagedBatchShape,
    q: CudaSlice<bf16>,
    bt: CudaSlice<i32>,
    lens: CudaSlice<i32>,
    plan: CudaSlice<i32>,
    ws: CudaSlice<f32>,
    out: CudaSlice<bf16>,
    lse: CudaSlice<f32>,
}

impl Bufs {
    fn new(stream: &Arc<CudaStream>, st: &Step, cfg: &DenseMlaConfig) -> Self {
        let rows = st.batch * st.s_q * st.h_q;
        let shape = st.shape();
        Bufs {
            shape,
            q: upload(stream, &st.q),
            bt: upload(stream, &st.block_table),
            lens: upload(stream, &st.lens),
            plan: upload(stream, &vec![-0x5A5A5A5Ai32; cfg.plan_len(&shape)]),
            ws: upload(stream, &vec![f32::NAN; cfg.workspace_len(&shape)]),
            out: upload(stream, &vec![bf16::NAN; rows * DV]),
            lse: upload(stream, &vec![f32::NAN; rows]),
        }
    }

    fn run<K: dsa_kernels::cache::MlaCacheKind>(
        &mut self,
        k: &DsaKernels,
        cfg: &DenseMlaConfig,
        cache: &dsa_kernels::cache::PagedCache<K>,
    ) -> Result<(), DsaError> {
        let pb = PagedBatch::new(self.shape, &self.bt, &self.lens)?;
        k.dense_mla_plan(cfg, &pb, &mut self.plan)?;
        k.dense_mla_decode(
            cfg,
            &pb,
            cache,
            &self.q,
            &self.plan,
            &mut self.ws,
            &mut self.out,
            &mut self.lse,
        )
    }

    fn results(&self, stream: &Arc<CudaStream>) -> (Vec<f32>, Vec<f32>) {
        let out = download(stream, &self.out)
            .iter()
            .map(|v| v.to_f32())
            .collect();
        (out, download(stream, &self.lse))
    }
}

fn check(what: &str, out: &[f32], lse: &[f32], r_out: &[f32], r_lse: &[f32]) {
    assert!(
        out.iter().all(|v| !v.is_nan()),
        "{what}: NaN in out (unwritten or leaked)"
    );
    let rel = max_rel_err(out, r_out);
    let cd = cos_diff(out, r_out);
    assert!(
        rel <= 1e-2,
        "{what}: max abs err / max|ref| = {rel:e} > 1e-2"
    );
    assert!(cd < 1e-5, "{what}: cos_diff {cd:e} >= 1e-5");
    let mut worst = 0f32;
    for (i, (&a, &b)) in lse.iter().zip(r_lse).enumerate() {
        if !b.is_finite() || !a.is_finite() {
            assert!(
                a == b,
                "{what}: lse inf/NaN mismatch at {i}: kernel {a}, ref {b}"
            );
            continue;
        }
        worst = worst.max((a - b).abs());
    }
    assert!(worst <= 1e-3, "{what}: lse error {worst:e} > 1e-3");
}

fn parts_for(k: &DsaKernels, st: &Step, sel: usize) -> DenseMlaConfig {
    let mut cfg = k.dense_mla_config(&st.shape(), st.h_q, SCALE);
    // The default one-wave split, a single part (no split at all), a few parts (pieces
    // spanning sequences), and far more parts than work (many empty or one-block pieces).
    cfg.num_parts = match sel {
        0 => cfg.num_parts,
        1 => 1,
        2 => 3,
        _ => 150,
    };
    cfg
}

fn bf16_case(seed: u64, batch: usize, s_q: usize, h_q: usize, sel: usize, max_len: usize) {
    let k = kernels();
    let stream = k.stream().clone();
    let st = Step::new(seed, batch, s_q, h_q, max_len);
    let cfg = parts_for(&k, &st, sel);
    let cache = MlaBf16Cache::from_slice(upload(&stream, &st.rows)).unwrap();
    let mut bufs = Bufs::new(&stream, &st, &cfg);
    bufs.run(&k, &cfg, &cache).unwrap();
    let (out, lse) = bufs.results(&stream);
    let kv = attention::kv_from_bf16_cache(&st.rows);
    let (r_out, r_lse) = st.reference(&kv);
    check(
        &format!(
            "bf16 b={batch} s_q={s_q} h_q={h_q} parts={} lens={:?}",
            cfg.num_parts, st.lens
        ),
        &out,
        &lse,
        &r_out,
        &r_lse,
    );
}

fn fp8_case(
    seed: u64,
    batch: usize,
    s_q: usize,
    h_q: usize,
    sel: usize,
    max_len: usize,
    pow2: bool,
) {
    let k = kernels();
    let stream = k.stream().clone();
    let st = Step::new(seed, batch, s_q, h_q, max_len);
    let cfg = parts_for(&k, &st, sel);
    let bytes = st.fp8_bytes(pow2);
    let cache = MlaFp8Cache::from_slice(upload(&stream, &bytes)).unwrap();
    let mut bufs = Bufs::new(&stream, &st, &cfg);
    bufs.run(&k, &cfg, &cache).unwrap();
    let (out, lse) = bufs.results(&stream);
    let kv = |slot: usize| {
        rcache::mla_fp8_cache_read(&bytes, slot)
            .map(|v| v.into_iter().map(|x| bf16::from_f32(x).to_f32()).collect())
    };
    let (r_out, r_lse) = st.reference(&kv);
    check(
        &format!(
            "fp8 b={batch} s_q={s_q} h_q={h_q} parts={} lens={:?}",
            cfg.num_parts, st.lens
        ),
        &out,
        &lse,
        &r_out,
        &r_lse,
    );
}

const HEADS: [usize; 4] = [128, 64, 16, 96];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(8)))]

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn dense_decode_bf16_matches_reference(seed in any::<u64>(), batch in 1usize..5, s_q in 1usize..5,
                                           h in 0usize..4, sel in 0usize..4) {
        bf16_case(seed, batch, s_q, HEADS[h], sel, 2500);
    }

    #[test]
    #[ignore = "needs a CUDA GPU"]
    fn dense_decode_fp8_matches_reference(seed in any::<u64>(), batch in 1usize..5, s_q in 1usize..5,
                                          h in 0usize..4, sel in 0usize..4, pow2 in any::<bool>()) {
        fp8_case(seed, batch, s_q, HEADS[h], sel, 2500, pow2);
    }
}

/// A long context (several thousand tokens) with many sequences: the default split puts
/// several pieces in most sequences and several sequences in most parts.
#[test]
#[ignore = "needs a CUDA GPU"]
fn dense_decode_long_context_many_pieces() {
    bf16_case(7, 6, 1, 128, 0, 6000);
    fp8_case(8, 3, 2, 128, 0, 6000, false);
}

/// Block-table entries outside the cache inside a sequence's length mask their 64
/// tokens (no read happens); the rest of the sequence is attended normally.
#[test]
#[ignore = "needs a CUDA GPU"]
fn dense_decode_skips_out_of_range_pages() {
    let k = kernels();
    let stream = k.stream().clone();
    let mut st = Step::new(11, 2, 1, 64, 10);
    st.lens = vec![300, 130];
    let max_pages = 5;
    st.max_pages = max_pages;
    st.num_pages = 12;
    let mut rng = StdRng::seed_from_u64(3);
    st.rows = rand_bf16(&mut rng, st.num_pages * PAGE_SIZE * DIM);
    st.block_table = vec![3, 1_000_000, 7, 0, 9, 5, -4, 2, -1, -1];
    let bad = [(0usize, 1usize), (1, 1)];
    let cfg = parts_for(&k, &st, 0);
    let cache = MlaBf16Cache::from_slice(upload(&stream, &st.rows)).unwrap();
    let mut bufs = Bufs::new(&stream, &st, &cfg);
    bufs.run(&k, &cfg, &cache).unwrap();
    let (out, lse) = bufs.results(&stream);
    let mut r_out = vec![0f32; 2 * 64 * DV];
    let mut r_lse = vec![0f32; 2 * 64];
    for b in 0..2 {
        let keys: Vec<Vec<f32>> = (0..st.lens[b] as usize)
            .filter(|s| !bad.contains(&(b, s / PAGE_SIZE)))
            .map(|s| {
                let slot = rcache::slot_of(&st.block_table[b * max_pages..], s);
                rcache::mla_bf16_cache_read(&st.rows, slot).unwrap()
            })
            .collect();
        for h in 0..64 {
            let qh: Vec<f32> = st.q[(b * 64 + h) * DIM..(b * 64 + h + 1) * DIM]
                .iter()
                .map(|v| v.to_f32())
                .collect();
            let (o, l) = attention::attend_partial(&qh, &keys, SCALE, DV);
            r_out[(b * 64 + h) * DV..(b * 64 + h + 1) * DV].copy_from_slice(&o);
            r_lse[b * 64 + h] = l;
        }
    }
    check("out-of-range pages", &out, &lse, &r_out, &r_lse);
}

/// Arguments are checked on the host before any launch.
#[test]
#[ignore = "needs a CUDA GPU"]
fn dense_decode_rejects_bad_arguments() {
    let k = kernels();
    let stream = k.stream().clone();
    let st = Step::new(5, 2, 1, 64, 100);
    let cfg = parts_for(&k, &st, 0);
    let cache = MlaBf16Cache::from_slice(upload(&stream, &st.rows)).unwrap();
    let mut bufs = Bufs::new(&stream, &st, &cfg);
    let pb = PagedBatch::new(bufs.shape, &bufs.bt, &bufs.lens).unwrap();
    // q one row short.
    let short = upload(&stream, &st.q[..st.q.len() - DIM]);
    let err = k
        .dense_mla_decode(
            &cfg,
            &pb,
            &cache,
            &short,
            &bufs.plan,
            &mut bufs.ws,
            &mut bufs.out,
            &mut bufs.lse,
        )
        .unwrap_err();
    assert!(matches!(err, DsaError::Shape { .. }), "{err}");
    // Workspace too small.
    let mut small_ws = upload(&stream, &vec![0f32; cfg.workspace_len(&bufs.shape) - 1]);
    let err = k
        .dense_mla_decode(
            &cfg,
            &pb,
            &cache,
            &bufs.q,
            &bufs.plan,
            &mut small_ws,
            &mut bufs.out,
            &mut bufs.lse,
        )
        .unwrap_err();
    assert!(matches!(err, DsaError::Shape { .. }), "{err}");
    // Plan too small.
    let mut small_plan = upload(&stream, &vec![0i32; cfg.plan_len(&bufs.shape) - 1]);
    let err = k.dense_mla_plan(&cfg, &pb, &mut small_plan).unwrap_err();
    assert!(matches!(err, DsaError::Shape { .. }), "{err}");
    // (The indexer K cache is not an MLA cache: passing it does not compile.)
    // Zero heads, zero parts.
    let mut plan = upload(&stream, &vec![0i32; cfg.plan_len(&bufs.shape)]);
    for bad in [
        DenseMlaConfig { heads: 0, ..cfg },
        DenseMlaConfig {
            num_parts: 0,
            ..cfg
        },
    ] {
        let err = k.dense_mla_plan(&bad, &pb, &mut plan).unwrap_err();
        assert!(matches!(err, DsaError::Unsupported { .. }), "{err}");
    }
}

/// A whole decode step (plan, then two layers of split + combine) captured in a CUDA
/// graph and replayed: the replay must equal the eager run bit for bit, and must pick up
/// new inputs written into the same buffers.
///
/// Capture needs a stream other than the legacy default one. cudarc records events on
/// every buffer access once a context has several streams; waiting on an event recorded
/// before the capture began is illegal inside it, so this context turns event tracking
/// off before allocating anything (one stream, nothing to track).
#[test]
#[ignore = "needs a CUDA GPU"]
fn dense_decode_step_replays_from_cuda_graph() {
    let ctx = device::open_device(0).expect("CUDA device");
    // SAFETY: every buffer of this test is used on one stream only.
    unsafe { ctx.disable_event_tracking() };
    let stream = ctx.new_stream().unwrap();
    let k = DsaKernels::new(stream.clone()).unwrap();
    let st = Step::new(21, 3, 2, 128, 900);
    let cfg = parts_for(&k, &st, 0);
    let cache = MlaBf16Cache::from_slice(upload(&stream, &st.rows)).unwrap();
    let fp8 = MlaFp8Cache::from_slice(upload(&stream, &st.fp8_bytes(false))).unwrap();
    let mut a = Bufs::new(&stream, &st, &cfg);
    let mut out2 = upload(&stream, &vec![bf16::NAN; st.batch * st.s_q * st.h_q * DV]);
    let mut lse2 = upload(&stream, &vec![f32::NAN; st.batch * st.s_q * st.h_q]);
    let step = |a: &mut Bufs, out2: &mut CudaSlice<bf16>, lse2: &mut CudaSlice<f32>| {
        a.run(&k, &cfg, &cache).unwrap();
        let pb = PagedBatch::new(a.shape, &a.bt, &a.lens).unwrap();
        k.dense_mla_decode(&cfg, &pb, &fp8, &a.q, &a.plan, &mut a.ws, out2, lse2)
            .unwrap();
    };
    step(&mut a, &mut out2, &mut lse2);
    let eager = (
        a.results(&stream),
        download(&stream, &out2),
        download(&stream, &lse2),
    );

    stream
        .begin_capture(cu::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .unwrap();
    step(&mut a, &mut out2, &mut lse2);
    let graph = stream
        .end_capture(cu::CUgraphInstantiate_flags(0))
        .unwrap()
        .expect("captured graph");
    // Poison every output and the workspace, replay, compare bit for bit.
    stream
        .memcpy_htod(&vec![bf16::NAN; a.out.len()], &mut a.out)
        .unwrap();
    stream
        .memcpy_htod(&vec![f32::NAN; a.lse.len()], &mut a.lse)
        .unwrap();
    stream
        .memcpy_htod(&vec![f32::NAN; a.ws.len()], &mut a.ws)
        .unwrap();
    stream
        .memcpy_htod(&vec![-7i32; a.plan.len()], &mut a.plan)
        .unwrap();
    stream
        .memcpy_htod(&vec![bf16::NAN; out2.len()], &mut out2)
        .unwrap();
    graph.launch().unwrap();
    let replay = (
        a.results(&stream),
        download(&stream, &out2),
        download(&stream, &lse2),
    );
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(&eager.0 .0),
        bits(&replay.0 .0),
        "bf16-cache out differs on replay"
    );
    assert_eq!(
        bits(&eager.0 .1),
        bits(&replay.0 .1),
        "bf16-cache lse differs on replay"
    );
    assert_eq!(eager.1, replay.1, "fp8-cache out differs on replay");
    assert_eq!(
        bits(&eager.2),
        bits(&replay.2),
        "fp8-cache lse differs on replay"
    );

    // New q and lengths in the same buffers: the replay must compute the new step.
    let st2 = Step {
        q: Step::new(22, 3, 2, 128, 900).q,
        lens: vec![st.lens[0], 0, st.lens[2].min(1)],
        ..st
    };
    stream.memcpy_htod(&st2.q, &mut a.q).unwrap();
    stream.memcpy_htod(&st2.lens, &mut a.lens).unwrap();
    graph.launch().unwrap();
    let (out, lse) = a.results(&stream);
    let kv = attention::kv_from_bf16_cache(&st2.rows);
    let (r_out, r_lse) = st2.reference(&kv);
    check("graph replay with new inputs", &out, &lse, &r_out, &r_lse);
}

/// Plans that are not this step's (random words, huge or negative values, all ones) with
/// the decode and the combine: wrong numbers are allowed, memory outside the buffers is
/// not (run under memcheck; the guards around the workspace, out and lse stay untouched).
#[test]
#[ignore = "needs a CUDA GPU"]
fn dense_decode_survives_corrupt_plans() {
    let k = kernels();
    let stream = k.stream().clone();
    let st = Step::new(21, 3, 2, 64, 300);
    let cfg = parts_for(&k, &st, 0);
    let cache = MlaBf16Cache::from_slice(upload(&stream, &st.rows)).unwrap();
    let bufs = Bufs::new(&stream, &st, &cfg);
    let rows = st.batch * st.s_q * st.h_q;
    let n = cfg.plan_len(&bufs.shape);
    let mut rng = StdRng::seed_from_u64(5);
    let plans: Vec<Vec<i32>> = vec![
        (0..n).map(|_| rng.random()).collect(),
        (0..n).map(|_| rng.random_range(-3..40)).collect(),
        vec![-1; n],
        vec![i32::MAX; n],
        vec![1; n],
        (0..n)
            .map(|i| if i % 2 == 0 { i32::MIN } else { i32::MAX })
            .collect(),
    ];
    for plan in plans {
        let d_plan = upload(&stream, &plan);
        let mut ws = Guarded::new(&stream, cfg.workspace_len(&bufs.shape), f32::NAN);
        let mut out = Guarded::new(&stream, rows * DV, bf16::NAN);
        let mut lse = Guarded::new(&stream, rows, f32::NAN);
        let pb = PagedBatch::new(bufs.shape, &bufs.bt, &bufs.lens).unwrap();
        k.dense_mla_decode(
            &cfg,
            &pb,
            &cache,
            &bufs.q,
            &d_plan,
            &mut ws.inner(),
            &mut out.inner(),
            &mut lse.inner(),
        )
        .unwrap();
        let what = format!("plan {:?}..", &plan[..6]);
        ws.check(&stream, &what, |v| v.is_nan());
        out.check(&stream, &what, |v| v.is_nan());
        lse.check(&stream, &what, |v| v.is_nan());
    }
}
