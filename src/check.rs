//! Host-side argument checks shared by every operation: they run before any launch so a
//! bad argument is an `Err`, never an out-of-bounds access.
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
    if ptr % bytes != 0 {
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
