//! Device discovery that never panics, and the architecture/driver checks run before the
//! first launch.
use std::sync::Arc;

use cudarc::driver::{sys, CudaContext};

use crate::error::{DsaError, Result};

/// CUDA version the embedded kernels are compiled with (13.0 = driver 580).
pub const REQUIRED_CUDA_VERSION: (i32, i32) = (13, 0);

/// What the runtime checks found about a device.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    pub name: String,
    pub compute_capability: (i32, i32),
    pub sm_count: i32,
    /// CUDA version the driver supports, e.g. (13, 0).
    pub driver_cuda_version: (i32, i32),
    pub max_shared_memory_per_block_optin: i32,
}

/// True when libcuda can be loaded. cudarc panics on first use without it, so every entry
/// point asks this first.
pub fn driver_present() -> bool {
    // With the `candle` feature cudarc links libcuda at build time (candle's choice), so a
    // program that runs has the driver; otherwise it is loaded on first use.
    #[cfg(feature = "candle")]
    return true;
    // SAFETY: only tries to dlopen the driver library.
    #[cfg(not(feature = "candle"))]
    unsafe {
        sys::is_culib_present()
    }
}

/// Number of CUDA devices, 0 when there is no driver or no device. Never panics.
pub fn device_count() -> usize {
    if !driver_present() {
        return 0;
    }
    match std::panic::catch_unwind(CudaContext::device_count) {
        Ok(Ok(n)) if n > 0 => n as usize,
        _ => 0,
    }
}

/// Opens device `ordinal`, with typed errors instead of panics when there is none.
pub fn open_device(ordinal: usize) -> Result<Arc<CudaContext>> {
    if !driver_present() {
        return Err(DsaError::NoDriver);
    }
    if device_count() <= ordinal {
        return Err(DsaError::NoDevice);
    }
    Ok(CudaContext::new(ordinal)?)
}

/// Reads the facts [`check_device`] needs.
pub fn device_info(ctx: &CudaContext) -> Result<DeviceInfo> {
    let mut version = 0i32;
    // SAFETY: plain out-parameter query of the loaded driver.
    unsafe { sys::cuDriverGetVersion(&mut version) }.result()?;
    Ok(DeviceInfo {
        name: ctx.name()?,
        compute_capability: ctx.compute_capability()?,
        sm_count: ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
        driver_cuda_version: (version / 1000, (version % 1000) / 10),
        max_shared_memory_per_block_optin: ctx.attribute(
            sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
        )?,
    })
}

/// Fails with a typed error unless the device is Hopper (9.x) and the driver is new enough
/// for the embedded fatbins.
pub fn check_device(info: &DeviceInfo) -> Result<()> {
    let (major, minor) = info.compute_capability;
    if major != 9 {
        return Err(DsaError::UnsupportedArch {
            name: info.name.clone(),
            major,
            minor,
            built: crate::kernels::BUILT_ARCHS,
        });
    }
    if info.driver_cuda_version < REQUIRED_CUDA_VERSION {
        return Err(DsaError::DriverTooOld {
            found_major: info.driver_cuda_version.0,
            found_minor: info.driver_cuda_version.1,
            need_major: REQUIRED_CUDA_VERSION.0,
            need_minor: REQUIRED_CUDA_VERSION.1,
        });
    }
    Ok(())
}
