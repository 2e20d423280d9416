//! Typed owners of paged cache memory that know their capacity.
use std::marker::PhantomData;
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits};
use half::bf16;

use super::{INDEXER_PAGE_BYTES, MLA_FP8_BYTES_PER_TOKEN, PAGE_SIZE, QK_DIM};
use crate::check;
use crate::error::{DsaError, Result};

/// What distinguishes one paged cache layout from another.
pub trait CacheKind {
    /// Element type of the device buffer.
    type Elem: DeviceRepr + ValidAsZeroBits + Copy + Default + Unpin;
    /// Elements per page.
    const ELEMS_PER_PAGE: usize;
    /// bf16 values per token the write kernel reads.
    const SRC_DIM: usize;
    /// Name used in errors.
    const NAME: &'static str;
    /// The write kernel in `kernels-cuda/cache/cache_write.cu`.
    const WRITE_KERNEL: &'static str;
    /// Whether the cache stores FP8 (the write kernel quantizes).
    const FP8: bool;
    /// Which byte layout this is.
    const LAYOUT: CacheLayout;
}

/// The two MLA cache layouts: only these can be passed to an MLA decode, so passing the
/// indexer K cache to one is a compile error. Implemented by [`MlaFp8`] and [`MlaBf16`]
/// (sealed: the kernels exist for these two only).
///
/// ```compile_fail
/// fn mla_only<K: dsa_kernels::cache::MlaCacheKind>() {}
/// mla_only::<dsa_kernels::cache::IndexerK>(); // the indexer K cache is no MLA cache
/// ```
pub trait MlaCacheKind: CacheKind + sealed::Sealed {
    /// The dense decode split kernel over this layout.
    const DENSE_KERNEL: &'static str;
    /// Its dynamic shared memory.
    const DENSE_SMEM: u32;
    /// The sparse decode kernel over this layout.
    const SPARSE_KERNEL: &'static str;
    /// Its paired form, if the layout has one: the two head groups of a query row as a
    /// 2-CTA cluster that gathers each block once (half per CTA), for an even number of
    /// 64-head groups.
    const SPARSE_PAIR_KERNEL: Option<&'static str>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::MlaFp8 {}
    impl Sealed for super::MlaBf16 {}
}

impl MlaCacheKind for MlaFp8 {
    const DENSE_KERNEL: &'static str = "dsa_dense_mla_decode_fp8";
    const DENSE_SMEM: u32 = crate::sys::dense_mla::DSA_DENSE_SMEM_FP8;
    const SPARSE_KERNEL: &'static str = "dsa_sparse_mla_decode_fp8";
    const SPARSE_PAIR_KERNEL: Option<&'static str> = Some("dsa_sparse_mla_decode_fp8_pair");
}
impl MlaCacheKind for MlaBf16 {
    const DENSE_KERNEL: &'static str = "dsa_dense_mla_decode_bf16";
    const DENSE_SMEM: u32 = crate::sys::dense_mla::DSA_DENSE_SMEM_BF16;
    const SPARSE_KERNEL: &'static str = "dsa_sparse_mla_decode_bf16";
    const SPARSE_PAIR_KERNEL: Option<&'static str> = None;
}

/// The three paged layouts of the crate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheLayout {
    MlaFp8,
    MlaBf16,
    IndexerK,
}

/// MLA cache, FP8: 656 bytes per token (see [`crate::cache`]).
#[derive(Debug, Clone, Copy)]
pub struct MlaFp8;
/// MLA cache, bf16: `[pages, 64, 576]`.
#[derive(Debug, Clone, Copy)]
pub struct MlaBf16;
/// Indexer K cache: 8448 bytes per page.
#[derive(Debug, Clone, Copy)]
pub struct IndexerK;

impl CacheKind for MlaFp8 {
    const LAYOUT: CacheLayout = CacheLayout::MlaFp8;
    type Elem = u8;
    const ELEMS_PER_PAGE: usize = PAGE_SIZE * MLA_FP8_BYTES_PER_TOKEN;
    const SRC_DIM: usize = QK_DIM;
    const NAME: &'static str = "MLA FP8 cache";
    const WRITE_KERNEL: &'static str = "dsa_cache_write_mla_fp8";
    const FP8: bool = true;
}
impl CacheKind for MlaBf16 {
    const LAYOUT: CacheLayout = CacheLayout::MlaBf16;
    type Elem = bf16;
    const ELEMS_PER_PAGE: usize = PAGE_SIZE * QK_DIM;
    const SRC_DIM: usize = QK_DIM;
    const NAME: &'static str = "MLA bf16 cache";
    const WRITE_KERNEL: &'static str = "dsa_cache_write_mla_bf16";
    const FP8: bool = false;
}
impl CacheKind for IndexerK {
    const LAYOUT: CacheLayout = CacheLayout::IndexerK;
    type Elem = u8;
    const ELEMS_PER_PAGE: usize = INDEXER_PAGE_BYTES;
    const SRC_DIM: usize = super::INDEXER_DIM;
    const NAME: &'static str = "indexer K cache";
    const WRITE_KERNEL: &'static str = "dsa_cache_write_indexer_k";
    const FP8: bool = true;
}

/// A paged cache on the device: `num_pages` pages of `K`'s layout in one buffer.
pub struct PagedCache<K: CacheKind> {
    data: CudaSlice<K::Elem>,
    num_pages: usize,
    _kind: PhantomData<K>,
}

/// The MLA FP8 cache (656 B/token).
pub type MlaFp8Cache = PagedCache<MlaFp8>;
/// The MLA bf16 cache (576 bf16/token).
pub type MlaBf16Cache = PagedCache<MlaBf16>;
/// The indexer K cache (132 B/token, 8448 B/page).
pub type IndexerKCache = PagedCache<IndexerK>;

impl<K: CacheKind> std::fmt::Debug for PagedCache<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct(K::NAME)
            .field("num_pages", &self.num_pages)
            .finish()
    }
}

impl<K: CacheKind> PagedCache<K> {
    /// Elements of a cache of `num_pages` pages, after checking that the count is positive,
    /// that its size and token capacity do not overflow, and that its slots fit the
    /// kernels' 32-bit slot indices (so every token of the cache is addressable). Pure.
    pub fn elements_for(num_pages: usize) -> Result<usize> {
        if num_pages == 0 {
            return Err(DsaError::Capacity {
                what: K::NAME,
                needed: 1,
                capacity: 0,
            });
        }
        let tokens = check::product(K::NAME, &[num_pages, PAGE_SIZE])?;
        check::fits_i32("cache slots (64 * pages)", tokens)?;
        let elems = check::product(K::NAME, &[num_pages, K::ELEMS_PER_PAGE])?;
        check::product(K::NAME, &[elems, std::mem::size_of::<K::Elem>()])?;
        Ok(elems)
    }

    /// Allocates a zeroed cache of `num_pages` pages (an allocation: do it at start-up).
    pub fn new(stream: &Arc<CudaStream>, num_pages: usize) -> Result<Self> {
        let data = stream.alloc_zeros::<K::Elem>(Self::elements_for(num_pages)?)?;
        Ok(Self {
            data,
            num_pages,
            _kind: PhantomData,
        })
    }

    /// Wraps an existing buffer; its length must be a whole number of pages.
    pub fn from_slice(data: CudaSlice<K::Elem>) -> Result<Self> {
        let len = data.len();
        if len == 0 || len % K::ELEMS_PER_PAGE != 0 {
            return Err(DsaError::Shape {
                what: K::NAME,
                expected: vec![len / K::ELEMS_PER_PAGE.max(1) + 1, K::ELEMS_PER_PAGE],
                got: vec![len],
            });
        }
        Self::elements_for(len / K::ELEMS_PER_PAGE)?;
        Ok(Self {
            num_pages: len / K::ELEMS_PER_PAGE,
            data,
            _kind: PhantomData,
        })
    }

    /// Pages in the cache.
    pub fn num_pages(&self) -> usize {
        self.num_pages
    }

    /// Token slots in the cache (`num_pages * 64`).
    pub fn capacity_tokens(&self) -> usize {
        self.num_pages * PAGE_SIZE
    }

    /// The raw device buffer (layout in [`crate::cache`]).
    pub fn data(&self) -> &CudaSlice<K::Elem> {
        &self.data
    }

    /// The raw device buffer, writable.
    pub fn data_mut(&mut self) -> &mut CudaSlice<K::Elem> {
        &mut self.data
    }

    /// Gives the buffer back.
    pub fn into_inner(self) -> CudaSlice<K::Elem> {
        self.data
    }
}
