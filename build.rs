//! Compiles every `kernels-cuda/<family>/*.cu` into a fatbin with nvcc and embeds them in the crate.
//!
//! One fatbin per kernel family rather than one for the whole crate: the driver loads a
//! single image per architecture from a fatbin, so merging families into one image would
//! need relocatable device code and a device link, which costs kernel performance.
//!
//! Where things are found (first hit wins; README "Building" says the same):
//! - nvcc: `NVCC`, `CUDA_HOME/bin`, `CUDA_PATH/bin`, `PATH`, then the project's toolchain
//!   folder (`DSA_CUDA_TOOLCHAIN_DIR`, default `<crate>/.cuda-toolchain`) `cuda/bin`.
//! - CUTLASS/CuTe headers (optional: no kernel includes them today, the device layer in
//!   `kernels-cuda/common/` is the crate's own; found, they are put on the include path):
//!   `CUTLASS_INCLUDE`, `CUTLASS_PATH/include`, `CUTLASS_HOME/include`, the include
//!   directories of the CUDA install the nvcc belongs to, then the toolchain folder's
//!   `cutlass-include`. An explicit setting that holds no CuTe is an error.
//!
//! A missing or unusable dependency is one build error naming what to install or set.
//! Kernel compilation is skipped (the crate builds, and `DsaKernels::new` returns
//! `KernelsNotBuilt`) with `DSA_SKIP_KERNELS=1`, on docs.rs, and under clippy and
//! rust-analyzer, which only type-check; `DSA_SKIP_KERNELS=0` forces compilation.
//!
//! Compiled fatbins are kept in a persistent cache (`DSA_KERNEL_CACHE`, default
//! `$XDG_CACHE_HOME/dsa-kernels` or `~/.cache/dsa-kernels`; `off` disables it) under a
//! content hash of the source, every kernel header, the CUTLASS version, the nvcc version
//! and the flags, so a clean target directory does not recompile unchanged kernels.
use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

const ENV_VARS: &[&str] = &[
    "NVCC",
    "CUDA_HOME",
    "CUDA_PATH",
    "PATH",
    "CUDA_COMPUTE_CAP",
    "CUTLASS_INCLUDE",
    "CUTLASS_PATH",
    "CUTLASS_HOME",
    "DSA_NVCC_JOBS",
    "DSA_NVCC_FLAGS",
    "DSA_CUDA_TOOLCHAIN_DIR",
    "DSA_SKIP_KERNELS",
    "DSA_KERNEL_CACHE",
    "XDG_CACHE_HOME",
    "HOME",
    "DOCS_RS",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RA_RUSTC_WRAPPER",
    "CLIPPY_ARGS",
];

/// Bumped when the cache key's recipe changes, so old entries are never reused.
const CACHE_FORMAT: &str = "dsa-kernels-fatbin-v1";

/// The CuTe header that marks a CUTLASS include directory.
const CUTE_PROBE: &str = "cute/arch/mma_sm90_gmma.hpp";

/// Reports a build error cargo shows once, with what to do about it, and stops the build.
fn fail(msg: &str) -> ! {
    println!(
        "cargo:warning=dsa-kernels: {}",
        msg.lines().next().unwrap_or(msg)
    );
    eprintln!("\nerror: dsa-kernels cannot compile its CUDA kernels\n\n{msg}\n");
    std::process::exit(1);
}

const SKIP_HINT: &str =
    "To build without kernels (type-checking, docs, a machine without CUDA), set \
     DSA_SKIP_KERNELS=1: every DsaKernels::new then returns DsaError::KernelsNotBuilt.";

fn main() {
    for v in ENV_VARS {
        println!("cargo:rerun-if-env-changed={v}");
    }
    let root =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let kdir = root.join("kernels-cuda");
    println!("cargo:rerun-if-changed={}", kdir.display());

    #[cfg(feature = "regen-bindings")]
    regen_bindings(&root, &out);

    if let Some(reason) = skip_reason() {
        println!("cargo:warning=dsa-kernels: CUDA kernels not compiled ({reason})");
        write_registry(&out, &[], "none");
        return;
    }

    // Layout: kernels-cuda/common/ (the device layer, headers only) and one folder per
    // family holding its sources and its params header. Every source sees common/ and its
    // own folder on the include path, nothing else, so families cannot include each other.
    let common_dir = kdir.join("common");
    let mut families: Vec<PathBuf> = fs::read_dir(&kdir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_dir() && *p != common_dir)
                .collect()
        })
        .unwrap_or_default();
    families.sort();
    let mut sources: Vec<PathBuf> = families.iter().flat_map(|d| list(d, "cu")).collect();
    sources.sort();
    let mut headers: Vec<PathBuf> = std::iter::once(&common_dir)
        .chain(families.iter())
        .flat_map(|d| list(d, "h").into_iter().chain(list(d, "cuh")))
        .collect();
    headers.sort();
    {
        let mut stems: Vec<_> = sources
            .iter()
            .map(|s| s.file_stem().unwrap_or_default())
            .collect();
        stems.sort();
        if let Some(w) = stems.windows(2).find(|w| w[0] == w[1]) {
            fail(&format!(
                "two kernel sources are named {:?}: fatbins are named by file stem, which must be unique",
                w[0]
            ));
        }
    }
    for f in sources.iter().chain(headers.iter()) {
        println!("cargo:rerun-if-changed={}", f.display());
    }

    let toolchain = env::var_os("DSA_CUDA_TOOLCHAIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".cuda-toolchain"));
    let nvcc = find_nvcc(&toolchain);
    let cutlass = find_cutlass(&nvcc, &toolchain);
    let archs = parse_archs(&env::var("CUDA_COMPUTE_CAP").unwrap_or_default());
    let nvcc_version = match Command::new(&nvcc).arg("--version").output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => fail(&format!(
            "`{} --version` failed:\n{}",
            nvcc.display(),
            String::from_utf8_lossy(&o.stderr)
        )),
        Err(e) => fail(&format!("cannot run {}: {e}", nvcc.display())),
    };

    // Flags that decide the output; include paths are added per call and kept out of the
    // cache key (their contents are in it: kernel headers, CUTLASS version, nvcc version).
    let mut flags: Vec<String> = vec![
        "-fatbin".into(),
        "-std=c++17".into(),
        "-O3".into(),
        "--expt-relaxed-constexpr".into(),
        "-Xptxas=-v".into(),
        "-Xptxas=--warn-on-spills".into(),
        "-lineinfo".into(),
        // Compressed images: every test and bench executable embeds all fatbins, and
        // uncompressed PTX + SASS is several MB per family. The driver inflates at load.
        "-Xfatbin=-compress-all".into(),
    ];
    for a in &archs {
        flags.push(format!("-gencode=arch=compute_{a},code=sm_{a}"));
    }
    if let Some(last) = archs.last() {
        flags.push(format!("-gencode=arch=compute_{last},code=compute_{last}"));
    }
    if let Ok(extra) = env::var("DSA_NVCC_FLAGS") {
        flags.extend(extra.split_whitespace().map(String::from));
    }
    let mut includes = vec![format!("-I{}", common_dir.display())];
    if let Some(c) = &cutlass {
        includes.push(format!("-I{}", c.dir.display()));
    }

    let mut common_key = StableHash::new();
    common_key.add(CACHE_FORMAT.as_bytes());
    for f in &flags {
        common_key.add(f.as_bytes());
    }
    common_key.add(nvcc_version.as_bytes());
    common_key.add(cutlass.as_ref().map_or(&[][..], |c| &c.version_header[..]));
    for h in &headers {
        common_key.add(
            h.strip_prefix(&kdir)
                .unwrap_or(h)
                .to_string_lossy()
                .as_bytes(),
        );
        common_key.add(&fs::read(h).unwrap_or_default());
    }
    let cache = cache_dir();

    let jobs = env::var("DSA_NVCC_JOBS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
                .min(4)
        })
        .max(1);
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(String, PathBuf, String)>> = Mutex::new(Vec::new());
    let failures: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let compiled = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..jobs.min(sources.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(src) = sources.get(i) else { break };
                let stem = src
                    .file_stem()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                let mut key = common_key.clone();
                key.add(stem.as_bytes());
                key.add(&fs::read(src).unwrap_or_default());
                let key = key.hex();
                match build_family(
                    &nvcc,
                    &flags,
                    &includes,
                    src,
                    &stem,
                    &key,
                    &out,
                    cache.as_deref(),
                ) {
                    Ok((fatbin, report, fresh)) => {
                        if fresh {
                            compiled.fetch_add(1, Ordering::Relaxed);
                        }
                        results
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((stem, fatbin, report));
                    }
                    Err(e) => failures.lock().unwrap_or_else(|e| e.into_inner()).push(e),
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap_or_else(|e| e.into_inner());
    if !failures.is_empty() {
        fail(&format!(
            "nvcc failed ({}):\n{}",
            nvcc.display(),
            failures.join("\n")
        ));
    }
    let mut results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    results.sort();
    let mut all_reports = String::new();
    for (stem, _, rep) in &results {
        let _ = writeln!(all_reports, "== {stem}\n{rep}");
        warn_spills(stem, rep);
    }
    let _ = fs::write(out.join("ptxas-report.txt"), all_reports);
    let _ = fs::write(
        out.join("kernel-build.txt"),
        format!(
            "nvcc: {}\ncutlass: {}\ncache: {}\ncompiled: {} of {}\n",
            nvcc.display(),
            cutlass
                .as_ref()
                .map_or("none (optional)".into(), |c| c.dir.display().to_string()),
            cache
                .as_ref()
                .map_or("off".into(), |c| c.display().to_string()),
            compiled.load(Ordering::Relaxed),
            results.len()
        ),
    );
    write_registry(&out, &results, &archs.join(","));
}

/// Why kernel compilation is skipped, if it is.
fn skip_reason() -> Option<&'static str> {
    match env::var("DSA_SKIP_KERNELS").as_deref().map(str::trim) {
        Ok("1" | "true" | "yes") => return Some("DSA_SKIP_KERNELS=1"),
        Ok("0" | "false" | "no") => return None,
        _ => {}
    }
    if env::var_os("DOCS_RS").is_some() {
        return Some("docs.rs build");
    }
    // `cargo clippy` exports CLIPPY_ARGS to every build script (RUSTC_WORKSPACE_WRAPPER
    // = clippy-driver reaches only the workspace's own); rust-analyzer runs its checks
    // with itself as RUSTC_WRAPPER and RA_RUSTC_WRAPPER=1. Both only type-check, so the
    // fatbins would never be used. A plain `cargo check` is not distinguishable from a
    // build here: use DSA_SKIP_KERNELS=1.
    let wrapper_is = |name: &str| {
        ["RUSTC_WORKSPACE_WRAPPER", "RUSTC_WRAPPER"]
            .iter()
            .any(|v| {
                env::var_os(v).is_some_and(|w| {
                    Path::new(&w)
                        .file_name()
                        .is_some_and(|f| f.to_string_lossy().contains(name))
                })
            })
    };
    if env::var_os("CLIPPY_ARGS").is_some() || wrapper_is("clippy-driver") {
        return Some("clippy only type-checks");
    }
    if env::var_os("RA_RUSTC_WRAPPER").is_some() || wrapper_is("rust-analyzer") {
        return Some("rust-analyzer only type-checks");
    }
    None
}

/// Brings `<stem>.fatbin` and its ptxas report into `out`: from `out` itself when its stamp
/// matches `key`, else from the persistent cache, else by running nvcc (and filling the
/// cache). Returns (fatbin path, ptxas report, whether nvcc ran).
#[allow(clippy::too_many_arguments)]
fn build_family(
    nvcc: &Path,
    flags: &[String],
    includes: &[String],
    src: &Path,
    stem: &str,
    key: &str,
    out: &Path,
    cache: Option<&Path>,
) -> Result<(PathBuf, String, bool), String> {
    let fatbin = out.join(format!("{stem}.fatbin"));
    let report = out.join(format!("{stem}.ptxas.txt"));
    let stamp = out.join(format!("{stem}.hash"));
    if fatbin.exists() && fs::read_to_string(&stamp).ok().as_deref() == Some(key) {
        return Ok((
            fatbin,
            fs::read_to_string(&report).unwrap_or_default(),
            false,
        ));
    }
    let cached = cache.map(|c| {
        (
            c.join(format!("{stem}-{key}.fatbin")),
            c.join(format!("{stem}-{key}.ptxas.txt")),
        )
    });
    if let Some((cf, cr)) = &cached {
        if fs::copy(cf, &fatbin).is_ok() {
            let rep = fs::read_to_string(cr).unwrap_or_default();
            let _ = fs::write(&report, &rep);
            let _ = fs::write(&stamp, key);
            return Ok((fatbin, rep, false));
        }
    }
    let o = Command::new(nvcc)
        .args(flags)
        .args(includes)
        .arg(format!(
            "-I{}",
            src.parent().unwrap_or(Path::new(".")).display()
        ))
        .arg(src)
        .arg("-o")
        .arg(&fatbin)
        .output()
        .map_err(|e| format!("{}: cannot run nvcc: {e}", src.display()))?;
    if !o.status.success() {
        return Err(format!(
            "{}:\n{}{}",
            src.display(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    let rep = String::from_utf8_lossy(&o.stderr).into_owned() + &String::from_utf8_lossy(&o.stdout);
    let _ = fs::write(&report, &rep);
    let _ = fs::write(&stamp, key);
    if let Some((cf, cr)) = &cached {
        // Best effort, and atomic: a concurrent build never reads a half-written entry.
        let tmp = cf.with_extension(format!("tmp{}", std::process::id()));
        if fs::create_dir_all(cf.parent().unwrap_or(Path::new("."))).is_ok()
            && fs::copy(&fatbin, &tmp).is_ok()
        {
            let _ = fs::write(cr, &rep);
            let _ = fs::rename(&tmp, cf);
        }
        let _ = fs::remove_file(&tmp);
    }
    Ok((fatbin, rep, true))
}

/// The persistent fatbin cache directory, or None when disabled.
fn cache_dir() -> Option<PathBuf> {
    match env::var_os("DSA_KERNEL_CACHE") {
        Some(v) if v.is_empty() || v == "off" || v == "0" => None,
        Some(v) => Some(PathBuf::from(v)),
        None => env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|c| c.join("dsa-kernels")),
    }
}

/// 128-bit FNV-1a over length-prefixed fields: stable across Rust versions and machines
/// (std's hasher is not promised to be), which a persistent cache needs.
#[derive(Clone)]
struct StableHash(u128);

impl StableHash {
    fn new() -> Self {
        Self(0x6c62272e07bb014262b821756295c58d)
    }
    fn add(&mut self, bytes: &[u8]) {
        for b in (bytes.len() as u64).to_le_bytes().iter().chain(bytes) {
            self.0 ^= *b as u128;
            self.0 = self.0.wrapping_mul(0x0000000001000000000000000000013b);
        }
    }
    fn hex(&self) -> String {
        format!("{:032x}", self.0)
    }
}

fn list(dir: &Path, ext: &str) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == ext))
                .collect()
        })
        .unwrap_or_default()
}

fn find_nvcc(toolchain: &Path) -> PathBuf {
    if let Some(p) = env::var_os("NVCC") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return p;
        }
        fail(&format!(
            "NVCC={} is not a file. Point NVCC at CUDA 13's nvcc, or unset it.",
            p.display()
        ));
    }
    let mut candidates: Vec<PathBuf> = ["CUDA_HOME", "CUDA_PATH"]
        .iter()
        .filter_map(env::var_os)
        .map(|h| PathBuf::from(h).join("bin/nvcc"))
        .collect();
    if let Some(path) = env::var_os("PATH") {
        candidates.extend(env::split_paths(&path).map(|d| d.join("nvcc")));
    }
    candidates.push(toolchain.join("cuda/bin/nvcc"));
    candidates.into_iter().find(|p| p.is_file()).unwrap_or_else(|| {
        fail(&format!(
            "no nvcc found (looked at NVCC, CUDA_HOME/bin, CUDA_PATH/bin, PATH, {}).\n\
             Install CUDA 13.0's nvcc: scripts/install-cuda-toolchain.sh (python3 + pip, from PyPI) \
             puts it in {}, or set NVCC=/path/to/nvcc or CUDA_HOME.\n{SKIP_HINT}",
            toolchain.join("cuda/bin").display(),
            toolchain.display()
        ))
    })
}

/// A CUTLASS include directory (holding `cute/` and `cutlass/`) and its version header.
struct Cutlass {
    dir: PathBuf,
    version_header: Vec<u8>,
}

fn find_cutlass(nvcc: &Path, toolchain: &Path) -> Option<Cutlass> {
    let usable = |dir: &Path| {
        dir.join(CUTE_PROBE).is_file().then(|| Cutlass {
            dir: dir.to_path_buf(),
            version_header: fs::read(dir.join("cutlass/version.h")).unwrap_or_default(),
        })
    };
    // Explicit settings must be right: a wrong one is an error, not a fall-through.
    let explicit = [
        ("CUTLASS_INCLUDE", ""),
        ("CUTLASS_PATH", "include"),
        ("CUTLASS_HOME", "include"),
    ];
    for (var, sub) in explicit {
        if let Some(v) = env::var_os(var).filter(|v| !v.is_empty()) {
            let dir = PathBuf::from(v).join(sub);
            return Some(usable(&dir).unwrap_or_else(|| {
                fail(&format!(
                    "{var} is set, but {} has no {CUTE_PROBE}. Point it at a CUTLASS >= 3.5 \
                     checkout (CUTLASS_PATH, CUTLASS_HOME: its root; CUTLASS_INCLUDE: its include/), \
                     or unset it: no kernel needs CUTLASS.",
                    dir.display()
                ))
            }));
        }
    }
    // The CUDA install the nvcc belongs to (some installs ship CUTLASS beside CCCL).
    let cuda_root = nvcc
        .canonicalize()
        .unwrap_or_else(|_| nvcc.to_path_buf())
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf);
    let mut dirs: Vec<PathBuf> = cuda_root
        .iter()
        .flat_map(|r| {
            [
                r.join("include"),
                r.join("targets/x86_64-linux/include"),
                r.join("targets/sbsa-linux/include"),
            ]
        })
        .collect();
    dirs.push(toolchain.join("cutlass-include"));
    dirs.iter().find_map(|d| usable(d))
}

/// `90a`, `90`, `9.0`, `sm_90a`, comma lists; plain 90 means 90a because the kernels use
/// wgmma and setmaxnreg, which only exist on the arch-specific target.
fn parse_archs(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s
        .split([',', ' ', ';'])
        .map(|t| {
            t.trim()
                .trim_start_matches("sm_")
                .trim_start_matches("compute_")
                .replace('.', "")
        })
        .filter(|t| !t.is_empty())
        .map(|t| if t == "90" { "90a".to_string() } else { t })
        .collect();
    v.dedup();
    if v.is_empty() {
        v.push("90a".into());
    }
    v
}

fn warn_spills(stem: &str, report: &str) {
    let mut func = String::new();
    for line in report.lines() {
        if let Some(i) = line.find("Function properties for ") {
            func = line[i + 24..].trim().to_string();
        }
        if line.contains("bytes stack frame") {
            let nums: Vec<u64> = line
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|t| t.parse().ok())
                .collect();
            if nums.iter().any(|&n| n > 0) {
                println!("cargo:warning=dsa-kernels: {stem}: {func}: {}", line.trim());
            }
        }
    }
}

/// The kernels (entry functions) ptxas compiled, in report order, each once.
fn entry_functions(report: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for line in report.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            if let Some(name) = rest.split('\'').next() {
                if !names.iter().any(|n| n == name) {
                    names.push(name.to_string());
                }
            }
        }
    }
    names
}

fn write_registry(out: &Path, fams: &[(String, PathBuf, String)], archs: &str) {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "/// Target architectures the embedded fatbins were built for."
    );
    let _ = writeln!(s, "pub const BUILT_ARCHS: &str = {archs:?};");
    let _ = writeln!(
        s,
        "/// (kernel family, fatbin bytes), one per `kernels-cuda/<family>/*.cu`."
    );
    let _ = writeln!(s, "pub static FATBINS: &[(&str, &[u8])] = &[");
    for (stem, path, _) in fams {
        let _ = writeln!(
            s,
            "    ({stem:?}, include_bytes!({:?})),",
            path.display().to_string()
        );
    }
    let _ = writeln!(s, "];");
    let _ = writeln!(
        s,
        "/// (kernel family, its kernels' names), from the ptxas report of each fatbin."
    );
    let _ = writeln!(s, "pub static KERNEL_NAMES: &[(&str, &[&str])] = &[");
    for (stem, _, report) in fams {
        let _ = writeln!(s, "    ({stem:?}, &{:?}),", entry_functions(report));
    }
    let _ = writeln!(s, "];");
    let _ = writeln!(
        s,
        "/// The `-Xptxas -v` report of every kernel (registers, spills, shared memory)."
    );
    let _ = writeln!(
        s,
        "pub const PTXAS_REPORT_PATH: &str = {:?};",
        out.join("ptxas-report.txt").display().to_string()
    );
    if let Err(e) = fs::write(out.join("kernels.rs"), s) {
        fail(&format!(
            "cannot write {}: {e}",
            out.join("kernels.rs").display()
        ));
    }
}

/// Regenerates the Rust mirror of every `kernels-cuda/*/*_params.h` into
/// `OUT_DIR/sys/<family>.rs`; `tests/bindings.rs` compares them with the committed
/// `src/sys/<family>.rs` and `scripts/regen-bindings.sh` copies them over.
#[cfg(feature = "regen-bindings")]
fn regen_bindings(root: &Path, out: &Path) {
    let kdir = root.join("kernels-cuda");
    let common = kdir.join("common");
    let dir = out.join("sys");
    fs::create_dir_all(&dir).unwrap();
    let mut all: Vec<PathBuf> = fs::read_dir(&kdir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .flat_map(|d| list(&d, "h"))
        .collect();
    all.sort();
    for header in all {
        let name = header.file_name().unwrap().to_string_lossy().into_owned();
        let Some(family) = name.strip_suffix("_params.h") else {
            continue;
        };
        let b = bindgen::Builder::default()
            .header(header.display().to_string())
            .clang_arg(format!("-I{}", common.display()))
            .allowlist_file(header.display().to_string())
            .derive_default(true)
            .derive_debug(true)
            .layout_tests(true)
            .use_core()
            .generate()
            .unwrap_or_else(|e| panic!("bindgen failed on {name}: {e}"));
        b.write_to_file(dir.join(format!("{family}.rs"))).unwrap();
    }
    println!("cargo:rustc-env=DSA_GENERATED_SYS_DIR={}", dir.display());
}
