//! One DeepSeek Sparse Attention decode step of one layer, from the raw per-token inputs
//! an engine has after its projections to the attention output, then the same step
//! captured in a CUDA graph and replayed.
//!
//! ```sh
//! cargo run --release --example decode_step            # needs a Hopper GPU
//! ```
//!
//! Per sequence `b` with `len_b` tokens already cached, the new token (at position `len_b`)
//! brings:
//! - `kv`      bf16 `[B, 576]`: the MLA latent (512) and its RoPE'd part (64);
//! - `idx_k`   bf16 `[B, 128]`: the indexer key, before RoPE;
//! - `idx_q`   bf16 `[B, 64, 128]`: the indexer queries, before RoPE;
//! - `idx_w`   f32  `[B, 64]`: the indexer head weights (already scaled by `64^-0.5`);
//! - `q`       bf16 `[B, 128, 576]`: the absorbed MLA queries.
//!
//! The step: write `kv` into the FP8 MLA cache and `idx_k` (RoPE, Hadamard, FP8) into the
//! indexer cache, prepare the indexer queries, score every cached key (paged logits),
//! keep the top 2048 per sequence translated to cache slots, and run sparse MLA over them:
//! the library's `DsaDecodeStep` (`plan` once per step, `layer` per layer). The weights
//! are random: the example shows the plumbing, not a model.
use std::sync::Arc;
use std::time::Instant;

use dsa_kernels::cache::{
    CacheRows, IndexerKCache, MlaFp8Cache, SlotMapping, INDEXER_DIM, PAGE_SIZE, QK_DIM,
};
use dsa_kernels::cudarc::driver::{sys, CudaSlice, CudaStream};
use dsa_kernels::half::bf16;
use dsa_kernels::indexer::{rope_tables, IndexerPrepShape, RopeTablesRef, YarnRope};
use dsa_kernels::{
    device, DsaDecodeStep, DsaDecodeStepConfig, DsaKernels, DsaLayerInputs, PagedBatch,
    PagedBatchShape,
};

type Error = Box<dyn std::error::Error>;
/// Selected slots per sequence (sorted), attention output, lse.
type StepResults = (Vec<Vec<i32>>, Vec<f32>, Vec<f32>);

/// DeepSeek-V3.2's attention shape.
const H_Q: usize = 128;
const IDX_HEADS: usize = 64;
const TOPK: usize = 2048;
/// Cached tokens of each sequence before the step (below and above TOPK).
const HISTORY: [usize; 4] = [700, 4000, 2047, 9000];

/// Deterministic values in [-1, 1) (xorshift), so the example needs no rand crate.
struct Values(u64);
impl Values {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    fn bf16(&mut self, n: usize) -> Vec<bf16> {
        (0..n).map(|_| bf16::from_f32(self.next())).collect()
    }
}

/// The layer's persistent state: caches, block table, RoPE tables.
struct Layer {
    mla_cache: MlaFp8Cache,
    index_cache: IndexerKCache,
    block_table: CudaSlice<i32>,
    block_table_host: Vec<i32>,
    max_pages: usize,
    rope: Rope,
}

/// The indexer's RoPE tables on the device (the same for every layer).
struct Rope {
    cos: CudaSlice<f32>,
    sin: CudaSlice<f32>,
    max_pos: usize,
}

impl Rope {
    fn tables(&self) -> RopeTablesRef<'_, CudaSlice<f32>> {
        RopeTablesRef {
            cos: &self.cos,
            sin: &self.sin,
            max_pos: self.max_pos,
        }
    }
}

impl Layer {
    fn slot(&self, b: usize, pos: usize) -> i32 {
        self.block_table_host[b * self.max_pages + pos / PAGE_SIZE] * PAGE_SIZE as i32
            + (pos % PAGE_SIZE) as i32
    }
}

/// Device buffers of one step: the raw inputs, the batch, the outputs (fixed addresses,
/// so a captured graph can be replayed after the engine overwrites the inputs), and the
/// library's step object, which owns the intermediate buffers (plan, indexer queries,
/// logits, selected slots, split workspace).
struct Step {
    kv: CudaSlice<bf16>,
    idx_k: CudaSlice<bf16>,
    idx_q: CudaSlice<bf16>,
    idx_w: CudaSlice<f32>,
    q: CudaSlice<bf16>,
    positions: CudaSlice<i32>,
    slots: CudaSlice<i32>,
    seq_lens: CudaSlice<i32>,
    shape: PagedBatchShape,
    step: DsaDecodeStep,
    out: CudaSlice<bf16>,
    lse: CudaSlice<f32>,
}

impl Step {
    /// Everything an engine enqueues for this layer's attention in one decode step (the
    /// plan is once per step, for all layers). No host synchronization, no allocation:
    /// capturable.
    fn run(&mut self, k: &DsaKernels, layer: &mut Layer) -> dsa_kernels::Result<()> {
        let batch = PagedBatch::new(self.shape, &layer.block_table, &self.seq_lens)?;
        self.step.plan(k, &batch)?;
        let inputs = DsaLayerInputs {
            index_q: &self.idx_q,
            index_weights: &self.idx_w,
            index_k: &self.idx_k,
            kv: &self.kv,
            positions: &self.positions,
            slots: &self.slots,
            rope: layer.rope.tables(),
        };
        // New tokens into both caches (MLA rows FP8-quantized, indexer keys RoPE'd,
        // Hadamard-rotated and FP8), indexer queries prepared, every cached key scored,
        // the top-2048 per sequence translated through the block table to cache slots,
        // and sparse MLA over them.
        self.step.layer(
            k,
            &batch,
            &inputs,
            &mut layer.index_cache,
            &mut layer.mla_cache,
            &self.q,
            &mut self.out,
            &mut self.lse,
        )
    }

    /// Overwrites every intermediate and output with garbage, so a replay proves it
    /// recomputes them all.
    fn poison(&mut self, s: &Arc<CudaStream>) -> Result<(), Error> {
        let (plan, logits, indices) = self.step.buffers_mut();
        s.memcpy_htod(&vec![-7i32; plan.len()], plan)?;
        s.memcpy_htod(&vec![f32::NAN; logits.len()], logits)?;
        s.memcpy_htod(&vec![i32::MIN; indices.len()], indices)?;
        s.memcpy_htod(&vec![bf16::NAN; self.out.len()], &mut self.out)?;
        s.memcpy_htod(&vec![f32::NAN; self.lse.len()], &mut self.lse)?;
        Ok(())
    }

    /// (selected slots per sequence, sorted; attention output; lse), downloaded.
    fn results(&self, s: &Arc<CudaStream>) -> Result<StepResults, Error> {
        let idx = s.clone_dtoh(self.step.indices())?;
        let sets = idx
            .chunks(TOPK)
            .take(self.shape.rows())
            .map(|row| {
                let mut v = row.to_vec();
                v.sort_unstable();
                v
            })
            .collect();
        let out = s
            .clone_dtoh(&self.out)?
            .iter()
            .map(|v| v.to_f32())
            .collect();
        Ok((sets, out, s.clone_dtoh(&self.lse)?))
    }
}

fn main() -> Result<(), Error> {
    let ctx = match device::open_device(0) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("decode_step needs a CUDA GPU: {e}");
            std::process::exit(2);
        }
    };
    // Graph capture rules: cudarc records events on every buffer to order cross-stream use;
    // those waits are illegal inside a capture, so switch them off before allocating (all
    // buffers here live on one stream), and capture on a stream other than the legacy
    // default one.
    // SAFETY: every buffer below is used on `stream` only.
    unsafe { ctx.disable_event_tracking() };
    let stream = ctx.new_stream()?;
    let k = DsaKernels::new(stream.clone())?;
    // Load every kernel now: nothing may load during the capture below.
    let t = Instant::now();
    k.preload()?;
    println!(
        "{} ({} SMs); kernels preloaded in {:.1} ms",
        k.device().name,
        k.device().sm_count,
        t.elapsed().as_secs_f64() * 1e3
    );

    let batch = HISTORY.len();
    let mut vals = Values(0x9e3779b97f4a7c15);

    // Layer state: pages handed out round-robin across sequences, so no sequence's pages
    // are contiguous (as in a real paged allocator after some traffic).
    let max_pages = HISTORY
        .iter()
        .map(|&l| (l + 1).div_ceil(PAGE_SIZE))
        .max()
        .unwrap_or(1);
    let mut block_table_host = vec![0i32; batch * max_pages];
    let mut next_page = 0i32;
    for p in 0..max_pages {
        for (b, &len) in HISTORY.iter().enumerate() {
            if p < (len + 1).div_ceil(PAGE_SIZE) {
                block_table_host[b * max_pages + p] = next_page;
                next_page += 1;
            }
        }
    }
    let num_pages = next_page as usize;
    let max_pos = max_pages * PAGE_SIZE;
    let (cos, sin) = rope_tables(&YarnRope::deepseek_v32(), max_pos)?;
    let mut layer = Layer {
        mla_cache: MlaFp8Cache::new(&stream, num_pages)?,
        index_cache: IndexerKCache::new(&stream, num_pages)?,
        block_table: stream.clone_htod(&block_table_host)?,
        block_table_host,
        max_pages,
        rope: Rope {
            cos: stream.clone_htod(&cos)?,
            sin: stream.clone_htod(&sin)?,
            max_pos,
        },
    };

    // The history (what prefill left in the caches), written with the same kernels.
    let hist_tokens: usize = HISTORY.iter().sum();
    let hist_slots: Vec<i32> = HISTORY
        .iter()
        .enumerate()
        .flat_map(|(b, &len)| (0..len).map(move |p| (b, p)))
        .map(|(b, p)| layer.slot(b, p))
        .collect();
    let hist_pos: Vec<i32> = HISTORY.iter().flat_map(|&len| 0..len as i32).collect();
    let slots = SlotMapping::new(&stream, &hist_slots)?;
    let kv = stream.clone_htod(&vals.bf16(hist_tokens * QK_DIM))?;
    let idx_k = stream.clone_htod(&vals.bf16(hist_tokens * INDEXER_DIM))?;
    let positions = stream.clone_htod(&hist_pos)?;
    k.write_cache(
        &mut layer.mla_cache,
        CacheRows {
            src: &kv,
            rows: hist_tokens,
            row_stride: QK_DIM,
        },
        &slots,
        false,
    )?;
    k.indexer_prepare_k(
        IndexerPrepShape {
            tokens: hist_tokens,
            heads: 1,
            token_stride: INDEXER_DIM,
        },
        &idx_k,
        &positions,
        layer.rope.tables(),
        &mut layer.index_cache,
        &slots,
    )?;

    // This step's raw inputs: one new token per sequence at position len_b.
    let new_slots: Vec<i32> = HISTORY
        .iter()
        .enumerate()
        .map(|(b, &len)| layer.slot(b, len))
        .collect();
    let shape = PagedBatchShape {
        batch,
        next_n: 1,
        max_pages,
    };
    let mut step = Step {
        kv: stream.clone_htod(&vals.bf16(batch * QK_DIM))?,
        idx_k: stream.clone_htod(&vals.bf16(batch * INDEXER_DIM))?,
        idx_q: stream.clone_htod(&vals.bf16(batch * IDX_HEADS * INDEXER_DIM))?,
        idx_w: stream.clone_htod(
            &(0..batch * IDX_HEADS)
                .map(|_| vals.next() * (IDX_HEADS as f32).powf(-0.5))
                .collect::<Vec<f32>>(),
        )?,
        q: stream.clone_htod(&vals.bf16(batch * H_Q * QK_DIM))?,
        positions: stream.clone_htod(&HISTORY.map(|l| l as i32))?,
        slots: stream.clone_htod(&new_slots)?,
        seq_lens: stream.clone_htod(&HISTORY.map(|l| l as i32 + 1))?,
        shape,
        // DeepSeek-V3.2's attention (64 indexer heads, 128 heads, top-2048, its softmax
        // scale), workspaces sized once for up to `batch` sequences of this table width.
        step: DsaDecodeStep::new(&k, DsaDecodeStepConfig::deepseek_v32(batch, 1, max_pages))?,
        out: stream.alloc_zeros(batch * H_Q * 512)?,
        lse: stream.alloc_zeros(batch * H_Q)?,
    };

    // Eager.
    let t = Instant::now();
    step.run(&k, &mut layer)?;
    stream.synchronize()?;
    let eager_ms = t.elapsed().as_secs_f64() * 1e3;
    let eager = step.results(&stream)?;

    // Captured once, replayed: no warm-up run was needed thanks to preload().
    stream.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
    step.run(&k, &mut layer)?;
    let graph = stream
        .end_capture(sys::CUgraphInstantiate_flags(0))?
        .ok_or("the capture recorded no work")?;
    step.poison(&stream)?;
    graph.launch()?;
    let replay = step.results(&stream)?;
    let t = Instant::now();
    const REPLAYS: usize = 20;
    for _ in 0..REPLAYS {
        graph.launch()?;
    }
    stream.synchronize()?;
    let replay_ms = t.elapsed().as_secs_f64() * 1e3 / REPLAYS as f64;

    // Compare. The top-k set must be identical; its order is unspecified, and a different
    // order reorders the softmax sums, so the output agrees up to bf16 rounding.
    for (b, (e, r)) in eager.0.iter().zip(&replay.0).enumerate() {
        let want = (HISTORY[b] + 1).min(TOPK);
        let got = e.iter().filter(|&&i| i >= 0).count();
        if got != want {
            return Err(format!("sequence {b}: {got} slots selected, expected {want}").into());
        }
        if e != r {
            return Err(format!("sequence {b}: the replay selected other slots").into());
        }
    }
    let max_ref = eager.1.iter().fold(0f32, |m, v| m.max(v.abs()));
    let max_diff = eager
        .1
        .iter()
        .zip(&replay.1)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    let lse_diff = eager
        .2
        .iter()
        .zip(&replay.2)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    // Written as "ok" so that a NaN anywhere fails it.
    let ok = max_diff <= 1e-2 * max_ref
        && lse_diff <= 1e-4
        && eager.1.iter().chain(&replay.1).all(|v| v.is_finite());
    if !ok {
        return Err(format!(
            "replay differs: output {max_diff:.3e} of max {max_ref:.3e}, lse {lse_diff:.3e}"
        )
        .into());
    }
    println!(
        "batch {batch}, contexts {:?} + 1, h_q {H_Q}, top-{TOPK}: eager step {eager_ms:.3} ms (first run, host timed), graph replay {replay_ms:.3} ms",
        HISTORY
    );
    println!(
        "replay == eager: top-k sets identical, output max diff {max_diff:.2e} (max |out| {max_ref:.3}), lse max diff {lse_diff:.2e}"
    );
    Ok(())
}
