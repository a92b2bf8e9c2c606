//! DyCoke's benchmarks on a video: what the user waits for in each mode (a vision setting and a
//! compression setting) against the uncompressed path of the first vision setting, and how far
//! compression moves the model's next-token distributions (fidelity).
//!
//! The frames are encoded once per frame count and vision setting (TTM runs after the vision
//! encoder, so encoding is the same work for every compression setting) and handed to each
//! compression setting as pooled features. Each encoding and each language-model measurement runs
//! in its own process, so that peak memory is that stage's own.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use dycoke::compress::{Compression, DpSettings, TtmSettings};

use dycoke::conversation::{Conversation, ConversationOptions};
use dycoke::encoder::{EncodedMedia, EncoderCounters, EncoderOptions};
use dycoke::vision::layout::VisionType;
use dycoke::error::{Error, Result};
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
pub enum CompressionMode {
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

impl CompressionMode {
    pub const ALL: [CompressionMode; 5] = [CompressionMode::None, CompressionMode::Dycoke, CompressionMode::Ttm, CompressionMode::Dp, CompressionMode::DycokeP0];

    pub fn name(self) -> &'static str {
        match self {
            CompressionMode::None => "none",
            CompressionMode::Dycoke => "dycoke",
            CompressionMode::Ttm => "ttm",
            CompressionMode::Dp => "dp",
            CompressionMode::DycokeP0 => "dycoke-p0",
        }
    }

    pub fn parse(s: &str) -> Option<CompressionMode> {
        CompressionMode::ALL.into_iter().find(|m| m.name() == s)
    }

    pub fn compression(self) -> Compression {
        let ttm = Some(TtmSettings::default());
        let dp = Some(DpSettings::default());
        match self {
            CompressionMode::None => Compression::none(),
            CompressionMode::Dycoke => Compression { ttm, dp },
            CompressionMode::Ttm => Compression { ttm, dp: None },
            CompressionMode::Dp => Compression { ttm: None, dp },
            CompressionMode::DycokeP0 => Compression { ttm, dp: Some(DpSettings::new(0.0).expect("0 is a valid ratio")) },
        }
    }
}

/// How frames become embeddings in one mode: the vision model file and the encoder's options.
///
/// Written on the command line as `[NAME=]GGUF` (the name defaults to the file's stem). A setting
/// is handed to the encoding process as its `spec()`, so whatever a setting gains (a weight layout,
/// temporal reuse) must be written by `spec()` and read back by `parse()`.
#[derive(Clone, Debug, PartialEq)]
pub struct VisionSetting {
    /// How rows and JSON objects name the setting (`NAME/compression`).
    pub name: String,
    pub mmproj: PathBuf,
    /// The type the tower's matrices are multiplied in (`--vision-type`).
    pub vision_type: VisionType,
    /// The encoder's options; its thread count is replaced by the benchmark's.
    pub encoder: EncoderOptions,
}

impl VisionSetting {
    /// `[NAME=]FILE.gguf[@type=TYPE][@reuse=LAYER:THRESHOLD]`.
    pub fn parse(spec: &str) -> std::result::Result<VisionSetting, String> {
        let mut parts = spec.split('@');
        let file_part = parts.next().unwrap_or_default();
        let mut encoder = EncoderOptions::default();
        let mut vision_type = VisionType::Auto;
        for option in parts {
            match option.split_once('=') {
                Some(("type", v)) => vision_type = VisionType::parse(v).map_err(|e| crate::cli::describe_error(&e))?,
                Some(("reuse", v)) => {
                    let r = crate::cli::media::parse_temporal_reuse(v).map_err(|e| crate::cli::describe_error(&e))?;
                    encoder.temporal_reuse = Some(r);
                }
                _ => return Err(format!("{option:?} in {spec:?} is not a vision option; write [NAME=]FILE.gguf[@type=TYPE][@reuse=LAYER:THRESHOLD]")),
            }
        }
        let spec = file_part;
        let (name, path) = match spec.split_once('=') {
            Some((name, path)) => (Some(name), path),
            None => (None, spec),
        };
        if path.is_empty() {
            return Err(format!("{spec:?} names no vision model file; write [NAME=]FILE.gguf"));
        }
        let mmproj = PathBuf::from(path);
        let name = match name {
            Some(n) => n.to_string(),
            None => mmproj.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
            return Err(format!("{name:?} is not a vision setting name (letters, digits, '-', '_' and '.'); write [NAME=]FILE.gguf"));
        }
        Ok(VisionSetting { name, mmproj, vision_type, encoder })
    }

    /// What `parse` reads back as this setting.
    pub fn spec(&self) -> String {
        let mut s = format!("{}={}", self.name, self.mmproj.display());
        if self.vision_type != VisionType::Auto {
            s.push_str(&format!("@type={}", self.vision_type));
        }
        if let Some(r) = self.encoder.temporal_reuse {
            s.push_str(&format!("@reuse={}:{}", r.layer(), r.threshold()));
        }
        s
    }

    /// The model to load for this setting, with language model `llm`.
    pub fn model_options(&self, llm: &Path) -> ModelOptions {
        ModelOptions { mmproj: Some(self.mmproj.clone()), vision_type: self.vision_type, ..ModelOptions::new(llm) }
    }

    pub fn encoder_options(&self, threads: usize) -> EncoderOptions {
        EncoderOptions { n_threads: threads, ..self.encoder }
    }
}

/// Checks a list of vision settings: at least one, each name once, each file present.
pub fn check_vision_settings(settings: &[VisionSetting]) -> Result<()> {
    if settings.is_empty() {
        return Err(Error::invalid("mmproj", "the benchmark encodes video: pass --mmproj [NAME=]FILE.gguf[,...]"));
    }
    for (i, s) in settings.iter().enumerate() {
        if settings[..i].iter().any(|o| o.name == s.name) {
            return Err(Error::invalid("mmproj", format!("two vision settings are named {:?}; name them: NAME=FILE.gguf", s.name)));
        }
        if !s.mmproj.exists() {
            return Err(Error::invalid("mmproj", format!("{} does not exist", s.mmproj.display())));
        }
    }
    Ok(())
}

/// The modes a run measures, in order: the baseline first (the first vision setting without
/// compression, whether or not `compressions` lists `none`), then every vision setting with every
/// compression setting. Each is (vision setting index, compression).
pub fn plan_modes(n_vision: usize, compressions: &[CompressionMode]) -> Vec<(usize, CompressionMode)> {
    let mut plan = vec![(0, CompressionMode::None)];
    for v in 0..n_vision {
        for &c in compressions {
            if !plan.contains(&(v, c)) {
                plan.push((v, c));
            }
        }
    }
    plan
}

/// Decodes `frames` frames of `video` and encodes them with the model's vision tower, without
/// compression (TTM runs after the vision encoder, so encoding is the same work in every mode).
/// Also returns the encoder's counters (frames reused, tower work skipped).
pub fn encode_features(model: &ModelOptions, encoder: EncoderOptions, video: &Path, frames: usize, progress: &mut dyn FnMut(usize, usize)) -> Result<(EncodedMedia, EncoderCounters)> {
    let model = Model::load(model)?;
    let opts = ConversationOptions {
        session: SessionOptions { n_threads: encoder.n_threads, n_ctx: 256, ..SessionOptions::default() },
        compression: Compression::none(),
        sampling: Sampling::frames(frames)?,
        encoder,
        ..ConversationOptions::default()
    };
    let mut c = Conversation::new(model, &opts)?;
    let media = c.add_video(video, &mut |phase, d, t| {
        if phase == Phase::Encoding {
            progress(d, t)
        }
        true
    })?;
    let media = media.clone();
    Ok((media, c.encoder_counters()))
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

/// Settings of one mode's language-model measurement.
#[derive(Clone, Debug)]
pub struct VideoModeOptions {
    pub model: PathBuf,
    pub threads: usize,
    /// Tokens of the answer.
    pub gen_tokens: usize,
    /// Answers generated (the median decode speed is reported).
    pub reps: usize,
    pub question: String,
    /// Where the language model runs (`ModelOptions::device`, `gpu_layers`, `rpc`).
    pub device: String,
    pub gpu_layers: usize,
    pub rpc: Vec<String>,
}

impl VideoModeOptions {
    /// The language model's load options.
    pub fn model_options(&self) -> ModelOptions {
        ModelOptions { device: Some(self.device.clone()), gpu_layers: self.gpu_layers, rpc: self.rpc.clone(), ..ModelOptions::new(&self.model) }
    }
}

/// What encoding the frames with one vision setting cost (measured in its own process).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VisionReport {
    pub frames: usize,
    /// Reading, decoding and sampling the video file.
    pub video_decode_s: f64,
    /// Preprocessing the frames and the vision graph (tower, projector, pooling), the graph's
    /// reservation included: what a first request waits for.
    pub vision_s: f64,
    /// The encoding process's peak resident memory (Linux).
    pub peak_rss_bytes: Option<u64>,
    /// Frames whose pixels repeated an earlier frame's, so were not encoded again.
    #[serde(default)]
    pub frames_reused: usize,
    /// With temporal reuse: the share of (position, block) pairs the tower skipped.
    #[serde(default)]
    pub vision_reused_share: f64,
}

impl VisionReport {
    pub fn of(media: &EncodedMedia, counters: &EncoderCounters) -> VisionReport {
        VisionReport {
            frames: media.video().map_or(0, |v| v.frames),
            video_decode_s: media.timings.decode.as_secs_f64(),
            vision_s: media.timings.encode.as_secs_f64(),
            peak_rss_bytes: peak_rss_bytes(),
            frames_reused: counters.frames_reused,
            vision_reused_share: counters.reused_share(),
        }
    }
}

/// What the language model's side of one compression setting cost (measured in its own process,
/// on features encoded by another).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LlmReport {
    /// Frame tokens the language model received.
    pub visual_tokens: usize,
    /// Positions of the whole prompt.
    pub prompt_tokens: usize,
    /// Temporal token merging (on the host here; in the vision graph in a real request).
    pub ttm_s: f64,
    /// Evaluating the prompt.
    pub prefill_s: f64,
    /// From asking for the answer to its first text (the first answer, after prefill): sampling
    /// the first token and setting up decoding; the whole answer when it gave no text.
    pub first_token_s: f64,
    /// Median over the answers.
    pub decode_tokens_per_s: f64,
    /// The median answer's time.
    pub answer_s: f64,
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
    /// Bytes moved between devices per decode step, and for the whole prompt (0 on the CPU
    /// alone; see `Timings`).
    #[serde(default)]
    pub transfer_bytes_per_decode_step: f64,
    #[serde(default)]
    pub prefill_transfer_bytes: u64,
}

/// One mode's row of the report: what the user waits for with a vision setting and a compression
/// setting.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VideoModeReport {
    /// `vision/compression`.
    pub mode: String,
    pub vision: String,
    pub compression: CompressionMode,
    pub frames: usize,
    pub visual_tokens: usize,
    pub prompt_tokens: usize,
    pub video_decode_s: f64,
    /// Preprocessing and the vision graph, all frames.
    pub vision_s: f64,
    pub vision_s_per_frame: f64,
    /// Frames encoded once for an identical earlier frame.
    pub frames_reused: usize,
    /// Share of the tower's (position, block) work skipped by temporal reuse.
    pub vision_reused_share: f64,
    pub ttm_s: f64,
    pub prefill_s: f64,
    /// Time to first token: video decode, preprocessing and vision, TTM, prefill and the first
    /// answer token.
    pub ttft_s: f64,
    pub decode_tok_s: f64,
    /// Time to first token and the rest of a `gen_tokens` answer (the median one).
    pub end_to_end_s: f64,
    pub gen_tokens: usize,
    pub kv_bytes: usize,
    /// The larger of the two stages' peaks (encoding and language model run in separate
    /// processes; one process that runs both holds both models' touched pages, up to their sum).
    pub peak_rss_bytes: Option<u64>,
    pub vision_peak_rss_bytes: Option<u64>,
    pub llm_peak_rss_bytes: Option<u64>,
    pub decode_steps: u64,
    pub fresh_selections: u64,
    pub recalls: u64,
    pub mean_kept_fraction: f64,
    pub scoring_share: f64,
}

impl VideoModeReport {
    /// The row of vision setting `vision` and compression `compression` from its two stages.
    pub fn new(vision: &str, compression: CompressionMode, v: &VisionReport, l: &LlmReport) -> VideoModeReport {
        let ttft = v.video_decode_s + v.vision_s + l.ttm_s + l.prefill_s + l.first_token_s;
        VideoModeReport {
            mode: format!("{vision}/{}", compression.name()),
            vision: vision.to_string(),
            compression,
            frames: v.frames,
            visual_tokens: l.visual_tokens,
            prompt_tokens: l.prompt_tokens,
            video_decode_s: v.video_decode_s,
            vision_s: v.vision_s,
            vision_s_per_frame: v.vision_s / v.frames.max(1) as f64,
            frames_reused: v.frames_reused,
            vision_reused_share: v.vision_reused_share,
            ttm_s: l.ttm_s,
            prefill_s: l.prefill_s,
            ttft_s: ttft,
            decode_tok_s: l.decode_tokens_per_s,
            end_to_end_s: ttft - l.first_token_s + l.answer_s,
            gen_tokens: l.gen_tokens,
            kv_bytes: l.kv_cache_bytes,
            peak_rss_bytes: v.peak_rss_bytes.max(l.peak_rss_bytes),
            vision_peak_rss_bytes: v.peak_rss_bytes,
            llm_peak_rss_bytes: l.peak_rss_bytes,
            decode_steps: l.decode_steps,
            fresh_selections: l.fresh_selections,
            recalls: l.recalls,
            mean_kept_fraction: l.mean_kept_fraction,
            scoring_share: l.scoring_share,
        }
    }
}

/// A mode's gains over the baseline (above 1: better).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Gains {
    pub visual_tokens: f64,
    pub vision_s_per_frame: f64,
    pub prefill_s: f64,
    pub ttft_s: f64,
    pub decode_tok_s: f64,
    pub end_to_end_s: f64,
    pub kv_bytes: f64,
    pub peak_rss_bytes: Option<f64>,
}

impl Gains {
    pub fn over(base: &VideoModeReport, r: &VideoModeReport) -> Gains {
        let less = |b: f64, x: f64| b / x.max(1e-9);
        Gains {
            visual_tokens: less(base.visual_tokens as f64, r.visual_tokens.max(1) as f64),
            vision_s_per_frame: less(base.vision_s_per_frame, r.vision_s_per_frame),
            prefill_s: less(base.prefill_s, r.prefill_s),
            ttft_s: less(base.ttft_s, r.ttft_s),
            decode_tok_s: less(r.decode_tok_s, base.decode_tok_s),
            end_to_end_s: less(base.end_to_end_s, r.end_to_end_s),
            kv_bytes: less(base.kv_bytes as f64, r.kv_bytes.max(1) as f64),
            peak_rss_bytes: match (base.peak_rss_bytes, r.peak_rss_bytes) {
                (Some(b), Some(x)) => Some(less(b as f64, x as f64)),
                _ => None,
            },
        }
    }
}

/// The process's peak resident set (VmHWM), where the system reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Measures the language model's side of `compression` on `features`: TTM, prefill, `reps`
/// answers of `gen_tokens` greedy tokens.
pub fn run_llm_mode(opts: &VideoModeOptions, features: &EncodedMedia, compression: CompressionMode) -> Result<LlmReport> {
    let model = Model::load(&opts.model_options())?;
    let settings = compression.compression();
    let prompt_tokens = prompt_positions(&model, features, settings, &opts.question)?;
    let mut c = conversation(&model, opts.threads, settings, prompt_tokens + opts.gen_tokens + 1)?;
    let media = c.push_media(features.clone())?;
    let ttm = media.timings.ttm;
    let visual_tokens = media.visual_tokens();
    let prefill = c.prepare(&opts.question, &mut progress::ignore)?.time;

    let params = GenerateParams { max_tokens: opts.gen_tokens, sampler: SamplerParams::default(), ignore_eos: true };
    let mut decodes = Vec::new();
    let mut first_token = None;
    for rep in 0..opts.reps.max(1) {
        let stats = if rep > 0 {
            // The same prompt: everything is reused but its last position.
            c.reset_turns();
            c.prepare(&opts.question, &mut progress::ignore)?
        } else {
            dycoke::session::PromptStats { total: prompt_tokens, reused: 0, evaluated: prompt_tokens, time: prefill }
        };
        let start = Instant::now();
        let mut first_text = None;
        let a = c.answer(&params, stats, &mut |_| {
            first_text.get_or_insert_with(|| start.elapsed());
            true
        })?;
        if rep == 0 {
            first_token = Some(first_text.unwrap_or(a.decode_time));
        }
        decodes.push((a.decode_time, a.tokens.len()));
    }
    decodes.sort_by_key(|d| d.0);
    let (decode, tokens) = decodes[decodes.len() / 2];
    let stats = c.stats().clone();
    let decode_total: Duration = decodes.iter().map(|d| d.0).sum();
    Ok(LlmReport {
        visual_tokens,
        prompt_tokens,
        ttm_s: ttm.as_secs_f64(),
        prefill_s: prefill.as_secs_f64(),
        first_token_s: first_token.unwrap_or_default().as_secs_f64(),
        decode_tokens_per_s: tokens as f64 / decode.as_secs_f64().max(1e-9),
        answer_s: decode.as_secs_f64(),
        gen_tokens: tokens,
        kv_cache_bytes: c.session().llm().cache().bytes(),
        peak_rss_bytes: peak_rss_bytes(),
        decode_steps: stats.dp.steps,
        fresh_selections: stats.dp.fresh_selections,
        recalls: stats.dp.recalls,
        mean_kept_fraction: stats.dp.mean_kept_fraction(),
        scoring_share: stats.dp.scoring.as_secs_f64() / decode_total.as_secs_f64().max(1e-9),
        transfer_bytes_per_decode_step: c.session().llm().timings().transfer_bytes_per_decode_step(),
        prefill_transfer_bytes: c.session().llm().timings().prefill_transfer_bytes,
    })
}

// ---- fidelity ------------------------------------------------------------------------------------

/// How far a mode's next-token distributions are from the uncompressed model's, teacher-forced on
/// the uncompressed greedy answer.
#[derive(Clone, Debug, Serialize)]
pub struct FidelityRow {
    /// The vision setting whose features the mode ran on (the first is the reference's).
    pub vision: String,
    pub mode: CompressionMode,
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
    /// The vision setting's pooled features against the reference's: the lowest cosine of a frame.
    pub min_frame_cosine: f64,
    /// Of the positions TTM (default K) keeps on the reference's features, the share it also keeps
    /// on this setting's.
    pub ttm_overlap: f64,
}

/// The lowest per-frame cosine of two videos' uncompressed frame rows, and the share of the
/// positions TTM keeps on `reference` that it also keeps on `other`.
pub fn feature_agreement(reference: &EncodedMedia, other: &EncodedMedia) -> Result<(f64, f64)> {
    let (Some(a), Some(b)) = (reference.video(), other.video()) else {
        return Err(Error::invalid("fidelity", "both features must be a video's"));
    };
    if a.frames != b.frames || a.tokens_per_frame != b.tokens_per_frame || reference.n_embd() != other.n_embd() || a.ttm.is_some() || b.ttm.is_some() {
        return Err(Error::invalid("fidelity", "the vision settings encoded different frames"));
    }
    let frame = a.tokens_per_frame * reference.n_embd();
    let cosine = |x: &[f32], y: &[f32]| {
        let (mut dot, mut nx, mut ny) = (0f64, 0f64, 0f64);
        for (&p, &q) in x.iter().zip(y) {
            dot += f64::from(p) * f64::from(q);
            nx += f64::from(p) * f64::from(p);
            ny += f64::from(q) * f64::from(q);
        }
        dot / (nx.sqrt() * ny.sqrt()).max(1e-30)
    };
    let min_cos = (0..a.frames).map(|f| cosine(&reference.rows()[f * frame..(f + 1) * frame], &other.rows()[f * frame..(f + 1) * frame])).fold(1.0, f64::min);
    let ttm = TtmSettings::default();
    let kept = |m: &EncodedMedia| -> Result<Vec<dycoke::compress::ttm::Kept>> { Ok(m.clone().with_ttm(ttm)?.video().and_then(|v| v.ttm.clone()).unwrap_or_default()) };
    let (ka, kb) = (kept(reference)?, kept(other)?);
    let n = a.tokens_per_frame;
    let positions = |k: &dycoke::compress::ttm::Kept| -> Vec<usize> {
        match k {
            dycoke::compress::ttm::Kept::All => (0..n).collect(),
            dycoke::compress::ttm::Kept::Positions(p) => p.clone(),
        }
    };
    let (mut shared, mut total) = (0usize, 0usize);
    for (x, y) in ka.iter().zip(&kb) {
        let (px, py) = (positions(x), positions(y));
        total += px.len();
        shared += px.iter().filter(|p| py.binary_search(p).is_ok()).count();
    }
    Ok((min_cos, shared as f64 / total.max(1) as f64))
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

/// Fidelity against the uncompressed model on the reference features (the first of `features`)
/// over `steps` greedy steps: each vision setting's features under each of `modes`.
pub fn run_fidelity(opts: &VideoModeOptions, features: &[(String, EncodedMedia)], steps: usize, modes: &[CompressionMode], progress: &mut dyn FnMut(&FidelityRow)) -> Result<Vec<FidelityRow>> {
    let Some((_, reference_features)) = features.first() else {
        return Err(Error::invalid("fidelity", "no features to measure"));
    };
    let model = Model::load(&opts.model_options())?;
    let positions = prompt_positions(&model, reference_features, Compression::none(), &opts.question)? + steps + 1;
    let mut c = conversation(&model, opts.threads, Compression::none(), positions)?;
    c.push_media(reference_features.clone())?;

    // The uncompressed greedy answer, then its distributions teacher-forced (so that every mode
    // is measured the same way).
    let stats = c.prepare(&opts.question, &mut progress::ignore)?;
    let params = GenerateParams { max_tokens: steps, sampler: SamplerParams::default(), ignore_eos: true };
    let answer = c.answer(&params, stats, &mut |_| true)?.tokens;
    let (reference, _) = forced_logits(&mut c, &opts.question, &answer)?;

    let mut rows = Vec::new();
    for (vision, f) in features {
        let (min_frame_cosine, ttm_overlap) = feature_agreement(reference_features, f)?;
        for &mode in modes {
            let compression = mode.compression();
            let mut m = conversation(&model, opts.threads, compression, positions)?;
            let visual_tokens = m.push_media(f.clone())?.visual_tokens();
            let (logits, counters) = forced_logits(&mut m, &opts.question, &answer)?;
            let kls: Vec<f64> = reference.iter().zip(&logits).map(|(p, q)| kl_divergence(p, q)).collect();
            let agree = logits.iter().zip(&answer).filter(|(q, &t)| argmax(q) == t).count();
            let counters = counters.unwrap_or_default();
            let row = FidelityRow {
                vision: vision.clone(),
                mode,
                visual_tokens,
                steps: kls.len(),
                mean_kl: kls.iter().sum::<f64>() / kls.len().max(1) as f64,
                max_kl: kls.iter().copied().fold(0.0, f64::max),
                greedy_agreement: agree as f64 / logits.len().max(1) as f64,
                fresh_selections: counters.fresh_selections,
                recalls: counters.recalls,
                mean_kept_fraction: counters.mean_kept_fraction(),
                min_frame_cosine,
                ttm_overlap,
            };
            progress(&row);
            rows.push(row);
        }
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
        for m in CompressionMode::ALL {
            assert_eq!(CompressionMode::parse(m.name()), Some(m));
        }
        assert_eq!(CompressionMode::parse("fastv"), None);
        assert!(CompressionMode::None.compression().is_none());
        assert_eq!(CompressionMode::DycokeP0.compression().dp.unwrap().ratio(), 0.0);
    }

    #[test]
    fn vision_settings_parse_name_and_round_trip() {
        let s = VisionSetting::parse("models/siglip-f16.gguf").unwrap();
        assert_eq!((s.name.as_str(), s.mmproj.as_path()), ("siglip-f16", Path::new("models/siglip-f16.gguf")));
        let named = VisionSetting::parse("bf16=/tmp/a=b.gguf").unwrap();
        assert_eq!((named.name.as_str(), named.mmproj.as_path()), ("bf16", Path::new("/tmp/a=b.gguf")));
        let reuse = VisionSetting::parse("r=x.gguf@type=f16@reuse=13:0.05").unwrap();
        assert_eq!(reuse.vision_type.to_string(), "f16");
        let r = reuse.encoder.temporal_reuse.expect("the reuse option");
        assert_eq!((r.layer(), r.threshold(), reuse.mmproj.as_path()), (13, 0.05, Path::new("x.gguf")));
        for bad in ["r=x.gguf@reuse=13", "r=x.gguf@reuse=13:-1", "r=x.gguf@speed=fast", "r=x.gguf@type=i32"] {
            assert!(VisionSetting::parse(bad).is_err(), "{bad}");
        }
        for s in [s, named, reuse] {
            assert_eq!(VisionSetting::parse(&s.spec()).unwrap(), s);
        }
        for bad in ["", "f16=", "=x.gguf", "a/b=x.gguf", "f 16=x.gguf"] {
            let e = VisionSetting::parse(bad).unwrap_err();
            assert!(e.contains("[NAME=]FILE.gguf"), "{bad:?}: {e}");
        }
        assert_eq!(VisionSetting::parse("x.gguf").unwrap().encoder_options(3).n_threads, 3);
    }

    #[test]
    fn vision_settings_are_checked_as_a_list() {
        let file = std::env::current_exe().unwrap();
        let named = |name: &str, path: &Path| VisionSetting::parse(&format!("{name}={}", path.display())).unwrap();
        assert!(check_vision_settings(&[named("a", &file), named("b", &file)]).is_ok());
        let msg = |r: Result<()>| r.unwrap_err().to_string();
        assert!(msg(check_vision_settings(&[])).contains("--mmproj"));
        assert!(msg(check_vision_settings(&[named("a", &file), named("a", &file)])).contains("two vision settings are named \"a\""));
        assert!(msg(check_vision_settings(&[named("a", Path::new("/nonexistent/v.gguf"))])).contains("/nonexistent/v.gguf"));
    }

    #[test]
    fn the_plan_starts_with_the_baseline_and_covers_every_pair_once() {
        use CompressionMode::*;
        assert_eq!(plan_modes(1, &[None, Dycoke]), vec![(0, None), (0, Dycoke)]);
        assert_eq!(plan_modes(1, &[Dycoke]), vec![(0, None), (0, Dycoke)]);
        assert_eq!(plan_modes(2, &[Dycoke, None, Dycoke]), vec![(0, None), (0, Dycoke), (1, Dycoke), (1, None)]);
    }

    fn stages() -> (VisionReport, LlmReport) {
        let v = VisionReport { frames: 8, video_decode_s: 0.5, vision_s: 40.0, peak_rss_bytes: Some(900 << 20), frames_reused: 0, vision_reused_share: 0.0 };
        let l = LlmReport {
            visual_tokens: 740,
            prompt_tokens: 800,
            ttm_s: 0.02,
            prefill_s: 7.0,
            first_token_s: 0.03,
            decode_tokens_per_s: 30.0,
            answer_s: 1.1,
            gen_tokens: 32,
            kv_cache_bytes: 12 << 20,
            peak_rss_bytes: Some(600 << 20),
            ..LlmReport::default()
        };
        (v, l)
    }

    #[test]
    fn a_row_adds_up_what_the_user_waits_for() {
        let (v, l) = stages();
        let r = VideoModeReport::new("f16", CompressionMode::Dycoke, &v, &l);
        assert_eq!(r.mode, "f16/dycoke");
        assert_eq!((r.frames, r.visual_tokens, r.kv_bytes), (8, 740, 12 << 20));
        assert!((r.ttft_s - (0.5 + 40.0 + 0.02 + 7.0 + 0.03)).abs() < 1e-9);
        assert!((r.end_to_end_s - (0.5 + 40.0 + 0.02 + 7.0 + 1.1)).abs() < 1e-9);
        assert!((r.vision_s_per_frame - 5.0).abs() < 1e-12);
        assert!(r.ttft_s >= r.vision_s + r.prefill_s);
        // The two stages ran in separate processes: the larger peak is the mode's.
        assert_eq!((r.peak_rss_bytes, r.llm_peak_rss_bytes), (Some(900 << 20), Some(600 << 20)));
    }

    #[test]
    fn gains_are_above_one_where_the_mode_is_better() {
        let (v, l) = stages();
        let base = VideoModeReport::new("f16", CompressionMode::None, &v, &LlmReport { visual_tokens: 1568, prefill_s: 14.0, decode_tokens_per_s: 20.0, kv_cache_bytes: 24 << 20, ..l.clone() });
        let fast = VideoModeReport::new("bf16", CompressionMode::Dycoke, &VisionReport { vision_s: 20.0, ..v.clone() }, &l);
        let g = Gains::over(&base, &fast);
        assert!((g.visual_tokens - 1568.0 / 740.0).abs() < 1e-12);
        assert!((g.vision_s_per_frame - 2.0).abs() < 1e-12);
        assert!((g.prefill_s - 2.0).abs() < 1e-12);
        assert!((g.decode_tok_s - 1.5).abs() < 1e-12);
        assert!((g.kv_bytes - 2.0).abs() < 1e-12);
        assert!((g.ttft_s - base.ttft_s / fast.ttft_s).abs() < 1e-12 && g.ttft_s > 1.0);
        assert_eq!(g.peak_rss_bytes, Some(1.0));
        let same = Gains::over(&base, &base);
        assert!([same.ttft_s, same.vision_s_per_frame, same.end_to_end_s].iter().all(|&x| (x - 1.0).abs() < 1e-12));
    }

    #[test]
    fn the_json_object_has_the_reported_fields() {
        let (v, l) = stages();
        let json = serde_json::to_value(VideoModeReport::new("f16", CompressionMode::None, &v, &l)).unwrap();
        for field in ["mode", "frames", "visual_tokens", "vision_s", "prefill_s", "ttft_s", "decode_tok_s", "kv_bytes", "peak_rss_bytes"] {
            assert!(json.get(field).is_some(), "{field} missing from {json}");
        }
        assert_eq!(json["mode"], "f16/none");
        assert_eq!(json["compression"], "none");
        // The stages' reports cross a process boundary as JSON.
        assert_eq!(serde_json::from_str::<LlmReport>(&serde_json::to_string(&l).unwrap()).unwrap(), l);
        assert_eq!(serde_json::from_str::<VisionReport>(&serde_json::to_string(&v).unwrap()).unwrap(), v);
    }
}
