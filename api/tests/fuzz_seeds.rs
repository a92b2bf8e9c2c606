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
    bodies::remove_fixture();
    assert!(n >= 20, "only {n} seeds");
}

/// The seeds are requests clients really send: those not named `refused_*` are accepted, and
/// the others are not.
#[test]
fn seeds_are_realistic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds/chat_request");
    let mut accepted = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.ends_with(".json") {
            continue;
        }
        let result = dycoke_api::parse_chat_request(&std::fs::read(&path).unwrap(), &dycoke_api::Limits::default());
        if name.starts_with("refused_") {
            assert!(result.is_err(), "{name} is accepted");
        } else {
            result.unwrap_or_else(|e| panic!("{name}: {e}"));
            accepted += 1;
        }
    }
    assert!(accepted >= 15, "{accepted}");
}
