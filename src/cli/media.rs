//! Media options shared by `run` and `chat`, and their encoding with progress.

use std::path::PathBuf;

use clap::Args;
use dycoke::encoder::cache::EmbeddingCache;
use dycoke::encoder::{EncodedMedia, Layout};
use dycoke::media::{sampling, FrameSelection, Sampling};
use dycoke::prompt::MediaKind;
use dycoke::vision::TemporalReuse;
use dycoke::{CancelToken, Conversation, Error, Setting};

use super::common::PhaseBars;

#[derive(Args, Clone, Default)]
pub struct MediaArgs {
    /// A video file (any container and codec FFmpeg reads) or a folder of frame images; repeatable.
    /// It goes where the prompt says <video>, or before the text.
    #[arg(long = "video", value_name = "PATH")]
    pub videos: Vec<PathBuf>,
    /// A PNG or JPEG image; repeatable. It goes where the prompt says <image>, or before the text.
    #[arg(long = "image", value_name = "PATH")]
    pub images: Vec<PathBuf>,
    #[command(flatten)]
    pub frames: FrameArgs,
}

/// How videos are sampled, and where their embeddings are cached.
#[derive(Args, Clone, Default)]
pub struct FrameArgs {
    /// Frames sampled uniformly from each video (lmms-eval's indices) [default: 32].
    #[arg(long, value_name = "N", conflicts_with = "fps")]
    pub frames: Option<usize>,
    /// Sample frames at this rate (per second of video) instead.
    #[arg(long, value_name = "R", allow_negative_numbers = true)]
    pub fps: Option<f64>,
    /// Never more frames than this per video.
    #[arg(long, value_name = "N", default_value_t = sampling::DEFAULT_MAX_FRAMES)]
    pub max_frames: usize,
    /// Keep videos' vision embeddings in DIR, keyed by the video's content, the mmproj and the
    /// sampling, so asking again about the same video skips decoding and encoding it.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Temporal reuse inside the vision tower (off by default): from tower block LAYER on, a
    /// position of a frame whose hidden state moved less than THRESHOLD (relative L2 distance)
    /// since it was last computed is not recomputed. Faster on static scenes, less exact; 0 reuses
    /// nothing. Example: 13:0.05.
    #[arg(long, value_name = "LAYER:THRESHOLD")]
    pub vision_reuse: Option<String>,
}

impl FrameArgs {
    /// The embedding cache, when `--cache-dir` asks for one.
    pub fn cache(&self) -> Result<Option<EmbeddingCache>, Error> {
        self.cache_dir.as_ref().map(EmbeddingCache::open).transpose()
    }

    pub fn sampling(&self) -> Result<Sampling, Error> {
        let selection = match (self.frames, self.fps) {
            (_, Some(r)) => FrameSelection::Fps(r),
            // The default count stays within a smaller cap; an explicit count above it is an error.
            (n, None) => FrameSelection::Count(n.unwrap_or(sampling::DEFAULT_FRAMES.min(self.max_frames))),
        };
        Sampling::new(selection, self.max_frames)
    }

    /// Temporal reuse, when `--vision-reuse` asks for it (the layer is checked against the model
    /// when the conversation opens).
    pub fn temporal_reuse(&self) -> Result<Option<TemporalReuse>, Error> {
        self.vision_reuse.as_deref().map(parse_temporal_reuse).transpose()
    }
}

pub fn parse_temporal_reuse(s: &str) -> Result<TemporalReuse, Error> {
    let Some((layer, threshold)) = s.split_once(':') else {
        return Err(Error::setting(Setting::VisionReuseLayer, format!("{s:?} is not LAYER:THRESHOLD (for example 13:0.05)")));
    };
    let layer = layer.trim().parse::<usize>().map_err(|_| Error::setting(Setting::VisionReuseLayer, format!("{layer:?} is not a block number")))?;
    let threshold = threshold.trim().parse::<f32>().map_err(|_| Error::setting(Setting::VisionReuseThreshold, format!("{threshold:?} is not a number")))?;
    TemporalReuse::new(layer, threshold)
}

impl MediaArgs {
    pub fn is_empty(&self) -> bool {
        self.videos.is_empty() && self.images.is_empty()
    }

    pub fn sampling(&self) -> Result<Sampling, Error> {
        self.frames.sampling()
    }

    pub fn cache(&self) -> Result<Option<EmbeddingCache>, Error> {
        self.frames.cache()
    }

    /// The media in placement order: videos, then images.
    pub fn kinds(&self) -> Vec<MediaKind> {
        self.videos.iter().map(|_| MediaKind::Video).chain(self.images.iter().map(|_| MediaKind::Image)).collect()
    }

    /// Decodes and encodes every medium into `chat`, with progress bars and notes on stderr.
    pub fn add_all(&self, chat: &mut Conversation, cancel: &CancelToken) -> Result<(), Error> {
        for path in &self.videos {
            add_one(chat, path, true, cancel)?;
        }
        for path in &self.images {
            add_one(chat, path, false, cancel)?;
        }
        Ok(())
    }
}

/// Encodes a video or an image into `chat` for its next question, with progress bars; `cancel`
/// stops the work between chunks of frames.
pub fn add_one<'c>(chat: &'c mut Conversation, path: &std::path::Path, video: bool, cancel: &CancelToken) -> Result<&'c EncodedMedia, Error> {
    let mut bars = PhaseBars::default();
    let mut progress = |phase, done, total| {
        bars.update(phase, done, total);
        !cancel.is_cancelled()
    };
    let media = if video { chat.add_video(path, &mut progress) } else { chat.add_image(path, &mut progress) };
    bars.finish();
    let media = media?;
    if let Some(note) = &media.note {
        eprintln!("dycoke: {}: {note}", media.source().display());
    }
    Ok(media)
}

/// One line about an encoded medium: frames or crops, tokens, where it came from.
pub fn describe(m: &EncodedMedia) -> String {
    let what = match m.layout() {
        Layout::Video(v) => {
            let ttm = if v.ttm.is_some() { format!(", {} before TTM", v.tokens_before_ttm()) } else { String::new() };
            format!("{} frames, {} visual tokens{ttm}", v.frames, m.visual_tokens())
        }
        Layout::Image { crops } => format!("{crops} crops, {} visual tokens", m.visual_tokens()),
    };
    let t = m.timings;
    let timing = if t.encode.is_zero() { "from the embedding cache".to_string() } else { format!("encoded in {:.1} s", (t.decode + t.encode + t.ttm).as_secs_f64()) };
    format!("{}: {what}, {timing}", m.source().display())
}
