//! The bodies of the fuzz targets, shared by the targets (fuzz_targets/*.rs) and by
//! tests/fuzz_regressions.rs, which replays the seeds and every past finding through them.
//! Each takes arbitrary bytes and must return without a panic, an abort or a hang.

#![allow(dead_code)] // each fuzz target uses one body

use dycoke::batch::{answer_index, parse_choice, parse_line, resume, Shard};
use dycoke::gguf::{parse, GgufFile};
use dycoke::media::{load_video, FrameSelection, Sampling};
use dycoke::tokenizer::template::ChatTemplate;
use dycoke::tokenizer::{ChatMessage, StreamDecoder, Tokenizer};
use dycoke::{Model, ModelOptions};
use std::path::Path;
use std::sync::OnceLock;

/// The GGUF reader and model loading (LLM and mmproj) on arbitrary bytes: an error, never a
/// panic or an abort.
pub fn gguf(data: &[u8]) {
    if parse(data).is_err() {
        return;
    }
    // Parsed: now the whole load path, as a file (the reader maps files).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fuzz.gguf");
    std::fs::write(&path, data).unwrap();
    if let Ok(file) = GgufFile::open(&path) {
        for (key, _) in file.metadata() {
            let _ = file.get_str(key);
            let _ = file.get_int::<i64>(key);
            let _ = file.get_float(key);
            let _ = file.get_array(key);
        }
    }
    let _ = Model::load(&ModelOptions { repack: false, ..ModelOptions::new(&path) });
    let _ = dycoke::vision::VisionModel::load(&path, dycoke::weights::Placement::cpu());
}

/// Video demuxing and decoding (FFmpeg through our wrapper) on arbitrary bytes.
pub fn video(data: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fuzz.mp4");
    std::fs::write(&path, data).unwrap();
    let sampling = Sampling::new(FrameSelection::Count(4), 8).unwrap();
    let _ = dycoke::media::video::probe(&path);
    let _ = load_video(&path, &sampling, 1, &mut |_, _| true);
}

/// Image loading (PNG, JPEG, EXIF orientation) and LLaVA-OneVision's preprocessing on arbitrary bytes.
pub fn image(data: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fuzz.png");
    std::fs::write(&path, data).unwrap();
    if let Ok(frame) = dycoke::media::load_image(&path) {
        // The geometry the vision path derives from any decodable image.
        let pinpoints: Vec<(u32, u32)> = (1..=3).flat_map(|a| (1..=3).map(move |b| (a * 384, b * 384))).collect();
        let _ = dycoke::vision::preprocess::anyres_grid(&frame, &pinpoints, 384);
    }
}

fn shared_tokenizer() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let path = dir.join("vocab.gguf");
        let spec = gguf_tools::random::Qwen2Spec { n_embd: 32, n_layer: 1, n_head: 2, n_head_kv: 1, n_ff: 64, ..Default::default() };
        gguf_tools::random::write_qwen2(&path, &spec, &gguf_tools::vocab::Vocab::builtin(1000, &["<video>", "<image>"])).unwrap();
        Tokenizer::from_gguf(&dycoke::gguf::GgufFile::open(&path).unwrap()).unwrap()
    })
}

/// The tokenizer (encode with and without special tokens, decode, streaming) and chat-template
/// rendering, on arbitrary text and templates.
pub fn tokenizer(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    // The first line is a chat template, the rest a message.
    let (template, message) = text.split_once('\n').unwrap_or((&text, "hello"));
    let t = shared_tokenizer();
    for special in [false, true] {
        let ids = t.encode(message, false, special);
        let back = t.decode(&ids, special);
        if !special {
            assert_eq!(back, message, "text -> tokens -> text is lossless");
        }
        let mut stream = StreamDecoder::new();
        let mut streamed = String::new();
        for &id in &ids {
            streamed.push_str(&stream.push(&t.token_bytes(id, special)));
        }
        streamed.push_str(&stream.finish());
    }
    let messages = [ChatMessage::system("sys"), ChatMessage::user(message.to_string())];
    let _ = ChatTemplate::from_source(template).render(&messages, true, "<s>", "</s>");
    let _ = t.apply_chat_template(&messages, true);
}

/// The batch request parser, the resume reader and multiple-choice parsing on arbitrary lines.
pub fn batch_jsonl(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for (i, line) in text.lines().enumerate() {
        let item = parse_line(i + 1, line, Path::new("/data"));
        if let Ok(r) = &item.request {
            assert_eq!(r.id, item.id);
            if let Some(a) = &r.answer {
                let _ = answer_index(a, &r.options);
            }
            let _ = parse_choice(&r.question, &r.options);
        }
        let _ = Shard::parse(line);
    }
    // The same bytes as a results file being resumed.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.jsonl");
    std::fs::write(&out, data).unwrap();
    if let Ok(ids) = resume(&out) {
        let kept = std::fs::read(&out).unwrap();
        assert!(kept.is_empty() || kept.ends_with(b"\n"), "resume leaves whole lines");
        assert!(ids.len() <= kept.iter().filter(|&&b| b == b'\n').count());
    }
}

