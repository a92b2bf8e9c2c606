//! Media options shared by `run` and `chat`, and their encoding with progress.

use std::path::PathBuf;

use clap::Args;
use dycoke::cache::EmbeddingCache;
use dycoke::media::{sampling, FrameSelection, Sampling};
use dycoke::prompt::MediaKind;
use dycoke::session::{Media, MediaPhase};
use dycoke::{Error, Session};

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
}

impl FrameArgs {
    /// The embedding cache, when `--cache-dir` asks for one.
    pub fn cache(&self) -> Result<Option<EmbeddingCache>, Error> {
        self.cache_dir.as_ref().map(EmbeddingCache::open).transpose()
    }

    pub fn sampling(&self) -> Result<Sampling, Error> {
        let selection = match (self.frames, self.fps) {
            (_, Some(r)) => FrameSelection::Fps(r),
            (n, None) => FrameSelection::Count(n.unwrap_or(sampling::DEFAULT_FRAMES)),
        };
        let s = Sampling { selection, max_frames: self.max_frames };
        s.validate()?;
        Ok(s)
    }

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

    /// Decodes and encodes every medium, with progress bars and sampling notes on stderr.
    pub fn encode(&self, session: &mut Session) -> Result<Vec<Media>, Error> {
        let sampling = self.sampling()?;
        session.set_embedding_cache(self.cache()?);
        let mut out = Vec::new();
        for path in &self.videos {
            out.push(encode_one(session, path, Some(&sampling))?);
        }
        for path in &self.images {
            out.push(encode_one(session, path, None)?);
        }
        Ok(out)
    }
}

/// Encodes a video (with `sampling`) or an image (without).
pub fn encode_one(session: &mut Session, path: &std::path::Path, sampling: Option<&Sampling>) -> Result<Media, Error> {
    let mut bars = PhaseBars::default();
    let mut progress = |phase: MediaPhase, done: usize, total: usize| bars.update(phase.into(), done, total);
    let media = match sampling {
        Some(s) => session.encode_video(path, s, &mut progress),
        None => session.encode_image(path, &mut progress),
    };
    bars.finish();
    let media = media?;
    print_notes(&media);
    Ok(media)
}

/// Tells the user what they should know about how a medium was sampled or cached.
pub fn print_notes(media: &Media) {
    if let Some(note) = &media.note {
        eprintln!("dycoke: {}: {note}", media.source.display());
    }
}
