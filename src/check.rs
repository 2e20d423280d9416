//! Host-side argument checks shared by every operation: pure functions (no device, no
//! launch) that run before any launch, so a bad argument is an `Err`, never an
//! out-of-bounds access. Every size or offset the crate computes from caller input goes
//! through the checked helpers here: an overflow is an `Err`, never a wrap.
use crate::error::{DsaError, Result};

/// `got` elements must hold at least `expected` (a buffer may be larger than the view used).
pub(crate) fn at_least(
    what: &'static str,
    got: usize,
    expected: usize,
    shape: &[usize],
) -> Result<()> {
    if got < expected {
        return Err(DsaError::Shape {
            what,
            expected: shape.to_vec(),
            got: vec![got],
        });
    }
    Ok(())
}

/// Device pointer alignment required by the kernels' vector loads.
pub(crate) fn aligned(what: &'static str, ptr: u64, bytes: u64) -> Result<()> {
    if !ptr.is_multiple_of(bytes) {
        return Err(DsaError::Alignment {
            what,
            detail: format!("address {ptr:#x} is not {bytes}-byte aligned"),
        });
    }
    Ok(())
}

/// Every value of `v` must lie in `[low, high)`.
pub(crate) fn in_range(what: &'static str, v: &[i32], low: i64, high: i64) -> Result<()> {
    match v
        .iter()
        .position(|&x| (x as i64) < low || (x as i64) >= high)
    {
        Some(position) => Err(DsaError::OutOfRange {
            what,
            position,
            value: v[position] as i64,
            low,
            high,
        }),
        None => Ok(()),
    }
}

/// A count that must fit the kernels' 32-bit indexing.
pub(crate) fn fits_i32(what: &'static str, n: usize) -> Result<i32> {
    i32::try_from(n).map_err(|_| DsaError::Capacity {
        what,
        needed: n,
        capacity: i32::MAX as usize,
    })
}

/// A count, stride or offset that must fit the kernels' 64-bit indexing.
pub(crate) fn fits_i64(what: &'static str, n: usize) -> Result<i64> {
    i64::try_from(n).map_err(|_| DsaError::Capacity {
        what,
        needed: n,
        capacity: i64::MAX as usize,
    })
}

/// The error of a size computation that does not fit in `usize`.
pub(crate) fn overflow(what: &'static str) -> DsaError {
    DsaError::Capacity {
        what,
        needed: usize::MAX,
        capacity: isize::MAX as usize,
    }
}

/// The product of `dims`, or an error when it overflows.
pub(crate) fn product(what: &'static str, dims: &[usize]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| overflow(what))
}

/// Elements spanned by `rows` rows of `width` elements, `stride` apart:
/// `(rows - 1) * stride + width`, 0 when there are no rows.
pub(crate) fn span(what: &'static str, rows: usize, stride: usize, width: usize) -> Result<usize> {
    if rows == 0 {
        return Ok(0);
    }
    (rows - 1)
        .checked_mul(stride)
        .and_then(|x| x.checked_add(width))
        .ok_or_else(|| overflow(what))
}

/// A buffer of `got` elements must hold the `dims` tensor (product checked).
pub(crate) fn holds(what: &'static str, got: usize, dims: &[usize]) -> Result<()> {
    at_least(what, got, product(what, dims)?, dims)
}

/// Row `stride` of a strided buffer: at least `width`, a multiple of `multiple`, and what
/// the kernel's 64-bit element offsets hold.
pub(crate) fn row_stride(
    what: &'static str,
    stride: usize,
    width: usize,
    multiple: usize,
) -> Result<i64> {
    if stride < width {
        return Err(DsaError::Unsupported {
            what,
            detail: format!("row stride {stride} is below the row's {width} elements"),
        });
    }
    if !stride.is_multiple_of(multiple) {
        return Err(DsaError::Alignment {
            what,
            detail: format!("row stride {stride} is not a multiple of {multiple} elements"),
        });
    }
    fits_i64(what, stride)
}

/// Blocks of `per_block` items covering `items`, as a grid dimension (at most 2^31 - 1).
pub(crate) fn grid(what: &'static str, items: usize, per_block: usize) -> Result<u32> {
    Ok(fits_i32(what, items.div_ceil(per_block.max(1)))? as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_sizes() {
        assert_eq!(span("x", 0, usize::MAX, 5).unwrap(), 0);
        assert_eq!(span("x", 3, 10, 4).unwrap(), 24);
        assert!(span("x", 3, usize::MAX / 2 + 1, 4).is_err());
        assert!(product("x", &[1 << 40, 1 << 40]).is_err());
        assert_eq!(product("x", &[]).unwrap(), 1);
        assert!(row_stride("x", usize::MAX - 7, 576, 8).is_err());
        assert!(row_stride("x", 575, 576, 8).is_err());
        assert_eq!(row_stride("x", 576, 576, 8).unwrap(), 576);
        assert!(grid("x", 1 << 40, 4).is_err());
    }
}
