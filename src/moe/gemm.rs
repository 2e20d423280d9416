//! FP8 block-scaled grouped GEMM (kernels-cuda/moe/grouped_gemm.cu): activations e4m3 with
//! one f32 scale per row per 128 of K ("1x128"), weights e4m3 with one f32 scale per
//! 128x128 block, bf16 out. The same kernel with one group is the dense FP8 linear
//! ([`fp8_linear`]).
//!
//! Math (spec section 2, `dsa_reference::moe::grouped_gemm_contiguous`): for each 128-wide
//! K block `kb` the FP8 MMA produces a fresh fp32 partial `P = A[r, kb] . B[g, c, kb]`,
//! then `acc += P * sa[r, kb] * sb[g, c / 128, kb]`; the result is rounded to bf16.
//!
//! Layouts (all row-major, K-major operands; the contract with the MoE ops):
//! * `b`: e4m3 codes `[groups, n, k]`; `sfb`: f32 `[groups, n/128, k/128]`.
//! * Contiguous ([`grouped_gemm_contiguous`]): `a` `[rows, k]`, `d` bf16 `[rows, n]`,
//!   `m_indices` i32 `[rows]` (the group of each row, `-1` on padding rows). Every group's
//!   segment starts on a multiple of `align` (128 or 64) and `rows` is a multiple of
//!   `align`. Rows whose `m_indices` is `-1` (or not a group) are written as exact zeros;
//!   so is a row whose id differs from the id of the first row of its `align` block (a
//!   segment that is not aligned).
//! * Masked ([`grouped_gemm_masked`]): `a` `[groups, max_m, k]`, `d` `[groups, max_m, n]`,
//!   `masked_m` i32 `[groups]`; rows at or past `masked_m[g]` (clamped to `[0, max_m]`) are
//!   written as zeros; `max_m` is a multiple of 64.
//! * `sfa` (activation scales) is MN-major and padded for TMA: contiguous `[k/128, m_pad]`
//!   with `m_pad = round_up(rows, 4)` ([`sfa_row_stride`]), element (row `r`, block `kb`)
//!   at `kb * m_pad + r`; masked `[groups, k/128, max_m]`, at `(g * k/128 + kb) * max_m + r`.
//!
//! Every operation checks shapes, buffer lengths and alignments (`a`, `b`, `sfa`, `d`
//! 16-byte aligned) before any launch, allocates nothing and is enqueued on the handle's
//! stream (CUDA-graph capturable). Group ids and `masked_m` are device data and are
//! clamped in the kernel, never trusted for addressing.
use cudarc::driver::{sys, DevicePtr, DevicePtrMut, LaunchConfig};
use half::bf16;

use crate::check::{self, product};
use crate::error::{DsaError, Result};
use crate::runtime::DsaKernels;
use crate::sys::grouped_gemm::{DsaGroupedGemmParams, DsaTmaDesc};

/// N and K must be multiples of this (the scale block and the kernel's K step).
pub const GEMM_BLOCK: usize = 128;
/// Row alignments of the contiguous layout the kernel supports.
pub const ALIGNMENTS: [usize; 2] = [128, 64];

/// Shape of a contiguous grouped GEMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContiguousShape {
    /// Rows of `a`, `m_indices` and `d` (the row capacity, a multiple of `align`).
    pub rows: usize,
    /// Groups (experts) in `b`.
    pub groups: usize,
    pub n: usize,
    pub k: usize,
    /// 128 or 64: every group's segment starts on a multiple of it.
    pub align: usize,
}

/// Shape of a masked grouped GEMM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaskedShape {
    pub groups: usize,
    /// Row slots per group (a multiple of 64).
    pub max_m: usize,
    pub n: usize,
    pub k: usize,
}

/// Shape of the dense FP8 linear `d [m, n] = a [m, k] . b [n, k]^T` (any `m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinearShape {
    pub m: usize,
    pub n: usize,
    pub k: usize,
}

/// Row capacity of the contiguous layout for `tokens` tokens routed to `top_k` of
/// `experts` experts: `round_up(tokens * top_k + experts * (align - 1), align)`, the most
/// rows any routing can need (each expert's segment padded to `align`).
pub fn contiguous_capacity(
    tokens: usize,
    top_k: usize,
    experts: usize,
    align: usize,
) -> Result<usize> {
    const WHAT: &str = "contiguous row capacity";
    check_align(align)?;
    let rows = tokens
        .checked_mul(top_k)
        .and_then(|r| r.checked_add(experts.checked_mul(align - 1)?))
        .and_then(|r| r.checked_next_multiple_of(align))
        .ok_or_else(|| check::overflow(WHAT))?;
    check::fits_i32("contiguous row capacity", rows)?;
    Ok(rows)
}

/// Row stride of the contiguous layout's MN-major activation scales: `rows` rounded up to
/// 4 floats, so every k-block's column starts 16-byte aligned (the TMA rule).
pub fn sfa_row_stride(rows: usize) -> usize {
    rows.div_ceil(4) * 4
}

fn check_align(align: usize) -> Result<()> {
    if ALIGNMENTS.contains(&align) {
        Ok(())
    } else {
        Err(DsaError::Unsupported {
            what: "grouped GEMM alignment",
            detail: format!("{align} rows; supported: 128, 64"),
        })
    }
}

fn check_nk(n: usize, k: usize) -> Result<()> {
    for (what, v) in [("grouped GEMM n", n), ("grouped GEMM k", k)] {
        if v == 0 || v % GEMM_BLOCK != 0 {
            return Err(DsaError::Unsupported {
                what,
                detail: format!("{v}: must be a positive multiple of {GEMM_BLOCK}"),
            });
        }
    }
    Ok(())
}

/// The kernel instances: (BLOCK_M, BLOCK_N, name, dynamic shared memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tiling {
    M128N256,
    M128N128,
    M64N128,
    M64N256,
}

impl Tiling {
    /// BLOCK_M 128 when the rows come in 128-row blocks; else 64, with two warpgroups side
    /// by side along N. BLOCK_N 256 when N allows it: each operand byte brought from L2
    /// then feeds twice the MMA work of a 128-wide tile (128 x 128 tiles are bound by L2
    /// bandwidth, about 7.6 TB/s at 970 TFLOP/s on the H200).
    fn pick(block_m: usize, n: usize) -> Self {
        match (block_m, n.is_multiple_of(256)) {
            (128, true) => Tiling::M128N256,
            (128, false) => Tiling::M128N128,
            (_, true) => Tiling::M64N256,
            _ => Tiling::M64N128,
        }
    }
    fn block_m(self) -> usize {
        match self {
            Tiling::M128N128 | Tiling::M128N256 => 128,
            _ => 64,
        }
    }
    fn block_n(self) -> usize {
        match self {
            Tiling::M64N256 | Tiling::M128N256 => 256,
            _ => 128,
        }
    }
    fn kernel(self) -> &'static str {
        match self {
            Tiling::M128N256 => "dsa_grouped_gemm_128x256",
            Tiling::M128N128 => "dsa_grouped_gemm_128x128",
            Tiling::M64N128 => "dsa_grouped_gemm_64x128",
            Tiling::M64N256 => "dsa_grouped_gemm_64x256",
        }
    }
    fn smem(self) -> u32 {
        use crate::sys::grouped_gemm as g;
        match self {
            Tiling::M128N256 => g::DSA_GG_SMEM_128x256,
            Tiling::M128N128 => g::DSA_GG_SMEM_128x128,
            Tiling::M64N128 => g::DSA_GG_SMEM_64x128,
            Tiling::M64N256 => g::DSA_GG_SMEM_64x256,
        }
    }
}

/// A 2-D TMA descriptor over a row-major `[rows, k]` u8 matrix at `ptr`, loading boxes of
/// `box_rows` x 128 bytes with the 128-byte swizzle wgmma reads.
fn tma_desc_2d(ptr: u64, rows: usize, k: usize, box_rows: usize) -> Result<DsaTmaDesc> {
    let mut map = std::mem::MaybeUninit::<sys::CUtensorMap>::zeroed();
    let dims: [u64; 2] = [k as u64, rows as u64];
    let strides: [u64; 1] = [k as u64];
    let boxes: [u32; 2] = [GEMM_BLOCK as u32, box_rows as u32];
    let elem: [u32; 2] = [1, 1];
    // SAFETY: every pointer argument points to a live local array of the rank the call
    // states; the driver only encodes the descriptor (it does not touch `ptr`).
    unsafe {
        sys::cuTensorMapEncodeTiled(
            map.as_mut_ptr(),
            sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_UINT8,
            2,
            ptr as *mut std::ffi::c_void,
            dims.as_ptr(),
            strides.as_ptr(),
            boxes.as_ptr(),
            elem.as_ptr(),
            sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            sys::CUtensorMapSwizzle::CU_TENSOR_MAP_SWIZZLE_128B,
            sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
        .result()?;
    }
    // SAFETY: the driver filled the 128-byte descriptor; DsaTmaDesc has the same size.
    let map = unsafe { map.assume_init() };
    const _: () =
        assert!(std::mem::size_of::<sys::CUtensorMap>() == std::mem::size_of::<DsaTmaDesc>());
    // SAFETY: both are 128 bytes of plain data.
    Ok(unsafe { std::mem::transmute::<sys::CUtensorMap, DsaTmaDesc>(map) })
}

/// What one launch needs besides the device pointers.
struct Launch {
    tiling: Tiling,
    /// Rows of `a` / `d` as one 2-D tensor (contiguous: rows; masked: groups * max_m).
    rows_total: usize,
    /// Kernel `m_rows` (contiguous rows, or max_m).
    m_rows: usize,
    sfa_ld: usize,
    groups: usize,
    n: usize,
    k: usize,
    masked: bool,
}

impl Launch {
    fn tiles(&self) -> usize {
        let (bm, bn) = (self.tiling.block_m(), self.tiling.block_n());
        let m_blocks = if self.masked {
            self.groups * (self.m_rows / bm)
        } else {
            self.m_rows.div_ceil(bm)
        };
        m_blocks * (self.n / bn)
    }
}

/// Buffers of one launch, already length-checked.
struct Operands<'a, A, SA, B, SB, I, D> {
    a: &'a A,
    sfa: &'a SA,
    b: &'a B,
    sfb: &'a SB,
    /// m_indices (contiguous) or masked_m (masked); None for the dense linear.
    groups_of: Option<&'a I>,
    d: &'a mut D,
}

fn launch<A, SA, B, SB, I, D>(
    kernels: &DsaKernels,
    l: Launch,
    ops: Operands<'_, A, SA, B, SB, I, D>,
) -> Result<()>
where
    A: DevicePtr<u8>,
    SA: DevicePtr<f32>,
    B: DevicePtr<u8>,
    SB: DevicePtr<f32>,
    I: DevicePtr<i32>,
    D: DevicePtrMut<bf16>,
{
    let tiles = l.tiles();
    if tiles == 0 {
        return Ok(());
    }
    check::fits_i32("grouped GEMM tiles", tiles)?;
    let mut args = kernels.args();
    let a_ptr = args.read("grouped GEMM a", ops.a, 16)?;
    let sfa = args.read("grouped GEMM sfa", ops.sfa, 16)?;
    let b_ptr = args.read("grouped GEMM b", ops.b, 16)?;
    let sfb = args.read("grouped GEMM sfb", ops.sfb, 4)?;
    let group_ids = args.read_opt("grouped GEMM group ids", ops.groups_of, 4)?;
    let d = args.write::<bf16, _>("grouped GEMM d", ops.d, 16)?;
    let params = DsaGroupedGemmParams {
        a_desc: tma_desc_2d(a_ptr as u64, l.rows_total, l.k, 64)?,
        b_desc: tma_desc_2d(b_ptr as u64, l.groups * l.n, l.k, l.tiling.block_n())?,
        sfa,
        sfb,
        m_indices: if l.masked {
            std::ptr::null()
        } else {
            group_ids
        },
        masked_m: if l.masked {
            group_ids
        } else {
            std::ptr::null()
        },
        d: d as *mut u16,
        m_rows: l.m_rows as i32,
        sfa_ld: l.sfa_ld as i32,
        n: l.n as i32,
        k: l.k as i32,
        groups: l.groups as i32,
        masked: l.masked as i32,
    };
    let sms = kernels.sm_count();
    let cfg = LaunchConfig {
        grid_dim: (tiles.min(sms) as u32, 1, 1),
        block_dim: (crate::sys::grouped_gemm::DSA_GG_THREADS, 1, 1),
        shared_mem_bytes: l.tiling.smem(),
    };
    // SAFETY: every buffer was checked to hold the rows, k-blocks and groups the kernel
    // addresses (TMA boxes stay inside the encoded tensors; group ids and masked_m are
    // clamped on the device); the guards above keep the pointers alive for the launch.
    unsafe { args.launch("grouped_gemm", l.tiling.kernel(), cfg, &params) }
}

/// Checks shared by every layout: `b`, `sfb` and the sizes that must fit 32 bits.
fn check_weights(groups: usize, n: usize, k: usize, b_len: usize, sfb_len: usize) -> Result<()> {
    check_nk(n, k)?;
    if groups == 0 {
        return Err(DsaError::Unsupported {
            what: "grouped GEMM groups",
            detail: "at least one group".into(),
        });
    }
    check::fits_i32("grouped GEMM k", k)?;
    check::fits_i32(
        "grouped GEMM weight rows",
        product("groups * n", &[groups, n])?,
    )?;
    let b_elems = product("weights", &[groups, n, k])?;
    check::at_least("grouped GEMM b", b_len, b_elems, &[groups, n, k])?;
    let (nb, kb) = (n / GEMM_BLOCK, k / GEMM_BLOCK);
    check::at_least(
        "grouped GEMM sfb",
        sfb_len,
        product("sfb", &[groups, nb, kb])?,
        &[groups, nb, kb],
    )
}

/// Element counts of the buffers of one call (what the checks compare with the shape).
#[derive(Debug, Clone, Copy, Default)]
struct Lens {
    a: usize,
    sfa: usize,
    b: usize,
    sfb: usize,
    /// m_indices (contiguous) or masked_m (masked); unused by the linear.
    ids: usize,
    d: usize,
}

fn lens<A, SA, B, SB, D>(a: &A, sfa: &SA, b: &B, sfb: &SB, ids: usize, d: &D) -> Lens
where
    A: DevicePtr<u8>,
    SA: DevicePtr<f32>,
    B: DevicePtr<u8>,
    SB: DevicePtr<f32>,
    D: DevicePtrMut<bf16>,
{
    Lens {
        a: a.len(),
        sfa: sfa.len(),
        b: b.len(),
        sfb: sfb.len(),
        ids,
        d: d.len(),
    }
}

/// Every check of a contiguous call; the launch it implies.
fn contiguous_launch(shape: ContiguousShape, len: Lens) -> Result<Launch> {
    let ContiguousShape {
        rows,
        groups,
        n,
        k,
        align,
    } = shape;
    check_align(align)?;
    check_weights(groups, n, k, len.b, len.sfb)?;
    if rows % align != 0 {
        return Err(DsaError::Unsupported {
            what: "contiguous rows",
            detail: format!("{rows} rows: must be a multiple of the alignment {align}"),
        });
    }
    let m_pad = sfa_row_stride(rows);
    check::fits_i32("contiguous rows", m_pad)?;
    let kb = k / GEMM_BLOCK;
    check::at_least(
        "grouped GEMM a",
        len.a,
        product("a", &[rows, k])?,
        &[rows, k],
    )?;
    check::at_least(
        "grouped GEMM sfa",
        len.sfa,
        product("sfa", &[kb, m_pad])?,
        &[kb, m_pad],
    )?;
    check::at_least("m_indices", len.ids, rows, &[rows])?;
    check::at_least(
        "grouped GEMM d",
        len.d,
        product("d", &[rows, n])?,
        &[rows, n],
    )?;
    Ok(Launch {
        tiling: Tiling::pick(align, n),
        rows_total: rows,
        m_rows: rows,
        sfa_ld: m_pad,
        groups,
        n,
        k,
        masked: false,
    })
}

/// Every check of a masked call; the launch it implies.
fn masked_launch(shape: MaskedShape, len: Lens) -> Result<Launch> {
    let MaskedShape {
        groups,
        max_m,
        n,
        k,
    } = shape;
    check_weights(groups, n, k, len.b, len.sfb)?;
    if max_m % 64 != 0 {
        return Err(DsaError::Unsupported {
            what: "masked max_m",
            detail: format!("{max_m}: must be a multiple of 64"),
        });
    }
    let kb = k / GEMM_BLOCK;
    let rows_total = product("groups * max_m", &[groups, max_m])?;
    check::fits_i32("masked rows", rows_total)?;
    let sfa_elems = product("sfa", &[groups, kb, max_m])?;
    check::fits_i32("masked sfa", sfa_elems)?;
    check::at_least(
        "grouped GEMM a",
        len.a,
        product("a", &[rows_total, k])?,
        &[groups, max_m, k],
    )?;
    check::at_least("grouped GEMM sfa", len.sfa, sfa_elems, &[groups, kb, max_m])?;
    check::at_least("masked_m", len.ids, groups, &[groups])?;
    check::at_least(
        "grouped GEMM d",
        len.d,
        product("d", &[rows_total, n])?,
        &[groups, max_m, n],
    )?;
    Ok(Launch {
        tiling: Tiling::pick(if max_m % 128 == 0 { 128 } else { 64 }, n),
        rows_total,
        m_rows: max_m,
        sfa_ld: max_m,
        groups,
        n,
        k,
        masked: true,
    })
}

/// Every check of a dense linear call; the launch it implies.
fn linear_launch(shape: LinearShape, len: Lens) -> Result<Launch> {
    let LinearShape { m, n, k } = shape;
    check_weights(1, n, k, len.b, len.sfb)?;
    let m_pad = sfa_row_stride(m);
    check::fits_i32("linear rows", m_pad)?;
    let kb = k / GEMM_BLOCK;
    check::at_least("fp8 linear a", len.a, product("a", &[m, k])?, &[m, k])?;
    check::at_least(
        "fp8 linear sfa",
        len.sfa,
        product("sfa", &[kb, m_pad])?,
        &[kb, m_pad],
    )?;
    check::at_least("fp8 linear d", len.d, product("d", &[m, n])?, &[m, n])?;
    Ok(Launch {
        tiling: Tiling::pick(if m > 64 { 128 } else { 64 }, n),
        rows_total: m,
        m_rows: m,
        sfa_ld: m_pad,
        groups: 1,
        n,
        k,
        masked: false,
    })
}

/// Contiguous grouped GEMM: `d[r] = bf16(sum_kb sa[r, kb] sb[g, :, kb] (a[r, kb] . b[g, :, kb]))`
/// with `g = m_indices[r]`, zeros on rows whose `m_indices` is `-1` (layouts in the module
/// docs). Tiles of padding rows load nothing.
#[allow(clippy::too_many_arguments)]
pub fn grouped_gemm_contiguous<A, SA, B, SB, I, D>(
    kernels: &DsaKernels,
    shape: ContiguousShape,
    a: &A,
    sfa: &SA,
    b: &B,
    sfb: &SB,
    m_indices: &I,
    d: &mut D,
) -> Result<()>
where
    A: DevicePtr<u8>,
    SA: DevicePtr<f32>,
    B: DevicePtr<u8>,
    SB: DevicePtr<f32>,
    I: DevicePtr<i32>,
    D: DevicePtrMut<bf16>,
{
    let l = contiguous_launch(shape, lens(a, sfa, b, sfb, m_indices.len(), d))?;
    launch(
        kernels,
        l,
        Operands {
            a,
            sfa,
            b,
            sfb,
            groups_of: Some(m_indices),
            d,
        },
    )
}

/// Masked grouped GEMM: group `g` multiplies its first `masked_m[g]` rows of
/// `a [groups, max_m, k]` by `b[g]`; the other rows of `d [groups, max_m, n]` are written
/// as zeros (layouts in the module docs). Tiles past `masked_m` load nothing, and no tile
/// touches another group's rows.
#[allow(clippy::too_many_arguments)]
pub fn grouped_gemm_masked<A, SA, B, SB, I, D>(
    kernels: &DsaKernels,
    shape: MaskedShape,
    a: &A,
    sfa: &SA,
    b: &B,
    sfb: &SB,
    masked_m: &I,
    d: &mut D,
) -> Result<()>
where
    A: DevicePtr<u8>,
    SA: DevicePtr<f32>,
    B: DevicePtr<u8>,
    SB: DevicePtr<f32>,
    I: DevicePtr<i32>,
    D: DevicePtrMut<bf16>,
{
    let l = masked_launch(shape, lens(a, sfa, b, sfb, masked_m.len(), d))?;
    launch(
        kernels,
        l,
        Operands {
            a,
            sfa,
            b,
            sfb,
            groups_of: Some(masked_m),
            d,
        },
    )
}

/// Dense FP8 linear, the one-group case: `d [m, n] = bf16(a [m, k] . b [n, k]^T)` with
/// 1x128 activation scales `sfa [k/128, round_up(m, 4)]` (MN-major, as in the contiguous
/// layout) and 128x128 weight scales `sfb [n/128, k/128]`. Any `m`.
pub fn fp8_linear<A, SA, B, SB, D>(
    kernels: &DsaKernels,
    shape: LinearShape,
    a: &A,
    sfa: &SA,
    b: &B,
    sfb: &SB,
    d: &mut D,
) -> Result<()>
where
    A: DevicePtr<u8>,
    SA: DevicePtr<f32>,
    B: DevicePtr<u8>,
    SB: DevicePtr<f32>,
    D: DevicePtrMut<bf16>,
{
    let l = linear_launch(shape, lens(a, sfa, b, sfb, 0, d))?;
    launch::<_, _, _, _, cudarc::driver::CudaSlice<i32>, _>(
        kernels,
        l,
        Operands {
            a,
            sfa,
            b,
            sfb,
            groups_of: None,
            d,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(shape: ContiguousShape) -> Lens {
        let m_pad = sfa_row_stride(shape.rows);
        Lens {
            a: shape.rows * shape.k,
            sfa: shape.k / 128 * m_pad,
            b: shape.groups * shape.n * shape.k,
            sfb: shape.groups * (shape.n / 128) * (shape.k / 128),
            ids: shape.rows,
            d: shape.rows * shape.n,
        }
    }

    const OK: ContiguousShape = ContiguousShape {
        rows: 384,
        groups: 3,
        n: 256,
        k: 512,
        align: 128,
    };

    #[test]
    fn contiguous_accepts_exact_buffers_and_picks_block_m_from_align() {
        let l = contiguous_launch(OK, full(OK)).unwrap();
        assert_eq!((l.tiling, l.sfa_ld, l.tiles()), (Tiling::M128N256, 384, 3));
        let s = ContiguousShape { n: 384, ..OK };
        let l = contiguous_launch(s, full(s)).unwrap();
        assert_eq!((l.tiling, l.tiles()), (Tiling::M128N128, 3 * 3));
        let s = ContiguousShape { align: 64, ..OK };
        let l = contiguous_launch(s, full(s)).unwrap();
        assert_eq!((l.tiling, l.tiles()), (Tiling::M64N256, 6));
        let s = ContiguousShape {
            align: 64,
            n: 384,
            ..OK
        };
        assert_eq!(
            contiguous_launch(s, full(s)).unwrap().tiling,
            Tiling::M64N128
        );
    }

    #[test]
    fn contiguous_rejects_bad_shapes() {
        for s in [
            ContiguousShape { align: 32, ..OK },
            ContiguousShape { rows: 320, ..OK },
            ContiguousShape { n: 200, ..OK },
            ContiguousShape { k: 0, ..OK },
            ContiguousShape { k: 192, ..OK },
            ContiguousShape { groups: 0, ..OK },
        ] {
            let mut len = full(OK);
            len.b = usize::MAX / 2;
            len.sfb = usize::MAX / 2;
            assert!(
                matches!(contiguous_launch(s, len), Err(DsaError::Unsupported { .. })),
                "{s:?}"
            );
        }
    }

    #[test]
    fn contiguous_rejects_short_buffers() {
        let f = full(OK);
        for short in [
            Lens { a: f.a - 1, ..f },
            Lens {
                sfa: f.sfa - 1,
                ..f
            },
            Lens { b: f.b - 1, ..f },
            Lens {
                sfb: f.sfb - 1,
                ..f
            },
            Lens {
                ids: f.ids - 1,
                ..f
            },
            Lens { d: f.d - 1, ..f },
        ] {
            assert!(
                matches!(contiguous_launch(OK, short), Err(DsaError::Shape { .. })),
                "{short:?}"
            );
        }
    }

    #[test]
    fn sizes_that_overflow_are_errors() {
        let s = ContiguousShape {
            rows: usize::MAX / 128 * 128,
            ..OK
        };
        assert!(contiguous_launch(s, full(OK)).is_err());
        let s = ContiguousShape {
            groups: usize::MAX / 2,
            ..OK
        };
        assert!(contiguous_launch(s, full(OK)).is_err());
        let m = MaskedShape {
            groups: 1 << 20,
            max_m: 1 << 12,
            n: 128,
            k: 128,
        };
        let len = Lens {
            a: usize::MAX,
            sfa: usize::MAX,
            b: usize::MAX,
            sfb: usize::MAX,
            ids: usize::MAX,
            d: usize::MAX,
        };
        assert!(matches!(
            masked_launch(m, len),
            Err(DsaError::Capacity { .. })
        ));
        assert!(contiguous_capacity(usize::MAX / 4, 8, 256, 128).is_err());
    }

    #[test]
    fn masked_checks() {
        let m = MaskedShape {
            groups: 4,
            max_m: 192,
            n: 128,
            k: 256,
        };
        let len = Lens {
            a: 4 * 192 * 256,
            sfa: 4 * 2 * 192,
            b: 4 * 128 * 256,
            sfb: 4 * 2,
            ids: 4,
            d: 4 * 192 * 128,
        };
        let l = masked_launch(m, len).unwrap();
        assert_eq!((l.tiling, l.tiles()), (Tiling::M64N128, 4 * 3));
        let l = masked_launch(MaskedShape { max_m: 128, ..m }, len).unwrap();
        assert_eq!((l.tiling, l.tiles()), (Tiling::M128N128, 4));
        assert!(masked_launch(MaskedShape { max_m: 96, ..m }, len).is_err());
        assert!(masked_launch(m, Lens { ids: 3, ..len }).is_err());
        assert!(masked_launch(
            m,
            Lens {
                sfa: len.sfa - 1,
                ..len
            }
        )
        .is_err());
        assert!(masked_launch(
            m,
            Lens {
                d: len.d - 1,
                ..len
            }
        )
        .is_err());
    }

    #[test]
    fn linear_checks_any_m() {
        let s = LinearShape {
            m: 5,
            n: 256,
            k: 128,
        };
        let len = Lens {
            a: 5 * 128,
            sfa: 8,
            b: 256 * 128,
            sfb: 2,
            ids: 0,
            d: 5 * 256,
        };
        let l = linear_launch(s, len).unwrap();
        assert_eq!((l.tiling, l.sfa_ld, l.tiles()), (Tiling::M64N256, 8, 1));
        assert!(linear_launch(s, Lens { sfa: 7, ..len }).is_err());
        assert!(linear_launch(LinearShape { n: 64, ..s }, len).is_err());
    }

    #[test]
    fn capacity_formula() {
        assert_eq!(contiguous_capacity(1, 8, 256, 128).unwrap(), 32640);
        assert_eq!(contiguous_capacity(128, 8, 256, 128).unwrap(), 33536);
        assert_eq!(contiguous_capacity(128, 8, 256, 64).unwrap(), 17152);
        assert!(contiguous_capacity(1, 8, 256, 100).is_err());
    }
}
