//! A long chat: 200 turns mixing text and videos on the tiny model. Memory stays flat apart from
//! the KV cache (allocated once for the whole context), no file descriptor leaks, and a full
//! context is handled as documented: the turn is refused with ContextOverflow and the
//! conversation is intact; `reset_turns` (chat's /reset), then `clear` (/clear) make room.
//!
//! `cargo test --release --test long_session -- --nocapture` prints the RSS and descriptor samples.

mod common;

use dycoke::ggml::GgmlType;
use dycoke::media::Sampling;
use dycoke::{Conversation, ConversationOptions, Error, GenerateParams, Model, ModelOptions, SessionOptions};

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn two_hundred_turns_keep_memory_and_descriptors_flat() {
    let (llm, mmproj) = common::llava::converted(GgmlType::F32);
    let model = Model::load(&ModelOptions { mmproj: Some(mmproj), ..ModelOptions::new(llm) }).unwrap();
    let session = SessionOptions { n_ctx: 1024, n_threads: 2, ..SessionOptions::default() };
    let mut chat = Conversation::new(model, &ConversationOptions { session, ..ConversationOptions::default() }).unwrap();
    chat.set_sampling(Sampling::frames(4).unwrap());
    let video = common::llava::dir().join("clip.mp4");
    let params = GenerateParams { max_tokens: 8, ignore_eos: true, ..GenerateParams::default() };

    let (mut overflows, mut resets, mut clears, mut videos) = (0, 0, 0, 0);
    let mut samples = Vec::new();
    for turn in 0..200 {
        if turn % 10 == 0 {
            chat.add_video(&video, &mut dycoke::progress::ignore).unwrap();
            videos += 1;
        }
        let question = format!("Question number {turn}: what do you see now?");
        let mut attempt = 0;
        loop {
            let before = chat.messages().len();
            match chat.ask(&question, &params, &mut |_| true, &mut dycoke::progress::ignore) {
                Ok(_) => break,
                Err(Error::ContextOverflow { .. }) => {
                    overflows += 1;
                    assert_eq!(chat.messages().len(), before, "a refused turn leaves the conversation as it was");
                    attempt += 1;
                    if attempt == 1 {
                        chat.reset_turns();
                        resets += 1;
                    } else {
                        assert_eq!(attempt, 2, "after /clear a question always fits");
                        chat.clear();
                        clears += 1;
                    }
                }
                Err(e) => panic!("turn {turn}: {e}"),
            }
        }
        if turn % 20 == 19 {
            samples.push((turn + 1, rss_kib(), open_fds()));
        }
    }
    eprintln!("{videos} videos, {overflows} refused turns, {resets} resets, {clears} clears");
    for (turn, rss, fds) in &samples {
        eprintln!("after turn {turn:3}: RSS {:7.1} MiB, {fds} open descriptors", *rss as f64 / 1024.0);
    }
    assert!(overflows > 0 && resets > 0, "the context filled up and was handled");
    // From the second sample on (caches and graph buffers are allocated by then), flat.
    let (_, rss0, fds0) = samples[1];
    for &(turn, rss, fds) in &samples[2..] {
        assert_eq!(fds, fds0, "descriptors grew by turn {turn}");
        assert!(rss < rss0 + 16 * 1024, "RSS grew from {rss0} KiB to {rss} KiB by turn {turn}");
    }
}
