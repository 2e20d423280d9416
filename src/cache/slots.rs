//! Slot mappings validated on the host.
use std::sync::Arc;

use cudarc::driver::{CudaSlice, CudaStream, CudaView};

use crate::check;
use crate::error::{DsaError, Result};

/// Physical destination slots (`page * 64 + offset`) of the tokens one write call stores,
/// checked on the host when uploaded, so a cache write never sees a bad slot.
///
/// Allocate once with [`SlotMapping::with_capacity`] and [`SlotMapping::upload`] each step
/// (a host-to-device copy of `4 * n` bytes, no allocation).
#[derive(Debug)]
pub struct SlotMapping {
    slots: CudaSlice<i32>,
    len: usize,
    max_slot: i64,
    /// Index of the (first) largest slot, for the error that names it.
    max_position: usize,
}

impl SlotMapping {
    /// Device room for up to `capacity` slots.
    pub fn with_capacity(stream: &Arc<CudaStream>, capacity: usize) -> Result<Self> {
        Ok(Self {
            slots: stream.alloc_zeros(capacity.max(1))?,
            len: 0,
            max_slot: -1,
            max_position: 0,
        })
    }

    /// Allocates and uploads in one call (convenient for tests and setup).
    pub fn new(stream: &Arc<CudaStream>, slots: &[i32]) -> Result<Self> {
        let mut m = Self::with_capacity(stream, slots.len())?;
        m.upload(stream, slots)?;
        Ok(m)
    }

    /// Checks `slots` (every one non-negative) and copies them to the device on `stream`.
    /// Whether they fit a cache is checked by the write call, which knows the cache.
    pub fn upload(&mut self, stream: &Arc<CudaStream>, slots: &[i32]) -> Result<()> {
        if slots.len() > self.slots.len() {
            return Err(DsaError::Capacity {
                what: "slot mapping",
                needed: slots.len(),
                capacity: self.slots.len(),
            });
        }
        check::in_range("slot mapping", slots, 0, i32::MAX as i64)?;
        if !slots.is_empty() {
            stream.memcpy_htod(slots, &mut self.slots.slice_mut(..slots.len()))?;
        }
        self.len = slots.len();
        let (pos, max) = slots
            .iter()
            .enumerate()
            .fold((0, -1i64), |(p, m), (i, &s)| {
                if i64::from(s) > m {
                    (i, i64::from(s))
                } else {
                    (p, m)
                }
            });
        self.max_slot = max;
        self.max_position = pos;
        Ok(())
    }

    /// The uploaded slots, after checking that there is one per row of a write of `rows`
    /// tokens and that every one fits a cache of `capacity_tokens` slots.
    pub fn checked_for(&self, rows: usize, capacity_tokens: usize) -> Result<CudaView<'_, i32>> {
        if self.len != rows {
            return Err(DsaError::Shape {
                what: "slot mapping",
                expected: vec![rows],
                got: vec![self.len],
            });
        }
        if self.max_slot >= capacity_tokens as i64 {
            return Err(DsaError::OutOfRange {
                what: "slot mapping",
                position: self.max_position,
                value: self.max_slot,
                low: 0,
                high: capacity_tokens as i64,
            });
        }
        Ok(self.slots.slice(..self.len))
    }

    /// Number of slots uploaded.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no slot is uploaded.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Largest slot uploaded, -1 when empty.
    pub fn max_slot(&self) -> i64 {
        self.max_slot
    }

    /// The device buffer (the first [`Self::len`] entries are valid).
    pub fn device(&self) -> &CudaSlice<i32> {
        &self.slots
    }
}
