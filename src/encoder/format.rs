//! The on-disk form of an uncompressed video's embeddings, shared by the embedding cache and the
//! benchmarks' hand-over between processes.
//!
//! Layout: magic `DYCKEMB\0`, format version (u32 LE), a 32-byte identity (the cache key, or
//! zeros), a JSON header's length (u32 LE) and the header, the rows as f32 LE, and a BLAKE3
//! checksum of everything before it. A file that is truncated, corrupt, of another version, of
//! another identity or of another width is reported, never trusted.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{EncodedMedia, Layout, MediaTimings, VideoLayout};
use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"DYCKEMB\0";
pub(crate) const VERSION: u32 = 2;
/// No header this engine writes comes near this; a larger one means a corrupt file.
const MAX_HEADER: usize = 1 << 20;
const CHECKSUM: usize = 32;
const FIXED: usize = MAGIC.len() + 4 + 32 + 4;

/// The identity of a file written outside the cache.
pub(crate) const NO_KEY: [u8; 32] = [0; 32];

#[derive(Serialize, Deserialize)]
struct Header {
    n_embd: usize,
    n_rows: usize,
    frames: usize,
    tokens_per_frame: usize,
    frame_indices: Vec<usize>,
    note: Option<String>,
    source: PathBuf,
    decode_s: f64,
    encode_s: f64,
}

/// The bytes of `media`, an uncompressed video, under identity `key`.
pub(crate) fn encode(media: &EncodedMedia, key: &[u8; 32]) -> Result<Vec<u8>> {
    let v = match media.video() {
        Some(v) if v.ttm.is_none() => v,
        _ => return Err(Error::invalid("embeddings", format!("{}: only an uncompressed video's embeddings are stored", media.source().display()))),
    };
    let header = Header {
        n_embd: media.n_embd(),
        n_rows: media.n_rows(),
        frames: v.frames,
        tokens_per_frame: v.tokens_per_frame,
        frame_indices: v.frame_indices.clone(),
        note: media.note.clone(),
        source: media.source().to_path_buf(),
        decode_s: media.timings.decode.as_secs_f64(),
        encode_s: media.timings.encode.as_secs_f64(),
    };
    let header = serde_json::to_vec(&header).expect("a plain struct serializes");
    let mut out = Vec::with_capacity(FIXED + header.len() + media.rows().len() * 4 + CHECKSUM);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    for x in media.rows() {
        out.extend_from_slice(&x.to_le_bytes());
    }
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    Ok(out)
}

/// The width a file should have had, when it has another.
fn n_embd_expected(found: usize, want: Option<usize>) -> Option<usize> {
    want.filter(|&w| w != found)
}

/// Parses and checks a file (rows `n_embd` wide, when given); the error says what is wrong with it.
pub(crate) fn decode(bytes: &[u8], key: &[u8; 32], want_width: Option<usize>) -> std::result::Result<EncodedMedia, String> {
    if bytes.len() < FIXED + CHECKSUM {
        return Err(format!("truncated ({} bytes)", bytes.len()));
    }
    if &bytes[..8] != MAGIC {
        return Err("not a file of video embeddings".into());
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(format!("format version {version}, this build writes {VERSION}"));
    }
    let (body, sum) = bytes.split_at(bytes.len() - CHECKSUM);
    if blake3::hash(body).as_bytes() != sum {
        return Err("checksum mismatch (the file is corrupt)".into());
    }
    if &bytes[12..44] != key {
        return Err("it belongs to another video, model or sampling".into());
    }
    let header_len = u32::from_le_bytes(bytes[44..48].try_into().expect("4 bytes")) as usize;
    if header_len > MAX_HEADER || FIXED + header_len > body.len() {
        return Err(format!("header of {header_len} bytes does not fit"));
    }
    let h: Header = serde_json::from_slice(&body[FIXED..FIXED + header_len]).map_err(|e| format!("header: {e}"))?;
    let payload = &body[FIXED + header_len..];
    let n_embd = h.n_embd;
    if let Some(want) = n_embd_expected(n_embd, want_width) {
        return Err(format!("rows are {n_embd} wide, the model needs {want}"));
    }
    let expected = h.n_rows.checked_mul(n_embd).and_then(|n| n.checked_mul(4));
    if expected != Some(payload.len()) {
        return Err(format!("{} bytes of embeddings for {} rows of {n_embd}", payload.len(), h.n_rows));
    }
    if h.frames == 0 || h.frames.checked_mul(h.tokens_per_frame).and_then(|n| n.checked_add(1)) != Some(h.n_rows) {
        return Err(format!("{} rows are not {} frames of {} tokens and a newline", h.n_rows, h.frames, h.tokens_per_frame));
    }
    let rows: Vec<f32> = payload.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect();
    if rows.iter().any(|x| !x.is_finite()) {
        return Err("non-finite embeddings".into());
    }
    let layout = Layout::Video(VideoLayout { frames: h.frames, tokens_per_frame: h.tokens_per_frame, frame_indices: h.frame_indices, ttm: None });
    let mut media = EncodedMedia::new(h.source, rows, n_embd, layout).map_err(|e| e.to_string())?;
    media.note = h.note;
    let secs = |s: f64| Duration::from_secs_f64(if s.is_finite() { s.clamp(0.0, 1e9) } else { 0.0 });
    media.timings = MediaTimings { decode: secs(h.decode_s), encode: secs(h.encode_s), ttm: Duration::ZERO };
    Ok(media)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> EncodedMedia {
        let rows = (0..(2 * 3 + 1) * 4).map(|i| i as f32 * 0.5 - 3.0).collect();
        let layout = Layout::Video(VideoLayout { frames: 2, tokens_per_frame: 3, frame_indices: vec![0, 7], ttm: None });
        let mut m = EncodedMedia::new("clip.mp4", rows, 4, layout).unwrap();
        m.note = Some("short video".into());
        m.timings.decode = Duration::from_millis(250);
        m
    }

    #[test]
    fn a_file_round_trips() {
        let m = sample();
        let back = decode(&encode(&m, &[1; 32]).unwrap(), &[1; 32], Some(4)).unwrap();
        assert_eq!((back.rows(), back.layout(), back.source(), &back.note), (m.rows(), m.layout(), m.source(), &m.note));
        assert_eq!(back.key(), m.key());
        assert_eq!(back.timings.decode, m.timings.decode);
    }

    #[test]
    fn every_corruption_is_detected() {
        let bytes = encode(&sample(), &[1; 32]).unwrap();
        assert!(decode(&bytes, &[1; 32], Some(4)).is_ok());
        // Any flipped byte, any truncation.
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(decode(&b, &[1; 32], Some(4)).is_err(), "flip at {i}");
        }
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n], &[1; 32], Some(4)).is_err(), "truncated to {n}");
        }
        assert!(decode(&bytes, &[2; 32], Some(4)).unwrap_err().contains("another video"));
        assert!(decode(&bytes, &[1; 32], Some(8)).unwrap_err().contains("wide"));
    }

    #[test]
    fn compressed_videos_and_images_are_not_stored() {
        let m = sample().with_ttm(crate::compress::TtmSettings::new(0.5).unwrap()).unwrap();
        assert!(encode(&m, &NO_KEY).is_err());
        let image = EncodedMedia::new("a.png", vec![0.0; 8], 4, Layout::Image { crops: 1 }).unwrap();
        assert!(encode(&image, &NO_KEY).is_err());
    }
}
