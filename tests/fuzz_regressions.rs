//! Replays every committed fuzz seed (fuzz/seeds/TARGET) and every past finding
//! (fuzz/regressions/TARGET) through the fuzz targets' bodies, so a fixed crash stays fixed
//! without a nightly toolchain. A finding is added by copying libFuzzer's crash file there.

#[path = "../fuzz/bodies.rs"]
mod bodies;

use std::path::Path;

fn replay(target: &str, body: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n = 0;
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else { continue };
        let mut files: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
        files.sort();
        for f in files {
            let data = std::fs::read(&f).unwrap();
            eprintln!("{}", f.display());
            body(&data);
            n += 1;
        }
    }
    assert!(n > 0, "no seeds for {target}");
}

#[test]
fn gguf() {
    replay("gguf", bodies::gguf);
}

#[test]
fn video() {
    replay("video", bodies::video);
}

#[test]
fn image() {
    replay("image", bodies::image);
}

#[test]
fn tokenizer() {
    replay("tokenizer", bodies::tokenizer);
}

#[test]
fn batch_jsonl() {
    replay("batch_jsonl", bodies::batch_jsonl);
}
