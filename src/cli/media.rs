//! Media options shared by `run` and `chat`, and their encoding with progress.

use std::path::PathBuf;

use clap::Args;
use dycoke::media::{sampling, FrameSelection, Sampling};
use dycoke::prompt::MediaKind;
use dycoke::session::{Media, MediaPhase};
use dycoke::{Error, Session};

use super::common::LazyBar;

#[derive(Args, Clone, Default)]
pub struct MediaArgs {
    /// A video file (any container and codec FFmpeg reads) or a folder of frame images; repeatable.
    /// It goes where the prompt says <video>, or before the text.
    #[arg(long = "video", value_name = "PATH")]
    pub videos: Vec<PathBuf>,
    /// A PNG or JPEG image; repeatable. It goes where the prompt says <image>, or before the text.
    #[arg(long = "image", value_name = "PATH")]
    pub images: Vec<PathBuf>,
    /// Frames sampled uniformly from each video (lmms-eval's indices) [default: 32].
    #[arg(long, value_name = "N", conflicts_with = "fps")]
    pub frames: Option<usize>,
    /// Sample frames at this rate (per second of video) instead.
    #[arg(long, value_name = "R", allow_negative_numbers = true)]
    pub fps: Option<f64>,
    /// Never more frames than this per video.
    #[arg(long, value_name = "N", default_value_t = sampling::DEFAULT_MAX_FRAMES)]
    pub max_frames: usize,
}

impl MediaArgs {
    pub fn is_empty(&self) -> bool {
        self.videos.is_empty() && self.images.is_empty()
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

    /// The media in placement order: videos, then images.
    pub fn kinds(&self) -> Vec<MediaKind> {
        self.videos.iter().map(|_| MediaKind::Video).chain(self.images.iter().map(|_| MediaKind::Image)).collect()
    }

    /// Decodes and encodes every medium, with progress bars and sampling notes on stderr.
    pub fn encode(&self, session: &mut Session) -> Result<Vec<Media>, Error> {
        let sampling = self.sampling()?;
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
    // One bar per phase: decoding frames, then encoding them.
    let mut bar: Option<(MediaPhase, LazyBar)> = None;
    let mut progress = |phase: MediaPhase, done: usize, total: usize| {
        if bar.as_ref().is_none_or(|(p, _)| *p != phase) {
            if let Some((_, b)) = bar.take() {
                b.finish();
            }
            let label = match phase {
                MediaPhase::Decoding => "decoding",
                MediaPhase::Encoding => "encoding",
            };
            bar = Some((phase, LazyBar::new(label, 2)));
        }
        if let Some((_, b)) = &mut bar {
            b.update(done, total);
        }
    };
    let media = match sampling {
        Some(s) => session.encode_video(path, s, &mut progress),
        None => session.encode_image(path, &mut progress),
    };
    if let Some((_, b)) = bar.take() {
        b.finish();
    }
    let media = media?;
    if let Some(note) = &media.note {
        eprintln!("dycoke: {}: {note}", path.display());
    }
    Ok(media)
}
