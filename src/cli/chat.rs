//! `dycoke chat`: an interactive conversation over videos and images. The cache keeps the
//! conversation, media included, so each turn only evaluates what is new.

use std::cell::RefCell;
use std::io::Write;
use std::path::Path;

use clap::Args;
use dycoke::{Answer, CancelToken, Conversation, Error, StopReason};
use rustyline::error::ReadlineError;

use super::common::{rate, ContextArgs, ModelArgs, PhaseBars, SamplingArgs};
use super::compress::CompressArgs;
use super::describe_error;
use super::media::{add_one, describe, MediaArgs};

#[derive(Args)]
pub struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    context: ContextArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    media: MediaArgs,
    #[command(flatten)]
    compress: CompressArgs,
    /// System prompt [default: "You are a helpful assistant." with --mmproj, the chat template's own without].
    #[arg(long, value_name = "TEXT")]
    system: Option<String>,
}

const HELP: &str = "commands:
  /video PATH   add a video for the next question
  /image PATH   add an image for the next question
  /reset        forget the questions and answers (the media stay for the next question)
  /clear        forget everything, media included
  /stats        context use, speeds of the last answer, DyCoke and cache counters
  /help         this list
  Ctrl-C        stop the current answer;  Ctrl-D or /quit   leave";

pub fn run(a: ChatArgs) -> dycoke::Result<()> {
    let gen = a.sampling.params()?;
    let model_opts = a.model.options()?;
    let vision = model_opts.mmproj.is_some();
    if !a.media.is_empty() && !vision {
        return Err(Error::NoVisionModel);
    }
    // Videos can come later with /video: a vision model makes this a video chat.
    let compression = a.compress.compression(vision)?;
    let sampling = a.media.sampling()?;
    let cache = a.media.cache()?;
    let mut options = a.context.conversation(compression, sampling, a.system.clone())?;
    options.encoder.temporal_reuse = a.media.frames.temporal_reuse()?;
    let model = super::common::load_model(&model_opts)?;
    let mut chat = Conversation::new(model.clone(), &options)?;
    chat.set_embedding_cache(cache);
    let cancel = chat.session().cancel_token();
    for v in &a.media.videos {
        add_media(&mut chat, v, true, &cancel)?;
    }
    for i in &a.media.images {
        add_media(&mut chat, i, false, &cancel)?;
    }
    eprintln!(
        "dycoke chat with {} ({} positions of context). /help for commands.",
        model.path().display(),
        chat.session().n_ctx()
    );

    let mut editor = rustyline::DefaultEditor::new().map_err(|e| Error::invalid("terminal", e.to_string()))?;
    // Ctrl-C while an answer streams stops it; at the prompt the line editor reads it as a key.
    // This must come after the editor: on a terminal rustyline installs a SIGINT handler of its own
    // when it is created (kept until it is dropped), which would otherwise replace ours.
    let on_interrupt = cancel.clone();
    if let Err(e) = ctrlc::set_handler(move || on_interrupt.cancel()) {
        eprintln!("dycoke: warning: Ctrl-C will end the chat instead of stopping an answer ({e})");
    }
    let mut last: Option<Answer> = None;
    loop {
        let line = match editor.readline("> ") {
            Ok(l) => l,
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => break,
            Err(e) => return Err(Error::invalid("terminal", e.to_string())),
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(line);
        if let Some(command) = line.strip_prefix('/') {
            let (name, arg) = command.split_once(char::is_whitespace).map_or((command, ""), |(n, a)| (n, a.trim()));
            match name {
                "quit" | "exit" => break,
                "help" => eprintln!("{HELP}"),
                "reset" => {
                    chat.reset_turns();
                    eprintln!("(conversation forgotten)");
                }
                "clear" => {
                    chat.clear();
                    eprintln!("(conversation and media forgotten)");
                }
                "stats" => print_stats(&chat, last.as_ref()),
                "video" | "image" if !vision => eprintln!("/{name} needs a vision model: restart with --mmproj FILE.gguf"),
                "video" | "image" if arg.is_empty() => eprintln!("/{name} needs a path"),
                "video" | "image" => {
                    // Ctrl-C stops the encoding between chunks of frames.
                    cancel.reset();
                    match add_media(&mut chat, Path::new(arg), name == "video", &cancel) {
                        Ok(()) => {}
                        Err(Error::Cancelled) => eprintln!("(stopped; nothing was added)"),
                        Err(e) => eprintln!("dycoke: {}", describe_error(&e)),
                    }
                }
                _ => eprintln!("unknown command {line}; /help lists them"),
            }
            continue;
        }
        // The prompt's bar goes before the answer's first piece: cleared later, it would erase
        // the line the answer is being written on.
        let bars = RefCell::new(PhaseBars::default());
        let mut stdout = std::io::stdout().lock();
        let answer = chat.ask(
            line,
            &gen,
            &mut |piece| {
                bars.borrow_mut().finish();
                let _ = stdout.write_all(piece.as_bytes()).and_then(|_| stdout.flush());
                true
            },
            &mut |phase, done, total| bars.borrow_mut().update(phase, done, total),
        );
        bars.borrow_mut().finish();
        match answer {
            Ok(answer) => {
                let _ = writeln!(stdout);
                match answer.stop {
                    StopReason::Cancelled => eprintln!("(stopped)"),
                    StopReason::ContextFull => eprintln!("(the context is full: /reset to start over)"),
                    _ => {}
                }
                last = Some(answer);
            }
            Err(Error::ContextOverflow { needed, available, .. }) if chat.messages().is_empty() => eprintln!(
                "the media and this question need {needed} positions but the context holds {available}: /clear to drop the media (or restart with a larger -c or fewer --frames)"
            ),
            Err(Error::ContextOverflow { needed, available, .. }) => {
                eprintln!("the conversation needs {needed} positions but the context holds {available}: /reset to start over (or restart with a larger -c)")
            }
            Err(Error::Cancelled) => eprintln!("(stopped)"),
            Err(e @ (Error::Prompt(_) | Error::Template(_) | Error::Tokenizer(_))) => eprintln!("dycoke: {}", describe_error(&e)),
            Err(e) => return Err(e),
        }
    }
    if a.compress.stats {
        eprintln!("{}", chat.stats().to_json());
    }
    Ok(())
}

/// Encodes a video or an image for the next question, with progress bars and a summary line.
fn add_media(chat: &mut Conversation, path: &Path, video: bool, cancel: &CancelToken) -> dycoke::Result<()> {
    let media = add_one(chat, path, video, cancel)?;
    eprintln!("(added {}; it goes with the next question)", describe(media));
    Ok(())
}

fn print_stats(chat: &Conversation, last: Option<&Answer>) {
    let s = chat.session();
    eprintln!("context: {} of {} positions used", s.n_past(), s.n_ctx());
    match last {
        Some(a) => eprintln!(
            "last turn: prompt {} evaluated, {} reused from the cache; answer {}",
            rate(a.prompt.evaluated, a.prompt.time.as_secs_f64()),
            a.prompt.reused,
            rate(a.tokens.len(), a.decode_time.as_secs_f64())
        ),
        None => eprintln!("last turn: no answer yet"),
    }
    let m = chat.encoder_counters();
    eprintln!(
        "media: {} vision encodes, {} from the embedding cache, {} cache entries rebuilt; {} frames encoded, {} repeated frames reused, {:.1}% of the tower's position-blocks skipped by temporal reuse",
        m.vision_encodes,
        m.cache_hits,
        m.cache_rebuilds,
        m.frames_encoded,
        m.frames_reused,
        100.0 * m.reused_share()
    );
    if !chat.compression().is_none() && chat.media().iter().any(|m| m.video().is_some()) {
        eprintln!("DyCoke: {}", chat.stats().to_json());
    }
}
