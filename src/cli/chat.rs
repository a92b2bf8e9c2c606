//! `dycoke chat`: an interactive conversation. The cache keeps the conversation, media included,
//! so each turn only evaluates what is new.

use std::io::Write;

use clap::Args;
use dycoke::prompt::{self, DEFAULT_MEDIA_SYSTEM_PROMPT};
use dycoke::session::Media;
use dycoke::tokenizer::ChatMessage;
use dycoke::{Error, Model, Session, SessionOptions, StopReason};
use rustyline::error::ReadlineError;

use super::common::{rate, ContextArgs, LazyBar, ModelArgs, SamplingArgs};
use super::compress::CompressArgs;
use super::media::MediaArgs;

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
    /// System prompt [default: "You are a helpful assistant." with media, the chat template's own without].
    #[arg(long, value_name = "TEXT")]
    system: Option<String>,
}

const HELP: &str = "commands:
  /reset   forget the conversation (the media stay for the next question)
  /stats   tokens used and speeds of the last answer
  /help    this list
  Ctrl-C   stop the current answer;  Ctrl-D or /quit   leave";

pub fn run(a: ChatArgs) -> dycoke::Result<()> {
    let gen = a.sampling.params()?;
    let model_opts = a.model.options()?;
    if !a.media.is_empty() && model_opts.mmproj.is_none() {
        return Err(Error::invalid("media", "--video and --image need a vision model: pass --mmproj FILE.gguf"));
    }
    let compression = a.compress.compression(!a.media.videos.is_empty())?;
    a.media.sampling()?;
    let model = Model::load(&model_opts)?;
    let mut session = Session::new(model.clone(), &SessionOptions { compression, ..a.context.options()? })?;
    let cancel = session.cancel_token();
    // Ctrl-C while an answer streams stops it; at the prompt the line editor handles it.
    let _ = ctrlc::set_handler(move || cancel.cancel());

    let media: Vec<Media> = a.media.encode(&mut session)?;
    let kinds = a.media.kinds();
    let system = a.system.clone().or_else(|| (!media.is_empty()).then(|| DEFAULT_MEDIA_SYSTEM_PROMPT.to_string()));
    let base: Vec<ChatMessage> = system.iter().map(|s| ChatMessage::system(s.clone())).collect();
    let mut messages = base.clone();
    let mut last_stats = String::from("no answer yet");
    let mut editor = rustyline::DefaultEditor::new().map_err(|e| Error::invalid("terminal", e.to_string()))?;
    let media_refs: Vec<&Media> = media.iter().collect();
    let n_embd = model.llm().params().n_embd;
    let media_tokens: usize = media.iter().map(|m| m.n_rows(n_embd)).sum();
    eprintln!(
        "dycoke chat with {} ({} positions of context{}). /help for commands.",
        model.path().display(),
        session.n_ctx(),
        if media.is_empty() { String::new() } else { format!(", {} media using {media_tokens}", media.len()) }
    );

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
        match line {
            "/quit" | "/exit" => break,
            "/help" => {
                eprintln!("{HELP}");
                continue;
            }
            "/reset" => {
                messages = base.clone();
                session.reset();
                eprintln!("(conversation forgotten)");
                continue;
            }
            "/stats" => {
                eprintln!("{last_stats}; {} of {} positions used", session.n_past(), session.n_ctx());
                if !session.compression().is_none() && !a.media.videos.is_empty() {
                    eprintln!("DyCoke: {}", session.stats().to_json());
                }
                continue;
            }
            l if l.starts_with('/') => {
                eprintln!("unknown command {l}; /help lists them");
                continue;
            }
            _ => {}
        }
        // The media belong to the first question of a conversation.
        let first_turn = !messages.iter().any(|m| m.role == "user");
        let content = if first_turn {
            match prompt::place_media(line, &kinds) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    continue;
                }
            }
        } else {
            line.to_string()
        };
        messages.push(ChatMessage::user(content));
        let pieces = prompt::tokenize_with_media(model.tokenizer(), &messages, true)?;
        session.cancel_token().reset();
        let mut bar = LazyBar::new("prompt", 256);
        let stats = session.set_prompt_with_media(&pieces, &media_refs, &mut |done, total| bar.update(done, total));
        bar.finish();
        let stats = match stats {
            Ok(s) => s,
            Err(Error::ContextOverflow { needed, available, .. }) => {
                messages.pop();
                eprintln!("the conversation needs {needed} positions but the context holds {available}: /reset to start over (or restart with a larger -c)");
                continue;
            }
            Err(Error::Cancelled) => {
                messages.pop();
                eprintln!("(stopped)");
                continue;
            }
            Err(e) => return Err(e),
        };
        let mut stdout = std::io::stdout().lock();
        let answer = session.generate(&gen, &mut |piece| {
            let _ = stdout.write_all(piece.as_bytes());
            let _ = stdout.flush();
            true
        })?;
        let _ = writeln!(stdout);
        match answer.stop {
            StopReason::Cancelled => eprintln!("(stopped)"),
            StopReason::ContextFull => eprintln!("(the context is full: /reset to start over)"),
            _ => {}
        }
        last_stats = format!(
            "prompt {} new (reused {}), answer {}",
            rate(stats.evaluated, stats.time.as_secs_f64()),
            stats.reused,
            rate(answer.tokens.len(), answer.decode_time.as_secs_f64())
        );
        messages.push(ChatMessage::assistant(answer.text));
    }
    if a.compress.stats {
        eprintln!("{}", session.stats().to_json());
    }
    Ok(())
}
