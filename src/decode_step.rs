//! One DSA decode step as a library object: the chain an engine runs per layer (indexer
//! q/k preparation into the caches, paged indexer logits, top-k with block-table
//! translation, sparse MLA decode), with its workspaces allocated once for every batch it
//! serves and its per-step plan computed once for all layers.
//!
//! ```no_run
//! use dsa_kernels::cache::{IndexerKCache, MlaFp8Cache};
//! use dsa_kernels::decode_step::{DsaDecodeStep, DsaDecodeStepConfig, DsaLayerInputs};
//! use dsa_kernels::indexer::{rope_tables, RopeTablesRef, YarnRope};
//! use dsa_kernels::{device, DsaKernels, PagedBatch, PagedBatchShape};
//! use half::bf16;
//!
//! # fn main() -> dsa_kernels::Result<()> {
//! let ctx = device::open_device(0)?;
//! let stream = ctx.default_stream();
//! let k = DsaKernels::new(stream.clone())?;
//! // Start-up: the caches, and one step object for every batch up to 128 sequences.
//! let cfg = DsaDecodeStepConfig::deepseek_v32(128, 1, 2048);
//! let mut step = DsaDecodeStep::new(&k, cfg)?;
//! let mut index_cache = IndexerKCache::new(&stream, 128 * 2048)?;
//! let mut mla_cache = MlaFp8Cache::new(&stream, 128 * 2048)?;
//! let (cos, sin) = rope_tables(&YarnRope::deepseek_v32(), 131072)?;
//! let (cos, sin) = (stream.clone_htod(&cos)?, stream.clone_htod(&sin)?);
//!
//! // One step: 32 sequences, the engine's block table and lengths on the device.
//! let shape = PagedBatchShape { batch: 32, next_n: 1, max_pages: 2048 };
//! let table = stream.alloc_zeros::<i32>(32 * 2048)?;
//! let seq_lens = stream.alloc_zeros::<i32>(32)?;
//! let batch = PagedBatch::new(shape, &table, &seq_lens)?;
//! step.plan(&k, &batch)?; // once per step, for all layers
//!
//! // Per layer: this layer's projections (bf16), positions and slots of the new tokens.
//! let rows = shape.rows();
//! let index_q = stream.alloc_zeros::<bf16>(rows * 64 * 128)?;
//! let index_w = stream.alloc_zeros::<f32>(rows * 64)?;
//! let index_k = stream.alloc_zeros::<bf16>(rows * 128)?;
//! let kv = stream.alloc_zeros::<bf16>(rows * 576)?;
//! let positions = stream.alloc_zeros::<i32>(rows)?;
//! let slots = stream.alloc_zeros::<i32>(rows)?;
//! let q = stream.alloc_zeros::<bf16>(rows * 128 * 576)?;
//! let mut out = stream.alloc_zeros::<bf16>(rows * 128 * 512)?;
//! let mut lse = stream.alloc_zeros::<f32>(rows * 128)?;
//! let inputs = DsaLayerInputs {
//!     index_q: &index_q,
//!     index_weights: &index_w,
//!     index_k: &index_k,
//!     kv: &kv,
//!     positions: &positions,
//!     slots: &slots,
//!     rope: RopeTablesRef { cos: &cos, sin: &sin, max_pos: 131072 },
//! };
//! step.layer(&k, &batch, &inputs, &mut index_cache, &mut mla_cache, &q, &mut out, &mut lse)?;
//! # Ok(())
//! # }
//! ```
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
use half::bf16;

use crate::cache::{CacheRows, IndexerKCache, MlaCacheKind, PagedCache, INDEXER_DIM, QK_DIM};
use crate::check;
use crate::error::{DsaError, Result};
use crate::indexer::{
    check_heads, decode_plan_len, DecodeLogitsShape, IndexerPrepShape, RopeTablesRef, MAX_NEXT_N,
};
use crate::paged_batch::{PagedBatch, PagedBatchShape};
use crate::runtime::DsaKernels;
use crate::sparse_mla::{SparseDecodeConfig, SparseExtras};
use crate::topk::PagedTopkShape;

/// The largest shapes a [`DsaDecodeStep`] serves, and the model's attention constants.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DsaDecodeStepConfig {
    /// Most sequences of one step; every batch of `1..=max_batch` is served.
    pub max_batch: usize,
    /// New tokens per sequence per step (1 plain, up to 4 speculative).
    pub next_n: usize,
    /// Widest block table (pages per sequence); the logits hold `64 * max_pages` columns.
    pub max_pages: usize,
    /// Indexer heads (DeepSeek-V3.2: 64).
    pub index_heads: usize,
    /// MLA query heads (DeepSeek-V3.2: 128).
    pub heads: usize,
    /// Keys each query attends (DeepSeek-V3.2: 2048).
    pub topk: usize,
    /// Softmax scale of the sparse attention (DeepSeek-V3.2: 0.135234).
    pub softmax_scale: f32,
    /// Emit each row's top-k sorted (value descending, index ascending) instead of in the
    /// selection's order: the attention then sums its keys in one fixed order, so a step
    /// gives the same bits on every run and graph replay, at the cost of the sort.
    pub sorted_topk: bool,
}

impl DsaDecodeStepConfig {
    /// DeepSeek-V3.2's constants (64 indexer heads, 128 query heads, top-2048, scale
    /// 0.135234) for batches up to `max_batch` of `next_n` tokens over `max_pages` pages.
    pub fn deepseek_v32(max_batch: usize, next_n: usize, max_pages: usize) -> Self {
        Self {
            max_batch,
            next_n,
            max_pages,
            index_heads: 64,
            heads: 128,
            topk: 2048,
            softmax_scale: 0.135_234,
            sorted_topk: false,
        }
    }

    /// The configuration's rules, pure: the largest batch is a valid paged batch, the
    /// indexer heads and `next_n` are supported, `topk` and the heads suit both top-k and
    /// the sparse decode, and every workspace size is computable.
    pub fn validate(&self) -> Result<()> {
        let largest = self.largest_batch();
        largest.validate()?;
        check_heads(self.index_heads)?;
        if self.next_n > MAX_NEXT_N {
            return Err(DsaError::Unsupported {
                what: "decode step next_n",
                detail: format!("next_n {} must be in 1..={MAX_NEXT_N}", self.next_n),
            });
        }
        self.logits_shape(&largest).validate(&largest)?;
        self.topk_shape(&largest)
            .validate(largest.rows(), largest.max_pages)?;
        self.sparse().validate(&largest)?;
        Ok(())
    }

    fn largest_batch(&self) -> PagedBatchShape {
        PagedBatchShape {
            batch: self.max_batch,
            next_n: self.next_n,
            max_pages: self.max_pages,
        }
    }

    fn logits_shape(&self, batch: &PagedBatchShape) -> DecodeLogitsShape {
        DecodeLogitsShape::new(self.index_heads, batch.max_tokens())
    }

    fn topk_shape(&self, batch: &PagedBatchShape) -> PagedTopkShape {
        PagedTopkShape {
            cols: batch.max_tokens(),
            row_stride: batch.max_tokens(),
            topk: self.topk,
            sorted: self.sorted_topk,
        }
    }

    fn sparse(&self) -> SparseDecodeConfig {
        SparseDecodeConfig {
            heads: self.heads,
            topk: self.topk,
            softmax_scale: self.softmax_scale,
        }
    }

    /// Whether `batch` is one this configuration serves: at most `max_batch` sequences of
    /// exactly `next_n` tokens over at most `max_pages` pages. Pure.
    pub fn check_batch(&self, batch: &PagedBatchShape) -> Result<()> {
        batch.validate()?;
        if batch.batch > self.max_batch
            || batch.next_n != self.next_n
            || batch.max_pages > self.max_pages
        {
            return Err(DsaError::Unsupported {
                what: "decode step batch",
                detail: format!(
                    "{batch:?} is outside the step's configuration (max_batch {}, next_n {}, \
                     max_pages {})",
                    self.max_batch, self.next_n, self.max_pages
                ),
            });
        }
        Ok(())
    }
}

/// A layer's new-token inputs to [`DsaDecodeStep::prepare`], one row per query row of the
/// batch (`batch * next_n` rows, row `b * next_n + j`), contiguous:
///
/// * `index_q`: bf16 `[rows, index_heads, 128]`, the indexer query projection before RoPE;
/// * `index_weights`: f32 `[rows, index_heads]`, the indexer head weights already scaled
///   by `index_heads^-0.5`;
/// * `index_k`: bf16 `[rows, 128]`, the indexer key projection before RoPE;
/// * `kv`: bf16 `[rows, 576]`, the new MLA cache rows (512 latent, 64 rope, RoPE applied);
/// * `positions`: i32 `[rows]`, each token's position (indexes the RoPE tables);
/// * `slots`: i32 `[rows]`, each token's physical cache slot (`page * 64 + offset`, the
///   same in both caches); device data, bounds-checked by the kernels (a negative or
///   out-of-cache slot is skipped);
/// * `rope`: the indexer's RoPE tables.
#[derive(Debug)]
pub struct DsaLayerInputs<'a, X, I, F> {
    pub index_q: &'a X,
    pub index_weights: &'a F,
    pub index_k: &'a X,
    pub kv: &'a X,
    pub positions: &'a I,
    pub slots: &'a I,
    pub rope: RopeTablesRef<'a, F>,
}

/// The DSA decode step of one model: plan once per step, then per layer prepare the new
/// tokens into the caches, score every cached key with the indexer, keep the top-k as
/// physical slots, and attend to those with sparse MLA. Owns its workspaces (allocated in
/// [`DsaDecodeStep::new`], sized for the largest batch it serves and for the largest
/// sparse-decode split workspace of any batch up to it); the per-step and per-layer calls
/// allocate nothing and never synchronize, so a whole step can be captured in a CUDA
/// graph.
#[derive(Debug)]
pub struct DsaDecodeStep {
    cfg: DsaDecodeStepConfig,
    plan: CudaSlice<i32>,
    q8: CudaSlice<u8>,
    weights: CudaSlice<f32>,
    logits: CudaSlice<f32>,
    indices: CudaSlice<i32>,
    workspace: CudaSlice<f32>,
    /// The batch shape the current plan was computed for.
    planned: Option<PagedBatchShape>,
}

impl DsaDecodeStep {
    /// Checks `cfg` and allocates the workspaces on the handle's stream (do it at
    /// start-up).
    pub fn new(k: &DsaKernels, cfg: DsaDecodeStepConfig) -> Result<Self> {
        cfg.validate()?;
        let largest = cfg.largest_batch();
        let rows = largest.rows();
        let sparse_ws = cfg
            .sparse()
            .workspace_len_up_to(cfg.max_batch, cfg.next_n, k.sm_count());
        let s = k.stream();
        Ok(Self {
            plan: s.alloc_zeros(decode_plan_len(cfg.max_batch))?,
            q8: s.alloc_zeros(check::product(
                "step q8",
                &[rows, cfg.index_heads, INDEXER_DIM],
            )?)?,
            weights: s.alloc_zeros(check::product("step weights", &[rows, cfg.index_heads])?)?,
            logits: s.alloc_zeros(check::product(
                "step logits",
                &[rows, largest.max_tokens()],
            )?)?,
            indices: s.alloc_zeros(check::product("step indices", &[rows, cfg.topk])?)?,
            workspace: s.alloc_zeros(sparse_ws.max(1))?,
            planned: None,
            cfg,
        })
    }

    /// The configuration the step was built for.
    pub fn config(&self) -> &DsaDecodeStepConfig {
        &self.cfg
    }

    /// f32 elements of the sparse-decode workspace the step holds: the largest need of
    /// any batch `1..=max_batch` on this device (not the need at `max_batch`, which can
    /// be smaller).
    pub fn workspace_len(&self) -> usize {
        self.workspace.len()
    }

    /// Once per step, after the batch's `seq_lens` are final: the indexer's schedule,
    /// reused by every layer of the step. `batch` must be one the step serves
    /// ([`DsaDecodeStepConfig::check_batch`]).
    pub fn plan<B: DevicePtr<i32>, L: DevicePtr<i32>>(
        &mut self,
        k: &DsaKernels,
        batch: &PagedBatch<'_, B, L>,
    ) -> Result<()> {
        let b = batch.shape();
        self.cfg.check_batch(&b)?;
        self.planned = None;
        k.indexer_decode_plan(batch, self.cfg.logits_shape(&b), &mut self.plan)?;
        self.planned = Some(b);
        Ok(())
    }

    fn check_planned(&self, batch: &PagedBatchShape) -> Result<()> {
        match self.planned {
            Some(p) if p == *batch => Ok(()),
            other => Err(DsaError::Unsupported {
                what: "decode step plan",
                detail: format!(
                    "the plan is for {other:?}, the layer runs {batch:?}: call plan() once per \
                     step with the step's batch"
                ),
            }),
        }
    }

    /// One layer, the whole chain: [`Self::prepare`] then [`Self::decode_prepared`].
    /// `q` is bf16 `[batch, next_n, heads, 576]`; `out` bf16 `[batch, next_n, heads, 512]`
    /// and `lse` f32 `[batch, next_n, heads]` as [`DsaKernels::sparse_mla_decode`] writes
    /// them.
    #[allow(clippy::too_many_arguments)]
    pub fn layer<B, L, X, I, F, K, Q, O, S>(
        &mut self,
        k: &DsaKernels,
        batch: &PagedBatch<'_, B, L>,
        inputs: &DsaLayerInputs<'_, X, I, F>,
        index_cache: &mut IndexerKCache,
        mla_cache: &mut PagedCache<K>,
        q: &Q,
        out: &mut O,
        lse: &mut S,
    ) -> Result<()>
    where
        B: DevicePtr<i32>,
        L: DevicePtr<i32>,
        X: DevicePtr<bf16>,
        I: DevicePtr<i32>,
        F: DevicePtr<f32>,
        K: MlaCacheKind,
        Q: DevicePtr<bf16>,
        O: DevicePtrMut<bf16>,
        S: DevicePtrMut<f32>,
    {
        self.prepare(k, batch, inputs, index_cache, mla_cache)?;
        self.decode_prepared(k, batch, index_cache, mla_cache, q, out, lse)
    }

    /// The layer's new tokens into the caches and the indexer queries into the step's
    /// buffers: indexer q prep (RoPE, Hadamard, FP8, folded weights), indexer k prep into
    /// `index_cache`, and the MLA rows into `mla_cache` (FP8 quantized for an FP8 cache),
    /// all at `inputs.slots`.
    pub fn prepare<B, L, X, I, F, K>(
        &mut self,
        k: &DsaKernels,
        batch: &PagedBatch<'_, B, L>,
        inputs: &DsaLayerInputs<'_, X, I, F>,
        index_cache: &mut IndexerKCache,
        mla_cache: &mut PagedCache<K>,
    ) -> Result<()>
    where
        B: DevicePtr<i32>,
        L: DevicePtr<i32>,
        X: DevicePtr<bf16>,
        I: DevicePtr<i32>,
        F: DevicePtr<f32>,
        K: MlaCacheKind,
    {
        let b = batch.shape();
        self.check_planned(&b)?;
        let rows = b.rows();
        let heads = self.cfg.index_heads;
        let q_shape = IndexerPrepShape {
            tokens: rows,
            heads,
            token_stride: heads * INDEXER_DIM,
        };
        k.indexer_prepare_q(
            q_shape,
            inputs.index_q,
            inputs.positions,
            inputs.rope,
            inputs.index_weights,
            &mut self.q8,
            &mut self.weights,
        )?;
        let k_shape = IndexerPrepShape {
            tokens: rows,
            heads: 1,
            token_stride: INDEXER_DIM,
        };
        k.indexer_prepare_k_device_slots(
            k_shape,
            inputs.index_k,
            inputs.positions,
            inputs.rope,
            index_cache,
            inputs.slots,
        )?;
        let kv = CacheRows {
            src: inputs.kv,
            rows,
            row_stride: QK_DIM,
        };
        k.write_cache_device_slots(mla_cache, kv, inputs.slots, false)
    }

    /// The step's prepared indexer queries, e4m3 `[rows, index_heads, 128]`, and folded
    /// weights, f32 `[rows, index_heads]` (for engines that prepare them elsewhere, and
    /// for tests): writing them replaces [`Self::prepare`]'s q half.
    pub fn prepared_queries_mut(&mut self) -> (&mut CudaSlice<u8>, &mut CudaSlice<f32>) {
        (&mut self.q8, &mut self.weights)
    }

    /// Indexer logits of the prepared queries against every cached key of the batch, into
    /// the step's logits (`[rows, 64 * max_pages]` of the batch, see [`Self::logits`]).
    pub fn index_logits<B: DevicePtr<i32>, L: DevicePtr<i32>>(
        &mut self,
        k: &DsaKernels,
        batch: &PagedBatch<'_, B, L>,
        index_cache: &IndexerKCache,
    ) -> Result<()> {
        let b = batch.shape();
        self.check_planned(&b)?;
        let shape = self.cfg.logits_shape(&b);
        k.indexer_logits_decode(
            batch,
            shape,
            &self.q8,
            &self.weights,
            index_cache,
            &self.plan,
            &mut self.logits,
        )
    }

    /// Top-k of the step's logits, translated to physical slots (see [`Self::indices`]).
    pub fn select<B: DevicePtr<i32>, L: DevicePtr<i32>>(
        &mut self,
        k: &DsaKernels,
        batch: &PagedBatch<'_, B, L>,
    ) -> Result<()> {
        let b = batch.shape();
        self.check_planned(&b)?;
        k.topk_paged(
            batch,
            &self.logits,
            self.cfg.topk_shape(&b),
            &mut self.indices,
        )
    }

    /// Sparse MLA decode of `q` over the selected slots of `mla_cache`.
    #[allow(clippy::too_many_arguments)]
    pub fn attend<B, L, K, Q, O, S>(
        &mut self,
        k: &DsaKernels,
        batch: &PagedBatch<'_, B, L>,
        mla_cache: &PagedCache<K>,
        q: &Q,
        out: &mut O,
        lse: &mut S,
    ) -> Result<()>
    where
        B: DevicePtr<i32>,
        L: DevicePtr<i32>,
        K: MlaCacheKind,
        Q: DevicePtr<bf16>,
        O: DevicePtrMut<bf16>,
        S: DevicePtrMut<f32>,
    {
        let b = batch.shape();
        self.check_planned(&b)?;
        k.sparse_mla_decode(
            &self.cfg.sparse(),
            batch,
            mla_cache,
            q,
            &self.indices,
            SparseExtras::default(),
            out,
            lse,
            &mut self.workspace,
        )
    }

    /// Logits, top-k and sparse decode of one layer whose queries are prepared.
    #[allow(clippy::too_many_arguments)]
    pub fn decode_prepared<B, L, K, Q, O, S>(
        &mut self,
        k: &DsaKernels,
        batch: &PagedBatch<'_, B, L>,
        index_cache: &IndexerKCache,
        mla_cache: &PagedCache<K>,
        q: &Q,
        out: &mut O,
        lse: &mut S,
    ) -> Result<()>
    where
        B: DevicePtr<i32>,
        L: DevicePtr<i32>,
        K: MlaCacheKind,
        Q: DevicePtr<bf16>,
        O: DevicePtrMut<bf16>,
        S: DevicePtrMut<f32>,
    {
        self.index_logits(k, batch, index_cache)?;
        self.select(k, batch)?;
        self.attend(k, batch, mla_cache, q, out, lse)
    }

    /// The last layer's logits: f32 rows of `64 * max_pages` columns (the batch's
    /// `max_pages`), row `b * next_n + j` at `(b * next_n + j) * 64 * max_pages`.
    pub fn logits(&self) -> &CudaSlice<f32> {
        &self.logits
    }

    /// The last layer's selected slots: i32 `[rows, topk]`, `-1` padding.
    pub fn indices(&self) -> &CudaSlice<i32> {
        &self.indices
    }

    /// The plan, logits and indices buffers, writable: for tests that poison them to tell
    /// written values from stale ones.
    #[doc(hidden)]
    pub fn buffers_mut(
        &mut self,
    ) -> (
        &mut CudaSlice<i32>,
        &mut CudaSlice<f32>,
        &mut CudaSlice<i32>,
    ) {
        (&mut self.plan, &mut self.logits, &mut self.indices)
    }

    /// The indexer plan of the current step (i32 `[batch + 1]`).
    pub fn indexer_plan(&self) -> &CudaSlice<i32> {
        &self.plan
    }
}
