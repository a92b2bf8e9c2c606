//! Replays every committed fuzz seed (api/fuzz/seeds/chat_request) and every past finding
//! (api/fuzz/regressions/chat_request) through the fuzz target's body, so that a fixed crash
//! stays fixed without a nightly toolchain. A finding is added by copying libFuzzer's crash file.

#[path = "../fuzz/bodies.rs"]
mod bodies;

use std::path::Path;

#[test]
fn chat_request() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut n = 0;
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join("chat_request")) else { continue };
        let mut files: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
        files.sort();
        for f in files {
            eprintln!("{}", f.display());
            bodies::chat_request(&std::fs::read(&f).unwrap());
            n += 1;
        }
    }
    assert!(n >= 20, "only {n} seeds");
}
