//! Malformed inputs through the real binary: each must end with a non-zero exit and a message
//! that names the problem, never a panic or an abort.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dycoke::ggml::GgmlType;
use dycoke::gguf::{GgufFile, GgufWriter, Value};

fn dycoke(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dycoke")).args(args).output().expect("run dycoke")
}

/// Asserts a clean failure whose stderr mentions every `needles` fragment (case-insensitive).
#[track_caller]
fn fails_with(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code().is_some(), "killed by a signal: {:?}\n{err}", out.status);
    assert!(!out.status.success(), "succeeded:\n{err}");
    assert!(!err.contains("panicked") && !err.contains("RUST_BACKTRACE"), "panicked:\n{err}");
    for n in needles {
        assert!(err.to_lowercase().contains(&n.to_lowercase()), "{n:?} not in:\n{err}");
    }
    // DYCOKE_COUNT_CASES=FILE lists the cases run (one line each), to count them.
    if let Some(f) = std::env::var_os("DYCOKE_COUNT_CASES") {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(f).unwrap();
        writeln!(f, "{}", err.lines().last().unwrap_or_default()).unwrap();
    }
}

fn scratch(name: &str) -> PathBuf {
    common::scratch_dir().join(name)
}

/// Runs `dycoke run` on a model file.
fn run_model(path: &Path) -> Output {
    dycoke(&["run", "-m", path.to_str().unwrap(), "-p", "hi", "-n", "1", "-c", "64"])
}

// ---- raw GGUF bytes -----------------------------------------------------------------------------

#[derive(Default)]
struct Raw(Vec<u8>);

impl Raw {
    fn header(version: u32, n_tensors: u64, n_kv: u64) -> Raw {
        let mut r = Raw(b"GGUF".to_vec());
        r.u32(version).u64(n_tensors).u64(n_kv);
        r
    }
    fn u32(&mut self, v: u32) -> &mut Raw {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Raw {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn str(&mut self, s: &str) -> &mut Raw {
        self.u64(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Raw {
        self.0.extend_from_slice(b);
        self
    }
    /// A tensor info: name, dims, type, offset.
    fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> &mut Raw {
        self.str(name).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(ty).u64(offset)
    }
    fn pad(&mut self) -> &mut Raw {
        while self.0.len() % 32 != 0 {
            self.0.push(0);
        }
        self
    }
    fn save(&self, name: &str) -> PathBuf {
        let p = scratch(name);
        std::fs::write(&p, &self.0).unwrap();
        p
    }
}

#[test]
fn empty_file() {
    let p = scratch("empty.gguf");
    std::fs::write(&p, b"").unwrap();
    fails_with(&run_model(&p), &["empty.gguf", "truncated", "magic"]);
}

#[test]
fn wrong_magic() {
    let p = scratch("magic.gguf");
    std::fs::write(&p, b"GGML\x03\x00\x00\x00 not a gguf file at all").unwrap();
    fails_with(&run_model(&p), &["magic.gguf", "not a GGUF file"]);
}

#[test]
fn unsupported_versions() {
    fails_with(&run_model(&Raw::header(1, 0, 0).save("v1.gguf")), &["v1.gguf", "version 1"]);
    fails_with(&run_model(&Raw::header(99, 0, 0).save("v99.gguf")), &["version 99"]);
    let mut be = Raw(b"GGUF".to_vec());
    be.bytes(&3u32.to_be_bytes()).u64(0).u64(0);
    fails_with(&run_model(&be.save("be.gguf")), &["big-endian"]);
}

#[test]
fn truncated_header_and_metadata() {
    fails_with(&run_model(&Raw(b"GGUF\x03\x00".to_vec()).save("t1.gguf")), &["t1.gguf", "truncated", "version"]);
    let mut r = Raw::header(3, 0, 1);
    r.str("general.architecture").u32(8).u64(5).bytes(b"qw");
    fails_with(&run_model(&r.save("t2.gguf")), &["t2.gguf", "truncated", "general.architecture"]);
    let real = std::fs::read(common::random_model(GgmlType::F32)).unwrap();
    let p = scratch("t3.gguf");
    std::fs::write(&p, &real[..real.len() / 2]).unwrap();
    fails_with(&run_model(&p), &["t3.gguf", "outside"]);
}

#[test]
fn absurd_counts_and_lengths() {
    fails_with(&run_model(&Raw::header(3, u64::MAX, 0).save("c1.gguf")), &["tensor count"]);
    fails_with(&run_model(&Raw::header(3, 0, 1 << 40).save("c2.gguf")), &["key count"]);
    let mut r = Raw::header(3, 0, 1);
    r.u64(u64::MAX / 2).bytes(&[b'x'; 64]);
    fails_with(&run_model(&r.save("c3.gguf")), &["string length", "limit"]);
    let mut r = Raw::header(3, 0, 1);
    r.u64(1000).bytes(&[b'x'; 64]);
    fails_with(&run_model(&r.save("c3b.gguf")), &["truncated", "metadata key #0"]);
    let mut r = Raw::header(3, 0, 1);
    r.str("big.array").u32(9).u32(4).u64(1 << 60);
    fails_with(&run_model(&r.save("c4.gguf")), &["length of array", "big.array"]);
    let mut r = Raw::header(3, 0, 1);
    r.str("deep").u32(9);
    for _ in 0..20 {
        r.u32(9).u64(1);
    }
    fails_with(&run_model(&r.save("c5.gguf")), &["deep", "nested"]);
}

#[test]
fn bad_metadata_values() {
    let mut r = Raw::header(3, 0, 1);
    r.str("k").u32(42).u32(0);
    fails_with(&run_model(&r.save("m1.gguf")), &["unknown value type id 42"]);
    let mut r = Raw::header(3, 0, 2);
    r.str("k").u32(4).u32(1).str("k").u32(4).u32(2);
    fails_with(&run_model(&r.save("m2.gguf")), &["\"k\" appears twice"]);
    let mut r = Raw::header(3, 0, 1);
    r.str("flag").u32(7).bytes(&[7]);
    fails_with(&run_model(&r.save("m3.gguf")), &["flag", "0 or 1"]);
    let mut r = Raw::header(3, 0, 1);
    r.u64(2).bytes(&[0xff, 0xfe]).u32(4).u32(1);
    fails_with(&run_model(&r.save("m4.gguf")), &["UTF-8"]);
    let mut r = Raw::header(3, 0, 1);
    r.str("general.alignment").u32(4).u32(24);
    fails_with(&run_model(&r.save("m5.gguf")), &["alignment", "24"]);
}

#[test]
fn bad_tensor_infos() {
    let data = [0u8; 64];
    let cases: Vec<(&str, Raw, Vec<&str>)> = vec![
        ("x1.gguf", { let mut r = Raw::header(3, 1, 0); r.tensor("a", &[4], 0, 1 << 40).pad().bytes(&data); r }, vec!["\"a\"", "outside"]),
        ("x2.gguf", { let mut r = Raw::header(3, 1, 0); r.tensor("a", &[4], 99, 0).pad().bytes(&data); r }, vec!["\"a\"", "unknown ggml type id 99"]),
        ("x3.gguf", { let mut r = Raw::header(3, 1, 0); r.tensor("a", &[4], 4, 0).pad().bytes(&data); r }, vec!["unknown ggml type id 4"]),
        ("x4.gguf", { let mut r = Raw::header(3, 1, 0); r.tensor("a", &[1, 1, 1, 1, 1], 0, 0).pad().bytes(&data); r }, vec!["5 dimensions"]),
        ("x5.gguf", { let mut r = Raw::header(3, 1, 0); r.tensor("a", &[4], 0, 3).pad().bytes(&data); r }, vec!["not a multiple of the alignment"]),
        ("x6.gguf", { let mut r = Raw::header(3, 2, 0); r.tensor("a", &[8], 0, 0).tensor("b", &[8], 0, 0).pad().bytes(&data); r }, vec!["overlap"]),
        ("x7.gguf", { let mut r = Raw::header(3, 1, 0); r.tensor("q", &[100], 12, 0).pad().bytes(&data); r }, vec!["block size"]),
        ("x8.gguf", { let mut r = Raw::header(3, 1, 0); r.tensor("a", &[1 << 62, 1 << 62], 0, 0).pad(); r }, vec!["overflows"]),
        ("x9.gguf", { let mut r = Raw::header(3, 2, 0); r.tensor("a", &[4], 0, 0).tensor("a", &[4], 0, 32).pad().bytes(&data); r }, vec!["\"a\" appears twice"]),
        ("x10.gguf", { let mut r = Raw::header(3, 1, 0); r.tensor(&"n".repeat(80), &[4], 0, 0).pad().bytes(&data); r }, vec!["name is 80 bytes"]),
    ];
    for (name, raw, needles) in cases {
        fails_with(&run_model(&raw.save(name)), &needles);
    }
}

// ---- well-formed files that are not the model they claim to be ----------------------------------

/// Copies a random model, letting `edit` change its metadata and tensor list.
fn rewrite(name: &str, edit: impl FnOnce(&mut Vec<(String, Value)>, &mut Vec<(String, GgmlType, Vec<u64>, Vec<u8>)>)) -> PathBuf {
    let src = GgufFile::open(common::random_model(GgmlType::F32)).unwrap();
    let mut meta = src.metadata().to_vec();
    let mut tensors: Vec<_> = src.tensors().iter().map(|t| (t.name.clone(), t.ty, t.shape.clone(), src.tensor_data(t).to_vec())).collect();
    edit(&mut meta, &mut tensors);
    let mut w = GgufWriter::new();
    for (k, v) in meta {
        w.set(k, v);
    }
    for (n, ty, shape, _) in &tensors {
        w.add_tensor(n, *ty, shape).unwrap();
    }
    let path = scratch(name);
    let mut d = w.create(&path).unwrap();
    for (n, _, _, data) in &tensors {
        d.write_tensor(n, data).unwrap();
    }
    d.finish().unwrap();
    path
}

fn set_key(meta: &mut [(String, Value)], key: &str, v: Value) {
    meta.iter_mut().find(|(k, _)| k == key).unwrap().1 = v;
}

#[test]
fn missing_tensor() {
    let p = rewrite("no-ffn-up.gguf", |_, t| t.retain(|x| x.0 != "blk.1.ffn_up.weight"));
    fails_with(&run_model(&p), &["no-ffn-up.gguf", "blk.1.ffn_up.weight", "missing"]);
}

#[test]
fn wrong_shape() {
    let p = rewrite("bad-shape.gguf", |_, t| {
        let q = t.iter_mut().find(|x| x.0 == "blk.0.attn_q.weight").unwrap();
        q.2 = vec![256, 128];
        q.3.truncate(256 * 128 * 4);
    });
    fails_with(&run_model(&p), &["blk.0.attn_q.weight", "[256, 128]", "expected [256, 256]"]);
}

#[test]
fn wrong_tensor_type() {
    let p = rewrite("bad-type.gguf", |_, t| {
        let n = t.iter_mut().find(|x| x.0 == "blk.2.attn_norm.weight").unwrap();
        n.1 = GgmlType::F16;
        n.3.truncate(256 * 2);
    });
    fails_with(&run_model(&p), &["blk.2.attn_norm.weight", "F16", "expected F32"]);
    let p = rewrite("int-weights.gguf", |_, t| {
        let n = t.iter_mut().find(|x| x.0 == "blk.0.ffn_gate.weight").unwrap();
        n.1 = GgmlType::I32;
    });
    fails_with(&run_model(&p), &["blk.0.ffn_gate.weight", "I32"]);
}

#[test]
fn wrong_architecture_and_hyperparameters() {
    let p = rewrite("llama.gguf", |m, _| set_key(m, "general.architecture", Value::String("llama".into())));
    fails_with(&run_model(&p), &["llama.gguf", "architecture is \"llama\""]);
    let p = rewrite("no-layers.gguf", |m, _| m.retain(|(k, _)| k != "qwen2.block_count"));
    fails_with(&run_model(&p), &["qwen2.block_count", "missing"]);
    let p = rewrite("heads3.gguf", |m, _| set_key(m, "qwen2.attention.head_count", Value::U32(3)));
    fails_with(&run_model(&p), &["qwen2.attention.head_count", "3"]);
    let p = rewrite("heads0.gguf", |m, _| set_key(m, "qwen2.attention.head_count", Value::U32(0)));
    fails_with(&run_model(&p), &["qwen2.attention.head_count", "between 1"]);
    let p = rewrite("eps.gguf", |m, _| set_key(m, "qwen2.attention.layer_norm_rms_epsilon", Value::String("tiny".into())));
    fails_with(&run_model(&p), &["layer_norm_rms_epsilon", "string", "float"]);
    let p = rewrite("kvheads.gguf", |m, _| set_key(m, "qwen2.attention.head_count_kv", Value::U32(3)));
    fails_with(&run_model(&p), &["head_count_kv", "divide"]);
}

#[test]
fn broken_tokenizer_data() {
    let p = rewrite("no-tokens.gguf", |m, _| m.retain(|(k, _)| k != "tokenizer.ggml.tokens"));
    fails_with(&run_model(&p), &["no-tokens.gguf", "tokenizer.ggml.tokens", "missing"]);
    let p = rewrite("spm.gguf", |m, _| set_key(m, "tokenizer.ggml.model", Value::String("llama".into())));
    fails_with(&run_model(&p), &["tokenizer model \"llama\""]);
    let p = rewrite("bad-eos.gguf", |m, _| set_key(m, "tokenizer.ggml.eos_token_id", Value::U32(1 << 30)));
    fails_with(&run_model(&p), &["eos_token_id", "outside the vocabulary"]);
    let p = rewrite("big-vocab.gguf", |m, _| {
        let (_, v) = m.iter_mut().find(|(k, _)| k == "tokenizer.ggml.tokens").unwrap();
        if let Value::Array(dycoke::gguf::Array::String(t)) = v {
            t.extend((0..5000).map(|i| format!("extra{i}")));
        }
        m.retain(|(k, _)| k != "tokenizer.ggml.token_type");
    });
    fails_with(&run_model(&p), &["embedding matrix"]);
}

// ---- parameters ---------------------------------------------------------------------------------

#[test]
fn prompt_longer_than_the_context() {
    let m = common::random_model(GgmlType::F32);
    let long = "many words in a long prompt ".repeat(100);
    let out = dycoke(&["run", "-m", m.to_str().unwrap(), "-p", &long, "-c", "64"]);
    fails_with(&out, &["positions but the context holds 64"]);
}

#[test]
fn invalid_parameters() {
    let m = common::random_model(GgmlType::F32);
    let m = m.to_str().unwrap();
    let cases: &[(&[&str], &[&str])] = &[
        (&["--temp", "-1"], &["temperature"]),
        (&["--top-p", "0"], &["top-p"]),
        (&["--top-p", "1.5"], &["top-p"]),
        (&["--min-p", "2"], &["min-p"]),
        (&["--repeat-penalty", "0"], &["repeat-penalty"]),
        (&["-c", "0"], &["context size"]),
        (&["-c", "100000"], &["context size", "4096"]),
        (&["-t", "0"], &["threads"]),
        (&["-n", "0"], &["n-predict"]),
        (&["-b", "0"], &["batch size"]),
        (&["--cache-type", "q3"], &["cache type"]),
        (&["--device", "cuda9"], &["cuda9", "not available"]),
        (&["-c", "abc"], &["invalid value"]),
    ];
    for (extra, needles) in cases {
        let mut args = vec!["run", "-m", m, "-p", "hi"];
        args.extend_from_slice(extra);
        fails_with(&dycoke(&args), needles);
    }
}

#[test]
fn missing_or_unreadable_model_files() {
    fails_with(&dycoke(&["run", "-m", "/nonexistent/model.gguf", "-p", "hi"]), &["/nonexistent/model.gguf", "No such file"]);
    let dir = common::scratch_dir().to_str().unwrap().to_string();
    fails_with(&dycoke(&["run", "-m", &dir, "-p", "hi"]), &[&dir]);
    fails_with(&dycoke(&["info", "/nonexistent.gguf"]), &["/nonexistent.gguf"]);
    fails_with(&dycoke(&["run", "-m", "x.gguf"]), &["--prompt"]);
}

// ---- media and the vision model -----------------------------------------------------------------

fn tiny() -> (String, String) {
    let (llm, mmproj) = common::llava::converted(GgmlType::F32);
    (llm.to_str().unwrap().to_string(), mmproj.to_str().unwrap().to_string())
}

fn fixture_video(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/videos").join(name)).unwrap()
}

fn ask_about(flag: &str, path: &Path, extra: &[&str]) -> Output {
    ask(flag, path, "What is this?", extra)
}

fn ask(flag: &str, path: &Path, prompt: &str, extra: &[&str]) -> Output {
    // 8 frames keep the tiny model's prompt inside its 4096 positions.
    let frames: &[&str] = if extra.iter().any(|a| a.starts_with("--f")) { &[] } else { &["--frames", "8"] };
    let (llm, mmproj) = tiny();
    let mut args = vec!["run", "-m", &llm, "--mmproj", &mmproj, flag, path.to_str().unwrap(), "-p", prompt, "-n", "1"];
    args.extend_from_slice(frames);
    args.extend_from_slice(extra);
    dycoke(&args)
}

/// CRC-32 (ISO-HDLC, as PNG uses) of `bytes`.
fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in bytes {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    !c
}

#[test]
fn broken_videos() {
    let good = fixture_video("h264_main.mp4");
    let p = scratch("truncated.mp4");
    std::fs::write(&p, &good[..good.len() / 3]).unwrap();
    fails_with(&ask_about("--video", &p, &[]), &["truncated.mp4"]);
    let mut garbled = good.clone();
    for b in garbled.iter_mut().take(64) {
        *b = 0xA5;
    }
    let p = scratch("garbled.mp4");
    std::fs::write(&p, &garbled).unwrap();
    fails_with(&ask_about("--video", &p, &[]), &["garbled.mp4", "cannot read it as a video"]);
    let p = scratch("empty.mp4");
    std::fs::write(&p, b"").unwrap();
    fails_with(&ask_about("--video", &p, &[]), &["empty.mp4", "empty"]);
    let p = scratch("text.mp4");
    std::fs::write(&p, b"this is not a video, just some text\n".repeat(50)).unwrap();
    fails_with(&ask_about("--video", &p, &[]), &["text.mp4"]);
    fails_with(&ask_about("--video", Path::new("/nonexistent/clip.mp4"), &[]), &["/nonexistent/clip.mp4"]);
}

#[test]
fn unsupported_codec() {
    // A Matroska file whose CodecID no FFmpeg knows: a valid container, an unreadable video.
    let mut bytes = fixture_video("hevc_main10.mkv");
    let at = bytes.windows(16).position(|w| w == b"V_MPEGH/ISO/HEVC").expect("the HEVC codec id");
    bytes[at..at + 16].copy_from_slice(b"V_UNKNOWN/CODEC!");
    let p = scratch("unknown-codec.mkv");
    std::fs::write(&p, &bytes).unwrap();
    fails_with(&ask_about("--video", &p, &[]), &["unknown-codec.mkv", "codec"]);
}

#[test]
fn videos_without_frames() {
    let dir = scratch("no-frames");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("notes.txt"), b"no images here").unwrap();
    fails_with(&ask_about("--video", &dir, &[]), &["no-frames", "no PNG or JPEG frames"]);
    // A container whose video stream holds no samples.
    let good = fixture_video("h264_baseline.mp4");
    let p = scratch("no-samples.mp4");
    let moov = good.windows(4).position(|w| w == b"moov").unwrap() - 4;
    let mdat = good.windows(4).position(|w| w == b"mdat").unwrap() - 4;
    let mut stripped = good[..mdat.min(moov)].to_vec();
    stripped.extend_from_slice(&good[moov..]);
    std::fs::write(&p, &stripped).unwrap();
    fails_with(&ask_about("--video", &p, &[]), &["no-samples.mp4"]);
}

#[test]
fn broken_images() {
    let p = scratch("notes.png");
    std::fs::write(&p, b"just text in a .png file").unwrap();
    fails_with(&ask_about("--image", &p, &[]), &["notes.png", "not a PNG or JPEG image"]);
    let good = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llava-tiny/image.png")).unwrap();
    let p = scratch("cut.png");
    std::fs::write(&p, &good[..good.len() / 2]).unwrap();
    fails_with(&ask_about("--image", &p, &[]), &["cut.png", "corrupt"]);
    // A PNG whose header claims 100000 x 100000 pixels: refused before anything is allocated.
    let chunk = |kind: &[u8], data: &[u8]| {
        let mut c = (data.len() as u32).to_be_bytes().to_vec();
        c.extend_from_slice(kind);
        c.extend_from_slice(data);
        c.extend_from_slice(&crc32(&c[4..]).to_be_bytes());
        c
    };
    let mut ihdr = 100_000u32.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut huge = b"\x89PNG\r\n\x1a\n".to_vec();
    huge.extend(chunk(b"IHDR", &ihdr));
    huge.extend(chunk(b"IDAT", &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]));
    huge.extend(chunk(b"IEND", &[]));
    let p = scratch("huge.png");
    std::fs::write(&p, &huge).unwrap();
    fails_with(&ask_about("--image", &p, &[]), &["huge.png", "larger than the limit"]);
}

#[test]
fn vision_model_mismatches() {
    let (llm, mmproj) = tiny();
    let video = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llava-tiny/clip.mp4");
    let video = video.to_str().unwrap();
    // The tiny mmproj feeds 64-wide embeddings; the random Qwen2 is 256 wide.
    let other = common::random_model(GgmlType::F32);
    fails_with(&dycoke(&["run", "-m", other.to_str().unwrap(), "--mmproj", &mmproj, "--video", video, "-p", "x"]), &["64", "256", "mmproj"]);
    // An LLM file given as the mmproj.
    fails_with(&dycoke(&["run", "-m", &llm, "--mmproj", &llm, "--video", video, "-p", "x"]), &["architecture is \"qwen2\"", "clip"]);
    // Media without a vision model.
    fails_with(&dycoke(&["run", "-m", &llm, "--video", video, "-p", "x"]), &["--mmproj"]);
}

#[test]
fn prompts_and_media_that_do_not_match() {
    let video = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llava-tiny/clip.mp4");
    fails_with(&ask("--video", &video, "Compare <video> with <video>.", &[]), &["2 <video>", "1 videos"]);
    let image = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llava-tiny/image.png");
    fails_with(&ask("--image", &image, "What is in <video>?", &[]), &["placeholders"]);
}

#[test]
fn invalid_sampling() {
    let video = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llava-tiny/clip.mp4");
    fails_with(&ask_about("--video", &video, &["--frames", "0"]), &["frames"]);
    fails_with(&ask_about("--video", &video, &["--frames", "500"]), &["frames", "cap"]);
    fails_with(&ask_about("--video", &video, &["--fps", "-2"]), &["fps"]);
    fails_with(&ask_about("--video", &video, &["--max-frames", "0"]), &["max-frames"]);
}

#[test]
fn invalid_compression_settings() {
    let video = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llava-tiny/clip.mp4");
    for k in ["1", "1.5", "-0.2", "NaN", "inf"] {
        fails_with(&ask_about("--video", &video, &["--ttm-k", k]), &["--ttm-k", "[0, 1)"]);
    }
    for p in ["1", "-0.01", "7"] {
        fails_with(&ask_about("--video", &video, &["--dp-ratio", p]), &["--dp-ratio", "[0, 1)"]);
    }
    // The fixture model has 2 layers: L must leave layer 0 full and stay below 2.
    fails_with(&ask_about("--video", &video, &["--dp-layer", "0"]), &["--dp-layer", "2 layers"]);
    fails_with(&ask_about("--video", &video, &["--dp-layer", "2"]), &["--dp-layer", "1..=1"]);
    fails_with(&ask_about("--video", &video, &["--dp-layer", "-1"]), &["--dp-layer"]);
    fails_with(&ask_about("--video", &video, &["--compress", "fastv"]), &["unknown compression", "dycoke or none"]);
    fails_with(&ask_about("--video", &video, &["--compress", "none", "--dp-ratio", "0.5"]), &["--dp-ratio", "--compress none"]);
    fails_with(&ask_about("--video", &video, &["--ttm-k", "0.5", "--no-ttm"]), &["--ttm-k", "--no-ttm"]);
    // Compression asked for with nothing to compress.
    let image = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llava-tiny/image.png");
    fails_with(&ask_about("--image", &image, &["--ttm-k", "0.5"]), &["--ttm-k", "no --video"]);
    let (llm, _) = tiny();
    fails_with(&dycoke(&["run", "-m", &llm, "-p", "hi", "--compress", "dycoke"]), &["--compress dycoke", "no --video"]);
    fails_with(&dycoke(&["chat", "-m", &llm, "--dp-layer", "1"]), &["--dp-layer", "no --video"]);
}

// ---- batch requests and the embedding cache -----------------------------------------------------

#[test]
fn batch_inputs_that_cannot_run() {
    let (llm, mmproj) = tiny();
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let write = |name: &str, bytes: &[u8]| {
        std::fs::write(dir.path().join(name), bytes).unwrap();
        path(name)
    };
    let ok_input = write("ok.jsonl", b"{\"id\": \"a\", \"question\": \"Why?\"}\n");
    let batch = |input: &str, output: &str, extra: &[&str]| {
        let mut args = vec!["batch", "-m", &llm, "--mmproj", &mmproj, "--input", input, "--output", output, "-n", "1"];
        args.extend_from_slice(extra);
        dycoke(&args)
    };
    let missing = path("missing.jsonl");
    fails_with(&batch(&missing, &path("o1.jsonl"), &[]), &[&missing, "No such file"]);
    let not_utf8 = write("latin1.jsonl", b"{\"id\": \"caf\xe9\"}\n");
    fails_with(&batch(&not_utf8, &path("o2.jsonl"), &[]), &[&not_utf8, "UTF-8"]);
    let dup = write("dup.jsonl", b"{\"id\": \"a\", \"question\": \"x\"}\n{\"id\": \"a\", \"question\": \"y\"}\n");
    fails_with(&batch(&dup, &path("o3.jsonl"), &[]), &["\"a\"", "twice", "line 2"]);
    let garbage = write("garbage-out.jsonl", b"this is not a result\n");
    fails_with(&batch(&ok_input, &garbage, &[]), &[&garbage, "line 1", "not a result record"]);
    let no_id = write("noid-out.jsonl", b"{\"answer\": \"x\"}\n");
    fails_with(&batch(&ok_input, &no_id, &[]), &[&no_id, "has no id"]);
    fails_with(&batch(&ok_input, &path("o4.jsonl"), &["--shard", "3/3"]), &["shard", "3/3"]);
    fails_with(&batch(&ok_input, &path("o5.jsonl"), &["--shard", "1-2"]), &["shard", "I/N"]);
    fails_with(&batch(&ok_input, &path("o6.jsonl"), &["--mc", "vote"]), &["--mc", "vote"]);
    fails_with(&batch(&ok_input, dir.path().to_str().unwrap(), &[]), &[dir.path().to_str().unwrap()]);
    let video_req = write("video.jsonl", b"{\"id\": \"v\", \"video\": \"clip.mp4\", \"question\": \"Why?\"}\n");
    let out = dycoke(&["batch", "-m", &llm, "--input", &video_req, "--output", &path("o7.jsonl")]);
    fails_with(&out, &["--mmproj"]);
}

#[test]
fn embedding_cache_folders_that_cannot_be_used() {
    let (llm, mmproj) = tiny();
    let video = common::llava::dir().join("clip.mp4");
    let file = scratch("a-file-not-a-folder");
    std::fs::write(&file, b"x").unwrap();
    let inside = file.join("cache");
    for dir in [&file, &inside] {
        let out = dycoke(&["run", "-m", &llm, "--mmproj", &mmproj, "--video", video.to_str().unwrap(), "--frames", "2", "-p", "hi", "-n", "1",
            "--cache-dir", dir.to_str().unwrap()]);
        fails_with(&out, &[file.to_str().unwrap()]);
    }
}

#[test]
fn chat_arguments_that_cannot_work() {
    let (llm, mmproj) = tiny();
    fails_with(&dycoke(&["chat", "-m", &llm, "--video", "clip.mp4"]), &["--mmproj"]);
    fails_with(&dycoke(&["chat", "-m", &llm, "--ttm-k", "0.5"]), &["--ttm-k", "no --video"]);
    fails_with(&dycoke(&["chat", "-m", &llm, "--mmproj", &mmproj, "--video", "/no/such/clip.mp4"]), &["/no/such/clip.mp4"]);
    fails_with(&dycoke(&["chat", "-m", &llm, "--mmproj", &mmproj, "--frames", "0"]), &["frames"]);
}
