//! The command line end to end: `run` streams text and dumps the prompt's logits (compared with
//! llama.cpp's), `chat` answers piped turns, `info` describes files, and the Q8_0 KV cache works.

mod common;

use std::process::Command;

use dycoke_oracle::{RefContext, RefModel};
use dycoke::ggml::GgmlType;

fn dycoke(args: &[&str]) -> std::process::Output {
    let out = Command::new(env!("CARGO_BIN_EXE_dycoke")).args(args).output().expect("run dycoke");
    assert!(out.status.success(), "dycoke {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

#[test]
fn run_raw_dumps_the_logits_llama_cpp_computes() {
    let model = common::random_model(GgmlType::Q8_0);
    let dump = common::scratch_dir().join("logits.bin");
    let prompt = "<|im_start|>user\nDescribe the clip.<|im_end|>\n<|im_start|>assistant\n";
    let out = dycoke(&["run", "-m", model.to_str().unwrap(), "--raw", "-p", prompt, "-n", "12", "--ignore-eos",
        "--dump-logits", dump.to_str().unwrap(), "--timings", "-t", "2"]);
    let ours: Vec<f32> = std::fs::read(&dump).unwrap().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();

    let reference = RefModel::load(&model, false).unwrap();
    let mut ctx = RefContext::new(&reference, 256, 256, 2).unwrap();
    ctx.decode_tokens(&reference.tokenize(prompt, false, true)).unwrap();
    assert_eq!(ours, ctx.logits(), "dumped logits differ from llama.cpp's");

    let text = String::from_utf8(out.stdout).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!text.is_empty());
    assert!(err.contains("prompt:") && err.contains("decode:  12 tokens"), "{err}");
    assert!(!text.contains("prompt:"), "diagnostics leaked into stdout: {text}");
}

#[test]
fn templated_and_raw_prompts_differ_and_system_prompts_apply() {
    let model = common::random_model(GgmlType::F16);
    let m = model.to_str().unwrap();
    let d = |name: &str| common::scratch_dir().join(name);
    let read = |p: &std::path::Path| std::fs::read(p).unwrap();
    dycoke(&["run", "-m", m, "-p", "hello", "-n", "1", "--dump-logits", d("a.bin").to_str().unwrap()]);
    dycoke(&["run", "-m", m, "--raw", "-p", "hello", "-n", "1", "--dump-logits", d("b.bin").to_str().unwrap()]);
    dycoke(&["run", "-m", m, "-p", "hello", "--system", "Be brief.", "-n", "1", "--dump-logits", d("c.bin").to_str().unwrap()]);
    // The template's default system prompt is the built-in vocabulary's "You are a helpful assistant."
    dycoke(&["run", "-m", m, "--raw", "-n", "1", "--dump-logits", d("d.bin").to_str().unwrap(), "-p",
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"]);
    assert_ne!(read(&d("a.bin")), read(&d("b.bin")));
    assert_ne!(read(&d("a.bin")), read(&d("c.bin")));
    assert_eq!(read(&d("a.bin")), read(&d("d.bin")));
}

#[test]
fn chat_answers_piped_turns_and_commands() {
    let model = common::random_model(GgmlType::Q4K);
    let mut child = Command::new(env!("CARGO_BIN_EXE_dycoke"))
        .args(["chat", "-m", model.to_str().unwrap(), "-n", "5", "--ignore-eos", "-t", "2"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"first question\n/stats\nsecond question\n/reset\n/help\n/bogus\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2, "two answers");
    assert!(err.contains("answer 5 tokens"), "{err}");
    assert!(err.contains("conversation forgotten") && err.contains("commands:") && err.contains("unknown command /bogus"), "{err}");
}

#[test]
fn chat_over_a_video_prefills_it_once_across_three_turns() {
    let (llm, mmproj) = common::llava::converted(GgmlType::F32);
    let video = common::llava::dir().join("clip.mp4");
    let image = common::llava::dir().join("image.png");
    let cache = tempfile::tempdir().unwrap();
    let chat = |input: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dycoke"))
            .args(["chat", "-m", llm.to_str().unwrap(), "--mmproj", mmproj.to_str().unwrap(), "--video", video.to_str().unwrap()])
            .args(["--frames", "8", "-n", "4", "--ignore-eos", "-t", "2", "--cache-dir", cache.path().to_str().unwrap()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{err}");
        err
    };
    let input = format!("What happens?\n/stats\nWhy?\n/stats\nWhat next?\n/stats\n/image {}\nAnd this?\n/stats\n/video /no/such.mp4\n", image.display());
    let err = chat(&input);
    // "prompt N tokens in ... evaluated, M reused from the cache; ..." after each turn.
    let turns: Vec<(usize, usize)> = err
        .lines()
        .filter_map(|l| l.strip_prefix("last turn: prompt "))
        .map(|l| {
            let evaluated = l.split(' ').next().unwrap().parse().unwrap();
            let reused = l.split(" evaluated, ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
            (evaluated, reused)
        })
        .collect();
    assert_eq!(turns.len(), 4, "{err}");
    let video_tokens: usize = err.split("8 frames, ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert_eq!(turns[0].1, 0);
    assert!(turns[0].0 > video_tokens, "{err}");
    for &(evaluated, reused) in &turns[1..3] {
        assert!(reused > video_tokens && evaluated < 30, "the video was prefilled again: {turns:?}\n{err}");
    }
    // The image came with the fourth question: only it and the words are new.
    assert!(turns[3].1 > turns[2].1 && turns[3].0 > 30, "{turns:?}");
    assert!(err.contains("/no/such.mp4"), "a bad /video is reported and the chat goes on: {err}");
    assert!(err.contains("media: 2 vision encodes, 0 from the embedding cache"), "{err}");

    // The same video again: its embeddings come from the cache.
    let err = chat("What happens?\n/stats\n");
    assert!(err.contains("from the embedding cache;") && err.contains("media: 0 vision encodes, 1 from the embedding cache"), "{err}");
}

#[test]
fn info_describes_models() {
    let model = common::random_model(GgmlType::Q4K);
    let out = dycoke(&["info", model.to_str().unwrap(), "--tensors"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("general.architecture") && text.contains("\"qwen2\""));
    assert!(text.contains("blk.3.ffn_down.weight") && text.contains("Q4_K"));
    assert!(text.contains("qwen2:      4 layers, hidden 256"));
    assert!(text.contains("ggml CPU:"));
}

#[test]
fn q8_0_kv_cache_stays_close_to_f16() {
    let model = common::random_model(GgmlType::F32);
    let m = model.to_str().unwrap();
    let d = |name: &str| common::scratch_dir().join(name);
    let prompt = "The quick brown fox jumps over the lazy dog. ".repeat(8);
    dycoke(&["run", "-m", m, "-p", &prompt, "-n", "1", "--dump-logits", d("kv16.bin").to_str().unwrap()]);
    dycoke(&["run", "-m", m, "-p", &prompt, "-n", "1", "--cache-type", "q8_0", "--dump-logits", d("kv8.bin").to_str().unwrap()]);
    let f = |p: std::path::PathBuf| -> Vec<f32> { std::fs::read(p).unwrap().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect() };
    let (a, b) = (f(d("kv16.bin")), f(d("kv8.bin")));
    assert_ne!(a, b, "the Q8_0 cache was not used");
    assert!(common::cosine(&a, &b) > 0.99, "cosine {}", common::cosine(&a, &b));
}

#[test]
fn run_answers_about_a_video_and_an_image_with_transformers_logits() {
    let (llm, mmproj) = common::llava::converted(GgmlType::F32);
    let dir = common::llava::dir();
    for (flag, file, question, reference) in [
        ("--video", "clip.mp4", "What happens in this video?", "video_logits"),
        ("--image", "image.png", "Describe the image.", "image_logits"),
    ] {
        let dump = common::scratch_dir().join(format!("{reference}.bin"));
        let out = dycoke(&["run", "-m", llm.to_str().unwrap(), "--mmproj", mmproj.to_str().unwrap(), flag, dir.join(file).to_str().unwrap(),
            "--frames", "8", "-p", question, "-n", "4", "--ignore-eos", "--dump-logits", dump.to_str().unwrap(), "--timings",
            "--compress", "none"]);
        let ours: Vec<f32> = std::fs::read(&dump).unwrap().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
        let (want, _) = common::llava::f32_array(reference);
        let e = common::llava::rel_err(&ours[..want.len()], &want);
        assert!(e < 1e-3, "{flag}: logits relative error {e:.2e}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("media:"), "timings report the media");
    }
}
