//! `dycoke run`: one prompt, one streamed answer.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use dycoke::tokenizer::ChatMessage;
use dycoke::{Error, Model, PromptPart, Session};

use super::common::{progress_bar, rate, ContextArgs, ModelArgs, SamplingArgs};

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    context: ContextArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// The prompt.
    #[arg(short = 'p', long = "prompt", value_name = "TEXT", required_unless_present = "file")]
    prompt: Option<String>,
    /// Read the prompt from a file.
    #[arg(short = 'f', long = "file", value_name = "PATH", conflicts_with = "prompt")]
    file: Option<PathBuf>,
    /// System prompt [default: the chat template's own].
    #[arg(long, value_name = "TEXT")]
    system: Option<String>,
    /// Feed the prompt as is: no chat template; special tokens such as <|im_start|> are parsed.
    #[arg(long)]
    raw: bool,
    /// Write the logits of the last prompt position to PATH (little-endian f32, one per token).
    #[arg(long, value_name = "PATH")]
    dump_logits: Option<PathBuf>,
    /// Print load, prefill and decode rates to stderr.
    #[arg(long)]
    timings: bool,
}

pub fn run(a: RunArgs) -> dycoke::Result<()> {
    let gen = a.sampling.params()?;
    let prompt = match (&a.prompt, &a.file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) => std::fs::read_to_string(f).map_err(|e| Error::io(f, e))?,
        (None, None) => unreachable!("clap requires one of them"),
    };
    let model = Model::load(&a.model.options()?)?;
    if let Some(reason) = model.tokenizer().template().fallback_reason() {
        if !a.raw {
            eprintln!("dycoke: note: {reason}; using ChatML");
        }
    }
    let mut session = Session::new(model.clone(), &a.context.options())?;
    let text = if a.raw {
        prompt
    } else {
        let mut messages = Vec::new();
        if let Some(s) = &a.system {
            messages.push(ChatMessage::system(s.clone()));
        }
        messages.push(ChatMessage::user(prompt));
        model.tokenizer().apply_chat_template(&messages, true)?
    };
    let tokens = session.tokenize(&text);

    let bar = progress_bar(tokens.len(), "prompt", 256);
    let stats = session.set_prompt(&[PromptPart::Tokens(&tokens)], &mut |done, _| {
        if let Some(b) = &bar {
            b.set_position(done as u64);
        }
    })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if let Some(path) = &a.dump_logits {
        let bytes: Vec<u8> = session.logits().iter().flat_map(|x| x.to_le_bytes()).collect();
        std::fs::write(path, bytes).map_err(|e| Error::io(path, e))?;
    }

    let mut stdout = std::io::stdout().lock();
    let mut write_failed = None;
    let result = session.generate(&gen, &mut |piece| match stdout.write_all(piece.as_bytes()).and_then(|_| stdout.flush()) {
        Ok(()) => true,
        Err(e) => {
            // A closed pipe (e.g. `| head`) ends generation quietly.
            write_failed = Some(e);
            false
        }
    })?;
    if write_failed.is_none() && std::io::IsTerminal::is_terminal(&stdout) && !result.text.ends_with('\n') {
        let _ = writeln!(stdout);
    }
    if a.timings {
        eprintln!("load:    {:.2} s", model.load_time().as_secs_f64());
        eprintln!("prompt:  {} (reused {})", rate(stats.evaluated, stats.time.as_secs_f64()), stats.reused);
        eprintln!("decode:  {}", rate(result.tokens.len(), result.decode_time.as_secs_f64()));
        eprintln!("stop:    {:?}", result.stop);
    }
    Ok(())
}
