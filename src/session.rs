//! A conversation with a model: one KV cache, filled with a prompt and extended by generation.
//! Setting a new prompt reuses the longest prefix the cache already holds, so a chat turn only
//! evaluates what is new.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use crate::cache::{CacheKey, CachedVideo, EmbeddingCache, Lookup};
use crate::compress::dynamic_prune::DynamicPruning;
use crate::compress::{ttm, Compression, DpCounters, DyCokeStats};
use crate::error::{Error, Result};
use crate::llm::kv_cache::KvType;
use crate::llm::{LlmContext, LlmOptions, Segment};
use crate::media::{self, Sampling};
use crate::model::Model;
use crate::prompt::{MediaKind, Piece};
use crate::sampler::{Sampler, SamplerParams};
use crate::tokenizer::StreamDecoder;
use crate::vision::VisionContext;

/// Settings of a session.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// Positions of context (prompt plus answer); 0 picks `DEFAULT_CONTEXT` or the model's training
    /// context, whichever is smaller.
    pub n_ctx: usize,
    /// Tokens per prefill chunk.
    pub n_batch: usize,
    /// CPU threads.
    pub n_threads: usize,
    pub kv_type: KvType,
    /// Images (video frames, crops) per vision graph.
    pub vision_batch: usize,
    /// DyCoke compression of videos (images and text are never compressed).
    pub compression: Compression,
}

impl Default for SessionOptions {
    fn default() -> SessionOptions {
        SessionOptions {
            n_ctx: 0,
            n_batch: 512,
            n_threads: default_threads(),
            kv_type: KvType::F16,
            vision_batch: 8,
            compression: Compression::dycoke(),
        }
    }
}

/// The context a session gets when none is asked for: 32 frames of video (6273 tokens) and a
/// conversation around them.
pub const DEFAULT_CONTEXT: usize = 8192;

/// The machine's physical parallelism (as llama.cpp's default).
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(4, |n| n.get())
}

/// Stops generation or prefill from another thread (or a signal handler).
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> CancelToken {
        CancelToken::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    pub fn reset(&self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// A piece of a prompt.
#[derive(Clone, Copy, Debug)]
pub enum PromptPart<'a> {
    /// Token ids.
    Tokens(&'a [u32]),
    /// Embedding rows (n_embd each) identified by `key`: equal keys mean equal rows, which lets a
    /// later prompt reuse them from the cache.
    Embeddings { data: &'a [f32], key: u64 },
}

/// What one cache position holds, for prefix matching.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Token(u32),
    Row { key: u64, index: usize },
}

/// Generation settings.
#[derive(Clone, Debug)]
pub struct GenerateParams {
    /// Most tokens to generate.
    pub max_tokens: usize,
    pub sampler: SamplerParams,
    /// Keep generating past end-of-turn tokens.
    pub ignore_eos: bool,
}

impl Default for GenerateParams {
    fn default() -> GenerateParams {
        GenerateParams { max_tokens: 256, sampler: SamplerParams::default(), ignore_eos: false }
    }
}

/// Why generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The model ended its turn.
    EndOfGeneration,
    /// `max_tokens` were generated.
    MaxTokens,
    /// The context is full.
    ContextFull,
    /// The callback asked to stop, or the cancel token fired.
    Cancelled,
}

/// The result of `generate`.
#[derive(Clone, Debug)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub text: String,
    pub stop: StopReason,
    pub decode_time: Duration,
    /// What dynamic pruning did during this answer (None when it did not run).
    pub pruning: Option<DpCounters>,
}

/// The result of `set_prompt`.
#[derive(Clone, Debug)]
pub struct PromptStats {
    /// Positions of the whole prompt.
    pub total: usize,
    /// Positions reused from the cache.
    pub reused: usize,
    /// Positions evaluated now.
    pub evaluated: usize,
    pub time: Duration,
}

/// A video or image, encoded into embedding rows for the language model.
#[derive(Clone, Debug)]
pub struct Media {
    pub kind: MediaKind,
    pub source: PathBuf,
    /// [rows][n_embd]: for a video, every frame's pooled tokens (those TTM kept, when it ran) then
    /// one newline; for an image, the anyres tokens with their newlines.
    pub rows: Vec<f32>,
    /// For a video: frames x tokens per frame, the visual tokens before TTM.
    pub tokens_before_ttm: usize,
    /// For a video compressed by TTM: what each frame kept.
    pub ttm_kept: Option<Vec<ttm::Kept>>,
    /// Frames (videos) or crops (images) encoded.
    pub frames: usize,
    /// Tokens of one video frame (0 for images).
    pub tokens_per_frame: usize,
    /// Frame indices sampled from the video.
    pub frame_indices: Vec<usize>,
    /// Identifies the rows (a hash of their values), for reusing them from the cache.
    pub key: u64,
    /// Something the user should know about the sampling.
    pub note: Option<String>,
    pub decode_time: Duration,
    pub encode_time: Duration,
}

impl Media {
    pub fn n_rows(&self, n_embd: usize) -> usize {
        self.rows.len() / n_embd
    }

    /// Frame tokens the language model receives (a video's trailing newline not counted).
    pub fn visual_tokens(&self, n_embd: usize) -> usize {
        match self.kind {
            MediaKind::Video => self.n_rows(n_embd).saturating_sub(1),
            MediaKind::Image => self.n_rows(n_embd),
        }
    }

    /// Applies TTM with prune ratio `k` to an uncompressed video (images are returned unchanged).
    pub fn with_ttm(&self, k: f64, n_embd: usize) -> Result<Media> {
        if self.kind != MediaKind::Video || self.ttm_kept.is_some() {
            return Ok(self.clone());
        }
        let n = self.tokens_per_frame;
        let frame_rows = self.frames * n * n_embd;
        if n == 0 || self.rows.len() != frame_rows + n_embd {
            return Err(Error::Vision(format!("{}: its embeddings are not {} frames of {n} tokens and a newline", self.source.display(), self.frames)));
        }
        let out = ttm::apply(&self.rows[..frame_rows], self.frames, n, n_embd, k)?;
        let mut rows = out.rows;
        rows.extend_from_slice(&self.rows[frame_rows..]);
        // The rows follow from the source rows and K: derive the key instead of hashing them again.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (self.key, k.to_bits(), "ttm").hash(&mut h);
        Ok(Media {
            kind: self.kind,
            source: self.source.clone(),
            rows,
            tokens_before_ttm: self.tokens_before_ttm,
            ttm_kept: Some(out.kept),
            frames: self.frames,
            tokens_per_frame: self.tokens_per_frame,
            frame_indices: self.frame_indices.clone(),
            key: h.finish(),
            note: self.note.clone(),
            decode_time: self.decode_time,
            encode_time: self.encode_time,
        })
    }
}

/// Work on media since the session started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MediaCounters {
    /// Videos and images run through the vision model.
    pub vision_encodes: usize,
    /// Videos whose embeddings came from the embedding cache.
    pub cache_hits: usize,
    /// Cache entries found unusable (corrupt, truncated, stale) and rebuilt.
    pub cache_rebuilds: usize,
}

/// What media work is under way, for progress display.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaPhase {
    Decoding,
    Encoding,
}

fn rows_key(rows: &[f32]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    rows.len().hash(&mut h);
    for x in rows {
        x.to_bits().hash(&mut h);
    }
    h.finish()
}

pub struct Session {
    model: Arc<Model>,
    llm: LlmContext,
    vision: Option<VisionContext>,
    options: SessionOptions,
    slots: Vec<Slot>,
    cancel: CancelToken,
    /// Cache positions of the prompt's video frame tokens (newlines excluded), for pruning.
    visual_spans: Vec<std::ops::Range<usize>>,
    stats: DyCokeStats,
    cache: Option<EmbeddingCache>,
    media_counters: MediaCounters,
}

impl Session {
    pub fn new(model: Arc<Model>, opts: &SessionOptions) -> Result<Session> {
        let n_ctx = if opts.n_ctx == 0 { DEFAULT_CONTEXT.min(model.llm().params().n_ctx_train) } else { opts.n_ctx };
        let llm_opts = LlmOptions {
            n_ctx,
            n_batch: opts.n_batch,
            n_threads: opts.n_threads,
            kv_type: opts.kv_type,
            device: model.device(),
        };
        opts.compression.validate(model.llm().params().n_layer)?;
        let llm = LlmContext::new(model.llm().clone(), &llm_opts)?;
        Ok(Session {
            model,
            llm,
            vision: None,
            options: opts.clone(),
            slots: Vec::new(),
            cancel: CancelToken::new(),
            visual_spans: Vec::new(),
            stats: DyCokeStats::default(),
            cache: None,
            media_counters: MediaCounters::default(),
        })
    }

    fn vision_context(&mut self) -> Result<&mut VisionContext> {
        if self.vision.is_none() {
            let v = self.model.vision().ok_or_else(|| Error::Vision("no vision model is loaded: videos and images need --mmproj".into()))?.clone();
            self.vision = Some(VisionContext::new(v, self.model.device(), self.options.n_threads, self.options.vision_batch)?);
        }
        Ok(self.vision.as_mut().expect("created above"))
    }

    /// The session's compression settings.
    pub fn compression(&self) -> &Compression {
        &self.options.compression
    }

    /// Changes the compression settings (checked against the model); they apply to videos
    /// encoded and answers generated from now on.
    pub fn set_compression(&mut self, compression: Compression) -> Result<()> {
        compression.validate(self.model.llm().params().n_layer)?;
        self.options.compression = compression;
        Ok(())
    }

    /// What DyCoke did since the session started or `reset_stats`.
    pub fn stats(&self) -> &DyCokeStats {
        &self.stats
    }

    pub fn reset_stats(&mut self) {
        self.stats = DyCokeStats::default();
    }

    /// Keeps video embeddings in `cache` (or stops caching with `None`).
    pub fn set_embedding_cache(&mut self, cache: Option<EmbeddingCache>) {
        self.cache = cache;
    }

    /// Vision encodes and cache use since the session started.
    pub fn media_counters(&self) -> MediaCounters {
        self.media_counters
    }

    /// Decodes and encodes a video (a file or a folder of frames) into embedding rows, compressed by
    /// TTM when the session's settings ask for it.
    pub fn encode_video(&mut self, path: &Path, sampling: &Sampling, progress: &mut dyn FnMut(MediaPhase, usize, usize)) -> Result<Media> {
        let k = self.options.compression.ttm.map(|t| t.k);
        if let (Some(k), None) = (k, &self.cache) {
            // TTM runs in the vision graph.
            sampling.validate()?;
            self.vision_context()?;
            return self.encode_video_now(path, sampling, Some(k), progress);
        }
        let media = self.encode_video_uncompressed(path, sampling, progress)?;
        match k {
            Some(k) => media.with_ttm(k, self.model.llm().params().n_embd),
            None => Ok(media),
        }
    }

    /// As `encode_video`, without TTM (every frame token). With an embedding cache, a video seen
    /// before (same content, mmproj and sampling) is read from it instead of decoded and encoded.
    pub fn encode_video_uncompressed(&mut self, path: &Path, sampling: &Sampling, progress: &mut dyn FnMut(MediaPhase, usize, usize)) -> Result<Media> {
        sampling.validate()?;
        let mmproj = self.vision_context()?.model().content_hash();
        let Some(cache) = self.cache.clone() else {
            return self.encode_video_now(path, sampling, None, progress);
        };
        let start = Instant::now();
        let key = CacheKey::for_video(path, &mmproj, sampling)?;
        let n_embd = self.model.llm().params().n_embd;
        let rebuilt = match cache.load(&key, n_embd) {
            Lookup::Hit(v) => {
                self.media_counters.cache_hits += 1;
                return Ok(Media {
                    kind: MediaKind::Video,
                    source: path.to_path_buf(),
                    key: rows_key(&v.rows),
                    tokens_before_ttm: v.frames * v.tokens_per_frame,
                    rows: v.rows,
                    ttm_kept: None,
                    frames: v.frames,
                    tokens_per_frame: v.tokens_per_frame,
                    frame_indices: v.frame_indices,
                    note: v.note,
                    decode_time: start.elapsed(),
                    encode_time: Duration::ZERO,
                });
            }
            Lookup::Miss => None,
            Lookup::Invalid(why) => {
                self.media_counters.cache_rebuilds += 1;
                Some(why)
            }
        };
        let mut media = self.encode_video_now(path, sampling, None, progress)?;
        let entry = CachedVideo {
            rows: media.rows.clone(),
            n_embd,
            frames: media.frames,
            tokens_per_frame: media.tokens_per_frame,
            frame_indices: media.frame_indices.clone(),
            note: media.note.clone(),
        };
        let mut notes: Vec<String> = media.note.take().into_iter().collect();
        if let Some(why) = rebuilt {
            notes.push(format!("the cached embeddings were unusable ({why}); rebuilt"));
        }
        if let Err(e) = cache.store(&key, &entry) {
            notes.push(format!("could not cache the embeddings: {e}"));
        }
        media.note = (!notes.is_empty()).then(|| notes.join("; "));
        Ok(media)
    }

    fn encode_video_now(&mut self, path: &Path, sampling: &Sampling, ttm_k: Option<f64>, progress: &mut dyn FnMut(MediaPhase, usize, usize)) -> Result<Media> {
        let start = Instant::now();
        let video = media::load_video(path, sampling, self.options.n_threads, &mut |d, t| progress(MediaPhase::Decoding, d, t))?;
        let decode_time = start.elapsed();
        let start = Instant::now();
        let ctx = self.vision_context()?;
        let encoded = ctx.encode_video(&video.frames, ttm_k, &mut |d, t| {
            progress(MediaPhase::Encoding, d, t);
            true
        })?;
        let mut rows = encoded.rows;
        rows.extend_from_slice(ctx.model().newline());
        let tokens_per_frame = ctx.model().params().tokens_per_frame();
        self.media_counters.vision_encodes += 1;
        Ok(Media {
            kind: MediaKind::Video,
            source: path.to_path_buf(),
            key: rows_key(&rows),
            rows,
            tokens_before_ttm: video.frames.len() * tokens_per_frame,
            ttm_kept: encoded.kept,
            frames: video.frames.len(),
            tokens_per_frame,
            frame_indices: video.indices,
            note: video.note,
            decode_time,
            encode_time: start.elapsed(),
        })
    }

    /// Loads and encodes an image (anyres) into embedding rows.
    pub fn encode_image(&mut self, path: &Path, progress: &mut dyn FnMut(MediaPhase, usize, usize)) -> Result<Media> {
        self.vision_context()?;
        let start = Instant::now();
        let image = media::load_image(path)?;
        let decode_time = start.elapsed();
        let start = Instant::now();
        let ctx = self.vision_context()?;
        let (rows, crops) = ctx.encode_image(&image, &mut |d, t| {
            progress(MediaPhase::Encoding, d, t);
            true
        })?;
        self.media_counters.vision_encodes += 1;
        Ok(Media {
            kind: MediaKind::Image,
            source: path.to_path_buf(),
            key: rows_key(&rows),
            rows,
            tokens_before_ttm: 0,
            ttm_kept: None,
            frames: crops,
            tokens_per_frame: 0,
            frame_indices: Vec::new(),
            note: None,
            decode_time,
            encode_time: start.elapsed(),
        })
    }

    /// Sets a prompt of token runs and media (see `prompt::tokenize_with_media`).
    pub fn set_prompt_with_media(&mut self, pieces: &[Piece], media: &[&Media], progress: &mut dyn FnMut(usize, usize)) -> Result<PromptStats> {
        let n_embd = self.model.llm().params().n_embd;
        let mut parts = Vec::with_capacity(pieces.len());
        let mut spans = Vec::new();
        let (mut before, mut after) = (0, 0);
        let mut pos = 0;
        for p in pieces {
            parts.push(match p {
                Piece::Tokens(t) => {
                    pos += t.len();
                    PromptPart::Tokens(t)
                }
                Piece::Media(i) => {
                    let m = media.get(*i).ok_or_else(|| Error::Prompt(format!("media #{i} was not given")))?;
                    if m.rows.len() % n_embd != 0 {
                        return Err(Error::Vision(format!("{}: its embeddings are not {n_embd} wide", m.source.display())));
                    }
                    if m.kind == MediaKind::Video {
                        // The frame tokens; the trailing newline is not pruned (as the reference).
                        spans.push(pos..pos + m.visual_tokens(n_embd));
                        before += m.tokens_before_ttm;
                        after += m.visual_tokens(n_embd);
                    }
                    pos += m.n_rows(n_embd);
                    PromptPart::Embeddings { data: &m.rows, key: m.key }
                }
            });
        }
        let stats = self.set_prompt(&parts, progress)?;
        spans.retain(|s| !s.is_empty());
        self.visual_spans = spans;
        self.stats.visual_tokens_before_ttm = before;
        self.stats.visual_tokens_after_ttm = after;
        Ok(stats)
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    pub fn llm(&self) -> &LlmContext {
        &self.llm
    }

    /// The token that stops this session's work when cancelled.
    pub fn cancel_token(&self) -> CancelToken {
        self.cancel.clone()
    }

    pub fn n_past(&self) -> usize {
        self.slots.len()
    }

    pub fn n_ctx(&self) -> usize {
        self.llm.n_ctx()
    }

    /// Forgets everything.
    pub fn reset(&mut self) {
        self.llm.truncate(0);
        self.slots.clear();
        self.visual_spans.clear();
    }

    /// Dynamic pruning for the next answer, when the settings ask for it and the prompt has video.
    fn pruning(&self) -> Option<Arc<DynamicPruning>> {
        let dp = self.options.compression.dp?;
        let layer = self.options.compression.dp_layer(self.model.llm().params().n_layer)?;
        if self.visual_spans.is_empty() {
            return None;
        }
        Some(Arc::new(DynamicPruning::new(layer, self.visual_spans.clone(), dp.ratio, dp.threshold)))
    }

    /// The logits after the last evaluated position.
    pub fn logits(&self) -> &[f32] {
        self.llm.logits()
    }

    /// Tokenizes prompt text (special tokens such as `<|im_start|>` recognised).
    pub fn tokenize(&self, text: &str) -> Vec<u32> {
        self.model.tokenizer().encode(text, true, true)
    }

    /// Makes the cache hold exactly `parts`, evaluating only what differs from what it holds, and
    /// computes the logits of the last position. `progress(done, total)` follows the evaluation.
    pub fn set_prompt(&mut self, parts: &[PromptPart], progress: &mut dyn FnMut(usize, usize)) -> Result<PromptStats> {
        let start = Instant::now();
        // Only `set_prompt_with_media` knows where videos are.
        self.visual_spans.clear();
        let n_embd = self.model.llm().params().n_embd;
        let mut want: Vec<Slot> = Vec::new();
        for p in parts {
            match *p {
                PromptPart::Tokens(t) => want.extend(t.iter().map(|&t| Slot::Token(t))),
                PromptPart::Embeddings { data, key } => {
                    if data.len() % n_embd != 0 {
                        return Err(Error::invalid("embeddings", format!("{} values is not a whole number of rows of {n_embd}", data.len())));
                    }
                    want.extend((0..data.len() / n_embd).map(|index| Slot::Row { key, index }));
                }
            }
        }
        if want.is_empty() {
            return Err(Error::invalid("prompt", "it is empty"));
        }
        if want.len() > self.n_ctx() {
            return Err(Error::ContextOverflow { needed: want.len(), available: self.n_ctx(), trained: self.model.llm().params().n_ctx_train });
        }
        // Reuse the common prefix, but evaluate at least the last position (its logits are needed).
        let common = self.slots.iter().zip(&want).take_while(|(a, b)| a == b).count().min(want.len() - 1);
        self.llm.truncate(common);
        self.slots.truncate(common);

        // The parts from position `common` on, as LLM segments.
        let mut segments: Vec<Segment> = Vec::new();
        let mut pos = 0usize;
        for p in parts {
            let len = match p {
                PromptPart::Tokens(t) => t.len(),
                PromptPart::Embeddings { data, .. } => data.len() / n_embd,
            };
            if pos + len > common {
                let skip = common.saturating_sub(pos);
                segments.push(match *p {
                    PromptPart::Tokens(t) => Segment::Tokens(&t[skip..]),
                    PromptPart::Embeddings { data, .. } => Segment::Embeddings(&data[skip * n_embd..]),
                });
            }
            pos += len;
        }
        let cancel = self.cancel.clone();
        let mut cancelled = false;
        // A cancel stops the evaluation at the end of the current chunk.
        let result = self.llm.eval_with_progress(&segments, &mut |done, total| {
            progress(done, total);
            cancelled |= cancel.is_cancelled();
            !cancelled
        });
        // On failure the cache state is unknown past the reused prefix: forget it.
        if let Err(e) = result {
            self.llm.truncate(common);
            return Err(e);
        }
        self.slots = want;
        if cancelled {
            return Err(Error::Cancelled);
        }
        Ok(PromptStats { total: self.slots.len(), reused: common, evaluated: self.slots.len() - common, time: start.elapsed() })
    }

    /// Generates an answer after the prompt, calling `on_text` with each complete piece of text;
    /// returning false from it stops generation.
    pub fn generate(&mut self, params: &GenerateParams, on_text: &mut dyn FnMut(&str) -> bool) -> Result<Generation> {
        if self.slots.is_empty() {
            return Err(Error::invalid("generation", "set a prompt first"));
        }
        let mut sampler = Sampler::new(params.sampler.clone())?;
        for s in &self.slots {
            if let Slot::Token(t) = s {
                sampler.accept(*t);
            }
        }
        let mut out = Generation { tokens: Vec::new(), text: String::new(), stop: StopReason::MaxTokens, decode_time: Duration::ZERO, pruning: None };
        let (result, pruning) = self.with_pruning(|s| s.decode_loop(params, &mut sampler, &mut out, on_text));
        out.pruning = pruning;
        result?;
        Ok(out)
    }

    /// Appends `tokens` one decode step at a time (pruned as `generate` is), calling
    /// `on_logits(i, logits)` with the next-token logits after token i; returning false stops.
    /// Teacher forcing: scoring a given continuation, or comparing settings step by step.
    pub fn force_decode(&mut self, tokens: &[u32], on_logits: &mut dyn FnMut(usize, &[f32]) -> bool) -> Result<Option<DpCounters>> {
        if self.slots.is_empty() {
            return Err(Error::invalid("decoding", "set a prompt first"));
        }
        let needed = self.n_past() + tokens.len();
        if needed > self.n_ctx() {
            return Err(Error::ContextOverflow { needed, available: self.n_ctx(), trained: self.model.llm().params().n_ctx_train });
        }
        let (result, pruning) = self.with_pruning(|s| {
            for (i, &t) in tokens.iter().enumerate() {
                s.llm.eval(&[Segment::Tokens(&[t])])?;
                s.slots.push(Slot::Token(t));
                if !on_logits(i, s.llm.logits()) || s.cancel.is_cancelled() {
                    break;
                }
            }
            Ok(())
        });
        result?;
        Ok(pruning)
    }

    /// Runs `f` with this session's dynamic pruning on the decode steps, when the settings and the
    /// prompt call for it. Pruning state lives for one call: attention history does not cross
    /// requests. Returns what pruning did.
    fn with_pruning<T>(&mut self, f: impl FnOnce(&mut Session) -> Result<T>) -> (Result<T>, Option<DpCounters>) {
        let pruning = self.pruning();
        self.llm.set_decode_attention(pruning.clone().map(|p| p as Arc<dyn crate::llm::DecodeAttention>));
        let result = f(self);
        self.llm.set_decode_attention(None);
        let counters = pruning.map(|p| p.counters());
        if let Some(c) = &counters {
            self.stats.dp.add(c);
        }
        (result, counters)
    }

    fn decode_loop(&mut self, params: &GenerateParams, sampler: &mut Sampler, out: &mut Generation, on_text: &mut dyn FnMut(&str) -> bool) -> Result<()> {
        let model = self.model.clone();
        let tokenizer = model.tokenizer();
        let mut decoder = StreamDecoder::new();
        let start = Instant::now();
        let mut emit = |text: String, out: &mut Generation| -> bool {
            if text.is_empty() {
                return true;
            }
            out.text.push_str(&text);
            on_text(&text)
        };
        loop {
            if out.tokens.len() >= params.max_tokens {
                out.stop = StopReason::MaxTokens;
                break;
            }
            if self.cancel.is_cancelled() {
                out.stop = StopReason::Cancelled;
                break;
            }
            let token = sampler.sample(self.llm.logits());
            if !params.ignore_eos && tokenizer.is_end_of_generation(token) {
                out.stop = StopReason::EndOfGeneration;
                break;
            }
            sampler.accept(token);
            out.tokens.push(token);
            if !emit(decoder.push(&tokenizer.token_bytes(token, false)), out) {
                out.stop = StopReason::Cancelled;
                break;
            }
            if out.tokens.len() >= params.max_tokens {
                out.stop = StopReason::MaxTokens;
                break;
            }
            if self.n_past() >= self.n_ctx() {
                out.stop = StopReason::ContextFull;
                break;
            }
            self.llm.eval(&[Segment::Tokens(&[token])])?;
            self.slots.push(Slot::Token(token));
        }
        let tail = decoder.finish();
        emit(tail, out);
        out.decode_time = start.elapsed();
        Ok(())
    }
}
