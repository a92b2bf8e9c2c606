//! The embedding cache: a video's vision embeddings (after projector and pooling, before TTM) on
//! disk, so asking again about the same video skips decoding and encoding it. Entries are in the
//! format of `format.rs`.
//!
//! An entry is keyed by a hash of the video's content, the mmproj file's content and the frame
//! sampling settings, so a changed video, model or setting never hits a stale entry. An entry
//! carries a checksum of itself; a file that is truncated, corrupt, of another format version or
//! of another width is reported and rebuilt, never trusted. Writes go to a temporary file renamed
//! into place, so a crash leaves either the old entry or the new one.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::format::{self, VERSION};
use super::EncodedMedia;
use crate::error::{Error, Result, Setting};
use crate::media::{self, FrameSelection, Sampling};

/// What identifies one video's embeddings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheKey([u8; 32]);

impl CacheKey {
    /// The key of `video` (a file or a folder of frames) encoded by the vision model and encoder
    /// settings whose hash is `mmproj` and sampled with `sampling`. Reads the whole video.
    pub fn for_video(video: &Path, mmproj: &[u8; 32], sampling: &Sampling) -> Result<CacheKey> {
        let mut h = blake3::Hasher::new();
        h.update(b"dycoke video embeddings");
        h.update(&VERSION.to_le_bytes());
        h.update(mmproj);
        match sampling.selection() {
            FrameSelection::Count(n) => h.update(format!("count {n}").as_bytes()),
            FrameSelection::Fps(r) => h.update(format!("fps {}", r.to_bits()).as_bytes()),
        };
        h.update(format!(" max {}", sampling.max_frames()).as_bytes());
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

/// The outcome of a look-up.
#[derive(Debug)]
pub enum Lookup {
    Hit(EncodedMedia),
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
            return Err(Error::setting(Setting::CacheDir, format!("{} is not a folder", dir.display())));
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
        match format::decode(&bytes, &key.0, Some(n_embd)) {
            Ok(v) => Lookup::Hit(v),
            Err(why) => Lookup::Invalid(format!("{}: {why}", path.display())),
        }
    }

    /// Writes the entry of `key`, replacing any other.
    pub fn store(&self, key: &CacheKey, video: &EncodedMedia) -> Result<()> {
        let path = self.entry_path(key);
        let tmp = self.dir.join(format!("{}.{}.tmp", key.hex(), std::process::id()));
        let bytes = format::encode(video, &key.0)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> CacheKey {
        CacheKey([b; 32])
    }

    #[test]
    fn an_entry_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let cache = EmbeddingCache::open(dir.path().join("sub")).unwrap();
        assert!(matches!(cache.load(&key(1), 4), Lookup::Miss));
        let sample = super::super::format::tests::sample();
        cache.store(&key(1), &sample).unwrap();
        match cache.load(&key(1), 4) {
            Lookup::Hit(v) => assert_eq!((v.rows(), v.layout()), (sample.rows(), sample.layout())),
            other => panic!("{other:?}"),
        }
        assert!(matches!(cache.load(&key(2), 4), Lookup::Miss));
        let mut bytes = fs::read(cache.entry_path(&key(1))).unwrap();
        bytes[60] ^= 1;
        fs::write(cache.entry_path(&key(1)), bytes).unwrap();
        assert!(matches!(cache.load(&key(1), 4), Lookup::Invalid(_)));
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
        let s8 = Sampling::new(FrameSelection::Count(8), s.max_frames()).unwrap();
        assert_ne!(k, CacheKey::for_video(&a, &[0; 32], &s8).unwrap());
        fs::write(&b, b"another video").unwrap();
        assert_ne!(k, CacheKey::for_video(&b, &[0; 32], &s).unwrap());
        assert!(CacheKey::for_video(&dir.path().join("none.mp4"), &[0; 32], &s).is_err());
    }
}
