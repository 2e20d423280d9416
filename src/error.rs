//! The crate's error type: every fallible call returns [`Result<T>`].
use cudarc::driver::DriverError;

/// Everything that can go wrong in dsa-kernels. Argument checks run on the host before
/// any launch, so a shape, range or capacity error never reaches the GPU.
#[derive(Debug, thiserror::Error)]
pub enum DsaError {
    /// A CUDA driver call failed outside a kernel launch.
    #[error("CUDA driver error: {0}")]
    Driver(#[from] DriverError),
    /// A kernel launch failed, or (in debug-sync mode) the kernel faulted.
    #[error("kernel `{kernel}` failed: {source}")]
    Kernel {
        kernel: &'static str,
        source: DriverError,
    },
    /// No CUDA driver library (libcuda) could be loaded on this machine.
    #[error(
        "no CUDA driver library (libcuda.so) found: dsa-kernels needs an NVIDIA driver >= 580"
    )]
    NoDriver,
    /// The driver library loaded but reports no device.
    #[error("no CUDA device found")]
    NoDevice,
    /// A tensor has the wrong shape.
    #[error("{what}: expected shape {expected:?}, got {got:?}")]
    Shape {
        what: &'static str,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    /// A tensor has the wrong element type.
    #[error("{what}: expected dtype {expected}, got {got}")]
    Dtype {
        what: &'static str,
        expected: &'static str,
        got: &'static str,
    },
    /// A pointer or size is not aligned as the kernel's vector accesses require.
    #[error("{what}: {detail}")]
    Alignment { what: &'static str, detail: String },
    /// A request needs more room than the buffer has.
    #[error("{what}: needs {needed}, capacity is {capacity}")]
    Capacity {
        what: &'static str,
        needed: usize,
        capacity: usize,
    },
    /// An index (slot, block-table entry, token index) lies outside its valid range.
    #[error("{what}: value {value} at position {position} is outside [{low}, {high})")]
    OutOfRange {
        what: &'static str,
        position: usize,
        value: i64,
        low: i64,
        high: i64,
    },
    /// A scalar argument is outside what the kernels support.
    #[error("{what}: {detail}")]
    Unsupported { what: &'static str, detail: String },
    /// The GPU is not a Hopper (compute capability 9.x) part.
    #[error("unsupported GPU {name} (sm_{major}{minor}): dsa-kernels needs Hopper, sm_90a; kernels were built for {built}")]
    UnsupportedArch {
        name: String,
        major: i32,
        minor: i32,
        built: &'static str,
    },
    /// A collective-communication call (NCCL) failed.
    #[error("communication failed in {what}: {detail}")]
    Communication { what: &'static str, detail: String },
    /// The driver is older than the CUDA version the kernels were compiled with.
    #[error("CUDA driver supports CUDA {found_major}.{found_minor}; the kernels need CUDA {need_major}.{need_minor} (driver >= 580)")]
    DriverTooOld {
        found_major: i32,
        found_minor: i32,
        need_major: i32,
        need_minor: i32,
    },
    /// The crate was compiled without nvcc, so no kernel is embedded.
    #[error("CUDA kernels were not built into dsa-kernels (no nvcc at build time): run scripts/install-cuda-toolchain.sh or set NVCC/CUDA_HOME, then rebuild")]
    KernelsNotBuilt,
    /// The named kernel is not in the embedded fatbins.
    #[error("kernel family `{0}` is not in the embedded fatbins")]
    MissingFamily(&'static str),
}

/// Shorthand for `Result<T, DsaError>`.
pub type Result<T> = std::result::Result<T, DsaError>;
