//! The LLaVA-OneVision fixture (tests/fixtures/llava-tiny): converted once per test binary, and its
//! reference arrays.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use dycoke::ggml::GgmlType;

pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llava-tiny")
}

pub fn manifest() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir().join("refs/manifest.json")).unwrap()).unwrap()
}

/// (LLM, mmproj) converted from the fixture checkpoint with `outtype`, the vision side included.
pub fn converted(outtype: GgmlType) -> (PathBuf, PathBuf) {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap();
    let prefix = super::scratch_dir().join(format!("llava-tiny-{}", outtype.name()));
    let llm = PathBuf::from(format!("{}-llm.gguf", prefix.display()));
    let mmproj = PathBuf::from(format!("{}-mmproj.gguf", prefix.display()));
    if !llm.exists() {
        let opts = gguf_tools::convert::ConvertOptions { input: dir().join("hf"), prefix, outtype, vision_type: Some(outtype) };
        gguf_tools::convert::convert(&opts, &mut |_, _, _| {}).expect("convert the fixture");
    }
    (llm, mmproj)
}

pub fn f32_array(name: &str) -> (Vec<f32>, Vec<usize>) {
    let m = manifest();
    let shape: Vec<usize> = m[name]["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    let bytes = std::fs::read(dir().join(format!("refs/{name}.f32"))).unwrap();
    let v: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    assert_eq!(v.len(), shape.iter().product::<usize>(), "{name}");
    (v, shape)
}

/// max |a - b| / max |b|: the relative error of a stage.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    let max_ref = b.iter().map(|x| f64::from(x.abs())).fold(0.0, f64::max);
    let max_diff = a.iter().zip(b).map(|(x, y)| f64::from((x - y).abs())).fold(0.0, f64::max);
    max_diff / max_ref
}

pub fn cached<T: Send + Sync>(cell: &'static OnceLock<T>, f: impl FnOnce() -> T) -> &'static T {
    cell.get_or_init(f)
}
