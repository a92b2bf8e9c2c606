//! `dycoke chat`: an interactive conversation. Each turn only evaluates what is new: the cache
//! keeps the conversation so far.

use std::io::Write;

use clap::Args;
use dycoke::tokenizer::ChatMessage;
use dycoke::{Error, Model, PromptPart, Session, StopReason};
use rustyline::error::ReadlineError;

use super::common::{progress_bar, rate, ContextArgs, ModelArgs, SamplingArgs};

#[derive(Args)]
pub struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    context: ContextArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// System prompt [default: the chat template's own].
    #[arg(long, value_name = "TEXT")]
    system: Option<String>,
}

const HELP: &str = "commands:
  /reset   forget the conversation
  /stats   tokens used and speeds of the last answer
  /help    this list
  Ctrl-C   stop the current answer;  Ctrl-D or /quit   leave";

pub fn run(a: ChatArgs) -> dycoke::Result<()> {
    let gen = a.sampling.params()?;
    let model = Model::load(&a.model.options()?)?;
    let mut session = Session::new(model.clone(), &a.context.options())?;
    let cancel = session.cancel_token();
    // Ctrl-C while an answer streams stops it; at the prompt the line editor handles it.
    let _ = ctrlc::set_handler(move || cancel.cancel());

    let tok = model.tokenizer();
    let base: Vec<ChatMessage> = a.system.iter().map(|s| ChatMessage::system(s.clone())).collect();
    let mut messages = base.clone();
    let mut last_stats = String::from("no answer yet");
    let mut editor = rustyline::DefaultEditor::new().map_err(|e| Error::invalid("terminal", e.to_string()))?;
    eprintln!("dycoke chat with {} ({} positions of context). /help for commands.", model.path().display(), session.n_ctx());

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
                continue;
            }
            l if l.starts_with('/') => {
                eprintln!("unknown command {l}; /help lists them");
                continue;
            }
            _ => {}
        }
        messages.push(ChatMessage::user(line));
        let text = tok.apply_chat_template(&messages, true)?;
        let tokens = session.tokenize(&text);
        session.cancel_token().reset();
        let bar = progress_bar(tokens.len().saturating_sub(session.n_past()), "prompt", 256);
        let stats = match session.set_prompt(&[PromptPart::Tokens(&tokens)], &mut |done, _| {
            if let Some(b) = &bar {
                b.set_position(done as u64);
            }
        }) {
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
        if let Some(b) = bar {
            b.finish_and_clear();
        }
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
    Ok(())
}
