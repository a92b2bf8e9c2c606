//! `dycoke run`: one prompt, one streamed answer.

use std::io::Write;
use std::path::PathBuf;

use clap::Args;
use dycoke::{CancelToken, Conversation, Error};

use super::common::{rate, ContextArgs, ModelArgs, PhaseBars, SamplingArgs};
use super::compress::CompressArgs;
use super::media::{describe, MediaArgs};

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

/// `dycoke run` is a conversation of one turn: the same prompt assembly as `chat`, `batch` and
/// the library.
pub fn run(a: RunArgs) -> dycoke::Result<()> {
    let gen = a.sampling.params()?;
    let prompt = match (&a.prompt, &a.file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) => std::fs::read_to_string(f).map_err(|e| Error::io(f, e))?,
        (None, None) => unreachable!("clap requires one of them"),
    };
    let mut model_opts = a.model.options()?;
    if !a.media.is_empty() && model_opts.mmproj.is_none() {
        return Err(Error::NoVisionModel);
    }
    // Invalid settings fail before anything loads.
    let compression = a.compress.compression(!a.media.videos.is_empty())?;
    let sampling = a.media.sampling()?;
    let cache = a.media.cache()?;
    // The prompt's shape is checked before the slow media work.
    dycoke::prompt::place_media(&prompt, &a.media.kinds())?;
    if a.media.is_empty() {
        // Nothing to see: the vision model would only cost load time.
        model_opts.mmproj = None;
    }
    let model = super::common::load_model(&model_opts)?;
    if let Some(reason) = model.tokenizer().template().fallback_reason() {
        if !a.raw {
            eprintln!("dycoke: note: {reason}; using ChatML");
        }
    }
    // With media the system turn defaults to the evaluation convention's (the conversation's
    // default); a text prompt gets the chat template's own.
    let mut options = a.context.conversation(compression, sampling, a.system.clone())?;
    options.encoder.temporal_reuse = a.media.frames.temporal_reuse()?;
    let mut chat = Conversation::new(model.clone(), &options)?;
    chat.set_embedding_cache(cache);
    a.media.add_all(&mut chat, &CancelToken::new())?;
    let mut bars = PhaseBars::default();
    let stats = if a.raw { chat.prepare_raw(&prompt, &mut |p, d, t| bars.update(p, d, t)) } else { chat.prepare(&prompt, &mut |p, d, t| bars.update(p, d, t)) };
    bars.finish();
    let stats = stats?;
    if let Some(path) = &a.dump_logits {
        let bytes: Vec<u8> = chat.session().logits().iter().flat_map(|x| x.to_le_bytes()).collect();
        std::fs::write(path, bytes).map_err(|e| Error::io(path, e))?;
    }

    let mut stdout = std::io::stdout().lock();
    let mut write_failed = None;
    let result = chat.answer(&gen, stats, &mut |piece| match stdout.write_all(piece.as_bytes()).and_then(|_| stdout.flush()) {
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
        if let Some(v) = model.vision() {
            eprintln!("vision weights: {}", v.layout());
        }
        for m in chat.media() {
            eprintln!("media:   {}; {} rows", describe(m), m.n_rows());
        }
        let c = chat.encoder_counters();
        if c.frames_encoded + c.frames_reused > 0 {
            eprintln!(
                "vision:  {} frames encoded, {} repeated frames reused; temporal reuse skipped {:.1}% of the tower's position-blocks",
                c.frames_encoded,
                c.frames_reused,
                100.0 * c.reused_share()
            );
        }
        eprintln!("prompt:  {} (reused {})", rate(result.prompt.evaluated, result.prompt.time.as_secs_f64()), result.prompt.reused);
        eprintln!("decode:  {}", rate(result.tokens.len(), result.decode_time.as_secs_f64()));
        let t = chat.session().llm().timings();
        if t.prefill_transfer_bytes + t.decode_transfer_bytes > 0 {
            eprintln!(
                "moved:   {:.1} MiB between devices for the prompt, {:.1} KiB per decode step",
                t.prefill_transfer_bytes as f64 / (1024.0 * 1024.0),
                t.transfer_bytes_per_decode_step() / 1024.0
            );
        }
        eprintln!("stop:    {:?}", result.stop);
    }
    if a.compress.stats {
        eprintln!("{}", chat.stats().to_json());
    }
    Ok(())
}
