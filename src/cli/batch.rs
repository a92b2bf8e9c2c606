//! `dycoke batch`: answer a JSONL file of requests about videos and images, resumably.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, ValueEnum};
use dycoke::batch::{self, Item, Record, Request, Shard, Summary};
use dycoke::media::{FrameSelection, Sampling};
use dycoke::{progress, Conversation, Error, GenerateParams, Setting};
use indicatif::{ProgressBar, ProgressStyle};

use super::common::{ContextArgs, ModelArgs, SamplingArgs};
use super::compress::CompressArgs;
use super::media::FrameArgs;

#[derive(Args)]
pub struct BatchArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    context: ContextArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    frames: FrameArgs,
    #[command(flatten)]
    compress: CompressArgs,
    /// Requests, one JSON object per line: {"id", "video" or "image", "question", and optionally
    /// "options", "answer", "task", "max_tokens", "temperature", "seed", "frames"}. Relative paths
    /// are taken from the file's folder.
    #[arg(long, value_name = "JSONL")]
    input: PathBuf,
    /// Results, one JSON object per line, appended; ids already there are skipped (resume).
    #[arg(long, value_name = "JSONL")]
    output: PathBuf,
    /// Run only shard I of N (0 <= I < N): items I, I+N, I+2N, ... of the input.
    #[arg(long, value_name = "I/N", value_parser = Shard::parse)]
    shard: Option<Shard>,
    /// How multiple-choice requests (with "options") are answered.
    #[arg(long, value_enum, default_value_t = McMode::Likelihood)]
    mc: McMode,
    /// System prompt [default: "You are a helpful assistant."].
    #[arg(long, value_name = "TEXT")]
    system: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum McMode {
    /// The option whose letter is the most likely next token.
    Likelihood,
    /// Generate a reply and parse the option it names.
    Generate,
}

pub fn run(a: BatchArgs) -> dycoke::Result<()> {
    let start = Instant::now();
    let defaults = a.sampling.params()?;
    let sampling = a.frames.sampling()?;
    let compression = a.compress.compression(true)?;
    let shard = a.shard.unwrap_or(Shard::ALL);
    let items = batch::read_input(&a.input)?;
    let done = batch::resume(&a.output)?;
    let mine: Vec<&Item> = items.iter().enumerate().filter(|(i, _)| shard.contains(*i)).map(|(_, it)| it).collect();
    let todo: Vec<&Item> = mine.iter().copied().filter(|it| !done.contains(&it.id)).collect();
    let mut summary = Summary { items: mine.len(), skipped: mine.len() - todo.len(), ..Summary::default() };
    if todo.is_empty() {
        eprintln!("dycoke: every item of {} is already in {}", a.input.display(), a.output.display());
        eprintln!("{}", summary.render());
        return Ok(());
    }

    let model_opts = a.model.options()?;
    if model_opts.mmproj.is_none() && todo.iter().any(|it| it.request.as_ref().is_ok_and(|r| r.video.is_some() || r.image.is_some())) {
        return Err(Error::NoVisionModel);
    }
    let mut options = a.context.conversation(compression, sampling, a.system.clone())?;
    options.encoder.temporal_reuse = a.frames.temporal_reuse()?;
    let cache = a.frames.cache()?;
    let model = super::common::load_model(&model_opts)?;
    let mut chat = Conversation::new(model, &options)?;
    chat.set_embedding_cache(cache);
    let cancel = chat.session().cancel_token();
    let _ = ctrlc::set_handler(move || cancel.cancel());
    let mut out = std::fs::OpenOptions::new().create(true).append(true).open(&a.output).map_err(|e| Error::io(&a.output, e))?;

    let bar = progress(todo.len());
    for item in todo {
        let t0 = Instant::now();
        let outcome = match &item.request {
            Ok(r) => answer(&mut chat, r, &defaults, sampling, a.mc),
            Err(e) => Err(Error::invalid("request", e.clone())),
        };
        let (record, decode_secs) = match outcome {
            Err(Error::Cancelled) => {
                bar.abandon();
                eprintln!("dycoke: stopped; run the same command again to resume");
                break;
            }
            Ok((r, d)) => (r, d),
            Err(e) => (Record { id: item.id.clone(), error: Some(e.to_string()), ..Record::default() }, 0.0),
        };
        let record = Record { seconds: t0.elapsed().as_secs_f64(), task: item.request.as_ref().ok().and_then(|r| r.task.clone()), ..record };
        let mut line = serde_json::to_string(&record).expect("a record serializes");
        line.push('\n');
        // One write per record, flushed: a crash leaves at most one cut line, which resume drops.
        out.write_all(line.as_bytes()).and_then(|_| out.sync_data()).map_err(|e| Error::io(&a.output, e))?;
        if let Some(e) = &record.error {
            bar.suspend(|| eprintln!("dycoke: {}: {e}", item.id));
        }
        summary.add(&record, decode_secs);
        bar.inc(1);
    }
    bar.finish_and_clear();
    summary.seconds = start.elapsed().as_secs_f64();
    eprintln!("{}", summary.render());
    Ok(())
}

fn progress(total: usize) -> ProgressBar {
    let bar = if std::io::IsTerminal::is_terminal(&std::io::stderr()) { ProgressBar::new(total as u64) } else { ProgressBar::hidden() };
    bar.set_style(ProgressStyle::with_template("{msg:>8} [{bar:30}] {pos}/{len} items, {elapsed} elapsed, eta {eta}").unwrap().progress_chars("=> "));
    bar.set_message("batch");
    bar
}

/// Answers one request; also returns the decode time.
fn answer(chat: &mut Conversation, r: &Request, defaults: &GenerateParams, sampling: Sampling, mc: McMode) -> dycoke::Result<(Record, f64)> {
    chat.clear();
    let mut params = defaults.clone();
    params.max_tokens = r.max_tokens.unwrap_or(params.max_tokens);
    params.sampler.temperature = r.temperature.unwrap_or(params.sampler.temperature);
    params.sampler.seed = r.seed.or(params.sampler.seed);
    params.sampler.validate()?;
    if params.max_tokens == 0 {
        return Err(Error::setting(Setting::MaxTokens, "must be at least 1"));
    }
    let sampling = match r.frames {
        Some(n) => Sampling::new(FrameSelection::Count(n), sampling.max_frames())?,
        None => sampling,
    };
    chat.set_sampling(sampling);
    let cancel = chat.session().cancel_token();
    let mut keep_going = |_, _, _| !cancel.is_cancelled();
    let mut visual_tokens = 0;
    if let Some(v) = &r.video {
        visual_tokens += chat.add_video(v, &mut keep_going)?.visual_tokens();
    }
    if let Some(i) = &r.image {
        visual_tokens += chat.add_image(i, &mut keep_going)?.visual_tokens();
    }
    let question = if r.options.is_empty() { r.question.clone() } else { batch::mc_prompt(&r.question, &r.options) };
    let prompt = chat.prepare(&question, &mut progress::ignore)?;
    let mut record = Record { id: r.id.clone(), visual_tokens, prompt_tokens: prompt.total, ..Record::default() };
    let mut decode_secs = 0.0;
    let choice = if !r.options.is_empty() && mc == McMode::Likelihood {
        Some(most_likely_letter(chat, r.options.len()))
    } else {
        let g = chat.answer(&params, prompt, &mut |_| true)?;
        if g.stop == dycoke::StopReason::Cancelled {
            return Err(Error::Cancelled);
        }
        decode_secs = g.decode_time.as_secs_f64();
        record.tokens = g.tokens.len();
        record.answer = Some(g.text.trim().to_string());
        (!r.options.is_empty()).then(|| batch::parse_choice(&g.text, &r.options)).flatten()
    };
    if let Some(c) = choice {
        record.choice = Some(batch::letter(c).to_string());
        record.answer.get_or_insert_with(|| r.options[c].clone());
    }
    if let Some(want) = r.answer.as_ref().and_then(|a| batch::answer_index(a, &r.options)) {
        record.correct = Some(choice == Some(want));
    }
    Ok((record, decode_secs))
}

/// The option whose letter (" A", "A", ...) the model finds most likely as its next token.
fn most_likely_letter(chat: &Conversation, n: usize) -> usize {
    let s = chat.session();
    let logits = s.logits();
    let score = |i: usize| -> f32 {
        let letter = batch::letter(i).to_string();
        // The letter's first token (one token for every tokenizer we load).
        s.model().tokenizer().encode(&letter, false, false).first().and_then(|&t| logits.get(t as usize).copied()).unwrap_or(f32::NEG_INFINITY)
    };
    (0..n).max_by(|&a, &b| score(a).total_cmp(&score(b))).unwrap_or(0)
}
