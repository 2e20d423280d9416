//! The committed bindgen mirror of `kernels-cuda/<family>/*_params.h` must be current.
//! Runs with `--features regen-bindings` (needs libclang); `scripts/regen-bindings.sh`
//! refreshes the files when this fails.
#![cfg(feature = "regen-bindings")]

#[test]
fn committed_bindings_are_current() {
    let generated = std::path::Path::new(env!("DSA_GENERATED_SYS_DIR"));
    let committed = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/sys");
    let mut n = 0;
    for e in std::fs::read_dir(generated).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_owned();
        let want = std::fs::read_to_string(&p).unwrap();
        let have = std::fs::read_to_string(committed.join(&name)).unwrap_or_default();
        assert!(
            want == have,
            "src/sys/{} is stale: run scripts/regen-bindings.sh",
            name.to_string_lossy()
        );
        n += 1;
    }
    assert!(n > 0, "no bindings generated");
}
