//! DyCoke's benchmarks on a video: what an answer costs with and without compression (speed and
//! memory, one mode per process so that peak memory is the mode's own), and how far compression
//! moves the model's next-token distributions (fidelity).
//!
//! Frames are encoded once per frame count (TTM runs after the vision encoder, so encoding is the
//! same work in every mode) and handed to each mode as pooled features.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::compress::{Compression, DpSettings, TtmSettings};
use crate::error::{Error, Result};
use crate::media::{FrameSelection, Sampling};
use crate::model::{Model, ModelOptions};
use crate::prompt::{self, MediaKind, Piece};
use crate::sampler::SamplerParams;
use crate::session::{GenerateParams, Media, Session, SessionOptions};
use crate::tokenizer::ChatMessage;

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
            VideoMode::DycokeP0 => Compression { ttm, dp: Some(DpSettings { ratio: 0.0, ..DpSettings::default() }) },
        }
    }
}

/// A video's pooled frame tokens (and newline), before any compression.
#[derive(Clone, Debug)]
pub struct VideoFeatures {
    pub source: PathBuf,
    pub frames: usize,
    pub tokens_per_frame: usize,
    pub n_embd: usize,
    /// [frames * tokens_per_frame + 1][n_embd].
    pub rows: Vec<f32>,
    /// Decoding and encoding time.
    pub decode_time: Duration,
    pub encode_time: Duration,
}

const FEATURES_MAGIC: &[u8; 8] = b"DYCKFEAT";

impl VideoFeatures {
    /// Decodes `frames` frames of `video` and encodes them with the model's vision tower.
    pub fn encode(model: &ModelOptions, video: &Path, frames: usize, threads: usize, progress: &mut dyn FnMut(usize, usize)) -> Result<VideoFeatures> {
        let model = Model::load(model)?;
        let mut session = Session::new(model.clone(), &SessionOptions { n_threads: threads, n_ctx: 256, ..SessionOptions::default() })?;
        let sampling = Sampling { selection: FrameSelection::Count(frames), max_frames: frames.max(1) };
        let media = session.encode_video_uncompressed(video, &sampling, &mut |phase, d, t| {
            if phase == crate::session::MediaPhase::Encoding {
                progress(d, t)
            }
        })?;
        Ok(VideoFeatures {
            source: video.to_path_buf(),
            frames: media.frames,
            tokens_per_frame: media.tokens_per_frame,
            n_embd: model.llm().params().n_embd,
            rows: media.rows,
            decode_time: media.decode_time,
            encode_time: media.encode_time,
        })
    }

    /// The features as an uncompressed video medium.
    pub fn media(&self) -> Media {
        Media {
            kind: MediaKind::Video,
            source: self.source.clone(),
            rows: self.rows.clone(),
            tokens_before_ttm: self.frames * self.tokens_per_frame,
            ttm_kept: None,
            frames: self.frames,
            tokens_per_frame: self.tokens_per_frame,
            frame_indices: Vec::new(),
            key: 1,
            note: None,
            decode_time: self.decode_time,
            encode_time: self.encode_time,
        }
    }

    /// Writes the features for another process of this benchmark.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut out = Vec::with_capacity(64 + self.rows.len() * 4);
        out.extend_from_slice(FEATURES_MAGIC);
        for v in [self.frames, self.tokens_per_frame, self.n_embd] {
            out.extend_from_slice(&(v as u64).to_le_bytes());
        }
        for d in [self.decode_time, self.encode_time] {
            out.extend_from_slice(&d.as_secs_f64().to_le_bytes());
        }
        let source = self.source.to_string_lossy();
        out.extend_from_slice(&(source.len() as u64).to_le_bytes());
        out.extend_from_slice(source.as_bytes());
        out.extend(self.rows.iter().flat_map(|x| x.to_le_bytes()));
        std::fs::File::create(path).and_then(|mut f| f.write_all(&out)).map_err(|e| Error::io(path, e))
    }

    pub fn load(path: &Path) -> Result<VideoFeatures> {
        let mut bytes = Vec::new();
        std::fs::File::open(path).and_then(|mut f| f.read_to_end(&mut bytes)).map_err(|e| Error::io(path, e))?;
        let bad = || Error::invalid("features file", format!("{} is not a features file of this benchmark", path.display()));
        let mut at = 0usize;
        let mut take = |n: usize| -> Result<&[u8]> {
            let s = bytes.get(at..at + n).ok_or_else(bad)?;
            at += n;
            Ok(s)
        };
        if take(8)? != FEATURES_MAGIC {
            return Err(bad());
        }
        let mut u64s = [0usize; 3];
        for v in &mut u64s {
            *v = u64::from_le_bytes(take(8)?.try_into().expect("8 bytes")) as usize;
        }
        let decode = f64::from_le_bytes(take(8)?.try_into().expect("8 bytes"));
        let encode = f64::from_le_bytes(take(8)?.try_into().expect("8 bytes"));
        let n = u64::from_le_bytes(take(8)?.try_into().expect("8 bytes")) as usize;
        let source = PathBuf::from(String::from_utf8_lossy(take(n.min(4096))?).into_owned());
        let [frames, tokens_per_frame, n_embd] = u64s;
        let expected = frames.checked_mul(tokens_per_frame).and_then(|t| (t + 1).checked_mul(n_embd)).ok_or_else(bad)?;
        let data = take(expected.checked_mul(4).ok_or_else(bad)?)?;
        let rows = data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect();
        Ok(VideoFeatures {
            source,
            frames,
            tokens_per_frame,
            n_embd,
            rows,
            decode_time: Duration::from_secs_f64(decode.max(0.0)),
            encode_time: Duration::from_secs_f64(encode.max(0.0)),
        })
    }
}

/// The benchmark prompt around a video: the evaluation system prompt, the video, the question.
fn prompt_pieces(model: &Model, question: &str) -> Result<Vec<Piece>> {
    let messages =
        [ChatMessage::system(prompt::DEFAULT_MEDIA_SYSTEM_PROMPT), ChatMessage::user(prompt::place_media(question, &[MediaKind::Video])?)];
    prompt::tokenize_with_media(model.tokenizer(), &messages, true)
}

fn prompt_len(pieces: &[Piece], media: &Media, n_embd: usize) -> usize {
    pieces.iter().map(|p| if let Piece::Tokens(t) = p { t.len() } else { media.n_rows(n_embd) }).sum()
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
pub fn run_video_mode(opts: &VideoModeOptions, features: &VideoFeatures, mode: VideoMode) -> Result<VideoModeReport> {
    let model = Model::load(&ModelOptions::new(&opts.model))?;
    let n_embd = model.llm().params().n_embd;
    if n_embd != features.n_embd {
        return Err(Error::invalid("features", format!("they are {} wide and the model takes {n_embd}", features.n_embd)));
    }
    let compression = mode.compression();
    let full = features.media();
    let start = Instant::now();
    let media = match compression.ttm {
        Some(t) => full.with_ttm(t.k, n_embd)?,
        None => full,
    };
    let ttm = if compression.ttm.is_some() { start.elapsed() } else { Duration::ZERO };
    let pieces = prompt_pieces(&model, &opts.question)?;
    let prompt_tokens = prompt_len(&pieces, &media, n_embd);
    let n_ctx = (prompt_tokens + opts.gen_tokens + 1).div_ceil(256) * 256;
    let options = SessionOptions { n_ctx: n_ctx.min(model.llm().params().n_ctx_train), n_threads: opts.threads, compression, ..SessionOptions::default() };
    let mut session = Session::new(model.clone(), &options)?;
    let prefill = session.set_prompt_with_media(&pieces, &[&media], &mut |_, _| {})?.time;

    let params = GenerateParams { max_tokens: opts.gen_tokens, sampler: SamplerParams::default(), ignore_eos: true };
    let mut decodes = Vec::new();
    for rep in 0..opts.reps.max(1) {
        if rep > 0 {
            // The same prompt: everything is reused but its last position.
            session.set_prompt_with_media(&pieces, &[&media], &mut |_, _| {})?;
        }
        let g = session.generate(&params, &mut |_| true)?;
        decodes.push((g.decode_time, g.tokens.len()));
    }
    decodes.sort_by_key(|d| d.0);
    let (decode, tokens) = decodes[decodes.len() / 2];
    let stats = session.stats();
    let decode_total: Duration = decodes.iter().map(|d| d.0).sum();
    Ok(VideoModeReport {
        mode,
        frames: features.frames,
        visual_tokens: media.visual_tokens(n_embd),
        prompt_tokens,
        vision_encode_s: (features.decode_time + features.encode_time).as_secs_f64(),
        ttm_s: ttm.as_secs_f64(),
        prefill_s: prefill.as_secs_f64(),
        decode_tokens_per_s: tokens as f64 / decode.as_secs_f64().max(1e-9),
        end_to_end_s: (ttm + prefill + decode).as_secs_f64(),
        gen_tokens: tokens,
        kv_cache_bytes: session.llm().cache().bytes(),
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
/// `forced.len()` distributions.
fn forced_logits(session: &mut Session, pieces: &[Piece], media: &Media, forced: &[u32]) -> Result<(Vec<Vec<f32>>, Option<crate::compress::DpCounters>)> {
    session.reset();
    session.set_prompt_with_media(pieces, &[media], &mut |_, _| {})?;
    let mut out = vec![session.logits().to_vec()];
    let n = forced.len().saturating_sub(1);
    let counters = session.force_decode(&forced[..n], &mut |_, l| {
        out.push(l.to_vec());
        true
    })?;
    Ok((out, counters))
}

/// Fidelity of `modes` against the uncompressed model over `steps` greedy steps.
pub fn run_fidelity(opts: &VideoModeOptions, features: &VideoFeatures, steps: usize, modes: &[VideoMode], progress: &mut dyn FnMut(&FidelityRow)) -> Result<Vec<FidelityRow>> {
    let model = Model::load(&ModelOptions::new(&opts.model))?;
    let n_embd = model.llm().params().n_embd;
    let pieces = prompt_pieces(&model, &opts.question)?;
    let full = features.media();
    let n_ctx = (prompt_len(&pieces, &full, n_embd) + steps + 1).div_ceil(256) * 256;
    let options = SessionOptions { n_ctx, n_threads: opts.threads, compression: Compression::none(), ..SessionOptions::default() };
    let mut session = Session::new(model.clone(), &options)?;

    // The uncompressed greedy answer, then its distributions teacher-forced (so that every mode
    // is measured the same way).
    session.set_prompt_with_media(&pieces, &[&full], &mut |_, _| {})?;
    let params = GenerateParams { max_tokens: steps, sampler: SamplerParams::default(), ignore_eos: true };
    let answer = session.generate(&params, &mut |_| true)?.tokens;
    let (reference, _) = forced_logits(&mut session, &pieces, &full, &answer)?;

    let mut rows = Vec::new();
    for &mode in modes {
        let c = mode.compression();
        session.set_compression(c)?;
        let media = match c.ttm {
            Some(t) => full.with_ttm(t.k, n_embd)?,
            None => full.clone(),
        };
        let (logits, counters) = forced_logits(&mut session, &pieces, &media, &answer)?;
        let kls: Vec<f64> = reference.iter().zip(&logits).map(|(p, q)| kl_divergence(p, q)).collect();
        let agree = logits.iter().zip(&answer).filter(|(q, &t)| argmax(q) == t).count();
        let counters = counters.unwrap_or_default();
        let row = FidelityRow {
            mode,
            visual_tokens: media.visual_tokens(n_embd),
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
    fn features_round_trip_and_bad_files_are_errors() {
        let f = VideoFeatures {
            source: "clip.mp4".into(),
            frames: 2,
            tokens_per_frame: 3,
            n_embd: 4,
            rows: (0..28).map(|i| i as f32 * 0.5).collect(),
            decode_time: Duration::from_millis(5),
            encode_time: Duration::from_millis(7),
        };
        let dir = std::env::temp_dir().join(format!("dycoke-features-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f.bin");
        f.save(&path).unwrap();
        let g = VideoFeatures::load(&path).unwrap();
        assert_eq!((g.frames, g.tokens_per_frame, g.n_embd, &g.rows, &g.source), (2, 3, 4, &f.rows, &f.source));
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
        assert!(VideoFeatures::load(&path).is_err());
        std::fs::write(&path, b"nonsense").unwrap();
        assert!(VideoFeatures::load(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn modes_parse_and_name_each_other() {
        for m in VideoMode::ALL {
            assert_eq!(VideoMode::parse(m.name()), Some(m));
        }
        assert_eq!(VideoMode::parse("fastv"), None);
        assert!(VideoMode::None.compression().is_none());
        assert_eq!(VideoMode::DycokeP0.compression().dp.unwrap().ratio, 0.0);
    }
}
