//! The product layer: multi-turn conversations over a video reuse the cache, the embedding cache
//! skips the vision model and never trusts a corrupt entry, and four sessions on one model in four
//! threads (each with its own video) answer as they do one after the other.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use dycoke::encoder::cache::EmbeddingCache;
use dycoke::ggml::GgmlType;
use dycoke::media::Sampling;
use dycoke::{Answer, Conversation, ConversationOptions, GenerateParams, Model, ModelOptions, SessionOptions};

fn model() -> Arc<Model> {
    let (llm, mmproj) = common::llava::converted(GgmlType::F32);
    Model::load(&ModelOptions { mmproj: Some(mmproj), ..ModelOptions::new(llm) }).unwrap()
}

fn video() -> PathBuf {
    common::llava::dir().join("clip.mp4")
}

fn sampling() -> Sampling {
    Sampling::frames(8).unwrap()
}

fn conversation(model: &Arc<Model>, cache: Option<&Path>) -> Conversation {
    let session = SessionOptions { n_ctx: 2048, n_threads: 1, ..SessionOptions::default() };
    let mut c = Conversation::new(model.clone(), &ConversationOptions { session, sampling: sampling(), ..ConversationOptions::default() }).unwrap();
    c.set_embedding_cache(cache.map(|d| EmbeddingCache::open(d).unwrap()));
    c
}

fn params() -> GenerateParams {
    GenerateParams { max_tokens: 6, ignore_eos: true, ..GenerateParams::default() }
}

fn ask(c: &mut Conversation, q: &str) -> Answer {
    c.ask(q, &params(), &mut |_| true, &mut dycoke::progress::ignore).unwrap()
}

#[test]
fn later_turns_do_not_prefill_the_video_again() {
    let model = model();
    let mut c = conversation(&model, None);
    c.add_video(&video(), &mut dycoke::progress::ignore).unwrap();
    let video_rows = c.media()[0].n_rows();

    let first = ask(&mut c, "What happens in this video?");
    assert_eq!(first.prompt.reused, 0);
    assert!(first.prompt.evaluated > video_rows);
    for q in ["What colour is it?", "And after that?"] {
        let turn = ask(&mut c, q);
        // Only this turn's words and the previous answer's end: the video is reused.
        assert!(turn.prompt.reused > video_rows, "{q}: reused {}", turn.prompt.reused);
        assert!(turn.prompt.evaluated < 40, "{q}: evaluated {}", turn.prompt.evaluated);
        assert_eq!(turn.prompt.reused + turn.prompt.evaluated, turn.prompt.total);
    }
    assert_eq!(c.encoder_counters().vision_encodes, 1);

    // The third turn's answer equals evaluating the whole conversation at once, with no reuse.
    let messages = &c.messages()[..c.messages().len() - 1];
    let pieces = dycoke::prompt::tokenize_with_media(model.tokenizer(), messages, true).unwrap();
    let mut fresh = conversation(&model, None);
    let stats = fresh.evaluate(&pieces, &[&c.media()[0]], &mut dycoke::progress::ignore).unwrap();
    assert_eq!(stats.reused, 0);
    let again = fresh.answer(&params(), stats, &mut |_| true).unwrap();
    assert_eq!(again.text, c.messages().last().unwrap().content);
}

#[test]
fn the_embedding_cache_skips_the_vision_model_and_rebuilds_corrupt_entries() {
    let model = model();
    let dir = tempfile::tempdir().unwrap();
    let question = "What happens in this video?";

    let mut uncached = conversation(&model, None);
    uncached.add_video(&video(), &mut dycoke::progress::ignore).unwrap();
    let reference = ask(&mut uncached, question);

    let mut first = conversation(&model, Some(dir.path()));
    first.add_video(&video(), &mut dycoke::progress::ignore).unwrap();
    assert_eq!(first.encoder_counters().vision_encodes, 1);
    assert_eq!(ask(&mut first, question).tokens, reference.tokens);

    // A second question on the same video: no vision encode, the same answer.
    let mut second = conversation(&model, Some(dir.path()));
    let m = second.add_video(&video(), &mut dycoke::progress::ignore).unwrap().clone();
    let counters = second.encoder_counters();
    assert_eq!((counters.vision_encodes, counters.cache_hits), (0, 1));
    assert_eq!(m.rows(), uncached.media()[0].rows());
    assert_eq!(ask(&mut second, question).tokens, reference.tokens);

    // Another sampling is another entry.
    let mut other = conversation(&model, Some(dir.path()));
    other.set_sampling(Sampling::frames(4).unwrap());
    other.add_video(&video(), &mut dycoke::progress::ignore).unwrap();
    assert_eq!(other.encoder_counters().vision_encodes, 1);

    // Corrupt every entry: each is detected, rebuilt, and the answer is still the same.
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x01;
        std::fs::write(&path, bytes).unwrap();
    }
    let mut third = conversation(&model, Some(dir.path()));
    let m = third.add_video(&video(), &mut dycoke::progress::ignore).unwrap().clone();
    let counters = third.encoder_counters();
    assert_eq!((counters.vision_encodes, counters.cache_hits, counters.cache_rebuilds), (1, 0, 1));
    assert!(m.note.as_deref().unwrap_or_default().contains("checksum"), "{:?}", m.note);
    assert_eq!(ask(&mut third, question).tokens, reference.tokens);
    // ... and the rebuilt entry is good again.
    let mut fourth = conversation(&model, Some(dir.path()));
    fourth.add_video(&video(), &mut dycoke::progress::ignore).unwrap();
    assert_eq!(fourth.encoder_counters().cache_hits, 1);
}

#[test]
fn four_sessions_in_four_threads_answer_as_one_after_the_other() {
    let model = model();
    let videos = root_videos();
    let run = |(video, question): &(PathBuf, &str)| -> (Vec<u32>, Vec<f32>) {
        let mut c = conversation(&model, None);
        c.add_video(video, &mut dycoke::progress::ignore).unwrap();
        let params = GenerateParams { max_tokens: 8, ignore_eos: true, sampler: dycoke::SamplerParams { temperature: 0.8, seed: Some(7), ..Default::default() } };
        let tokens = c.ask(question, &params, &mut |_| true, &mut dycoke::progress::ignore).unwrap().tokens;
        (tokens, c.session().logits().to_vec())
    };
    let jobs: Vec<(PathBuf, &str)> = videos.into_iter().zip(["What happens?", "Describe the colours.", "Is anyone there?", "How does it end?"]).collect();
    let serial: Vec<_> = jobs.iter().map(run).collect();
    let parallel: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = jobs.iter().map(|job| s.spawn(|| run(job))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // The same tokens and bit-identical logits: nothing leaks between sessions.
    assert!(serial == parallel, "threads changed the results");
    assert!(serial.windows(2).all(|w| w[0].0 != w[1].0), "different videos and questions, different answers");
}

/// Four different videos: the fixture clip and three of the decoding fixtures.
fn root_videos() -> Vec<PathBuf> {
    let videos = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/videos");
    vec![video(), videos.join("h264_main.mp4"), videos.join("hevc.mp4"), videos.join("vp9.webm")]
}
