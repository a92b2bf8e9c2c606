//! DyCoke's benchmarks on a video: what an answer costs with and without compression (speed and
//! memory, one mode per process so that peak memory is the mode's own), and how far compression
//! moves the model's next-token distributions (fidelity).
//!
//! Frames are encoded once per frame count (TTM runs after the vision encoder, so encoding is the
//! same work in every mode) and handed to each mode as pooled features.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use dycoke::compress::{Compression, DpSettings, TtmSettings};

use dycoke::conversation::{Conversation, ConversationOptions};
use dycoke::encoder::EncodedMedia;
use dycoke::error::Result;
use dycoke::media::Sampling;
use dycoke::model::{Model, ModelOptions};
use dycoke::progress::{self, Phase};
use dycoke::sampler::SamplerParams;
use dycoke::session::{GenerateParams, SessionOptions};

/// The question of the benchmark prompts.
pub const DEFAULT_QUESTION: &str = "Describe what happens in this video in detail.";

/// A compression setting under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VideoMode {
    /// Every frame token, every layer over the whole cache.
    None,
    /// TTM and dynamic pruning with the defaults (K, L, P = 0.7, 3, 0.7).
    Dycoke,
    /// TTM alone.
    Ttm,
    /// Dynamic pruning alone.
    Dp,
    /// TTM and dynamic pruning that keeps every entry (P = 0): the cost of scoring, selecting and
    /// gathering without any saving.
    DycokeP0,
}

impl VideoMode {
    pub const ALL: [VideoMode; 5] = [VideoMode::None, VideoMode::Dycoke, VideoMode::Ttm, VideoMode::Dp, VideoMode::DycokeP0];

    pub fn name(self) -> &'static str {
        match self {
            VideoMode::None => "none",
            VideoMode::Dycoke => "dycoke",
            VideoMode::Ttm => "ttm",
            VideoMode::Dp => "dp",
            VideoMode::DycokeP0 => "dycoke-p0",
        }
    }

    pub fn parse(s: &str) -> Option<VideoMode> {
        VideoMode::ALL.into_iter().find(|m| m.name() == s)
    }

    pub fn compression(self) -> Compression {
        let ttm = Some(TtmSettings::default());
        let dp = Some(DpSettings::default());
        match self {
            VideoMode::None => Compression::none(),
            VideoMode::Dycoke => Compression { ttm, dp },
            VideoMode::Ttm => Compression { ttm, dp: None },
            VideoMode::Dp => Compression { ttm: None, dp },
            VideoMode::DycokeP0 => Compression { ttm, dp: Some(DpSettings::new(0.0).expect("0 is a valid ratio")) },
        }
    }
}

/// Decodes `frames` frames of `video` and encodes them with the model's vision tower, without
/// compression (TTM runs after the vision encoder, so encoding is the same work in every mode).
pub fn encode_features(model: &ModelOptions, video: &Path, frames: usize, threads: usize, progress: &mut dyn FnMut(usize, usize)) -> Result<EncodedMedia> {
    let model = Model::load(model)?;
    let opts = ConversationOptions {
        session: SessionOptions { n_threads: threads, n_ctx: 256, ..SessionOptions::default() },
        compression: Compression::none(),
        sampling: Sampling::frames(frames)?,
        ..ConversationOptions::default()
    };
    let mut c = Conversation::new(model, &opts)?;
    let media = c.add_video(video, &mut |phase, d, t| {
        if phase == Phase::Encoding {
            progress(d, t)
        }
        true
    })?;
    Ok(media.clone())
}

/// A conversation for measuring `compression` on a prompt of `prompt_tokens` plus `extra`.
fn conversation(model: &std::sync::Arc<Model>, threads: usize, compression: Compression, positions: usize) -> Result<Conversation> {
    let n_ctx = positions.div_ceil(256) * 256;
    let session = SessionOptions { n_ctx: n_ctx.min(model.llm().params().n_ctx_train), n_threads: threads, ..SessionOptions::default() };
    Conversation::new(model.clone(), &ConversationOptions { session, compression, ..ConversationOptions::default() })
}

/// Positions of the benchmark prompt around `media` once `compression`'s TTM has run on it: the
/// chat template's tokens (system turn, question) and the video's rows.
fn prompt_positions(model: &Model, media: &EncodedMedia, compression: Compression, question: &str) -> Result<usize> {
    use dycoke::prompt::{self, MediaKind, Piece};
    use dycoke::tokenizer::ChatMessage;
    let messages = [ChatMessage::system(prompt::DEFAULT_MEDIA_SYSTEM_PROMPT), ChatMessage::user(prompt::place_media(question, &[MediaKind::Video])?)];
    let pieces = prompt::tokenize_with_media(model.tokenizer(), &messages, true)?;
    let text: usize = pieces.iter().map(|p| if let Piece::Tokens(t) = p { t.len() } else { 0 }).sum();
    let rows = match (media.video(), compression.ttm) {
        (Some(v), Some(t)) => dycoke::compress::ttm::kept_count(v.frames, v.tokens_per_frame, t.k()) + 1,
        _ => media.n_rows(),
    };
    Ok(text + rows)
}

/// Settings of one mode's measurement.
#[derive(Clone, Debug)]
pub struct VideoModeOptions {
    pub model: PathBuf,
    pub threads: usize,
    /// Tokens of the answer.
    pub gen_tokens: usize,
    /// Answers generated (the median decode speed is reported).
    pub reps: usize,
    pub question: String,
}

/// What one mode cost.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VideoModeReport {
    pub mode: VideoMode,
    pub frames: usize,
    /// Frame tokens the language model received.
    pub visual_tokens: usize,
    /// Positions of the whole prompt.
    pub prompt_tokens: usize,
    /// Decoding and encoding the frames (the same work in every mode).
    pub vision_encode_s: f64,
    /// Temporal token merging.
    pub ttm_s: f64,
    /// Evaluating the prompt.
    pub prefill_s: f64,
    /// Median over the answers.
    pub decode_tokens_per_s: f64,
    /// TTM, prefill and a `gen_tokens` answer: the language model's share of an answer.
    pub end_to_end_s: f64,
    pub gen_tokens: usize,
    /// The KV cache, sized to the prompt and answer (rounded up to 256 positions).
    pub kv_cache_bytes: usize,
    /// The process's peak resident memory (Linux), the language model's weights included.
    pub peak_rss_bytes: Option<u64>,
    /// Dynamic pruning, over the measured answers: steps, fresh selections, recalls.
    pub decode_steps: u64,
    pub fresh_selections: u64,
    pub recalls: u64,
    pub mean_kept_fraction: f64,
    /// Scoring and selection time / decode time.
    pub scoring_share: f64,
}

/// The process's peak resident set (VmHWM), where the system reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Measures one mode on `features`: TTM, prefill, `reps` answers of `gen_tokens` greedy tokens.
pub fn run_video_mode(opts: &VideoModeOptions, features: &EncodedMedia, mode: VideoMode) -> Result<VideoModeReport> {
    let model = Model::load(&ModelOptions::new(&opts.model))?;
    let compression = mode.compression();
    let prompt_tokens = prompt_positions(&model, features, compression, &opts.question)?;
    let mut c = conversation(&model, opts.threads, compression, prompt_tokens + opts.gen_tokens + 1)?;
    let start = Instant::now();
    let media = c.push_media(features.clone())?;
    let ttm = if compression.ttm.is_some() { start.elapsed() } else { Duration::ZERO };
    let (visual_tokens, frames) = (media.visual_tokens(), media.video().map_or(0, |v| v.frames));
    let prefill = c.prepare(&opts.question, &mut progress::ignore)?.time;

    let params = GenerateParams { max_tokens: opts.gen_tokens, sampler: SamplerParams::default(), ignore_eos: true };
    let mut decodes = Vec::new();
    for rep in 0..opts.reps.max(1) {
        let stats = if rep > 0 {
            // The same prompt: everything is reused but its last position.
            c.reset_turns();
            c.prepare(&opts.question, &mut progress::ignore)?
        } else {
            dycoke::session::PromptStats { total: prompt_tokens, reused: 0, evaluated: prompt_tokens, time: prefill }
        };
        let a = c.answer(&params, stats, &mut |_| true)?;
        decodes.push((a.decode_time, a.tokens.len()));
    }
    decodes.sort_by_key(|d| d.0);
    let (decode, tokens) = decodes[decodes.len() / 2];
    let stats = c.stats().clone();
    let decode_total: Duration = decodes.iter().map(|d| d.0).sum();
    Ok(VideoModeReport {
        mode,
        frames,
        visual_tokens,
        prompt_tokens,
        vision_encode_s: (features.timings.decode + features.timings.encode).as_secs_f64(),
        ttm_s: ttm.as_secs_f64(),
        prefill_s: prefill.as_secs_f64(),
        decode_tokens_per_s: tokens as f64 / decode.as_secs_f64().max(1e-9),
        end_to_end_s: (ttm + prefill + decode).as_secs_f64(),
        gen_tokens: tokens,
        kv_cache_bytes: c.session().llm().cache().bytes(),
        peak_rss_bytes: peak_rss_bytes(),
        decode_steps: stats.dp.steps,
        fresh_selections: stats.dp.fresh_selections,
        recalls: stats.dp.recalls,
        mean_kept_fraction: stats.dp.mean_kept_fraction(),
        scoring_share: stats.dp.scoring.as_secs_f64() / decode_total.as_secs_f64().max(1e-9),
    })
}

// ---- fidelity ------------------------------------------------------------------------------------

/// How far a mode's next-token distributions are from the uncompressed model's, teacher-forced on
/// the uncompressed greedy answer.
#[derive(Clone, Debug, Serialize)]
pub struct FidelityRow {
    pub mode: VideoMode,
    pub visual_tokens: usize,
    pub steps: usize,
    /// Mean over steps of KL(uncompressed || mode), in nats.
    pub mean_kl: f64,
    pub max_kl: f64,
    /// Steps whose most likely token is the uncompressed greedy token.
    pub greedy_agreement: f64,
    pub fresh_selections: u64,
    pub recalls: u64,
    pub mean_kept_fraction: f64,
}

fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = logits.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln() + max;
    logits.iter().map(|&x| x as f64 - lse).collect()
}

/// KL(p || q) of two logit vectors, in nats.
pub fn kl_divergence(p_logits: &[f32], q_logits: &[f32]) -> f64 {
    let (lp, lq) = (log_softmax(p_logits), log_softmax(q_logits));
    lp.iter().zip(&lq).map(|(a, b)| a.exp() * (a - b)).sum::<f64>().max(0.0)
}

fn argmax(v: &[f32]) -> u32 {
    v.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &x)| if x > b.1 { (i, x) } else { b }).0 as u32
}

/// Next-token logits after the prompt and after each of `forced` tokens (the last one's excluded):
/// `forced.len()` distributions, from a fresh evaluation of the prompt.
fn forced_logits(c: &mut Conversation, question: &str, forced: &[u32]) -> Result<(Vec<Vec<f32>>, Option<dycoke::compress::DpCounters>)> {
    c.reset_turns();
    c.session_mut().reset();
    c.prepare(question, &mut progress::ignore)?;
    let mut out = vec![c.session().logits().to_vec()];
    let n = forced.len().saturating_sub(1);
    let counters = c.force_decode(&forced[..n], &mut |_, l| {
        out.push(l.to_vec());
        true
    })?;
    Ok((out, counters))
}

/// Fidelity of `modes` against the uncompressed model over `steps` greedy steps.
pub fn run_fidelity(opts: &VideoModeOptions, features: &EncodedMedia, steps: usize, modes: &[VideoMode], progress: &mut dyn FnMut(&FidelityRow)) -> Result<Vec<FidelityRow>> {
    let model = Model::load(&ModelOptions::new(&opts.model))?;
    let positions = prompt_positions(&model, features, Compression::none(), &opts.question)? + steps + 1;
    let mut c = conversation(&model, opts.threads, Compression::none(), positions)?;
    c.push_media(features.clone())?;

    // The uncompressed greedy answer, then its distributions teacher-forced (so that every mode
    // is measured the same way).
    let stats = c.prepare(&opts.question, &mut progress::ignore)?;
    let params = GenerateParams { max_tokens: steps, sampler: SamplerParams::default(), ignore_eos: true };
    let answer = c.answer(&params, stats, &mut |_| true)?.tokens;
    let (reference, _) = forced_logits(&mut c, &opts.question, &answer)?;

    let mut rows = Vec::new();
    for &mode in modes {
        let compression = mode.compression();
        let mut m = conversation(&model, opts.threads, compression, positions)?;
        let visual_tokens = m.push_media(features.clone())?.visual_tokens();
        let (logits, counters) = forced_logits(&mut m, &opts.question, &answer)?;
        let kls: Vec<f64> = reference.iter().zip(&logits).map(|(p, q)| kl_divergence(p, q)).collect();
        let agree = logits.iter().zip(&answer).filter(|(q, &t)| argmax(q) == t).count();
        let counters = counters.unwrap_or_default();
        let row = FidelityRow {
            mode,
            visual_tokens,
            steps: kls.len(),
            mean_kl: kls.iter().sum::<f64>() / kls.len().max(1) as f64,
            max_kl: kls.iter().copied().fold(0.0, f64::max),
            greedy_agreement: agree as f64 / logits.len().max(1) as f64,
            fresh_selections: counters.fresh_selections,
            recalls: counters.recalls,
            mean_kept_fraction: counters.mean_kept_fraction(),
        };
        progress(&row);
        rows.push(row);
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_of_equal_distributions_is_zero_and_grows_with_difference() {
        let p = [1.0f32, 2.0, 3.0];
        assert!(kl_divergence(&p, &p).abs() < 1e-12);
        // Shifting every logit changes nothing.
        assert!(kl_divergence(&p, &[11.0, 12.0, 13.0]).abs() < 1e-12);
        let small = kl_divergence(&p, &[1.0, 2.0, 2.9]);
        let large = kl_divergence(&p, &[3.0, 2.0, 1.0]);
        assert!(small > 0.0 && large > small);
        // By hand: p = (0.5, 0.5), q = (0.25, 0.75) -> 0.5 ln 2 + 0.5 ln(2/3).
        let want = 0.5 * 2f64.ln() + 0.5 * (2.0f64 / 3.0).ln();
        assert!((kl_divergence(&[0.0, 0.0], &[0.0, 3f32.ln()]) - want).abs() < 1e-7);
    }

    #[test]
    fn modes_parse_and_name_each_other() {
        for m in VideoMode::ALL {
            assert_eq!(VideoMode::parse(m.name()), Some(m));
        }
        assert_eq!(VideoMode::parse("fastv"), None);
        assert!(VideoMode::None.compression().is_none());
        assert_eq!(VideoMode::DycokeP0.compression().dp.unwrap().ratio(), 0.0);
    }
}
