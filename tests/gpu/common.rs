//! Shared harness of the GPU tests.
#![allow(dead_code)]
use std::sync::Arc;

use dsa_kernels::cudarc::driver::{CudaSlice, CudaStream, DeviceRepr};
use dsa_kernels::{device, DsaKernels};

/// The handle every GPU test uses. Panics (failing the test) when there is no usable GPU:
/// GPU tests only run when asked for with `--include-ignored`, so a missing device is a
/// failure, never a silent pass.
pub fn kernels() -> DsaKernels {
    let require = std::env::var("DSA_REQUIRE_GPU").is_ok_and(|v| v == "1");
    let ctx = device::open_device(0).unwrap_or_else(|e| {
        panic!("GPU test run without a usable CUDA device ({e}); DSA_REQUIRE_GPU={require}")
    });
    DsaKernels::new(ctx.default_stream())
        .unwrap_or_else(|e| panic!("cannot create the kernel handle: {e}"))
}

/// Uploads `v`.
pub fn upload<T: DeviceRepr + Unpin>(stream: &Arc<CudaStream>, v: &[T]) -> CudaSlice<T> {
    stream.clone_htod(v).expect("upload")
}

/// Downloads `v` (synchronizes the stream).
pub fn download<T: DeviceRepr + Default + Clone + Unpin>(
    stream: &Arc<CudaStream>,
    v: &CudaSlice<T>,
) -> Vec<T> {
    stream.clone_dtoh(v).expect("download")
}

/// Relative error `max |out - ref| / max |ref|` over finite reference entries; panics on a
/// NaN in `out` or an inf/NaN position mismatch.
pub fn max_rel_err(out: &[f32], reference: &[f32]) -> f64 {
    assert_eq!(out.len(), reference.len());
    let mut num = 0f64;
    let mut den = 0f64;
    for (i, (&o, &r)) in out.iter().zip(reference).enumerate() {
        if !r.is_finite() || !o.is_finite() {
            assert!(
                o == r || (o.is_nan() && r.is_nan()),
                "non-finite mismatch at {i}: out {o}, ref {r}"
            );
            continue;
        }
        num = num.max((o as f64 - r as f64).abs());
        den = den.max((r as f64).abs());
    }
    if den == 0.0 {
        num
    } else {
        num / den
    }
}

/// FlashMLA's cosine difference `1 - 2 sum(xy) / sum(x^2 + y^2)` over finite entries.
pub fn cos_diff(out: &[f32], reference: &[f32]) -> f64 {
    let (mut xy, mut xx) = (0f64, 0f64);
    for (&o, &r) in out.iter().zip(reference) {
        if o.is_finite() && r.is_finite() {
            xy += o as f64 * r as f64;
            xx += (o as f64).powi(2) + (r as f64).powi(2);
        }
    }
    if xx == 0.0 {
        0.0
    } else {
        1.0 - 2.0 * xy / xx
    }
}

/// Guard elements on each side of a [`Guarded`] buffer.
pub const GUARD: usize = 4096;

/// A device buffer of `len` elements with `GUARD` poisoned elements on each side, so a
/// kernel writing past its buffer (within the allocation, where memcheck cannot see it)
/// shows as a changed guard.
pub struct Guarded<T: DeviceRepr> {
    pub all: CudaSlice<T>,
    pub len: usize,
}

impl<T: DeviceRepr + Default + Clone + Unpin + Copy + PartialEq + std::fmt::Debug> Guarded<T> {
    pub fn new(stream: &Arc<CudaStream>, len: usize, poison: T) -> Self {
        Guarded {
            all: upload(stream, &vec![poison; len + 2 * GUARD]),
            len,
        }
    }

    /// The buffer a kernel may write.
    pub fn inner(&mut self) -> dsa_kernels::cudarc::driver::CudaViewMut<'_, T> {
        self.all.slice_mut(GUARD..GUARD + self.len)
    }

    /// Panics when a guard element differs from `poison` (compared by `same`); returns the
    /// inner elements.
    pub fn check(&self, stream: &Arc<CudaStream>, what: &str, same: impl Fn(&T) -> bool) -> Vec<T> {
        let v = download(stream, &self.all);
        let (head, rest) = v.split_at(GUARD);
        let (inner, tail) = rest.split_at(self.len);
        for (i, g) in head.iter().chain(tail).enumerate() {
            assert!(same(g), "{what}: guard element {i} written ({g:?})");
        }
        inner.to_vec()
    }
}
