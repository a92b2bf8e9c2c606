//! Helpers shared by the integration tests: test models made on the fly, the optional real model,
//! and a generator of varied strings.
#![allow(dead_code)]

pub mod llava;
pub mod rpc;
pub mod server;
pub mod strings;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use dycoke::ggml::GgmlType;
use gguf_tools::random::{write_qwen2, Qwen2Spec};
use gguf_tools::vocab::Vocab;

/// A directory for files made by this test binary (removed at exit by the OS's temp cleaning; kept
/// small).
pub fn scratch_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir")).path()
}

/// A random Qwen2 GGUF with the built-in vocabulary, made once per test binary.
pub fn random_model(ty: GgmlType) -> PathBuf {
    random_model_with(ty, &Qwen2Spec::default(), "default")
}

pub fn random_model_with(ty: GgmlType, spec: &Qwen2Spec, tag: &str) -> PathBuf {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap();
    let path = scratch_dir().join(format!("qwen2-{tag}-{}.gguf", ty.name()));
    if !path.exists() {
        let spec = Qwen2Spec { weight_type: ty, ..spec.clone() };
        write_qwen2(&path, &spec, &Vocab::builtin(1000, &[])).expect("write random model");
    }
    path
}

/// The real Qwen2 model, if present: $DYCOKE_QWEN2_GGUF or models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf.
pub fn real_model() -> Option<PathBuf> {
    let p = std::env::var_os("DYCOKE_QWEN2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"));
    if p.exists() {
        Some(p)
    } else {
        eprintln!("skipped: real model not found at {} (scripts/fetch-qwen2-0.5b fetches it)", p.display());
        None
    }
}

pub fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (i, &x)| if x > best.1 { (i, x) } else { best }).0
}

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum();
    let na: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

pub fn std_dev(v: &[f32]) -> f64 {
    let n = v.len() as f64;
    let mean = v.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
    (v.iter().map(|&x| (f64::from(x) - mean).powi(2)).sum::<f64>() / n).sqrt()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}
