//! The decode-step operations on [`candle_core::Tensor`]s in CUDA storage (feature
//! `candle`).
//!
//! [`CandleDsa`] wraps a [`DsaKernels`] handle bound to the stream of a candle CUDA
//! device, so every launch is ordered with candle's own work on that device. Each method
//! checks its tensors (CUDA storage on that device, dtype, contiguity, shape) and returns
//! a `candle_core::Error` naming the argument on a mismatch; the checks of the direct API
//! then run as usual. Outputs are new tensors allocated on the device's stream (candle's
//! convention); caches are updated in place.
//!
//! Tensor conventions (the direct API's layouts, in candle dtypes):
//!
//! | what | dtype | shape |
//! |---|---|---|
//! | MLA FP8 cache | `U8` | `[pages, 64 * 656]` (any shape of whole pages) |
//! | MLA bf16 cache | `BF16` | `[pages, 64, 576]` (any shape of whole pages) |
//! | indexer K cache | `U8` | `[pages, 8448]` (any shape of whole pages) |
//! | FP8 codes (indexer q) | `U8` | e4m3 bit patterns |
//! | slots, positions, lengths, block tables, indices | `I32` | |
//!
//! The routed-MoE layer (routing, permutation with FP8 quantization, both grouped GEMMs,
//! SwiGLU, combine, shared expert) runs through [`CandleMoeLayer`], made by
//! [`CandleDsa::moe_layer`]; its tensor conventions are in the `moe` table of that type.
//!
//! The paged operations take a [`CandleBatch`] (block table, sequence lengths, `next_n`),
//! the tensor form of the direct API's [`PagedBatch`].
//!
//! candle-core 0.11 is the release built on cudarc 0.19, the version this crate uses, so a
//! candle `CudaSlice` is this crate's `CudaSlice`. candle's `cuda` feature links the CUDA
//! libraries (libcuda, nvrtc, cuBLAS, cuRAND) at build time and compiles candle's own
//! kernels with nvcc.
//!
//! ```no_run
//! use candle_core::{DType, Device, Tensor};
//! use dsa_kernels::candle::CandleDsa;
//!
//! let dev = Device::new_cuda(0)?;
//! let dsa = CandleDsa::new(&dev)?;
//! let cache = dsa.new_mla_fp8_cache(16)?;                        // 16 pages of 64 tokens
//! let kv = Tensor::zeros((2, 576), DType::BF16, &dev)?;          // two new tokens
//! let slots = Tensor::new(&[0i32, 65], &dev)?;
//! dsa.write_mla_cache(&cache, &kv, &slots)?;
//! # Ok::<(), candle_core::Error>(())
//! ```
mod moe;

pub use moe::{CandleFp8, CandleMoeLayer, CandleMoeWeights};

use std::marker::PhantomData;
use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::{CudaDType, CudaStorage};
use candle_core::op::BackpropOp;
use candle_core::{bail, CudaDevice, DType, Device, InplaceOp1, Layout, Shape, Storage, Tensor};
use cudarc::driver::{CudaSlice, CudaStream, CudaView, DevicePtr, DeviceRepr};
use half::bf16;

use crate::cache::{
    CacheKind, CacheRows, IndexerK, MlaBf16, MlaFp8, PagedCache, INDEXER_DIM, INDEXER_PAGE_BYTES,
    KV_LORA_RANK, MLA_FP8_BYTES_PER_TOKEN, PAGE_SIZE, QK_DIM,
};
use crate::indexer::{decode_plan_len, DecodeLogitsShape, IndexerPrepShape, RopeTablesRef};
use crate::sparse_mla::{SparseDecodeConfig, SparseExtras};
use crate::topk::PagedTopkShape;
use crate::{DsaKernels, PagedBatch, PagedBatchShape};

type Result<T> = candle_core::Result<T>;

fn wrap(e: crate::DsaError) -> candle_core::Error {
    candle_core::Error::wrap(e)
}

/// The direct API's handle on a candle CUDA device's stream.
pub struct CandleDsa {
    kernels: DsaKernels,
    device: CudaDevice,
}

impl std::fmt::Debug for CandleDsa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CandleDsa")
            .field("kernels", &self.kernels)
            .finish()
    }
}

/// A read-locked tensor, checked to be in CUDA storage on the adapter's device and
/// contiguous; [`Locked::view`] checks the dtype and gives the device view.
struct Locked<'t> {
    name: &'static str,
    guard: candle_core::StorageRef<'t>,
    layout: &'t Layout,
}

impl Locked<'_> {
    fn storage(&self) -> Result<&CudaStorage> {
        match &*self.guard {
            Storage::Cuda(s) => Ok(s),
            _ => bail!("dsa: `{}` is not in CUDA storage", self.name),
        }
    }

    /// The locked tensor as an MLA cache, read-only for as long as the lock.
    fn mla_cache(&self, stream: &Arc<CudaStream>) -> Result<MlaCacheRef<'_>> {
        MlaCacheRef::new(stream, self.storage()?, self.layout)
    }

    fn view<T: CudaDType + DeviceRepr>(&self) -> Result<CudaView<'_, T>> {
        let s = self.storage()?;
        let slice: &CudaSlice<T> = s.as_cuda_slice::<T>().map_err(|_| {
            candle_core::Error::msg(format!(
                "dsa: `{}` has dtype {:?}, expected {}",
                self.name,
                s.dtype(),
                std::any::type_name::<T>()
            ))
        })?;
        let start = self.layout.start_offset();
        Ok(slice.slice(start..start + self.layout.shape().elem_count()))
    }
}

/// A [`PagedCache`] over a candle tensor's buffer, for the duration of one call (`'a`:
/// the tensor's lock): built from the buffer's device pointer and taken apart without
/// freeing on drop, so the tensor keeps owning the memory.
struct BorrowedCache<'a, K: CacheKind>(Option<PagedCache<K>>, PhantomData<&'a ()>);

impl<'a, K: CacheKind> BorrowedCache<'a, K> {
    /// The cache over `buf`, a view of a tensor's buffer locked for `'a` (write-locked
    /// when the cache is written). Checks it is a whole number of pages.
    fn new(stream: &Arc<CudaStream>, buf: CudaView<'a, K::Elem>, name: &str) -> Result<Self> {
        let len = buf.len();
        if len == 0 || len % K::ELEMS_PER_PAGE != 0 {
            bail!(
                "dsa: `{name}` holds {len} elements, not a whole number of {} pages ({} each)",
                K::NAME,
                K::ELEMS_PER_PAGE
            );
        }
        let (ptr, _sync) = buf.device_ptr(stream);
        // SAFETY: `buf` addresses `len` elements that stay allocated for `'a` (the tensor's
        // lock, which also excludes other writers); `Drop` leaks the slice, never frees it.
        let slice = unsafe { stream.upgrade_device_ptr::<K::Elem>(ptr, len) };
        Ok(Self(
            Some(PagedCache::from_slice(slice).map_err(wrap)?),
            PhantomData,
        ))
    }

    fn get(&self) -> &PagedCache<K> {
        self.0.as_ref().expect("present until drop")
    }

    fn get_mut(&mut self) -> &mut PagedCache<K> {
        self.0.as_mut().expect("present until drop")
    }
}

impl<K: CacheKind> Drop for BorrowedCache<'_, K> {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            c.into_inner().leak();
        }
    }
}

/// An MLA cache tensor of either layout, borrowed for one call.
enum MlaCacheRef<'a> {
    Fp8(BorrowedCache<'a, MlaFp8>),
    Bf16(BorrowedCache<'a, MlaBf16>),
}

impl<'a> MlaCacheRef<'a> {
    /// The cache in `storage` (FP8 `U8` or bf16 `BF16`), `layout` its contiguous span.
    fn new(stream: &Arc<CudaStream>, storage: &'a CudaStorage, layout: &Layout) -> Result<Self> {
        let span = layout.start_offset()..layout.start_offset() + layout.shape().elem_count();
        Ok(match storage.dtype() {
            DType::U8 => Self::Fp8(BorrowedCache::new(
                stream,
                storage.as_cuda_slice::<u8>()?.slice(span),
                "cache",
            )?),
            DType::BF16 => Self::Bf16(BorrowedCache::new(
                stream,
                storage.as_cuda_slice::<bf16>()?.slice(span),
                "cache",
            )?),
            other => bail!("dsa: MLA cache dtype {other:?}; expected U8 (FP8) or BF16"),
        })
    }
}

/// Runs `$body` with `$c` bound to the borrowed cache of either MLA layout (the kernel
/// entry points are generic over the layout, so one body serves both).
macro_rules! with_mla_cache {
    ($cache:expr, |$c:ident| $body:expr) => {
        match $cache {
            MlaCacheRef::Fp8($c) => $body,
            MlaCacheRef::Bf16($c) => $body,
        }
    };
}

fn expect_dims(name: &str, t: &Tensor, want: &[usize]) -> Result<()> {
    if t.dims() != want {
        bail!("dsa: `{name}` has shape {:?}, expected {want:?}", t.dims());
    }
    Ok(())
}

fn expect_dtype(name: &str, t: &Tensor, want: DType) -> Result<()> {
    if t.dtype() != want {
        bail!("dsa: `{name}` has dtype {:?}, expected {want:?}", t.dtype());
    }
    Ok(())
}

/// The in-place write of new tokens into a cache tensor: the cache is the tensor candle
/// write-locks; every source has another dtype than the cache or is the checked second
/// operand, so no source can share its storage (which would deadlock the read lock).
struct CacheWrite<'a> {
    dsa: &'a CandleDsa,
    kind: CacheWriteKind<'a>,
}

enum CacheWriteKind<'a> {
    /// MLA cache (FP8 `U8` or bf16 `BF16`): `kv` bf16 `[n, 576]`, `slots` i32 `[n]`.
    Mla { kv: &'a Tensor, slots: &'a Tensor },
    /// Indexer K prep into the indexer cache.
    IndexerK {
        x: &'a Tensor,
        positions: &'a Tensor,
        cos: &'a Tensor,
        sin: &'a Tensor,
        slots: &'a Tensor,
    },
}

impl InplaceOp1 for CacheWrite<'_> {
    fn name(&self) -> &'static str {
        "dsa-cache-write"
    }

    fn cpu_fwd(&self, _: &mut candle_core::CpuStorage, _: &Layout) -> Result<()> {
        bail!("dsa: caches must be in CUDA storage")
    }

    fn cuda_fwd(&self, storage: &mut CudaStorage, layout: &Layout) -> Result<()> {
        self.run(storage, layout, None)
    }
}

impl CacheWrite<'_> {
    /// The write; `kv_src` is `kv`'s storage when candle already holds its lock.
    fn run(
        &self,
        storage: &mut CudaStorage,
        layout: &Layout,
        kv_src: Option<(&CudaStorage, &Layout)>,
    ) -> Result<()> {
        let k = &self.dsa.kernels;
        let stream = k.stream();
        match &self.kind {
            CacheWriteKind::Mla { kv, slots } => {
                let n = kv.dims().first().copied().unwrap_or(0);
                expect_dims("kv", kv, &[n, QK_DIM])?;
                expect_dims("slots", slots, &[n])?;
                let kv_lock;
                let kv = match kv_src {
                    Some((s, l)) => {
                        let start = l.start_offset();
                        s.as_cuda_slice::<bf16>()?
                            .slice(start..start + l.shape().elem_count())
                    }
                    None => {
                        kv_lock = self.dsa.lock("kv", kv)?;
                        kv_lock.view::<bf16>()?
                    }
                };
                let slots = self.dsa.lock("slots", slots)?;
                let slots = slots.view::<i32>()?;
                let src = CacheRows {
                    src: &kv,
                    rows: n,
                    row_stride: QK_DIM,
                };
                // The write lock on the cache tensor is held for this whole call.
                let cache = MlaCacheRef::new(stream, storage, layout)?;
                // Slots are device data, bounds-checked in the kernel.
                with_mla_cache!(cache, |c| {
                    let mut c = c;
                    k.write_cache_device_slots(c.get_mut(), src, &slots, false)
                })
                .map_err(wrap)
            }
            CacheWriteKind::IndexerK {
                x,
                positions,
                cos,
                sin,
                slots,
            } => {
                let n = x.dims().first().copied().unwrap_or(0);
                expect_dims("x", x, &[n, INDEXER_DIM])?;
                expect_dims("positions", positions, &[n])?;
                expect_dims("slots", slots, &[n])?;
                let max_pos = self.dsa.rope_len(cos, sin)?;
                let locks = [
                    self.dsa.lock("x", x)?,
                    self.dsa.lock("positions", positions)?,
                    self.dsa.lock("rope cos", cos)?,
                    self.dsa.lock("rope sin", sin)?,
                    self.dsa.lock("slots", slots)?,
                ];
                let (x, pos) = (locks[0].view::<bf16>()?, locks[1].view::<i32>()?);
                let (cos, sin) = (locks[2].view::<f32>()?, locks[3].view::<f32>()?);
                let slots = locks[4].view::<i32>()?;
                if storage.dtype() != DType::U8 {
                    bail!(
                        "dsa: indexer cache dtype {:?}; expected U8",
                        storage.dtype()
                    );
                }
                let span =
                    layout.start_offset()..layout.start_offset() + layout.shape().elem_count();
                // The write lock on the cache tensor is held for this whole call.
                let buf = storage.as_cuda_slice::<u8>()?.slice(span);
                let mut c = BorrowedCache::<IndexerK>::new(stream, buf, "cache")?;
                let shape = IndexerPrepShape {
                    tokens: n,
                    heads: 1,
                    token_stride: INDEXER_DIM,
                };
                let rope = RopeTablesRef {
                    cos: &cos,
                    sin: &sin,
                    max_pos,
                };
                // Slots are device data, bounds-checked in the kernel.
                k.indexer_prepare_k_device_slots(shape, &x, &pos, rope, c.get_mut(), &slots)
                    .map_err(wrap)
            }
        }
    }
}

impl CandleDsa {
    /// A handle on `device`'s stream (a candle CUDA device; checks Hopper and the driver).
    pub fn new(device: &Device) -> Result<Self> {
        let device = device.as_cuda_device()?.clone();
        let kernels = DsaKernels::new(device.cuda_stream()).map_err(wrap)?;
        Ok(Self { kernels, device })
    }

    /// The direct API's handle (same stream), e.g. for [`DsaKernels::preload`].
    pub fn kernels(&self) -> &DsaKernels {
        &self.kernels
    }

    /// The candle device the handle launches on.
    pub fn device(&self) -> Device {
        Device::Cuda(self.device.clone())
    }

    fn lock<'t>(&self, name: &'static str, t: &'t Tensor) -> Result<Locked<'t>> {
        if !t.device().same_device(&self.device()) {
            bail!(
                "dsa: `{name}` is on {:?}, not on the handle's CUDA device",
                t.device().location()
            );
        }
        if !t.is_contiguous() {
            bail!("dsa: `{name}` must be contiguous (call .contiguous() first)");
        }
        let (guard, layout) = t.storage_and_layout();
        Ok(Locked {
            name,
            guard,
            layout,
        })
    }

    /// A zeroed tensor of `shape` on the device (an output of one call).
    fn zeros<T: CudaDType + DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        &self,
        shape: impl Into<Shape>,
    ) -> Result<(CudaSlice<T>, Shape)> {
        let shape = shape.into();
        let s = self
            .device
            .cuda_stream()
            .alloc_zeros::<T>(shape.elem_count())
            .map_err(candle_core::Error::wrap)?;
        Ok((s, shape))
    }

    fn tensor<T: CudaDType>(&self, (slice, shape): (CudaSlice<T>, Shape)) -> Tensor {
        let storage = CudaStorage::wrap_cuda_slice(slice, self.device.clone());
        Tensor::from_storage(Storage::Cuda(storage), shape, BackpropOp::none(), false)
    }

    fn rope_len(&self, cos: &Tensor, sin: &Tensor) -> Result<usize> {
        let pairs = crate::indexer::INDEXER_ROPE_PAIRS;
        let max_pos = cos.dims().first().copied().unwrap_or(0);
        expect_dims("rope cos", cos, &[max_pos, pairs])?;
        expect_dims("rope sin", sin, &[max_pos, pairs])?;
        Ok(max_pos)
    }

    /// A zeroed MLA FP8 cache tensor, `U8 [pages, 64 * 656]`.
    pub fn new_mla_fp8_cache(&self, pages: usize) -> Result<Tensor> {
        Ok(self.tensor(self.zeros::<u8>((pages, PAGE_SIZE * MLA_FP8_BYTES_PER_TOKEN))?))
    }

    /// A zeroed MLA bf16 cache tensor, `BF16 [pages, 64, 576]`.
    pub fn new_mla_bf16_cache(&self, pages: usize) -> Result<Tensor> {
        Ok(self.tensor(self.zeros::<bf16>((pages, PAGE_SIZE, QK_DIM))?))
    }

    /// A zeroed indexer K cache tensor, `U8 [pages, 8448]`.
    pub fn new_indexer_cache(&self, pages: usize) -> Result<Tensor> {
        Ok(self.tensor(self.zeros::<u8>((pages, INDEXER_PAGE_BYTES))?))
    }

    /// Writes `kv` (bf16 `[n, 576]`) into the MLA `cache` (FP8 `U8` or bf16 `BF16`) at
    /// `slots` (i32 `[n]`, `page * 64 + offset`). Negative slots are skipped (padding), and
    /// so are slots past the cache, which the kernel checks. See
    /// [`DsaKernels::write_cache`] for the FP8 encoding.
    pub fn write_mla_cache(&self, cache: &Tensor, kv: &Tensor, slots: &Tensor) -> Result<()> {
        self.check_cache(cache)?;
        expect_dtype("kv", kv, DType::BF16)?;
        if cache.dtype() == DType::BF16 {
            // The one same-dtype source: candle's aliasing check runs on it first.
            let op = CacheWrite {
                dsa: self,
                kind: CacheWriteKind::Mla { kv, slots },
            };
            cache.inplace_op2(kv, &AliasChecked(op))
        } else {
            cache.inplace_op1(&CacheWrite {
                dsa: self,
                kind: CacheWriteKind::Mla { kv, slots },
            })
        }
    }

    /// Indexer key preparation of `x` (bf16 `[n, 128]`, before RoPE) at `positions`
    /// (i32 `[n]`) with the RoPE tables `cos`, `sin` (f32 `[max_pos, 32]`, see
    /// [`crate::indexer::rope_tables`]), written into the indexer `cache` (`U8`) at
    /// `slots` (i32 `[n]`; negative or out-of-range slots are skipped by the kernel).
    pub fn indexer_prepare_k(
        &self,
        cache: &Tensor,
        x: &Tensor,
        positions: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        slots: &Tensor,
    ) -> Result<()> {
        self.check_cache(cache)?;
        cache.inplace_op1(&CacheWrite {
            dsa: self,
            kind: CacheWriteKind::IndexerK {
                x,
                positions,
                cos,
                sin,
                slots,
            },
        })
    }

    fn check_cache(&self, cache: &Tensor) -> Result<()> {
        if !cache.device().same_device(&self.device()) {
            bail!("dsa: `cache` is not on the handle's CUDA device");
        }
        if !cache.is_contiguous() {
            bail!("dsa: `cache` must be contiguous");
        }
        Ok(())
    }

    /// Indexer query preparation: `x` bf16 `[n, heads, 128]` (before RoPE), `positions`
    /// i32 `[n]`, RoPE tables f32 `[max_pos, 32]`, head weights `w` f32 `[n, heads]`
    /// (already scaled by `heads^-0.5`). Returns the e4m3 codes `U8 [n, heads, 128]` and
    /// the folded weights `F32 [n, heads]` for [`Self::indexer_logits_decode`].
    pub fn indexer_prepare_q(
        &self,
        x: &Tensor,
        positions: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        w: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let (n, heads) = match x.dims() {
            [n, h, d] if *d == INDEXER_DIM => (*n, *h),
            d => bail!("dsa: `x` has shape {d:?}, expected [n, heads, {INDEXER_DIM}]"),
        };
        expect_dims("positions", positions, &[n])?;
        expect_dims("w", w, &[n, heads])?;
        let max_pos = self.rope_len(cos, sin)?;
        let locks = [
            self.lock("x", x)?,
            self.lock("positions", positions)?,
            self.lock("rope cos", cos)?,
            self.lock("rope sin", sin)?,
            self.lock("w", w)?,
        ];
        let (mut q8, q8_shape) = self.zeros::<u8>((n, heads, INDEXER_DIM))?;
        let (mut w_out, w_shape) = self.zeros::<f32>((n, heads))?;
        let (cos_v, sin_v) = (locks[2].view::<f32>()?, locks[3].view::<f32>()?);
        self.kernels
            .indexer_prepare_q(
                IndexerPrepShape {
                    tokens: n,
                    heads,
                    token_stride: heads * INDEXER_DIM,
                },
                &locks[0].view::<bf16>()?,
                &locks[1].view::<i32>()?,
                RopeTablesRef {
                    cos: &cos_v,
                    sin: &sin_v,
                    max_pos,
                },
                &locks[4].view::<f32>()?,
                &mut q8,
                &mut w_out,
            )
            .map_err(wrap)?;
        Ok((self.tensor((q8, q8_shape)), self.tensor((w_out, w_shape))))
    }

    /// Locks a batch's tensors and checks their shapes (the views then make the
    /// [`PagedBatch`] of the direct API).
    fn lock_batch<'t>(&self, b: &CandleBatch<'t>) -> Result<(PagedBatchShape, [Locked<'t>; 2])> {
        let (batch, max_pages) = match b.block_table.dims() {
            [n, p] => (*n, *p),
            d => bail!("dsa: `block_table` has shape {d:?}, expected [batch, max_pages]"),
        };
        expect_dims("seq_lens", b.seq_lens, &[batch])?;
        let shape = PagedBatchShape {
            batch,
            next_n: b.next_n,
            max_pages,
        };
        Ok((
            shape,
            [
                self.lock("block_table", b.block_table)?,
                self.lock("seq_lens", b.seq_lens)?,
            ],
        ))
    }

    /// The indexer's schedule of a step (i32 `[batch + 1]`), once per step after the
    /// lengths are final; pass it to every layer's [`Self::indexer_logits_decode`].
    /// `heads` is the indexer's head count (DeepSeek-V3.2: 64).
    pub fn indexer_decode_plan(&self, batch: &CandleBatch<'_>, heads: usize) -> Result<Tensor> {
        let (shape, locks) = self.lock_batch(batch)?;
        let (table, lens) = (locks[0].view::<i32>()?, locks[1].view::<i32>()?);
        let paged = PagedBatch::new(shape, &table, &lens).map_err(wrap)?;
        let (mut plan, plan_shape) = self.zeros::<i32>(decode_plan_len(shape.batch))?;
        self.kernels
            .indexer_decode_plan(&paged, logits_shape(heads, &shape), &mut plan)
            .map_err(wrap)?;
        Ok(self.tensor((plan, plan_shape)))
    }

    /// Indexer logits of a decode step: `q8` `U8 [rows, heads, 128]` and `w`
    /// `F32 [rows, heads]` from [`Self::indexer_prepare_q`] (`rows = batch * next_n`), the
    /// indexer `cache`, and `plan` from [`Self::indexer_decode_plan`]. Returns
    /// `F32 [rows, max_pages * 64]` (`-inf` past each row's visible keys).
    pub fn indexer_logits_decode(
        &self,
        batch: &CandleBatch<'_>,
        q8: &Tensor,
        w: &Tensor,
        cache: &Tensor,
        plan: &Tensor,
    ) -> Result<Tensor> {
        let (shape, blocks) = self.lock_batch(batch)?;
        let rows = shape.rows();
        let heads = q8.dims().get(1).copied().unwrap_or(0);
        expect_dims("q8", q8, &[rows, heads, INDEXER_DIM])?;
        expect_dims("w", w, &[rows, heads])?;
        expect_dims("plan", plan, &[decode_plan_len(shape.batch)])?;
        let locks = [
            self.lock("q8", q8)?,
            self.lock("w", w)?,
            self.lock("plan", plan)?,
            self.lock("cache", cache)?,
        ];
        let (table, lens) = (blocks[0].view::<i32>()?, blocks[1].view::<i32>()?);
        let paged = PagedBatch::new(shape, &table, &lens).map_err(wrap)?;
        let c =
            BorrowedCache::<IndexerK>::new(self.kernels.stream(), locks[3].view::<u8>()?, "cache")?;
        let lshape = logits_shape(heads, &shape);
        let (mut out, out_shape) = self.zeros::<f32>((rows, lshape.max_ctx))?;
        self.kernels
            .indexer_logits_decode(
                &paged,
                lshape,
                &locks[0].view::<u8>()?,
                &locks[1].view::<f32>()?,
                c.get(),
                &locks[2].view::<i32>()?,
                &mut out,
            )
            .map_err(wrap)?;
        Ok(self.tensor((out, out_shape)))
    }

    /// Top-`k` of each row of `logits` (f32 `[rows, cols]`, as
    /// [`Self::indexer_logits_decode`] returns them), over each row's causal range derived
    /// from the batch's lengths, translated through its block table to cache slots,
    /// unsorted, `-1`-padded. Returns `I32 [rows, k]`.
    pub fn topk_paged(&self, batch: &CandleBatch<'_>, logits: &Tensor, k: usize) -> Result<Tensor> {
        let (shape, blocks) = self.lock_batch(batch)?;
        let rows = shape.rows();
        let cols = logits.dims().get(1).copied().unwrap_or(0);
        expect_dims("logits", logits, &[rows, cols])?;
        let logits_l = self.lock("logits", logits)?;
        let (table, lens) = (blocks[0].view::<i32>()?, blocks[1].view::<i32>()?);
        let paged = PagedBatch::new(shape, &table, &lens).map_err(wrap)?;
        let (mut out, out_shape) = self.zeros::<i32>((rows, k))?;
        let tshape = PagedTopkShape {
            cols,
            row_stride: cols,
            topk: k,
            sorted: false,
        };
        self.kernels
            .topk_paged(&paged, &logits_l.view::<f32>()?, tshape, &mut out)
            .map_err(wrap)?;
        Ok(self.tensor((out, out_shape)))
    }

    /// Sparse MLA decode: `q` bf16 `[batch, next_n, heads, 576]`, the MLA `cache` (FP8
    /// `U8` or bf16 `BF16`), `indices` i32 `[rows, topk]` (cache slots from
    /// [`Self::topk_paged`], `-1` unused). Returns `out` bf16 `[batch, next_n, heads, 512]`
    /// and `lse` f32 `[batch, next_n, heads]` (natural log). The split workspace is
    /// allocated per call.
    pub fn sparse_mla_decode(
        &self,
        batch: &CandleBatch<'_>,
        q: &Tensor,
        cache: &Tensor,
        indices: &Tensor,
        softmax_scale: f32,
    ) -> Result<(Tensor, Tensor)> {
        let (shape, blocks) = self.lock_batch(batch)?;
        let heads = q.dims().get(2).copied().unwrap_or(0);
        expect_dims("q", q, &[shape.batch, shape.next_n, heads, QK_DIM])?;
        let topk = indices.dims().get(1).copied().unwrap_or(0);
        expect_dims("indices", indices, &[shape.rows(), topk])?;
        let cfg = SparseDecodeConfig {
            heads,
            topk,
            softmax_scale,
        };
        let locks = [
            self.lock("q", q)?,
            self.lock("indices", indices)?,
            self.lock("cache", cache)?,
        ];
        let (table, lens) = (blocks[0].view::<i32>()?, blocks[1].view::<i32>()?);
        let paged = PagedBatch::new(shape, &table, &lens).map_err(wrap)?;
        let (mut out, out_shape) =
            self.zeros::<bf16>((shape.batch, shape.next_n, heads, KV_LORA_RANK))?;
        let (mut lse, lse_shape) = self.zeros::<f32>((shape.batch, shape.next_n, heads))?;
        let ws_len = self.kernels.sparse_mla_decode_workspace_len(&shape, &cfg);
        let (mut ws, _) = self.zeros::<f32>(ws_len.max(1))?;
        let (q_v, idx_v) = (locks[0].view::<bf16>()?, locks[1].view::<i32>()?);
        let cache = locks[2].mla_cache(self.kernels.stream())?;
        with_mla_cache!(cache, |c| self.kernels.sparse_mla_decode(
            &cfg,
            &paged,
            c.get(),
            &q_v,
            &idx_v,
            SparseExtras::default(),
            &mut out,
            &mut lse,
            &mut ws,
        ))
        .map_err(wrap)?;
        Ok((self.tensor((out, out_shape)), self.tensor((lse, lse_shape))))
    }

    /// Dense paged MLA decode over every cached token of the batch (causal within the
    /// `next_n` new ones): `q` bf16 `[batch, next_n, heads, 576]` and the MLA `cache`.
    /// Plans, splits and combines in one call (plan and workspace allocated per call).
    /// Returns `out` bf16 `[batch, next_n, heads, 512]` and `lse` f32
    /// `[batch, next_n, heads]`.
    pub fn dense_mla_decode(
        &self,
        batch: &CandleBatch<'_>,
        q: &Tensor,
        cache: &Tensor,
        softmax_scale: f32,
    ) -> Result<(Tensor, Tensor)> {
        let (shape, blocks) = self.lock_batch(batch)?;
        let heads = q.dims().get(2).copied().unwrap_or(0);
        expect_dims("q", q, &[shape.batch, shape.next_n, heads, QK_DIM])?;
        let cfg = self.kernels.dense_mla_config(&shape, heads, softmax_scale);
        cfg.validate(&shape).map_err(wrap)?;
        let locks = [self.lock("q", q)?, self.lock("cache", cache)?];
        let (table, lens) = (blocks[0].view::<i32>()?, blocks[1].view::<i32>()?);
        let paged = PagedBatch::new(shape, &table, &lens).map_err(wrap)?;
        let (mut plan, _) = self.zeros::<i32>(cfg.plan_len(&shape))?;
        let (mut ws, _) = self.zeros::<f32>(cfg.workspace_len(&shape).max(1))?;
        let (mut out, out_shape) =
            self.zeros::<bf16>((shape.batch, shape.next_n, heads, KV_LORA_RANK))?;
        let (mut lse, lse_shape) = self.zeros::<f32>((shape.batch, shape.next_n, heads))?;
        self.kernels
            .dense_mla_plan(&cfg, &paged, &mut plan)
            .map_err(wrap)?;
        let q_v = locks[0].view::<bf16>()?;
        let cache = locks[1].mla_cache(self.kernels.stream())?;
        with_mla_cache!(cache, |c| self.kernels.dense_mla_decode(
            &cfg,
            &paged,
            c.get(),
            &q_v,
            &plan,
            &mut ws,
            &mut out,
            &mut lse
        ))
        .map_err(wrap)?;
        Ok((self.tensor((out, out_shape)), self.tensor((lse, lse_shape))))
    }
}

/// A decode step's batch as candle tensors: `block_table` i32 `[batch, max_pages]` (page
/// ids, bounds-checked on the device), `seq_lens` i32 `[batch]` (each sequence's length
/// including its `next_n` new tokens), `next_n` query rows per sequence (1 for plain
/// decode). Row `b * next_n + j` of every per-row tensor belongs to sequence `b`.
#[derive(Debug, Clone, Copy)]
pub struct CandleBatch<'t> {
    pub block_table: &'t Tensor,
    pub seq_lens: &'t Tensor,
    pub next_n: usize,
}

fn logits_shape(heads: usize, batch: &PagedBatchShape) -> DecodeLogitsShape {
    DecodeLogitsShape::new(heads, batch.max_tokens())
}

/// The bf16 MLA cache write as a two-operand in-place op: candle rejects a `kv` that
/// shares the cache's storage before any lock is taken; `kv` is then read as usual.
struct AliasChecked<'a>(CacheWrite<'a>);

impl candle_core::InplaceOp2 for AliasChecked<'_> {
    fn name(&self) -> &'static str {
        "dsa-cache-write"
    }

    fn cpu_fwd(
        &self,
        _: &mut candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> Result<()> {
        bail!("dsa: caches must be in CUDA storage")
    }

    fn cuda_fwd(
        &self,
        c: &mut CudaStorage,
        cl: &Layout,
        kv: &CudaStorage,
        kvl: &Layout,
    ) -> Result<()> {
        if !kvl.is_contiguous() {
            bail!("dsa: `kv` must be contiguous");
        }
        self.0.run(c, cl, Some((kv, kvl)))
    }
}
