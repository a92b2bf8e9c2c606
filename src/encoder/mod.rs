//! The media encoder: a video or image file in, the language model's embedding rows out.
//!
//! [`MediaEncoder`] owns what that takes: the vision context (created on first use), the embedding
//! cache and the counters. It decodes and samples frames (`media`), runs them through the vision
//! graph (`vision`: SigLIP, projector, pooling and, for a video with DyCoke, TTM as a node after
//! pooling) and returns one [`EncodedMedia`]. With an embedding cache a video's uncompressed rows
//! are stored, and TTM runs on them on the host, so a cached video serves every TTM setting.

pub mod cache;
mod format;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::compress::ttm::{self, Kept};
use crate::compress::TtmSettings;
use crate::error::{Error, Result, Setting};
use crate::media::{self, Sampling};
use crate::model::Model;
use crate::progress::{Phase, Progress};
use crate::prompt::MediaKind;
use crate::vision::{TemporalReuse, VisionContext, VisionModel};
use cache::{CacheKey, EmbeddingCache, Lookup};

/// How a medium's rows are laid out.
#[derive(Clone, Debug, PartialEq)]
pub enum Layout {
    Video(VideoLayout),
    /// The anyres tokens of `crops` crops (base image and tiles), newlines included.
    Image { crops: usize },
}

/// A video's rows: every frame's pooled tokens (those TTM kept, when it ran), then one newline.
#[derive(Clone, Debug, PartialEq)]
pub struct VideoLayout {
    pub frames: usize,
    /// Pooled tokens of one frame (196 for LLaVA-OneVision).
    pub tokens_per_frame: usize,
    /// Frame indices sampled from the video.
    pub frame_indices: Vec<usize>,
    /// What TTM kept of each frame; None when it did not run.
    pub ttm: Option<Vec<Kept>>,
}

impl VideoLayout {
    /// Frame tokens before TTM.
    pub fn tokens_before_ttm(&self) -> usize {
        self.frames * self.tokens_per_frame
    }

    /// Frame tokens the rows hold.
    pub fn tokens(&self) -> usize {
        match &self.ttm {
            None => self.tokens_before_ttm(),
            Some(kept) => kept.iter().map(|k| k.count(self.tokens_per_frame)).sum(),
        }
    }
}

/// Time spent on a medium.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MediaTimings {
    /// Reading and decoding the file (or reading the cache entry).
    pub decode: Duration,
    /// The vision graph.
    pub encode: Duration,
    /// TTM on the host (zero when it ran in the vision graph, whose time is in `encode`).
    pub ttm: Duration,
}

/// A video or image encoded into embedding rows for the language model.
#[derive(Clone, Debug)]
pub struct EncodedMedia {
    source: PathBuf,
    rows: Vec<f32>,
    n_embd: usize,
    layout: Layout,
    key: u64,
    /// Something the user should know (sampling, cache).
    pub note: Option<String>,
    pub timings: MediaTimings,
}

impl EncodedMedia {
    /// The one constructor: checks that `rows` ([n][n_embd]) match `layout`.
    pub fn new(source: impl Into<PathBuf>, rows: Vec<f32>, n_embd: usize, layout: Layout) -> Result<EncodedMedia> {
        let source = source.into();
        let bad = |why: String| Err(Error::invalid("embeddings", format!("{}: {why}", source.display())));
        if n_embd == 0 || rows.is_empty() || rows.len() % n_embd != 0 {
            return bad(format!("{} values are not rows of {n_embd}", rows.len()));
        }
        let n_rows = rows.len() / n_embd;
        if let Layout::Video(v) = &layout {
            if v.frames == 0 || v.tokens_per_frame == 0 {
                return bad("a video needs frames of at least one token".into());
            }
            if v.ttm.as_ref().is_some_and(|k| k.len() != v.frames) {
                return bad(format!("TTM kept sets for {} frames of {}", v.ttm.as_ref().map_or(0, Vec::len), v.frames));
            }
            if v.tokens() + 1 != n_rows {
                return bad(format!("{n_rows} rows are not {} frame tokens and a newline", v.tokens()));
            }
        }
        let key = rows_key(&rows);
        Ok(EncodedMedia { source, rows, n_embd, layout, key, note: None, timings: MediaTimings::default() })
    }

    pub fn kind(&self) -> MediaKind {
        match self.layout {
            Layout::Video(_) => MediaKind::Video,
            Layout::Image { .. } => MediaKind::Image,
        }
    }

    pub fn source(&self) -> &Path {
        &self.source
    }

    /// [n_rows][n_embd].
    pub fn rows(&self) -> &[f32] {
        &self.rows
    }

    pub fn n_embd(&self) -> usize {
        self.n_embd
    }

    pub fn n_rows(&self) -> usize {
        self.rows.len() / self.n_embd
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The video's layout, for a video.
    pub fn video(&self) -> Option<&VideoLayout> {
        match &self.layout {
            Layout::Video(v) => Some(v),
            Layout::Image { .. } => None,
        }
    }

    /// Identifies the rows (a hash of their values): equal keys let a later prompt reuse them
    /// from the KV cache.
    pub fn key(&self) -> u64 {
        self.key
    }

    /// Frame or image tokens the language model receives (a video's trailing newline not counted).
    pub fn visual_tokens(&self) -> usize {
        match &self.layout {
            Layout::Video(v) => v.tokens(),
            Layout::Image { .. } => self.n_rows(),
        }
    }

    /// Applies TTM to an uncompressed video's rows on the host (the same selection the vision
    /// graph makes). Images, and videos TTM already ran on, are returned as they are.
    pub fn with_ttm(self, ttm: TtmSettings) -> Result<EncodedMedia> {
        let Layout::Video(v) = &self.layout else { return Ok(self) };
        if v.ttm.is_some() {
            return Ok(self);
        }
        let start = Instant::now();
        let frame_values = v.tokens_before_ttm() * self.n_embd;
        let out = ttm::apply(&self.rows[..frame_values], v.frames, v.tokens_per_frame, self.n_embd, ttm.k())?;
        let mut rows = out.rows;
        rows.extend_from_slice(&self.rows[frame_values..]);
        let layout = Layout::Video(VideoLayout { ttm: Some(out.kept), ..v.clone() });
        let mut m = EncodedMedia::new(self.source, rows, self.n_embd, layout)?;
        m.note = self.note;
        m.timings = MediaTimings { ttm: start.elapsed(), ..self.timings };
        Ok(m)
    }

    /// Writes an uncompressed video's rows to `path` (the embedding cache's format), for another
    /// process (the benchmarks encode once and measure each mode in a child process).
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = format::encode(self, &format::NO_KEY)?;
        std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
    }

    /// Reads what `save` wrote.
    pub fn load(path: &Path) -> Result<EncodedMedia> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        format::decode(&bytes, &format::NO_KEY, None).map_err(|why| Error::invalid("embeddings file", format!("{}: {why}", path.display())))
    }
}

fn rows_key(rows: &[f32]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    rows.len().hash(&mut h);
    for x in rows {
        x.to_bits().hash(&mut h);
    }
    h.finish()
}

/// Work on media since the encoder was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct EncoderCounters {
    /// Videos and images run through the vision model.
    pub vision_encodes: usize,
    /// Videos whose embeddings came from the embedding cache.
    pub cache_hits: usize,
    /// Cache entries found unusable (corrupt, truncated, stale) and rebuilt.
    pub cache_rebuilds: usize,
    /// Video frames run through the vision tower.
    pub frames_encoded: usize,
    /// Video frames identical to an earlier frame of their video after preprocessing, whose rows
    /// were copied instead of encoded.
    pub frames_reused: usize,
    /// Position-blocks of the vision tower over the frames encoded (positions times blocks).
    pub token_layers: usize,
    /// Of those, the ones temporal reuse skipped.
    pub token_layers_reused: usize,
}

impl EncoderCounters {
    /// The share of the tower's position-blocks temporal reuse skipped (0 when nothing was encoded).
    pub fn reused_share(&self) -> f64 {
        if self.token_layers == 0 {
            0.0
        } else {
            self.token_layers_reused as f64 / self.token_layers as f64
        }
    }
}

/// Settings of a media encoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncoderOptions {
    /// CPU threads for decoding and the vision graph.
    pub n_threads: usize,
    /// Images (frames, crops) per vision graph: more uses more memory, fewer graph launches.
    pub vision_batch: usize,
    /// Temporal reuse inside the vision tower for videos (off by default: it trades fidelity for
    /// speed; see `vision::reuse`).
    pub temporal_reuse: Option<TemporalReuse>,
}

impl Default for EncoderOptions {
    fn default() -> EncoderOptions {
        EncoderOptions { n_threads: crate::session::default_threads(), vision_batch: 8, temporal_reuse: None }
    }
}

/// Turns video and image files into embedding rows for one model.
pub struct MediaEncoder {
    model: Arc<VisionModel>,
    device: crate::ggml::Device,
    n_embd: usize,
    options: EncoderOptions,
    /// Created on first use: it holds compute buffers.
    context: Option<VisionContext>,
    cache: Option<EmbeddingCache>,
    counters: EncoderCounters,
}

impl MediaEncoder {
    /// An encoder for `model`'s vision tower; `Error::NoVisionModel` when it has none. The options
    /// are checked here, the temporal reuse layer against the tower.
    pub fn new(model: &Model, options: EncoderOptions) -> Result<MediaEncoder> {
        let vision = model.vision().ok_or(Error::NoVisionModel)?.clone();
        crate::llm::check_threads(options.n_threads)?;
        if options.vision_batch == 0 || options.vision_batch > 64 {
            return Err(Error::setting(Setting::VisionBatch, format!("{} is outside 1..=64", options.vision_batch)));
        }
        if let Some(r) = options.temporal_reuse {
            r.check_tower(vision.params().tower.n_layer)?;
        }
        Ok(MediaEncoder {
            model: vision,
            device: model.device(),
            n_embd: model.llm().params().n_embd,
            options,
            context: None,
            cache: None,
            counters: EncoderCounters::default(),
        })
    }

    /// Keeps video embeddings in `cache` (or stops caching with `None`).
    pub fn set_cache(&mut self, cache: Option<EmbeddingCache>) {
        self.cache = cache;
    }

    pub fn counters(&self) -> EncoderCounters {
        self.counters
    }

    /// What the rows depend on besides the video and the sampling: the mmproj (its content and the
    /// types its matrices are multiplied in) and temporal reuse, which changes the rows.
    fn identity(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(&self.model.content_hash());
        if let Some(r) = self.options.temporal_reuse {
            h.update(format!("temporal reuse {} {}", r.layer(), r.threshold().to_bits()).as_bytes());
        }
        *h.finalize().as_bytes()
    }

    fn context(&mut self) -> Result<&mut VisionContext> {
        if self.context.is_none() {
            let mut ctx = VisionContext::new(self.model.clone(), self.device, self.options.n_threads, self.options.vision_batch)?;
            ctx.set_temporal_reuse(self.options.temporal_reuse)?;
            self.context = Some(ctx);
        }
        Ok(self.context.as_mut().expect("created above"))
    }

    /// Decodes a video (a file or a folder of frames), samples it and encodes the frames,
    /// compressed by `ttm` when given. With an embedding cache, a video seen before (same content,
    /// mmproj and sampling) is read from it instead.
    pub fn encode_video(&mut self, path: &Path, sampling: &Sampling, ttm: Option<TtmSettings>, progress: &mut Progress) -> Result<EncodedMedia> {
        let Some(cache) = self.cache.clone() else {
            return self.encode_video_now(path, sampling, ttm, progress);
        };
        let start = Instant::now();
        let key = CacheKey::for_video(path, &self.identity(), sampling)?;
        let rebuilt = match cache.load(&key, self.n_embd) {
            Lookup::Hit(mut media) => {
                self.counters.cache_hits += 1;
                media.timings = MediaTimings { decode: start.elapsed(), ..MediaTimings::default() };
                return match ttm {
                    Some(t) => media.with_ttm(t),
                    None => Ok(media),
                };
            }
            Lookup::Miss => None,
            Lookup::Invalid(why) => {
                self.counters.cache_rebuilds += 1;
                Some(why)
            }
        };
        let mut media = self.encode_video_now(path, sampling, None, progress)?;
        let mut notes: Vec<String> = media.note.take().into_iter().collect();
        if let Some(why) = rebuilt {
            notes.push(format!("the cached embeddings were unusable ({why}); rebuilt"));
        }
        if let Err(e) = cache.store(&key, &media) {
            notes.push(format!("could not cache the embeddings: {e}"));
        }
        media.note = (!notes.is_empty()).then(|| notes.join("; "));
        match ttm {
            Some(t) => media.with_ttm(t),
            None => Ok(media),
        }
    }

    fn encode_video_now(&mut self, path: &Path, sampling: &Sampling, ttm: Option<TtmSettings>, progress: &mut Progress) -> Result<EncodedMedia> {
        let start = Instant::now();
        let video = media::load_video(path, sampling, self.options.n_threads, &mut |d, t| progress(Phase::Decoding, d, t))?;
        let decode = start.elapsed();
        let start = Instant::now();
        let ctx = self.context()?;
        let out = ctx.encode_video(&video.frames, ttm, &mut |d, t| progress(Phase::Encoding, d, t))?;
        let mut rows = out.rows;
        rows.extend_from_slice(ctx.model().newline());
        let tokens_per_frame = ctx.model().params().tokens_per_frame();
        self.counters.vision_encodes += 1;
        self.counters.frames_encoded += out.work.frames_encoded;
        self.counters.frames_reused += out.work.frames_reused;
        self.counters.token_layers += out.work.token_layers;
        self.counters.token_layers_reused += out.work.token_layers_reused;
        let layout = Layout::Video(VideoLayout { frames: video.frames.len(), tokens_per_frame, frame_indices: video.indices, ttm: out.kept });
        let mut m = EncodedMedia::new(path, rows, self.n_embd, layout)?;
        m.note = video.note;
        m.timings = MediaTimings { decode, encode: start.elapsed(), ttm: Duration::ZERO };
        Ok(m)
    }

    /// Loads and encodes an image (anyres).
    pub fn encode_image(&mut self, path: &Path, progress: &mut Progress) -> Result<EncodedMedia> {
        let start = Instant::now();
        let image = media::load_image(path)?;
        let decode = start.elapsed();
        let start = Instant::now();
        let (rows, crops) = self.context()?.encode_image(&image, &mut |d, t| progress(Phase::Encoding, d, t))?;
        self.counters.vision_encodes += 1;
        let mut m = EncodedMedia::new(path, rows, self.n_embd, Layout::Image { crops })?;
        m.timings = MediaTimings { decode, encode: start.elapsed(), ttm: Duration::ZERO };
        Ok(m)
    }
}
