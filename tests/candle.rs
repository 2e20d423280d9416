//! The candle adapter (feature `candle`) against the direct API: one decode step (cache
//! writes, indexer q/k prep, plan, paged logits, top-k with translation, sparse and dense
//! MLA decode) run both ways on the same inputs and the same stream, and the adapter's
//! argument checks. GPU only (`#[ignore]`d like tests/gpu/); its own executable because
//! the feature makes cudarc link the CUDA libraries.
#![cfg(feature = "candle")]

use candle_core::{DType, Device, Tensor};
use dsa_kernels::cache::{
    CacheRows, IndexerKCache, MlaFp8Cache, SlotMapping, INDEXER_DIM, PAGE_SIZE, QK_DIM,
};
use dsa_kernels::candle::{CandleBatch, CandleDsa};
use dsa_kernels::cudarc::driver::CudaSlice;
use dsa_kernels::half::bf16;
use dsa_kernels::indexer::{rope_tables, IndexerPrepShape, RopeTablesRef, YarnRope};
use dsa_kernels::{
    DsaDecodeStep, DsaDecodeStepConfig, DsaLayerInputs, PagedBatch, PagedBatchShape,
};

const H_Q: usize = 64;
const IDX_HEADS: usize = 64;
const TOPK: usize = 512;
const SCALE: f32 = 0.135234;
const LENS: [usize; 3] = [100, 700, 1300];

fn device() -> Device {
    Device::new_cuda(0).expect("GPU test run without a usable CUDA device")
}

struct Rng(u64);
impl Rng {
    fn f32(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    fn bf16(&mut self, n: usize) -> Vec<bf16> {
        (0..n).map(|_| bf16::from_f32(self.f32())).collect()
    }
}

/// Host inputs: the history of every sequence (all but its last token) is written first,
/// then the step writes and decodes the last token of each.
struct Inputs {
    block_table: Vec<i32>,
    max_pages: usize,
    pages: usize,
    slots: Vec<i32>,
    positions: Vec<i32>,
    kv: Vec<bf16>,
    idx_k: Vec<bf16>,
    idx_q: Vec<bf16>,
    idx_w: Vec<f32>,
    q: Vec<bf16>,
    lens: Vec<i32>,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

fn inputs() -> Inputs {
    let mut r = Rng(0x2545f4914f6cdd1d);
    let batch = LENS.len();
    let max_pages = LENS.iter().map(|l| l.div_ceil(PAGE_SIZE)).max().unwrap();
    let pages: usize = LENS.iter().map(|l| l.div_ceil(PAGE_SIZE)).sum::<usize>() + 2;
    // Pages in reverse order, so the table is not the identity.
    let mut next = pages as i32;
    let mut block_table = vec![0i32; batch * max_pages];
    for (b, &l) in LENS.iter().enumerate() {
        for p in 0..l.div_ceil(PAGE_SIZE) {
            next -= 1;
            block_table[b * max_pages + p] = next;
        }
    }
    let mut slots = Vec::new();
    let mut positions = Vec::new();
    for (b, &l) in LENS.iter().enumerate() {
        for p in 0..l {
            slots.push(
                block_table[b * max_pages + p / PAGE_SIZE] * PAGE_SIZE as i32
                    + (p % PAGE_SIZE) as i32,
            );
            positions.push(p as i32);
        }
    }
    let n = slots.len();
    let (cos, sin) = rope_tables(&YarnRope::deepseek_v32(), max_pages * PAGE_SIZE).unwrap();
    Inputs {
        kv: r.bf16(n * QK_DIM),
        idx_k: r.bf16(n * INDEXER_DIM),
        idx_q: r.bf16(batch * IDX_HEADS * INDEXER_DIM),
        idx_w: (0..batch * IDX_HEADS).map(|_| r.f32() * 0.125).collect(),
        q: r.bf16(batch * H_Q * QK_DIM),
        lens: LENS.iter().map(|&l| l as i32).collect(),
        block_table,
        max_pages,
        pages,
        slots,
        positions,
        cos,
        sin,
    }
}

/// Everything the step produces, downloaded.
#[derive(Debug, PartialEq)]
struct Outputs {
    mla_cache: Vec<u8>,
    index_cache: Vec<u8>,
    q8: Vec<u8>,
    logits: Vec<u32>,
    topk_sets: Vec<Vec<i32>>,
    sparse_out: Vec<f32>,
    sparse_lse: Vec<f32>,
    dense_out: Vec<f32>,
    dense_lse: Vec<f32>,
}

fn sets(indices: &[i32]) -> Vec<Vec<i32>> {
    indices
        .chunks(TOPK)
        .map(|c| {
            let mut v = c.to_vec();
            v.sort_unstable();
            v
        })
        .collect()
}

/// Row indices of the history tokens and of the new (last) token of each sequence.
fn split(x: &Inputs) -> (Vec<usize>, Vec<usize>) {
    let mut hist = Vec::new();
    let mut new = Vec::new();
    let mut row = 0;
    for &l in &LENS {
        hist.extend(row..row + l - 1);
        new.push(row + l - 1);
        row += l;
    }
    assert_eq!(row, x.slots.len());
    (hist, new)
}

fn gather<T: Copy>(v: &[T], width: usize, rows: &[usize]) -> Vec<T> {
    rows.iter()
        .flat_map(|&r| v[r * width..(r + 1) * width].iter().copied())
        .collect()
}

fn through_adapter(dsa: &CandleDsa, dev: &Device, x: &Inputs) -> candle_core::Result<Outputs> {
    let batch = LENS.len();
    let (hist, new) = split(x);
    let mla = dsa.new_mla_fp8_cache(x.pages)?;
    let idx = dsa.new_indexer_cache(x.pages)?;
    let cos = Tensor::from_slice(&x.cos, (x.cos.len() / 32, 32), dev)?;
    let sin = Tensor::from_slice(&x.sin, (x.sin.len() / 32, 32), dev)?;
    // History, then the new tokens, through the same two writes.
    for rows in [&hist, &new] {
        let n = rows.len();
        let slots = Tensor::from_vec(gather(&x.slots, 1, rows), n, dev)?;
        let positions = Tensor::from_vec(gather(&x.positions, 1, rows), n, dev)?;
        let kv = Tensor::from_vec(gather(&x.kv, QK_DIM, rows), (n, QK_DIM), dev)?;
        let idx_k = Tensor::from_vec(gather(&x.idx_k, INDEXER_DIM, rows), (n, INDEXER_DIM), dev)?;
        dsa.write_mla_cache(&mla, &kv, &slots)?;
        dsa.indexer_prepare_k(&idx, &idx_k, &positions, &cos, &sin, &slots)?;
    }
    let positions = Tensor::from_vec(gather(&x.positions, 1, &new), batch, dev)?;
    let (q8, w) = dsa.indexer_prepare_q(
        &Tensor::from_slice(&x.idx_q, (batch, IDX_HEADS, INDEXER_DIM), dev)?,
        &positions,
        &cos,
        &sin,
        &Tensor::from_slice(&x.idx_w, (batch, IDX_HEADS), dev)?,
    )?;
    let seq_lens = Tensor::from_slice(&x.lens, batch, dev)?;
    let table = Tensor::from_slice(&x.block_table, (batch, x.max_pages), dev)?;
    let b = CandleBatch {
        block_table: &table,
        seq_lens: &seq_lens,
        next_n: 1,
    };
    let plan = dsa.indexer_decode_plan(&b, IDX_HEADS)?;
    let logits = dsa.indexer_logits_decode(&b, &q8, &w, &idx, &plan)?;
    let indices = dsa.topk_paged(&b, &logits, TOPK)?;
    let q = Tensor::from_slice(&x.q, (batch, 1, H_Q, QK_DIM), dev)?;
    let (out, lse) = dsa.sparse_mla_decode(&b, &q, &mla, &indices, SCALE)?;
    let (dout, dlse) = dsa.dense_mla_decode(&b, &q, &mla, SCALE)?;
    let f32s = |t: &Tensor| t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>();
    Ok(Outputs {
        mla_cache: mla.flatten_all()?.to_vec1::<u8>()?,
        index_cache: idx.flatten_all()?.to_vec1::<u8>()?,
        q8: q8.flatten_all()?.to_vec1::<u8>()?,
        logits: logits
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .map(|v| v.to_bits())
            .collect(),
        topk_sets: sets(&indices.flatten_all()?.to_vec1::<i32>()?),
        sparse_out: f32s(&out)?,
        sparse_lse: f32s(&lse)?,
        dense_out: f32s(&dout)?,
        dense_lse: f32s(&dlse)?,
    })
}

/// The same step through the direct API: the history with the checked writes, the new
/// tokens through the library's `DsaDecodeStep`, the dense decode by hand.
fn through_direct_api(dsa: &CandleDsa, x: &Inputs) -> Outputs {
    let k = dsa.kernels();
    let s = k.stream().clone();
    let batch = LENS.len();
    let (hist, new) = split(x);
    let mut mla = MlaFp8Cache::new(&s, x.pages).unwrap();
    let mut idx = IndexerKCache::new(&s, x.pages).unwrap();
    let cos = s.clone_htod(&x.cos).unwrap();
    let sin = s.clone_htod(&x.sin).unwrap();
    let rope = RopeTablesRef {
        cos: &cos,
        sin: &sin,
        max_pos: x.cos.len() / 32,
    };
    let n = hist.len();
    let slots = SlotMapping::new(&s, &gather(&x.slots, 1, &hist)).unwrap();
    let positions = s.clone_htod(&gather(&x.positions, 1, &hist)).unwrap();
    let kv = s.clone_htod(&gather(&x.kv, QK_DIM, &hist)).unwrap();
    let rows = CacheRows {
        src: &kv,
        rows: n,
        row_stride: QK_DIM,
    };
    k.write_cache(&mut mla, rows, &slots, false).unwrap();
    let idx_k = s.clone_htod(&gather(&x.idx_k, INDEXER_DIM, &hist)).unwrap();
    let kshape = IndexerPrepShape {
        tokens: n,
        heads: 1,
        token_stride: INDEXER_DIM,
    };
    k.indexer_prepare_k(kshape, &idx_k, &positions, rope, &mut idx, &slots)
        .unwrap();

    let cfg = DsaDecodeStepConfig {
        index_heads: IDX_HEADS,
        heads: H_Q,
        topk: TOPK,
        softmax_scale: SCALE,
        ..DsaDecodeStepConfig::deepseek_v32(batch, 1, x.max_pages)
    };
    let mut step = DsaDecodeStep::new(k, cfg).unwrap();
    let shape = PagedBatchShape {
        batch,
        next_n: 1,
        max_pages: x.max_pages,
    };
    let table = s.clone_htod(&x.block_table).unwrap();
    let seq_lens = s.clone_htod(&x.lens).unwrap();
    let paged = PagedBatch::new(shape, &table, &seq_lens).unwrap();
    step.plan(k, &paged).unwrap();
    let up_bf16 = |v: Vec<bf16>| s.clone_htod(&v).unwrap();
    let (new_kv, new_k) = (
        up_bf16(gather(&x.kv, QK_DIM, &new)),
        up_bf16(gather(&x.idx_k, INDEXER_DIM, &new)),
    );
    let idx_q = s.clone_htod(&x.idx_q).unwrap();
    let idx_w = s.clone_htod(&x.idx_w).unwrap();
    let new_pos = s.clone_htod(&gather(&x.positions, 1, &new)).unwrap();
    let new_slots = s.clone_htod(&gather(&x.slots, 1, &new)).unwrap();
    let inputs = DsaLayerInputs {
        index_q: &idx_q,
        index_weights: &idx_w,
        index_k: &new_k,
        kv: &new_kv,
        positions: &new_pos,
        slots: &new_slots,
        rope,
    };
    let q = s.clone_htod(&x.q).unwrap();
    let mut out: CudaSlice<bf16> = s.alloc_zeros(batch * H_Q * 512).unwrap();
    let mut lse: CudaSlice<f32> = s.alloc_zeros(batch * H_Q).unwrap();
    step.layer(
        k, &paged, &inputs, &mut idx, &mut mla, &q, &mut out, &mut lse,
    )
    .unwrap();
    let q8 = s.clone_dtoh(&*step.prepared_queries_mut().0).unwrap();

    let dcfg = k.dense_mla_config(&shape, H_Q, SCALE);
    let mut dplan: CudaSlice<i32> = s.alloc_zeros(dcfg.plan_len(&shape)).unwrap();
    let mut dws: CudaSlice<f32> = s.alloc_zeros(dcfg.workspace_len(&shape)).unwrap();
    let mut dout: CudaSlice<bf16> = s.alloc_zeros(batch * H_Q * 512).unwrap();
    let mut dlse: CudaSlice<f32> = s.alloc_zeros(batch * H_Q).unwrap();
    k.dense_mla_plan(&dcfg, &paged, &mut dplan).unwrap();
    k.dense_mla_decode(
        &dcfg, &paged, &mla, &q, &dplan, &mut dws, &mut dout, &mut dlse,
    )
    .unwrap();
    let f = |v: &CudaSlice<bf16>| {
        s.clone_dtoh(v)
            .unwrap()
            .iter()
            .map(|x| x.to_f32())
            .collect()
    };
    Outputs {
        mla_cache: s.clone_dtoh(mla.data()).unwrap(),
        index_cache: s.clone_dtoh(idx.data()).unwrap(),
        q8,
        logits: s
            .clone_dtoh(step.logits())
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect(),
        topk_sets: sets(&s.clone_dtoh(step.indices()).unwrap()),
        sparse_out: f(&out),
        sparse_lse: s.clone_dtoh(&lse).unwrap(),
        dense_out: f(&dout),
        dense_lse: s.clone_dtoh(&dlse).unwrap(),
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> (f32, f32) {
    assert_eq!(a.len(), b.len());
    let d = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    let r = b.iter().fold(0f32, |m, y| m.max(y.abs()));
    (d, r)
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn candle_decode_step_matches_direct_api() {
    let dev = device();
    let dsa = CandleDsa::new(&dev).expect("adapter on a Hopper GPU");
    dsa.kernels().preload().unwrap();
    let x = inputs();
    let a = through_adapter(&dsa, &dev, &x).expect("adapter step");
    let d = through_direct_api(&dsa, &x);
    // Same kernels on the same inputs: everything up to the top-k set is bit-identical.
    assert!(a.mla_cache == d.mla_cache, "MLA cache bytes differ");
    assert!(a.index_cache == d.index_cache, "indexer cache bytes differ");
    assert!(a.q8 == d.q8, "indexer q codes differ");
    assert!(a.logits == d.logits, "logits differ");
    assert_eq!(a.topk_sets, d.topk_sets, "top-k sets differ");
    for (b, set) in a.topk_sets.iter().enumerate() {
        assert_eq!(
            set.iter().filter(|&&i| i >= 0).count(),
            LENS[b].min(TOPK),
            "sequence {b}"
        );
    }
    // The order inside a top-k set is unspecified and reorders the softmax sums: equal up
    // to bf16 rounding of the output (1e-2 of max |out|) and f32 rounding of the lse.
    for (name, (got, want), tol) in [
        ("sparse out", (&a.sparse_out, &d.sparse_out), 1e-2),
        ("sparse lse", (&a.sparse_lse, &d.sparse_lse), 1e-5),
        ("dense out", (&a.dense_out, &d.dense_out), 1e-2),
        ("dense lse", (&a.dense_lse, &d.dense_lse), 1e-5),
    ] {
        let (diff, max) = max_abs_diff(got, want);
        assert!(
            got.iter().all(|v| v.is_finite()),
            "{name}: non-finite value"
        );
        assert!(
            diff <= tol * max.max(1.0),
            "{name}: max diff {diff:.3e}, max |ref| {max:.3e}"
        );
        eprintln!("{name}: adapter vs direct max diff {diff:.3e} (max |ref| {max:.3e})");
    }
    // The shortest sequence fits in the top-k, so its sparse attention is dense attention.
    let (diff, max) = max_abs_diff(&a.sparse_out[..H_Q * 512], &a.dense_out[..H_Q * 512]);
    assert!(
        diff <= 2e-2 * max,
        "sequence 0: sparse {diff:.3e} from dense (max {max:.3e})"
    );
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn candle_adapter_rejects_bad_tensors() {
    let dev = device();
    let dsa = CandleDsa::new(&dev).unwrap();
    assert!(
        CandleDsa::new(&Device::Cpu).is_err(),
        "a CPU device has no CUDA stream"
    );
    let cache = dsa.new_mla_fp8_cache(2).unwrap();
    let slots = Tensor::new(&[0i32, 1], &dev).unwrap();
    let err = |r: candle_core::Result<()>| r.expect_err("must fail").to_string();
    let kv_f32 = Tensor::zeros((2, QK_DIM), DType::F32, &dev).unwrap();
    let e = err(dsa.write_mla_cache(&cache, &kv_f32, &slots));
    assert!(e.contains("kv") && e.contains("F32"), "{e}");
    let kv_short = Tensor::zeros((2, 512), DType::BF16, &dev).unwrap();
    let e = err(dsa.write_mla_cache(&cache, &kv_short, &slots));
    assert!(e.contains("kv") && e.contains("576"), "{e}");
    let kv = Tensor::zeros((2, QK_DIM), DType::BF16, &dev).unwrap();
    let e = err(dsa.write_mla_cache(&cache, &kv, &Tensor::new(&[0i32], &dev).unwrap()));
    assert!(e.contains("slots"), "{e}");
    let kv_cpu = Tensor::zeros((2, QK_DIM), DType::BF16, &Device::Cpu).unwrap();
    let e = err(dsa.write_mla_cache(&cache, &kv_cpu, &slots));
    assert!(e.contains("kv"), "{e}");
    let ragged = Tensor::zeros((3, 100), DType::U8, &dev).unwrap();
    let e = err(dsa.write_mla_cache(&ragged, &kv, &slots));
    assert!(e.contains("pages"), "{e}");
    let table = Tensor::zeros((2, 1), DType::I32, &dev).unwrap();
    let lens = Tensor::new(&[3i32, 0], &dev).unwrap();
    let b = CandleBatch {
        block_table: &table,
        seq_lens: &lens,
        next_n: 1,
    };
    let ok = dsa.topk_paged(&b, &Tensor::zeros((2, 64), DType::F32, &dev).unwrap(), 8);
    assert!(ok.is_ok(), "a paged top-k over valid tensors works: {ok:?}");
    let e = dsa
        .topk_paged(&b, &Tensor::zeros((2, 64), DType::BF16, &dev).unwrap(), 8)
        .expect_err("bf16 logits")
        .to_string();
    assert!(e.contains("logits"), "{e}");
}

/// Random e4m3 codes without the NaN patterns (0x7f, 0xff).
fn fp8_codes(rng: &mut Rng, n: usize) -> Vec<u8> {
    (0..n)
        .map(|_| {
            let b = ((rng.f32() + 1.0) * 127.5) as u8;
            if b & 0x7f == 0x7f {
                0
            } else {
                b
            }
        })
        .collect()
}

/// The MoE layer through the adapter against the direct API's [`MoeLayer`] on the same
/// weights and inputs (both layouts, with and without the shared expert): the same
/// kernels in the same order, so the outputs and routing ids are bit-identical.
#[test]
#[ignore = "needs a CUDA GPU"]
fn candle_moe_layer_matches_direct_api() {
    use dsa_kernels::candle::{CandleFp8, CandleMoeWeights};
    use dsa_kernels::moe::{
        Align, Fp8Weights, MoeLayer, MoeLayout, MoeShape, MoeWeights, RouteConfig, SharedExpert,
    };
    let dev = device();
    let dsa = CandleDsa::new(&dev).unwrap();
    let s = dsa.kernels().stream().clone();
    let route = RouteConfig {
        n_group: 4,
        topk_group: 2,
        renormalize: true,
        route_scale: 2.5,
    };
    let (hd, it, e, si) = (256usize, 128usize, 16usize, 128usize);
    let cases = [
        (77usize, MoeLayout::Contiguous, Some(si)),
        (130, MoeLayout::Masked { max_m: 192 }, None),
    ];
    for (case, (t, layout, shared)) in cases.into_iter().enumerate() {
        let shape = MoeShape {
            tokens: t,
            hidden: hd,
            inter: it,
            experts: e,
            top_k: 4,
            align: Align::A128,
            layout,
            ue8m0: false,
        };
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ case as u64);
        let scales = |rng: &mut Rng, n: usize| -> Vec<f32> {
            (0..n).map(|_| 2e-3 * (1.5 + rng.f32())).collect()
        };
        let w13 = fp8_codes(&mut rng, e * 2 * it * hd);
        let w13s = scales(&mut rng, e * 2 * it / 128 * hd / 128);
        let w2 = fp8_codes(&mut rng, e * hd * it);
        let w2s = scales(&mut rng, e * hd / 128 * it / 128);
        let sw13 = fp8_codes(&mut rng, 2 * si * hd);
        let sw13s = scales(&mut rng, 2 * si / 128 * hd / 128);
        let sw2 = fp8_codes(&mut rng, hd * si);
        let sw2s = scales(&mut rng, hd / 128 * si / 128);
        let bias: Vec<f32> = (0..e).map(|_| 0.1 * rng.f32()).collect();
        let logits: Vec<f32> = (0..t * e).map(|_| 4.0 * rng.f32()).collect();
        let x = rng.bf16(t * hd);

        // Through the adapter.
        let tu = |v: &[u8], d: &[usize]| Tensor::from_slice(v, d, &dev).unwrap();
        let tf = |v: &[f32], d: &[usize]| Tensor::from_slice(v, d, &dev).unwrap();
        let (c13, c13s) = (
            tu(&w13, &[e, 2 * it, hd]),
            tf(&w13s, &[e, 2 * it / 128, hd / 128]),
        );
        let (c2, c2s) = (tu(&w2, &[e, hd, it]), tf(&w2s, &[e, hd / 128, it / 128]));
        let (cs13, cs13s) = (
            tu(&sw13, &[2 * si, hd]),
            tf(&sw13s, &[2 * si / 128, hd / 128]),
        );
        let (cs2, cs2s) = (tu(&sw2, &[hd, si]), tf(&sw2s, &[hd / 128, si / 128]));
        let cbias = tf(&bias, &[e]);
        let weights = CandleMoeWeights {
            bias: &cbias,
            w13: CandleFp8 {
                codes: &c13,
                scales: &c13s,
            },
            w2: CandleFp8 {
                codes: &c2,
                scales: &c2s,
            },
            shared: shared.map(|_| {
                (
                    CandleFp8 {
                        codes: &cs13,
                        scales: &cs13s,
                    },
                    CandleFp8 {
                        codes: &cs2,
                        scales: &cs2s,
                    },
                )
            }),
        };
        let mut layer = dsa.moe_layer(&shape, &route, shared).unwrap();
        let got = layer
            .forward(
                &dsa,
                &weights,
                &tf(&logits, &[t, e]),
                &Tensor::from_slice(&x, (t, hd), &dev).unwrap(),
            )
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let got_ids = s.clone_dtoh(layer.layer().ids()).unwrap();

        // Through the direct API.
        let up8 = |v: &[u8]| s.clone_htod(v).unwrap();
        let upf = |v: &[f32]| s.clone_htod(v).unwrap();
        let (d13, d13s, d2, d2s) = (up8(&w13), upf(&w13s), up8(&w2), upf(&w2s));
        let (ds13, ds13s, ds2, ds2s) = (up8(&sw13), upf(&sw13s), up8(&sw2), upf(&sw2s));
        let dbias = upf(&bias);
        fn fp8<'a>(c: &'a CudaSlice<u8>, sc: &'a CudaSlice<f32>) -> Fp8Weights<'a> {
            Fp8Weights {
                codes: c.as_view(),
                scales: sc.as_view(),
            }
        }
        let w = MoeWeights {
            bias: dbias.as_view(),
            w13: fp8(&d13, &d13s),
            w2: fp8(&d2, &d2s),
            shared: shared.map(|inter| SharedExpert {
                inter,
                w13: fp8(&ds13, &ds13s),
                w2: fp8(&ds2, &ds2s),
            }),
        };
        let mut direct = MoeLayer::new(&s, &shape, &route, shared).unwrap();
        let mut out = s.clone_htod(&vec![bf16::NAN; t * hd]).unwrap();
        direct
            .forward(
                dsa.kernels(),
                &w,
                &upf(&logits),
                &s.clone_htod(&x).unwrap(),
                &mut out,
            )
            .unwrap();
        let want: Vec<f32> = s
            .clone_dtoh(&out)
            .unwrap()
            .iter()
            .map(|v| v.to_f32())
            .collect();
        let want_ids = s.clone_dtoh(direct.ids()).unwrap();

        assert_eq!(got_ids, want_ids, "case {case}: routing ids differ");
        assert!(
            want.iter().all(|v| v.is_finite()),
            "case {case}: non-finite output"
        );
        let max = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(max > 0.0, "case {case}: all-zero output");
        assert!(
            got.iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "case {case}: adapter output differs from the direct API's"
        );
        eprintln!("MoE case {case}: T={t} {layout:?} shared={shared:?}: bit-identical, max |out| {max:.3e}");
    }
    // A wrong dtype is an error naming the tensor, before any launch.
    let shape = MoeShape {
        tokens: 4,
        hidden: 256,
        inter: 128,
        experts: 16,
        top_k: 4,
        align: Align::A128,
        layout: MoeLayout::Contiguous,
        ue8m0: false,
    };
    let mut layer = dsa.moe_layer(&shape, &route, None).unwrap();
    let z = |d: &[usize], t: DType| Tensor::zeros(d, t, &dev).unwrap();
    let (c13, c13s, c2, c2s, b) = (
        z(&[16, 256, 256], DType::U8),
        z(&[16, 2, 2], DType::F32),
        z(&[16, 256, 128], DType::U8),
        z(&[16, 2, 1], DType::F32),
        z(&[16], DType::F32),
    );
    let w = CandleMoeWeights {
        bias: &b,
        w13: CandleFp8 {
            codes: &c13,
            scales: &c13s,
        },
        w2: CandleFp8 {
            codes: &c2,
            scales: &c2s,
        },
        shared: None,
    };
    let e = layer
        .forward(
            &dsa,
            &w,
            &z(&[4, 16], DType::F32),
            &z(&[4, 256], DType::F32),
        )
        .expect_err("f32 x")
        .to_string();
    assert!(e.contains("`x`") && e.contains("F32"), "{e}");
    let e = layer
        .forward(
            &dsa,
            &w,
            &z(&[4, 8], DType::F32),
            &z(&[4, 256], DType::BF16),
        )
        .expect_err("logits of 8 experts")
        .to_string();
    assert!(e.contains("logits"), "{e}");
    assert!(layer
        .forward(
            &dsa,
            &w,
            &z(&[4, 16], DType::F32),
            &z(&[4, 256], DType::BF16)
        )
        .is_ok());
}
