//! The embedding cache: a video's vision embeddings (after projector and pooling, before TTM) on
//! disk, so asking again about the same video skips decoding and encoding it.
//!
//! An entry is keyed by a hash of the video's content, the mmproj file's content and the frame
//! sampling settings, so a changed video, model or setting never hits a stale entry. An entry
//! carries a checksum of itself; a file that is truncated, corrupt, of another format version or
//! of another width is reported and rebuilt, never trusted. Writes go to a temporary file renamed
//! into place, so a crash leaves either the old entry or the new one.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::media::{self, FrameSelection, Sampling};

const MAGIC: &[u8; 8] = b"DYCKEMB\0";
const VERSION: u32 = 1;
/// No header this engine writes comes near this; a larger one means a corrupt file.
const MAX_HEADER: usize = 1 << 20;
const CHECKSUM: usize = 32;

/// What identifies one video's embeddings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheKey([u8; 32]);

impl CacheKey {
    /// The key of `video` (a file or a folder of frames) encoded by the mmproj with content hash
    /// `mmproj` and sampled with `sampling`. Reads the whole video.
    pub fn for_video(video: &Path, mmproj: &[u8; 32], sampling: &Sampling) -> Result<CacheKey> {
        let mut h = blake3::Hasher::new();
        h.update(b"dycoke video embeddings");
        h.update(&VERSION.to_le_bytes());
        h.update(mmproj);
        match sampling.selection {
            FrameSelection::Count(n) => h.update(format!("count {n}").as_bytes()),
            FrameSelection::Fps(r) => h.update(format!("fps {}", r.to_bits()).as_bytes()),
        };
        h.update(format!(" max {}", sampling.max_frames).as_bytes());
        if video.is_dir() {
            // A folder of frames: the frames in the order they are used, names and contents.
            for f in media::frame_files(video)? {
                h.update(f.file_name().map(|n| n.as_encoded_bytes()).unwrap_or_default());
                hash_file(&mut h, &f)?;
            }
        } else {
            hash_file(&mut h, video)?;
        }
        Ok(CacheKey(*h.finalize().as_bytes()))
    }

    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

fn hash_file(h: &mut blake3::Hasher, path: &Path) -> Result<()> {
    h.update_mmap(path).map_err(|e| Error::io(path, e))?;
    Ok(())
}

/// A video's embeddings as cached.
#[derive(Clone, Debug, PartialEq)]
pub struct CachedVideo {
    /// [n_rows][n_embd]: every frame's pooled tokens, then the newline.
    pub rows: Vec<f32>,
    pub n_embd: usize,
    pub frames: usize,
    pub tokens_per_frame: usize,
    pub frame_indices: Vec<usize>,
    pub note: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Header {
    n_embd: usize,
    n_rows: usize,
    frames: usize,
    tokens_per_frame: usize,
    frame_indices: Vec<usize>,
    note: Option<String>,
}

/// The outcome of a look-up.
#[derive(Debug)]
pub enum Lookup {
    Hit(CachedVideo),
    Miss,
    /// An entry exists but cannot be used (the reason); it will be rebuilt.
    Invalid(String),
}

/// A folder of cache entries.
#[derive(Clone, Debug)]
pub struct EmbeddingCache {
    dir: PathBuf,
}

impl EmbeddingCache {
    /// Opens (creating it if needed) the cache folder `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<EmbeddingCache> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        if !dir.is_dir() {
            return Err(Error::invalid("cache-dir", format!("{} is not a folder", dir.display())));
        }
        Ok(EmbeddingCache { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the entry of `key` lives.
    pub fn entry_path(&self, key: &CacheKey) -> PathBuf {
        self.dir.join(format!("{}.emb", key.hex()))
    }

    /// Reads the entry of `key`, expecting rows `n_embd` wide.
    pub fn load(&self, key: &CacheKey, n_embd: usize) -> Lookup {
        let path = self.entry_path(key);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Lookup::Miss,
            Err(e) => return Lookup::Invalid(format!("{}: {e}", path.display())),
        };
        match decode(&bytes, key, n_embd) {
            Ok(v) => Lookup::Hit(v),
            Err(why) => Lookup::Invalid(format!("{}: {why}", path.display())),
        }
    }

    /// Writes the entry of `key`, replacing any other.
    pub fn store(&self, key: &CacheKey, video: &CachedVideo) -> Result<()> {
        let path = self.entry_path(key);
        let tmp = self.dir.join(format!("{}.{}.tmp", key.hex(), std::process::id()));
        let bytes = encode(key, video)?;
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            Error::io(&path, e)
        })
    }
}

fn encode(key: &CacheKey, v: &CachedVideo) -> Result<Vec<u8>> {
    if v.n_embd == 0 || v.rows.len() % v.n_embd != 0 {
        return Err(Error::invalid("cache entry", format!("{} values are not rows of {}", v.rows.len(), v.n_embd)));
    }
    let header = Header {
        n_embd: v.n_embd,
        n_rows: v.rows.len() / v.n_embd,
        frames: v.frames,
        tokens_per_frame: v.tokens_per_frame,
        frame_indices: v.frame_indices.clone(),
        note: v.note.clone(),
    };
    let header = serde_json::to_vec(&header).expect("a plain struct serializes");
    let mut out = Vec::with_capacity(8 + 4 + 32 + 4 + header.len() + v.rows.len() * 4 + CHECKSUM);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&key.0);
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    for x in &v.rows {
        out.extend_from_slice(&x.to_le_bytes());
    }
    let sum = blake3::hash(&out);
    out.extend_from_slice(sum.as_bytes());
    Ok(out)
}

/// Parses and checks an entry; the error says what is wrong with it.
fn decode(bytes: &[u8], key: &CacheKey, n_embd: usize) -> std::result::Result<CachedVideo, String> {
    let fixed = MAGIC.len() + 4 + 32 + 4;
    if bytes.len() < fixed + CHECKSUM {
        return Err(format!("truncated ({} bytes)", bytes.len()));
    }
    if &bytes[..8] != MAGIC {
        return Err("not an embedding cache entry".into());
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(format!("format version {version}, this build writes {VERSION}"));
    }
    let (body, sum) = bytes.split_at(bytes.len() - CHECKSUM);
    if blake3::hash(body).as_bytes() != sum {
        return Err("checksum mismatch (the file is corrupt)".into());
    }
    if bytes[12..44] != key.0 {
        return Err("it belongs to another video, model or sampling".into());
    }
    let header_len = u32::from_le_bytes(bytes[44..48].try_into().expect("4 bytes")) as usize;
    if header_len > MAX_HEADER || fixed + header_len > body.len() {
        return Err(format!("header of {header_len} bytes does not fit"));
    }
    let header: Header = serde_json::from_slice(&body[fixed..fixed + header_len]).map_err(|e| format!("header: {e}"))?;
    let payload = &body[fixed + header_len..];
    if header.n_embd != n_embd {
        return Err(format!("rows are {} wide, the model needs {n_embd}", header.n_embd));
    }
    let expected = header.n_rows.checked_mul(n_embd).and_then(|n| n.checked_mul(4));
    if expected != Some(payload.len()) {
        return Err(format!("{} bytes of embeddings for {} rows of {n_embd}", payload.len(), header.n_rows));
    }
    if header.frames == 0 || header.frames.checked_mul(header.tokens_per_frame).and_then(|n| n.checked_add(1)) != Some(header.n_rows) {
        return Err(format!("{} rows are not {} frames of {} tokens and a newline", header.n_rows, header.frames, header.tokens_per_frame));
    }
    let rows: Vec<f32> = payload.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect();
    if rows.iter().any(|x| !x.is_finite()) {
        return Err("non-finite embeddings".into());
    }
    Ok(CachedVideo {
        rows,
        n_embd,
        frames: header.frames,
        tokens_per_frame: header.tokens_per_frame,
        frame_indices: header.frame_indices,
        note: header.note,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CachedVideo {
        CachedVideo {
            rows: (0..(2 * 3 + 1) * 4).map(|i| i as f32 * 0.5 - 3.0).collect(),
            n_embd: 4,
            frames: 2,
            tokens_per_frame: 3,
            frame_indices: vec![0, 7],
            note: Some("short video".into()),
        }
    }

    fn key(b: u8) -> CacheKey {
        CacheKey([b; 32])
    }

    #[test]
    fn an_entry_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let cache = EmbeddingCache::open(dir.path().join("sub")).unwrap();
        assert!(matches!(cache.load(&key(1), 4), Lookup::Miss));
        cache.store(&key(1), &sample()).unwrap();
        match cache.load(&key(1), 4) {
            Lookup::Hit(v) => assert_eq!(v, sample()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_corruption_is_detected() {
        let bytes = encode(&key(1), &sample()).unwrap();
        assert!(decode(&bytes, &key(1), 4).is_ok());
        // Any flipped byte, any truncation.
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(decode(&b, &key(1), 4).is_err(), "flip at {i}");
        }
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n], &key(1), 4).is_err(), "truncated to {n}");
        }
        assert!(decode(&bytes, &key(2), 4).unwrap_err().contains("another video"));
        assert!(decode(&bytes, &key(1), 8).unwrap_err().contains("wide"));
    }

    #[test]
    fn keys_depend_on_content_model_and_sampling() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.mp4"), dir.path().join("b.mp4"));
        fs::write(&a, b"one video").unwrap();
        fs::write(&b, b"one video").unwrap();
        let s = Sampling::default();
        let k = CacheKey::for_video(&a, &[0; 32], &s).unwrap();
        assert_eq!(k, CacheKey::for_video(&b, &[0; 32], &s).unwrap(), "same content, same key");
        assert_ne!(k, CacheKey::for_video(&a, &[1; 32], &s).unwrap());
        let s8 = Sampling { selection: FrameSelection::Count(8), ..s };
        assert_ne!(k, CacheKey::for_video(&a, &[0; 32], &s8).unwrap());
        fs::write(&b, b"another video").unwrap();
        assert_ne!(k, CacheKey::for_video(&b, &[0; 32], &s).unwrap());
        assert!(CacheKey::for_video(&dir.path().join("none.mp4"), &[0; 32], &s).is_err());
    }
}
