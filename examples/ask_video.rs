//! Ask questions about a video with the library: load once, stream the answers, follow the
//! progress, read the DyCoke counters.
//!
//!   cargo run --release --example ask_video -- LLM.gguf MMPROJ.gguf VIDEO "What happens?" ["And then?" ...]

use std::io::Write;

use dycoke::encoder::Layout;
use dycoke::{Conversation, ConversationOptions, GenerateParams, Model, ModelOptions, Phase};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [llm, mmproj, video, questions @ ..] = args.as_slice() else {
        return Err("usage: ask_video LLM.gguf MMPROJ.gguf VIDEO QUESTION...".into());
    };
    // One model, shared by every conversation (Arc); DyCoke is on by default for video.
    let model = Model::load(&ModelOptions { mmproj: Some(mmproj.into()), ..ModelOptions::new(llm) })?;
    let mut chat = Conversation::new(model, &ConversationOptions::default())?;

    // Progress of the slow steps; returning false would stop the work.
    let mut progress = |phase: Phase, done: usize, total: usize| {
        eprint!("\r{} {done}/{total}   ", phase.label());
        true
    };
    let media = chat.add_video(video.as_ref(), &mut progress)?;
    if let Layout::Video(v) = media.layout() {
        eprintln!("\n{} frames, {} tokens before TTM, {} after", v.frames, v.tokens_before_ttm(), v.tokens());
    }

    for q in questions {
        println!("> {q}");
        // Each later question reuses the cache: the video is prefilled once.
        let answer = chat.ask(q, &GenerateParams::default(), &mut |piece| {
            print!("{piece}");
            std::io::stdout().flush().is_ok() // false would stop the answer
        }, &mut progress)?;
        println!("\n({} tokens; prompt: {} reused, {} new)", answer.tokens.len(), answer.prompt.reused, answer.prompt.evaluated);
    }
    eprintln!("DyCoke: {}", chat.stats().to_json());
    Ok(())
}
