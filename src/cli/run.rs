//! `dycoke run`: one prompt, one streamed answer.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use dycoke::prompt::{self, DEFAULT_MEDIA_SYSTEM_PROMPT};
use dycoke::tokenizer::ChatMessage;
use dycoke::{Error, Model, Session, SessionOptions};

use super::common::{rate, ContextArgs, LazyBar, ModelArgs, SamplingArgs};
use super::compress::CompressArgs;
use super::media::MediaArgs;

#[derive(Args)]
pub struct RunArgs {
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
    /// The prompt.
    #[arg(short = 'p', long = "prompt", value_name = "TEXT", required_unless_present = "file")]
    prompt: Option<String>,
    /// Read the prompt from a file.
    #[arg(short = 'f', long = "file", value_name = "PATH", conflicts_with = "prompt")]
    file: Option<PathBuf>,
    /// System prompt [default: "You are a helpful assistant." with media, the chat template's own without].
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
    let mut model_opts = a.model.options()?;
    if !a.media.is_empty() && model_opts.mmproj.is_none() {
        return Err(Error::invalid("media", "--video and --image need a vision model: pass --mmproj FILE.gguf"));
    }
    let compression = a.compress.compression(!a.media.videos.is_empty())?;
    a.media.sampling()?; // invalid sampling settings fail before anything loads
    if a.media.is_empty() {
        // Nothing to see: the vision model would only cost load time.
        model_opts.mmproj = None;
    }
    let model = Model::load(&model_opts)?;
    if let Some(reason) = model.tokenizer().template().fallback_reason() {
        if !a.raw {
            eprintln!("dycoke: note: {reason}; using ChatML");
        }
    }
    let mut session = Session::new(model.clone(), &SessionOptions { compression, ..a.context.options()? })?;
    let kinds = a.media.kinds();
    // The prompt's shape is checked before the slow media work.
    let placed = prompt::place_media(&prompt, &kinds)?;
    let media = a.media.encode(&mut session)?;
    let pieces = if a.raw {
        prompt::split_media(model.tokenizer(), &placed)?
    } else {
        let mut messages = Vec::new();
        let system = a.system.clone().or_else(|| (!media.is_empty()).then(|| DEFAULT_MEDIA_SYSTEM_PROMPT.to_string()));
        if let Some(s) = system {
            messages.push(ChatMessage::system(s));
        }
        messages.push(ChatMessage::user(placed));
        prompt::tokenize_with_media(model.tokenizer(), &messages, true)?
    };
    let n_embd = model.llm().params().n_embd;
    let media_refs: Vec<_> = media.iter().collect();
    let mut bar = LazyBar::new("prompt", 256);
    let stats = session.set_prompt_with_media(&pieces, &media_refs, &mut |done, total| bar.update(done, total));
    bar.finish();
    let stats = stats?;
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
        for m in &media {
            eprintln!(
                "media:   {} ({} {}): decode {:.2} s, encode {:.2} s, {} tokens{}",
                m.source.display(),
                m.frames,
                if m.tokens_per_frame > 0 { "frames" } else { "crops" },
                m.decode_time.as_secs_f64(),
                m.encode_time.as_secs_f64(),
                m.n_rows(n_embd),
                if m.ttm_kept.is_some() { format!(" ({} frame tokens before TTM)", m.tokens_before_ttm) } else { String::new() }
            );
        }
        eprintln!("prompt:  {} (reused {})", rate(stats.evaluated, stats.time.as_secs_f64()), stats.reused);
        eprintln!("decode:  {}", rate(result.tokens.len(), result.decode_time.as_secs_f64()));
        eprintln!("stop:    {:?}", result.stop);
    }
    if a.compress.stats {
        eprintln!("{}", session.stats().to_json());
    }
    Ok(())
}
