//! The handle every kernel call goes through: a stream, the loaded kernel modules, and the
//! launch path that checks every result.
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use cudarc::driver::{
    sys, CudaContext, CudaFunction, CudaModule, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr,
    LaunchConfig, PushKernelArg, SyncOnDrop,
};
use cudarc::nvrtc::Ptx;

use crate::check;
use crate::device::{check_device, device_info, DeviceInfo};
use crate::error::{DsaError, Result};
use crate::kernels;

/// Modules and functions of one CUDA context, shared by every handle on that context so the
/// fatbins are loaded once per context.
struct ContextKernels {
    ctx: Arc<CudaContext>,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    /// kernel name -> (function, dynamic shared memory limit already configured)
    functions: Mutex<HashMap<&'static str, (CudaFunction, u32)>>,
}

/// (CUcontext address, its kernels) for every context with a live handle.
type Registry = Mutex<Vec<(usize, Weak<ContextKernels>)>>;

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(|| Mutex::new(Vec::new()))
}

fn context_kernels(ctx: &Arc<CudaContext>) -> Arc<ContextKernels> {
    let key = ctx.cu_ctx() as usize;
    let mut reg = registry().lock().unwrap_or_else(|e| e.into_inner());
    reg.retain(|(_, w)| w.strong_count() > 0);
    if let Some(k) = reg
        .iter()
        .find(|(k, _)| *k == key)
        .and_then(|(_, w)| w.upgrade())
    {
        return k;
    }
    let k = Arc::new(ContextKernels {
        ctx: ctx.clone(),
        modules: Mutex::new(HashMap::new()),
        functions: Mutex::new(HashMap::new()),
    });
    reg.push((key, Arc::downgrade(&k)));
    k
}

/// A handle bound to one stream, in the shape of cudarc's cuBLAS wrapper: every operation
/// of the crate is a method (or takes `&DsaKernels`), is enqueued on [`DsaKernels::stream`],
/// and allocates nothing.
///
/// Creating the handle checks the device (Hopper, driver >= 580) once; kernels are loaded
/// lazily, once per CUDA context, on their first launch.
pub struct DsaKernels {
    stream: Arc<CudaStream>,
    kernels: Arc<ContextKernels>,
    info: DeviceInfo,
    debug_sync: bool,
}

impl std::fmt::Debug for DsaKernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DsaKernels")
            .field("device", &self.info)
            .field("debug_sync", &self.debug_sync)
            .finish()
    }
}

impl DsaKernels {
    /// Binds a handle to `stream` after checking the device and that kernels were built.
    ///
    /// Debug-sync mode (synchronize after every launch and name the kernel that faulted) is
    /// on when the environment variable `DSA_DEBUG_SYNC=1` is set, or by [`Self::set_debug_sync`].
    pub fn new(stream: Arc<CudaStream>) -> Result<Self> {
        if kernels::FATBINS.is_empty() {
            return Err(DsaError::KernelsNotBuilt);
        }
        let ctx = stream.context().clone();
        let info = device_info(&ctx)?;
        check_device(&info)?;
        Ok(Self {
            kernels: context_kernels(&ctx),
            stream,
            info,
            debug_sync: std::env::var("DSA_DEBUG_SYNC").is_ok_and(|v| v == "1"),
        })
    }

    /// A handle on another stream of the same context, sharing the loaded kernels.
    pub fn with_stream(&self, stream: Arc<CudaStream>) -> Result<Self> {
        if stream.context().cu_ctx() != self.kernels.ctx.cu_ctx() {
            return Self::new(stream);
        }
        Ok(Self {
            stream,
            kernels: self.kernels.clone(),
            info: self.info.clone(),
            debug_sync: self.debug_sync,
        })
    }

    /// The stream every operation of this handle is enqueued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The device facts checked at creation (name, compute capability, SM count, driver).
    pub fn device(&self) -> &DeviceInfo {
        &self.info
    }

    /// Synchronize after every launch and report the kernel's name with any fault. Slow;
    /// for debugging only, and not usable inside CUDA-graph capture.
    pub fn set_debug_sync(&mut self, on: bool) {
        self.debug_sync = on;
    }

    /// Loads every kernel of the crate into this handle's context now, each with its
    /// dynamic shared-memory limit raised to the device's opt-in maximum, so that no later
    /// call loads a module, a function or changes an attribute.
    ///
    /// Call it once before capturing a CUDA graph: modules otherwise load on their first
    /// launch (and the driver loads kernels lazily), which a stream capture does not allow,
    /// so a capture would need a warm-up run of every call first. Also useful to take the
    /// load time (some milliseconds per family) out of the first step. Idempotent.
    ///
    /// ```no_run
    /// # use dsa_kernels::{device, DsaKernels};
    /// let ctx = device::open_device(0)?;
    /// let k = DsaKernels::new(ctx.default_stream())?;
    /// k.preload()?; // now every call can be captured without a warm-up
    /// # Ok::<(), dsa_kernels::DsaError>(())
    /// ```
    pub fn preload(&self) -> Result<()> {
        let optin = self.info.max_shared_memory_per_block_optin.max(0) as u32;
        for (family, names) in kernels::KERNEL_NAMES {
            for &kernel in names.iter() {
                let f = self.function(family, kernel, 0)?;
                let fail = |source| DsaError::Kernel { kernel, source };
                // SAFETY: `f` is a live function of a module this handle keeps loaded.
                unsafe { sys::cuFuncLoad(f.cu_function()) }
                    .result()
                    .map_err(fail)?;
                let static_smem = f
                    .get_attribute(sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)
                    .map_err(fail)?;
                self.function(
                    family,
                    kernel,
                    optin.saturating_sub(static_smem.max(0) as u32),
                )?;
            }
        }
        Ok(())
    }

    fn function(
        &self,
        family: &'static str,
        kernel: &'static str,
        smem: u32,
    ) -> Result<CudaFunction> {
        let mut fns = self
            .kernels
            .functions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some((f, configured)) = fns.get_mut(kernel) {
            if smem > *configured {
                set_smem(f, kernel, smem)?;
                *configured = smem;
            }
            return Ok(f.clone());
        }
        let module = {
            let mut mods = self
                .kernels
                .modules
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match mods.get(family) {
                Some(m) => m.clone(),
                None => {
                    let (_, image) = kernels::FATBINS
                        .iter()
                        .find(|(name, _)| *name == family)
                        .ok_or(DsaError::MissingFamily(family))?;
                    let m = self
                        .kernels
                        .ctx
                        .load_module(Ptx::from_binary(image.to_vec()))
                        .map_err(|source| DsaError::Kernel { kernel, source })?;
                    mods.insert(family, m.clone());
                    m
                }
            }
        };
        let f = module
            .load_function(kernel)
            .map_err(|source| DsaError::Kernel { kernel, source })?;
        if smem > 48 * 1024 {
            set_smem(&f, kernel, smem)?;
        }
        fns.insert(kernel, (f.clone(), smem.max(48 * 1024)));
        Ok(f)
    }

    /// The SM count every scheduling decision of the crate uses (read from the device
    /// when the handle was created).
    pub fn sm_count(&self) -> usize {
        self.info.sm_count.max(1) as usize
    }

    /// Collects the device pointers of one launch (see [`LaunchArgs`]).
    pub(crate) fn args(&self) -> LaunchArgs<'_> {
        LaunchArgs {
            kernels: self,
            guards: std::array::from_fn(|_| None),
            n: 0,
        }
    }

    /// Launches `family::kernel` with one by-value parameter struct (the `*_params.h`
    /// mirror). The caller keeps the `SyncOnDrop` guards of every pointer inside `params`
    /// alive across this call.
    ///
    /// # Safety
    /// `params` must match the kernel's parameter struct and every pointer in it must be
    /// valid for the accesses the kernel makes (the safe wrappers check shapes first).
    pub(crate) unsafe fn launch<P: DeviceRepr>(
        &self,
        family: &'static str,
        kernel: &'static str,
        cfg: LaunchConfig,
        params: &P,
    ) -> Result<()> {
        let f = self.function(family, kernel, cfg.shared_mem_bytes)?;
        let mut b = self.stream.launch_builder(&f);
        b.arg(params);
        // SAFETY: the caller guarantees `params` matches the kernel and its pointers are valid.
        unsafe { b.launch(cfg) }.map_err(|source| DsaError::Kernel { kernel, source })?;
        if self.debug_sync {
            self.stream
                .synchronize()
                .map_err(|source| DsaError::Kernel { kernel, source })?;
        }
        Ok(())
    }
}

fn set_smem(f: &CudaFunction, kernel: &'static str, smem: u32) -> Result<()> {
    f.set_attribute(
        sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        smem as i32,
    )
    .map_err(|source| DsaError::Kernel { kernel, source })
}

/// Most device buffers one launch takes.
const MAX_LAUNCH_BUFFERS: usize = 12;

/// The device pointers of one launch, gathered with their cudarc guards (which order the
/// buffers' use on the handle's stream); the guards are released once the launch is
/// enqueued. Replaces the per-call `device_ptr` / alignment / guard boilerplate and holds
/// no heap memory.
pub(crate) struct LaunchArgs<'a> {
    kernels: &'a DsaKernels,
    guards: [Option<SyncOnDrop<'a>>; MAX_LAUNCH_BUFFERS],
    n: usize,
}

impl<'a> LaunchArgs<'a> {
    fn keep(&mut self, guard: SyncOnDrop<'a>) {
        // A launch with more buffers than slots is a bug of this crate, not of the caller:
        // the extra guard is dropped at once, which only orders the stream earlier.
        if self.n < MAX_LAUNCH_BUFFERS {
            self.guards[self.n] = Some(guard);
            self.n += 1;
        }
    }

    /// A buffer the kernel reads; its address must be `align`-byte aligned.
    pub(crate) fn read<T, B: DevicePtr<T> + ?Sized>(
        &mut self,
        what: &'static str,
        buf: &'a B,
        align: u64,
    ) -> Result<*const T> {
        let (ptr, guard) = buf.device_ptr(self.kernels.stream());
        self.keep(guard);
        check::aligned(what, ptr, align)?;
        Ok(ptr as *const T)
    }

    /// An optional buffer the kernel reads: null when absent.
    pub(crate) fn read_opt<T, B: DevicePtr<T> + ?Sized>(
        &mut self,
        what: &'static str,
        buf: Option<&'a B>,
        align: u64,
    ) -> Result<*const T> {
        buf.map_or(Ok(std::ptr::null()), |b| self.read(what, b, align))
    }

    /// A buffer the kernel writes; its address must be `align`-byte aligned.
    pub(crate) fn write<T, B: DevicePtrMut<T> + ?Sized>(
        &mut self,
        what: &'static str,
        buf: &'a mut B,
        align: u64,
    ) -> Result<*mut T> {
        let (ptr, guard) = buf.device_ptr_mut(self.kernels.stream());
        self.keep(guard);
        check::aligned(what, ptr, align)?;
        Ok(ptr as *mut T)
    }

    /// Enqueues `family::kernel` with `params`, then releases the guards.
    ///
    /// # Safety
    /// As [`DsaKernels::launch`]: `params` matches the kernel's parameter struct and every
    /// access the kernel makes through its pointers stays inside the buffers gathered here.
    pub(crate) unsafe fn launch<P: DeviceRepr>(
        self,
        family: &'static str,
        kernel: &'static str,
        cfg: LaunchConfig,
        params: &P,
    ) -> Result<()> {
        // SAFETY: forwarded from the caller.
        unsafe { self.kernels.launch(family, kernel, cfg, params) }
    }
}

/// A 1-D launch of `blocks` blocks of `threads` threads and `smem` bytes of dynamic shared
/// memory.
pub(crate) fn linear(blocks: u32, threads: u32, smem: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: smem,
    }
}
