//! Media input: videos (FFmpeg), images (PNG, JPEG) and folders of frame images, decoded to RGB.

pub mod sampling;
pub mod video;

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
pub use sampling::{FrameSelection, Sampling};
pub use video::VideoInfo;

/// Largest accepted side and area of a frame or image (8K is 33 million pixels).
pub const MAX_SIDE: u32 = 16384;
pub const MAX_PIXELS: u64 = 1 << 26;

/// An RGB image, 8 bits per channel, rows top to bottom, pixels left to right (HWC).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
}

impl Frame {
    /// A frame from raw HWC RGB bytes.
    pub fn new(width: u32, height: u32, rgb: Vec<u8>) -> Result<Frame> {
        if rgb.len() as u64 != u64::from(width) * u64::from(height) * 3 || width == 0 || height == 0 {
            return Err(Error::invalid("frame", format!("{} bytes for a {width}x{height} RGB image", rgb.len())));
        }
        Ok(Frame { width, height, rgb })
    }
}

/// Rejects sizes that would take unreasonable memory (checked before allocating).
pub fn check_dimensions(path: &Path, width: u32, height: u32) -> Result<()> {
    if width == 0 || height == 0 {
        return Err(Error::media(path, format!("its frames are {width}x{height}")));
    }
    if width > MAX_SIDE || height > MAX_SIDE || u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(Error::media(
            path,
            format!("its resolution {width}x{height} is larger than the limit ({MAX_SIDE} per side, {MAX_PIXELS} pixels)"),
        ));
    }
    Ok(())
}

/// Sampled frames of a video (or of a folder of frame images).
#[derive(Clone, Debug)]
pub struct Video {
    pub source: PathBuf,
    pub frames: Vec<Frame>,
    /// The index of each sampled frame in the video.
    pub indices: Vec<usize>,
    pub total_frames: usize,
    /// Frames per second (0 when unknown).
    pub fps: f64,
    /// Anything the user should know (fewer frames than asked, cap applied).
    pub note: Option<String>,
}

/// Loads the sampled frames of a video file, or of a folder of frame images.
pub fn load_video(path: &Path, sampling: &Sampling, threads: usize, progress: &mut dyn FnMut(usize, usize) -> bool) -> Result<Video> {
    if path.is_dir() {
        return load_frame_folder(path, sampling, progress);
    }
    let mut chosen = (Vec::new(), None);
    let (info, frames) = video::decode(
        path,
        threads,
        &mut |info| {
            if matches!(sampling.selection(), FrameSelection::Fps(_)) && info.fps <= 0.0 {
                return Err(Error::media(path, "its frame rate is unknown, so it cannot be sampled by frame rate; sample a number of frames instead"));
            }
            chosen = sampling::select(info.total_frames, info.fps, sampling);
            Ok(chosen.0.clone())
        },
        progress,
    )?;
    let (indices, note) = chosen;
    Ok(Video { source: path.to_path_buf(), frames, indices, total_frames: info.total_frames, fps: info.fps, note })
}

/// Image files of a folder, in natural order (frame2 before frame10).
pub fn frame_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && p.extension().and_then(|e| e.to_str()).is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
        })
        .collect();
    files.sort_by_cached_key(|p| natural_key(p));
    Ok(files)
}

/// Splits a file name into text and number runs so that numbers compare by value.
fn natural_key(p: &Path) -> Vec<(String, u64)> {
    let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut key = Vec::new();
    let mut text = String::new();
    let mut digits = String::new();
    for c in name.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
        } else {
            if !digits.is_empty() {
                key.push((std::mem::take(&mut text), digits.parse().unwrap_or(u64::MAX)));
                digits.clear();
            }
            text.push(c);
        }
    }
    key.push((text, digits.parse().unwrap_or(0)));
    key
}

fn load_frame_folder(dir: &Path, sampling: &Sampling, progress: &mut dyn FnMut(usize, usize) -> bool) -> Result<Video> {
    let files = frame_files(dir)?;
    if files.is_empty() {
        return Err(Error::media(dir, "the folder has no PNG or JPEG frames"));
    }
    if matches!(sampling.selection(), FrameSelection::Fps(_)) {
        return Err(Error::media(dir, "a folder of frames has no frame rate, so it cannot be sampled by frame rate; sample a number of frames instead"));
    }
    let (indices, note) = sampling::select(files.len(), 0.0, sampling);
    let mut frames = Vec::with_capacity(indices.len());
    for (n, &i) in indices.iter().enumerate() {
        frames.push(load_image(&files[i])?);
        if !progress(n + 1, indices.len()) {
            return Err(Error::Cancelled);
        }
    }
    if let Some(size) = frames.iter().map(|f| (f.width, f.height)).find(|&s| s != (frames[0].width, frames[0].height)) {
        return Err(Error::media(dir, format!("its frames differ in size ({}x{} and {}x{})", frames[0].width, frames[0].height, size.0, size.1)));
    }
    Ok(Video { source: dir.to_path_buf(), frames, indices, total_frames: files.len(), fps: 0.0, note })
}

/// Loads a PNG or JPEG image as RGB, applying its EXIF orientation (as transformers'
/// `load_image` does).
pub fn load_image(path: &Path) -> Result<Frame> {
    use image::ImageDecoder;
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if bytes.is_empty() {
        return Err(Error::media(path, "the file is empty"));
    }
    let mut reader = image::ImageReader::new(std::io::Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|e| Error::media(path, format!("cannot read it ({e})")))?;
    // The decoders check these before allocating (a header can claim any size).
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_PIXELS * 4);
    reader.limits(limits);
    let too_large = || Error::media(path, format!("its size is larger than the limit ({MAX_SIDE} pixels per side, {MAX_PIXELS} pixels)"));
    let Some(format) = reader.format() else {
        let head: String = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
        return Err(Error::media(path, format!("it is not a PNG or JPEG image (it starts with bytes {head})")));
    };
    let mut decoder = reader.into_decoder().map_err(|e| match e {
        image::ImageError::Limits(_) => too_large(),
        e => Error::media(path, format!("not a valid {format:?} image ({e})")),
    })?;
    let (w, h) = decoder.dimensions();
    check_dimensions(path, w, h)?;
    let orientation = decoder.orientation().ok();
    let mut img = image::DynamicImage::from_decoder(decoder).map_err(|e| match e {
        image::ImageError::Limits(_) => too_large(),
        e => Error::media(path, format!("the {format:?} data is corrupt ({e})")),
    })?;
    if let Some(o) = orientation {
        img.apply_orientation(o);
    }
    let rgb = img.to_rgb8();
    Ok(Frame { width: rgb.width(), height: rgb.height(), rgb: rgb.into_raw() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order_compares_numbers_by_value() {
        let mut v: Vec<PathBuf> = ["f10.png", "f2.png", "f1.png", "g.png", "f02b.png"].iter().map(PathBuf::from).collect();
        v.sort_by_cached_key(|p| natural_key(p));
        let names: Vec<_> = v.iter().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(names, ["f1.png", "f2.png", "f02b.png", "f10.png", "g.png"]);
    }

    #[test]
    fn dimension_limits() {
        let p = Path::new("x");
        assert!(check_dimensions(p, 1920, 1080).is_ok());
        assert!(check_dimensions(p, 0, 10).is_err());
        assert!(check_dimensions(p, 20000, 10).is_err());
        assert!(check_dimensions(p, 16000, 16000).is_err());
    }
}
