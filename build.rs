//! Build checks for the dycoke crate, and the C header of its C API.
//!
//! The header is generated from `src/capi.rs` with cbindgen into OUT_DIR; the committed copy in
//! `include/dycoke.h` is checked against it by a test, and `DYCOKE_UPDATE_HEADER=1 cargo build`
//! rewrites the committed copy.
//!
//! Release builds on x86-64 must use the CPU's SIMD (AVX2, FMA and F16C at least), as llama.cpp's
//! own default build does: `.cargo/config.toml` sets `-C target-cpu=native`, which llama-cpp-sys-2
//! turns into GGML_NATIVE for ggml. A build without them (another RUSTFLAGS, an old CPU) would run
//! several times slower, so it fails here unless DYCOKE_ALLOW_NO_SIMD=1 says that is intended.

fn main() {
    println!("cargo:rerun-if-env-changed=DYCOKE_ALLOW_NO_SIMD");
    println!("cargo:rerun-if-env-changed=DYCOKE_UPDATE_HEADER");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/capi.rs");
    check_simd();
    c_header();
}

fn c_header() {
    let config = cbindgen::Config {
        language: cbindgen::Language::C,
        include_guard: Some("DYCOKE_H".into()),
        header: Some("/* The dycoke C API. Generated from src/capi.rs by build.rs (cbindgen): do not edit. */".into()),
        cpp_compat: true,
        usize_is_size_t: true,
        enumeration: cbindgen::EnumConfig { prefix_with_name: true, rename_variants: cbindgen::RenameRule::ScreamingSnakeCase, ..Default::default() },
        ..Default::default()
    };
    let header = cbindgen::Builder::new().with_config(config).with_src("src/capi.rs").generate().expect("generate the C header from src/capi.rs");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("dycoke.h");
    header.write_to_file(&out);
    if std::env::var("DYCOKE_UPDATE_HEADER").is_ok_and(|v| v == "1") {
        header.write_to_file("include/dycoke.h");
    }
}

fn check_simd() {
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let profile = std::env::var("PROFILE").unwrap_or_default();
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    let have: Vec<&str> = features.split(',').collect();
    if arch == "x86_64" && profile == "release" {
        let missing: Vec<&str> = ["avx2", "fma", "f16c"].into_iter().filter(|f| !have.contains(f)).collect();
        if !missing.is_empty() {
            let allowed = std::env::var("DYCOKE_ALLOW_NO_SIMD").is_ok_and(|v| v == "1");
            let message = format!(
                "this release build targets a CPU without {} (target features: {features}); ggml would be built without SIMD and run several times slower. \
                 Build with RUSTFLAGS unset (so .cargo/config.toml's -C target-cpu=native applies) on an AVX2 machine, \
                 or set DYCOKE_ALLOW_NO_SIMD=1 to build anyway.",
                missing.join(", ")
            );
            if allowed {
                println!("cargo:warning={message}");
            } else {
                panic!("{message}");
            }
        }
    }
}
