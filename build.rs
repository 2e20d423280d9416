//! Compiles every `kernels-cuda/<family>/*.cu` into a fatbin with nvcc and embeds them in the crate.
//!
//! One fatbin per kernel family rather than one for the whole crate: the driver loads a
//! single image per architecture from a fatbin, so merging families into one image would
//! need relocatable device code and a device link, which costs kernel performance.
//!
//! Without nvcc (or with `DOCS_RS` set) no CUDA is compiled, the crate still builds, and
//! the runtime reports `DsaError::KernelsNotBuilt`.
use std::collections::hash_map::DefaultHasher;
use std::env;
use std::fmt::Write as _;
use std::fs;
use std::hash::{Hash, Hasher};
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
    "DSA_NVCC_JOBS",
    "DSA_NVCC_FLAGS",
    "DSA_CUDA_TOOLCHAIN_DIR",
    "DOCS_RS",
];

fn main() {
    for v in ENV_VARS {
        println!("cargo:rerun-if-env-changed={v}");
    }
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let kdir = root.join("kernels-cuda");
    println!("cargo:rerun-if-changed={}", kdir.display());

    #[cfg(feature = "regen-bindings")]
    regen_bindings(&root, &out);

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
        let mut stems: Vec<_> = sources.iter().map(|s| s.file_stem().unwrap().to_owned()).collect();
        stems.sort();
        let n = stems.len();
        stems.dedup();
        assert!(stems.len() == n, "two kernel sources share a file name: fatbins are named by it");
    }
    for f in sources.iter().chain(headers.iter()) {
        println!("cargo:rerun-if-changed={}", f.display());
    }

    let nvcc = if env::var_os("DOCS_RS").is_some() {
        None
    } else {
        find_nvcc(&root)
    };
    let Some(nvcc) = nvcc else {
        println!(
            "cargo:warning=dsa-kernels: no nvcc found, CUDA kernels not compiled (every launch \
             returns KernelsNotBuilt). Run scripts/install-cuda-toolchain.sh, or set NVCC or CUDA_HOME."
        );
        write_registry(&out, &[], "none");
        return;
    };
    let archs = parse_archs(&env::var("CUDA_COMPUTE_CAP").unwrap_or_default());
    let nvcc_version = Command::new(&nvcc)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();

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
        format!("-I{}", common_dir.display()),
    ];
    for a in &archs {
        flags.push(format!("-gencode=arch=compute_{a},code=sm_{a}"));
    }
    if let Some(last) = archs.last() {
        flags.push(format!("-gencode=arch=compute_{last},code=compute_{last}"));
    }
    if let Some(inc) = find_cutlass(&root) {
        flags.push(format!("-I{}", inc.display()));
        flags.push("-DDSA_HAVE_CUTLASS=1".into());
    }
    if let Ok(extra) = env::var("DSA_NVCC_FLAGS") {
        flags.extend(extra.split_whitespace().map(String::from));
    }

    // Content hash of headers + flags + compiler: a family is recompiled only when it or
    // something it may include changed (OUT_DIR persists across incremental builds).
    let mut common = DefaultHasher::new();
    flags.hash(&mut common);
    nvcc_version.hash(&mut common);
    for h in &headers {
        fs::read(h).unwrap_or_default().hash(&mut common);
    }
    let common = common.finish();

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
    std::thread::scope(|s| {
        for _ in 0..jobs.min(sources.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(src) = sources.get(i) else { break };
                let stem = src.file_stem().unwrap().to_string_lossy().into_owned();
                let fatbin = out.join(format!("{stem}.fatbin"));
                let report = out.join(format!("{stem}.ptxas.txt"));
                let stamp = out.join(format!("{stem}.hash"));
                let mut h = DefaultHasher::new();
                common.hash(&mut h);
                fs::read(src).unwrap_or_default().hash(&mut h);
                let key = format!("{:016x}", h.finish());
                if fatbin.exists()
                    && fs::read_to_string(&stamp).ok().as_deref() == Some(key.as_str())
                {
                    let rep = fs::read_to_string(&report).unwrap_or_default();
                    results.lock().unwrap().push((stem, fatbin, rep));
                    continue;
                }
                let o = Command::new(&nvcc)
                    .args(&flags)
                    .arg(format!("-I{}", src.parent().unwrap().display()))
                    .arg(src)
                    .arg("-o")
                    .arg(&fatbin)
                    .output();
                match o {
                    Ok(o) if o.status.success() => {
                        let rep = String::from_utf8_lossy(&o.stderr).into_owned()
                            + &String::from_utf8_lossy(&o.stdout);
                        let _ = fs::write(&report, &rep);
                        let _ = fs::write(&stamp, &key);
                        results.lock().unwrap().push((stem, fatbin, rep));
                    }
                    Ok(o) => failures.lock().unwrap().push(format!(
                        "{}:\n{}{}",
                        src.display(),
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    )),
                    Err(e) => failures
                        .lock()
                        .unwrap()
                        .push(format!("{}: cannot run nvcc: {e}", src.display())),
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    if !failures.is_empty() {
        panic!("nvcc failed:\n{}", failures.join("\n"));
    }
    let mut results = results.into_inner().unwrap();
    results.sort();
    let mut all_reports = String::new();
    for (stem, _, rep) in &results {
        let _ = writeln!(all_reports, "== {stem}\n{rep}");
        warn_spills(stem, rep);
    }
    let _ = fs::write(out.join("ptxas-report.txt"), all_reports);
    let fams: Vec<(String, PathBuf)> = results.into_iter().map(|(s, p, _)| (s, p)).collect();
    write_registry(&out, &fams, &archs.join(","));
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

fn find_nvcc(root: &Path) -> Option<PathBuf> {
    let usable = |p: PathBuf| p.is_file().then_some(p);
    if let Some(p) = env::var_os("NVCC") {
        return usable(PathBuf::from(p));
    }
    for v in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(h) = env::var_os(v) {
            if let Some(p) = usable(PathBuf::from(h).join("bin/nvcc")) {
                return Some(p);
            }
        }
    }
    if let Some(path) = env::var_os("PATH") {
        for d in env::split_paths(&path) {
            if let Some(p) = usable(d.join("nvcc")) {
                return Some(p);
            }
        }
    }
    let tc = env::var_os("DSA_CUDA_TOOLCHAIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".cuda-toolchain"));
    usable(tc.join("cuda/bin/nvcc"))
}

fn find_cutlass(root: &Path) -> Option<PathBuf> {
    if let Some(p) = env::var_os("CUTLASS_INCLUDE") {
        return Some(PathBuf::from(p));
    }
    let tc = env::var_os("DSA_CUDA_TOOLCHAIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".cuda-toolchain"));
    let p = tc.join("cutlass-include");
    p.join("cute").is_dir().then_some(p)
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

fn write_registry(out: &Path, fams: &[(String, PathBuf)], archs: &str) {
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
    for (stem, path) in fams {
        let _ = writeln!(
            s,
            "    ({stem:?}, include_bytes!({:?})),",
            path.display().to_string()
        );
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
    fs::write(out.join("kernels.rs"), s).unwrap();
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
