//! The C API from C: the committed header is the generated one, the example program builds with
//! `cc` and streams an answer about a video, and NULLs and bad paths give error codes, not crashes.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use dycoke::ggml::GgmlType;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Where `cargo test` put the libdycoke.so it built with this test (`cargo build` copies it up
/// next to the binary; a test build leaves it in deps/).
fn lib_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_dycoke")).parent().unwrap().join("deps")
}

/// Compiles a C file against the header and the shared library.
fn compile(source: &str, name: &str) -> PathBuf {
    let exe = common::scratch_dir().join(name);
    let lib = lib_dir();
    assert!(lib.join("libdycoke.so").exists(), "the cdylib is built with the tests");
    let out = Command::new("cc")
        .args(["-std=c99", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&exe)
        .arg(root().join(source))
        .arg(format!("-I{}", root().join("include").display()))
        .arg(format!("-L{}", lib.display()))
        .arg("-ldycoke")
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .output()
        .expect("run cc");
    assert!(out.status.success(), "cc {source}:\n{}", String::from_utf8_lossy(&out.stderr));
    exe
}

/// The compiled program, loading the library this test was built with (cargo's LD_LIBRARY_PATH
/// would come before the rpath and may name an older copy).
fn run(exe: &Path) -> Command {
    let mut cmd = Command::new(exe);
    cmd.env("LD_LIBRARY_PATH", lib_dir());
    cmd
}

#[test]
fn the_committed_header_is_the_generated_one() {
    let generated = include_str!(concat!(env!("OUT_DIR"), "/dycoke.h"));
    let committed = std::fs::read_to_string(root().join("include/dycoke.h")).unwrap();
    assert!(generated == committed, "include/dycoke.h is stale: run `DYCOKE_UPDATE_HEADER=1 cargo build --release` and commit it");
}

#[test]
fn the_c_example_streams_an_answer_about_a_video() {
    let exe = compile("examples/c/ask_video.c", "ask_video");
    let (llm, mmproj) = common::llava::converted(GgmlType::F32);
    let video = common::llava::dir().join("clip.mp4");
    let out = run(&exe).arg(&llm).arg(&mmproj).arg(&video).arg("What happens in this video?").arg("4").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!out.stdout.is_empty(), "an answer was streamed");
    assert!(err.contains("encoding frames: 4/4") && err.contains("visual tokens:"), "{err}");
}

#[test]
fn null_pointers_bad_paths_and_bad_parameters_give_error_codes() {
    let exe = compile("tests/c/bad_arguments.c", "bad_arguments");
    let (llm, mmproj) = common::llava::converted(GgmlType::F32);
    let video = common::llava::dir().join("clip.mp4");
    let not_gguf = common::scratch_dir().join("not-a-model.gguf");
    std::fs::write(&not_gguf, b"this is not a GGUF file").unwrap();
    let out = run(&exe).arg(&llm).arg(&mmproj).arg(&video).arg(&not_gguf).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    assert!(text.contains("0 failures") && text.matches("ok ").count() >= 30, "{text}");
}

#[test]
fn every_parameter_field_has_its_documented_effect() {
    let exe = compile("tests/c/fields.c", "fields");
    let (llm, mmproj) = common::llava::converted(GgmlType::F32);
    let video = common::llava::dir().join("clip.mp4");
    let cache = tempfile::tempdir().unwrap();
    let out = run(&exe).arg(&llm).arg(&mmproj).arg(&video).arg(cache.path()).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    // One or more checks per field of DycokeModelParams, DycokeSessionParams, DycokeGenerateParams.
    for field in ["mmproj_path", "device", "gpu_layers", "frames", "max_frames", "compress", "ttm_k", "dp_ratio", "dp_layer", "n_ctx", "n_threads", "cache_dir",
        "system_prompt", "max_tokens", "temperature", "seed", "top_k", "top_p", "vision_type", "vision_reuse_layer", "vision_reuse_threshold"]
    {
        assert!(text.lines().any(|l| l.starts_with("ok ") && l.contains(field)), "no check of {field}:\n{text}");
    }
    assert!(text.contains("0 failures"), "{text}");
}
