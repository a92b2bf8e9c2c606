//! Video decoding with FFmpeg's libraries (through ffmpeg-next): every container and codec the
//! system's FFmpeg supports, B-frames included.
//!
//! A first pass reads the stream's packets without decoding them to learn the frame count and each
//! frame's presentation timestamp (and which packets are keyframes). Sampled frame indices become
//! timestamps; the decoder then seeks to the keyframe before each target when the target lies in a
//! later group of pictures, and decodes forward until the frame with that timestamp comes out.
//! Matching by timestamp keeps B-frame reordering from shifting frames.
//!
//! Colour: frames go through FFmpeg's `scale` filter to RGB24, which reads the matrix (BT.601,
//! BT.709, BT.2020, ...) and the range (limited or full) from each frame's metadata; untagged
//! frames are treated as BT.601 limited range, FFmpeg's default.

use std::path::Path;
use std::sync::Once;

use ffmpeg_next as ff;
use ff::format::Pixel;
use ff::media::Type;

use super::{check_dimensions, Frame};
use crate::error::{Error, Result};

fn init() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = ff::init();
        // FFmpeg's own log would interleave with our output; errors come back as values.
        ff::util::log::set_level(ff::util::log::Level::Quiet);
    });
}

/// What the index pass learned about a video stream.
#[derive(Clone, Debug)]
pub struct VideoInfo {
    /// Frames (video packets) in the stream.
    pub total_frames: usize,
    /// Average frame rate (frames per second), when known.
    pub fps: f64,
    pub width: u32,
    pub height: u32,
    pub codec: String,
    /// Duration in seconds, when known.
    pub duration: f64,
}

struct StreamIndex {
    /// Presentation timestamps of every frame, ascending (frame i has pts[i]).
    pts: Vec<i64>,
    /// Timestamps of keyframes, ascending.
    keyframes: Vec<i64>,
    /// Whether every packet had a timestamp (otherwise frames are counted in output order).
    complete: bool,
}

struct Opened {
    input: ff::format::context::Input,
    stream: usize,
    time_base: ff::Rational,
    decoder: ff::decoder::Video,
    info: VideoInfo,
}

fn fail(path: &Path, message: impl Into<String>) -> Error {
    Error::media(path, message)
}

fn open(path: &Path, threads: usize) -> Result<Opened> {
    init();
    if std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len() == 0 {
        return Err(fail(path, "the file is empty"));
    }
    let input = ff::format::input(&path).map_err(|e| fail(path, format!("cannot read it as a video ({e})")))?;
    let (stream, time_base, params, rate, duration) = {
        let s = input
            .streams()
            .best(Type::Video)
            .ok_or_else(|| fail(path, format!("it has no video stream (container {})", input.format().name())))?;
        let dur = if s.duration() > 0 { s.duration() as f64 * f64::from(s.time_base()) } else { input.duration() as f64 / 1e6 };
        (s.index(), s.time_base(), s.parameters(), s.avg_frame_rate(), dur.max(0.0))
    };
    let codec_id = params.id();
    if ff::decoder::find(codec_id).is_none() {
        return Err(fail(path, format!("this FFmpeg has no decoder for its codec {codec_id:?}")));
    }
    let mut ctx = ff::codec::context::Context::from_parameters(params).map_err(|e| fail(path, format!("bad codec parameters ({e})")))?;
    let mut threading = ff::threading::Config::kind(ff::threading::Type::Frame);
    threading.count = threads.max(1);
    ctx.set_threading(threading);
    let decoder = ctx.decoder().video().map_err(|e| fail(path, format!("cannot start the {codec_id:?} decoder ({e})")))?;
    let (width, height) = (decoder.width(), decoder.height());
    if width > 0 && height > 0 {
        check_dimensions(path, width, height)?;
    }
    let fps = if rate.denominator() != 0 && rate.numerator() > 0 { f64::from(rate) } else { 0.0 };
    let info = VideoInfo { total_frames: 0, fps, width, height, codec: format!("{codec_id:?}").to_lowercase(), duration };
    Ok(Opened { input, stream, time_base, decoder, info })
}

/// Reads every packet of the stream (no decoding) to index its frames.
fn index(path: &Path, o: &mut Opened) -> Result<StreamIndex> {
    let mut pts = Vec::new();
    let mut keyframes = Vec::new();
    let mut complete = true;
    let mut invalid_in_a_row = 0;
    loop {
        // A fresh packet each time: reading into a used one does not release its buffer (found
        // by fuzzing: a leak per packet).
        let mut packet = ff::Packet::empty();
        match packet.read(&mut o.input) {
            Ok(()) => invalid_in_a_row = 0,
            Err(ff::Error::Eof) => break,
            Err(ff::Error::InvalidData) => {
                invalid_in_a_row += 1;
                if invalid_in_a_row > 1000 {
                    return Err(fail(path, "the data is corrupt (no readable packets)"));
                }
                continue;
            }
            Err(e) => return Err(fail(path, format!("reading failed ({e})"))),
        }
        if packet.stream() != o.stream {
            continue;
        }
        match packet.pts() {
            Some(t) => {
                pts.push(t);
                if packet.is_key() {
                    keyframes.push(t);
                }
            }
            None => {
                complete = false;
                pts.push(pts.len() as i64);
            }
        }
    }
    pts.sort_unstable();
    pts.dedup();
    keyframes.sort_unstable();
    Ok(StreamIndex { pts, keyframes, complete })
}

/// Opens a video and indexes it.
pub fn probe(path: &Path) -> Result<VideoInfo> {
    let mut o = open(path, 1)?;
    let idx = index(path, &mut o)?;
    Ok(VideoInfo { total_frames: idx.pts.len(), ..o.info })
}

/// Converts decoded frames to RGB24 through FFmpeg's scale filter, which takes the colour matrix
/// and range from each frame's metadata. The flags are swscale's defaults for an unscaled
/// conversion, so 8-bit sources convert exactly as PyAV (and most FFmpeg-based decoders) do.
struct RgbConverter {
    graph: ff::filter::Graph,
    key: (u32, u32, Pixel),
}

impl RgbConverter {
    fn new(path: &Path, frame: &ff::frame::Video) -> Result<RgbConverter> {
        let bad = |e: ff::Error| fail(path, format!("cannot convert its frames to RGB ({e})"));
        let mut graph = ff::filter::Graph::new();
        let format: ff::ffi::AVPixelFormat = frame.format().into();
        let args = format!("video_size={}x{}:pix_fmt={}:time_base=1/1:pixel_aspect=1/1", frame.width(), frame.height(), format as i32);
        let buffer = ff::filter::find("buffer").ok_or_else(|| fail(path, "FFmpeg lacks the buffer filter"))?;
        let sink = ff::filter::find("buffersink").ok_or_else(|| fail(path, "FFmpeg lacks the buffersink filter"))?;
        graph.add(&buffer, "in", &args).map_err(bad)?;
        graph.add(&sink, "out", "").map_err(bad)?;
        graph.get("out").expect("just added").set_pixel_format(Pixel::RGB24);
        graph
            .output("in", 0)
            .and_then(|p| p.input("out", 0))
            .and_then(|p| p.parse("scale=w=iw:h=ih:flags=bicubic:out_range=pc,format=rgb24"))
            .map_err(bad)?;
        graph.validate().map_err(bad)?;
        Ok(RgbConverter { graph, key: (frame.width(), frame.height(), frame.format()) })
    }

    fn convert(&mut self, path: &Path, frame: &ff::frame::Video) -> Result<Frame> {
        let bad = |e: ff::Error| fail(path, format!("cannot convert a frame to RGB ({e})"));
        self.graph.get("in").expect("source").source().add(frame).map_err(bad)?;
        let mut rgb = ff::frame::Video::empty();
        self.graph.get("out").expect("sink").sink().frame(&mut rgb).map_err(bad)?;
        let (w, h) = (rgb.width() as usize, rgb.height() as usize);
        let stride = rgb.stride(0);
        let plane = rgb.data(0);
        let mut data = Vec::with_capacity(w * h * 3);
        for row in 0..h {
            data.extend_from_slice(&plane[row * stride..row * stride + w * 3]);
        }
        Ok(Frame { width: w as u32, height: h as u32, rgb: data })
    }
}

/// Decoding state: the converter, and where decoding stands.
struct Decoding<'a> {
    path: &'a Path,
    threads: usize,
    o: Opened,
    converter: Option<RgbConverter>,
    eof_sent: bool,
    /// The keyframe most recently sent to the decoder.
    at_keyframe: Option<i64>,
    /// Timestamp of the last frame out of the decoder.
    last_out: Option<i64>,
    /// Frames out of the decoder so far (their order stands in for missing timestamps).
    output_count: i64,
    /// Seeking is given up after it once landed past its target.
    can_seek: bool,
}

impl<'a> Decoding<'a> {
    fn new(path: &'a Path, threads: usize) -> Result<Decoding<'a>> {
        Ok(Decoding {
            path,
            threads,
            o: open(path, threads)?,
            converter: None,
            eof_sent: false,
            at_keyframe: None,
            last_out: None,
            output_count: 0,
            can_seek: true,
        })
    }

    /// The next frame out of the decoder, feeding it packets as needed; None at the end.
    fn next_frame(&mut self) -> Result<Option<(i64, ff::frame::Video)>> {
        let mut frame = ff::frame::Video::empty();
        loop {
            if self.o.decoder.receive_frame(&mut frame).is_ok() {
                let t = frame.timestamp().or(frame.pts()).unwrap_or(self.output_count);
                self.output_count += 1;
                self.last_out = Some(t);
                check_dimensions(self.path, frame.width(), frame.height())?;
                return Ok(Some((t, frame)));
            }
            if self.eof_sent {
                return Ok(None);
            }
            let mut packet = ff::Packet::empty();
            match packet.read(&mut self.o.input) {
                Ok(()) if packet.stream() != self.o.stream => {}
                Ok(()) => {
                    if packet.is_key() {
                        self.at_keyframe = packet.pts().or(self.at_keyframe);
                    }
                    // A corrupt packet is skipped, as FFmpeg's tools do; the frame it held is lost.
                    let _ = self.o.decoder.send_packet(&packet);
                }
                Err(ff::Error::Eof) => {
                    let _ = self.o.decoder.send_eof();
                    self.eof_sent = true;
                }
                Err(ff::Error::InvalidData) => {}
                Err(e) => return Err(fail(self.path, format!("reading failed ({e})"))),
            }
        }
    }

    /// Seeks to the keyframe at `pts` if the decoder has not reached its group of pictures yet.
    /// Returns whether it seeked.
    fn seek_if_ahead(&mut self, keyframe: i64) -> bool {
        let reached = self.at_keyframe.is_some_and(|k| k >= keyframe) || self.last_out.is_some_and(|t| t >= keyframe);
        if reached || !self.can_seek {
            return false;
        }
        let us = keyframe.rescale(self.o.time_base, ff::rescale::TIME_BASE);
        if self.o.input.seek(us, ..us).is_err() {
            self.can_seek = false;
            return false;
        }
        self.o.decoder.flush();
        self.eof_sent = false;
        self.at_keyframe = None;
        self.last_out = None;
        true
    }

    /// Starts over from the beginning of the file, decoding sequentially from now on.
    fn restart_without_seeking(&mut self) -> Result<()> {
        self.o = open(self.path, self.threads)?;
        self.eof_sent = false;
        self.at_keyframe = None;
        self.last_out = None;
        self.output_count = 0;
        self.can_seek = false;
        Ok(())
    }

    fn rgb(&mut self, frame: &ff::frame::Video) -> Result<Frame> {
        let key = (frame.width(), frame.height(), frame.format());
        if self.converter.as_ref().is_none_or(|c| c.key != key) {
            self.converter = Some(RgbConverter::new(self.path, frame)?);
        }
        self.converter.as_mut().expect("set above").convert(self.path, frame)
    }
}

/// Decodes the frames `choose` picks (ascending indices) given the index pass's information.
/// `progress(done, total)` follows the decoding; returning false stops it (`Error::Cancelled`).
pub fn decode(
    path: &Path,
    threads: usize,
    choose: &mut dyn FnMut(&VideoInfo) -> Result<Vec<usize>>,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<(VideoInfo, Vec<Frame>)> {
    let mut first = open(path, threads)?;
    let idx = index(path, &mut first)?;
    if idx.pts.is_empty() {
        return Err(fail(path, format!("its {} stream has no frames", first.info.codec)));
    }
    let info = VideoInfo { total_frames: idx.pts.len(), ..first.info.clone() };
    drop(first);
    let indices = choose(&info)?;
    let mut d = Decoding::new(path, threads)?;
    d.can_seek = idx.complete;
    let mut frames = Vec::with_capacity(indices.len());
    // A frame that came out of the decoder but was not used yet.
    let mut pending: Option<(i64, ff::frame::Video)> = None;
    for (n, &i) in indices.iter().enumerate() {
        let target = if idx.complete { idx.pts[i] } else { i as i64 };
        let keyframe = idx.keyframes.iter().rev().find(|&&k| k <= target).copied();
        let seeked = keyframe.is_some_and(|k| d.seek_if_ahead(k));
        if seeked {
            pending = None;
        }
        // Decode until the target comes out (or the first frame after it, if it was lost).
        let (t, f) = loop {
            if let Some((t, f)) = pending.take() {
                if t >= target {
                    break (t, f);
                }
            }
            match d.next_frame()? {
                Some(out) => pending = Some(out),
                None => {
                    return Err(fail(path, format!("frame {i} of {} could not be decoded (the file is truncated or corrupt)", info.total_frames)))
                }
            }
        };
        if seeked && t > target {
            // The seek landed past the target: this container seeks imprecisely. Start over and
            // decode sequentially.
            d.restart_without_seeking()?;
            let (t2, f2) = loop {
                match d.next_frame()? {
                    Some((t2, f2)) if t2 >= target => break (t2, f2),
                    Some(_) => {}
                    None => return Err(fail(path, format!("frame {i} could not be decoded"))),
                }
            };
            frames.push(d.rgb(&f2)?);
            pending = (t2 > target).then_some((t2, f2));
        } else {
            frames.push(d.rgb(&f)?);
            // A frame past a lost target may be the next target's.
            pending = (t > target).then_some((t, f));
        }
        if !progress(n + 1, indices.len()) {
            return Err(Error::Cancelled);
        }
    }
    Ok((info, frames))
}

use ff::Rescale;
