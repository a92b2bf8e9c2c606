//! Media a request sends: where the bytes come from (data: URLs, files under the folders the
//! operator allows, http(s) when allowed) and their embeddings, shared by every session.
//!
//! One vision context serves all sessions (the vision tower is the costly part, and two encodes at
//! once would only share the same cores), and the uncompressed embeddings of recent media stay in
//! memory, keyed by content and sampling, so a follow-up question, or another client asking about
//! the same video, skips decoding and encoding; each conversation applies its own TTM to them.
//! With `--cache-dir` they are also kept on disk.

use std::collections::VecDeque;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dycoke::encoder::{EncodedMedia, MediaEncoder};
use dycoke::media::Sampling;
use dycoke::progress::Progress;
use dycoke_api::{check_allowed_file, ApiError, MediaKind, MediaSource};

use super::metrics::MediaCounts;
use super::turns::Turns;

/// What the operator allows requests to point at.
#[derive(Clone, Debug)]
pub struct MediaPolicy {
    /// Folders `file://` URLs may read from (none: file URLs are refused).
    pub allowed_dirs: Vec<PathBuf>,
    /// Whether `http(s)://` URLs are fetched.
    pub allow_remote: bool,
    /// Largest medium, in bytes (data: URLs, downloads).
    pub max_bytes: u64,
    /// Time limit of a download.
    pub fetch_timeout: Duration,
}

/// A medium of a request, resolved but not yet encoded.
pub struct MediaInput {
    pub kind: MediaKind,
    /// Where it is in the request (`messages[1].content[0]`), for errors.
    pub label: String,
    content: Content,
}

enum Content {
    /// Bytes sent in the request or downloaded, with their hash (computed once, when resolved).
    Bytes { bytes: Arc<Vec<u8>>, hash: [u8; 32], extension: &'static str },
    File(PathBuf),
}

impl Content {
    fn bytes(bytes: Vec<u8>, mime: &str, kind: MediaKind) -> Content {
        let hash = *blake3::hash(&bytes).as_bytes();
        Content::Bytes { bytes: Arc::new(bytes), hash, extension: extension(mime, kind) }
    }
}

impl MediaInput {
    /// An identity of the content for choosing a session (equal media, equal identity): the bytes'
    /// hash, or a file's path, size and modification time (hashing a large file is left to the
    /// encode, off the async threads).
    pub fn identity(&self) -> [u8; 32] {
        match &self.content {
            Content::Bytes { hash, .. } => *hash,
            Content::File(p) => {
                let meta = std::fs::metadata(p).ok();
                let stamp = meta.as_ref().map(|m| (m.len(), m.modified().ok()));
                *blake3::hash(format!("{}{stamp:?}", p.display()).as_bytes()).as_bytes()
            }
        }
    }
}

/// Resolves a request's media source under `policy`. Blocking (a download): run it off the async
/// threads.
pub fn resolve(kind: MediaKind, source: MediaSource, label: String, policy: &MediaPolicy) -> Result<MediaInput, ApiError> {
    let content = match source {
        MediaSource::Data { mime, bytes } => {
            if bytes.len() as u64 > policy.max_bytes {
                return Err(located(too_large(policy.max_bytes), &label));
            }
            Content::bytes(bytes, &mime, kind)
        }
        MediaSource::File(path) => Content::File(check_allowed_file(&path, &policy.allowed_dirs).map_err(|e| located(e, &label))?),
        MediaSource::Remote(url) => {
            if !policy.allow_remote {
                return Err(ApiError::invalid(format!("{label}.url"), "http(s) media URLs are disabled on this server (it was started without --allow-remote-media); send the file as a data: URL").with_status(403));
            }
            let (bytes, mime) = fetch(&url, policy).map_err(|e| located(e, &label))?;
            Content::bytes(bytes, &mime, kind)
        }
    };
    Ok(MediaInput { kind, label, content })
}

fn located(mut e: ApiError, label: &str) -> ApiError {
    if e.param.is_none() {
        e.param = Some(format!("{label}.url"));
    }
    e
}

fn too_large(max: u64) -> ApiError {
    ApiError::new(413, format!("the medium is larger than this server's limit of {} MiB", max >> 20))
}

/// Downloads `url` within the policy's size and time limits (at most 3 redirects).
fn fetch(url: &str, policy: &MediaPolicy) -> Result<(Vec<u8>, String), ApiError> {
    let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(policy.fetch_timeout)).max_redirects(3).http_status_as_error(false).build().into();
    let failed = |why: String| ApiError::new(400, format!("could not fetch {url}: {why}")).with_code("media_fetch_failed");
    let mut response = agent.get(url).call().map_err(|e| failed(e.to_string()))?;
    let status = response.status();
    if !status.is_success() {
        return Err(failed(format!("HTTP {status}")));
    }
    let mime = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let mut bytes = Vec::new();
    let mut reader = response.body_mut().with_config().limit(policy.max_bytes + 1).reader();
    reader.read_to_end(&mut bytes).map_err(|e| failed(e.to_string()))?;
    if bytes.len() as u64 > policy.max_bytes {
        return Err(too_large(policy.max_bytes));
    }
    Ok((bytes, mime))
}

/// A file extension for bytes of `mime`: FFmpeg and the image reader probe the content, the
/// extension only helps them guess.
fn extension(mime: &str, kind: MediaKind) -> &'static str {
    let mime = mime.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match mime.as_str() {
        "image/png" => "png",
        "image/jpeg" | "image/jpg" => "jpg",
        "video/webm" => "webm",
        "video/x-matroska" => "mkv",
        "video/quicktime" => "mov",
        "video/x-msvideo" => "avi",
        _ if kind == MediaKind::Image => "img",
        _ => "mp4",
    }
}

/// The shared encoder and the in-memory embedding cache.
pub struct MediaStore {
    encoder: Mutex<MediaEncoder>,
    cache: Mutex<Lru>,
    temp: tempfile::TempDir,
}

/// Recently used embeddings, bounded in bytes.
struct Lru {
    entries: VecDeque<([u8; 32], Arc<EncodedMedia>)>,
    bytes: usize,
    max_bytes: usize,
}

impl Lru {
    fn get(&mut self, key: &[u8; 32]) -> Option<Arc<EncodedMedia>> {
        let i = self.entries.iter().position(|(k, _)| k == key)?;
        let entry = self.entries.remove(i)?;
        let media = entry.1.clone();
        self.entries.push_back(entry);
        Some(media)
    }

    fn insert(&mut self, key: [u8; 32], media: Arc<EncodedMedia>) {
        let size = media.rows().len() * 4;
        if size > self.max_bytes {
            return;
        }
        self.bytes += size;
        self.entries.push_back((key, media));
        while self.bytes > self.max_bytes {
            let Some((_, old)) = self.entries.pop_front() else { break };
            self.bytes -= old.rows().len() * 4;
        }
    }
}

/// Locks that survive a panic elsewhere (the data they guard stays consistent between calls).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl MediaStore {
    pub fn new(encoder: MediaEncoder, memory_bytes: usize) -> std::io::Result<MediaStore> {
        let temp = tempfile::Builder::new().prefix("dycoke-serve-").tempdir()?;
        Ok(MediaStore { encoder: Mutex::new(encoder), cache: Mutex::new(Lru { entries: VecDeque::new(), bytes: 0, max_bytes: memory_bytes }), temp })
    }

    /// The uncompressed embeddings of `input` sampled by `sampling`. Blocking. The encode takes
    /// turns at the CPU with the sessions; call it without holding a turn (the encoder's lock is
    /// always taken before a turn).
    pub fn encode(&self, input: &MediaInput, sampling: &Sampling, turns: &Turns, progress: &mut Progress, counts: &mut MediaCounts) -> dycoke::Result<EncodedMedia> {
        let content_hash = match &input.content {
            Content::Bytes { hash, .. } => *hash,
            Content::File(p) => {
                let mut h = blake3::Hasher::new();
                h.update_mmap(p).map_err(|e| dycoke::Error::io(p, e))?;
                *h.finalize().as_bytes()
            }
        };
        let mut key = blake3::Hasher::new();
        key.update(&content_hash);
        key.update(format!("{:?} {sampling:?}", input.kind).as_bytes());
        let key = *key.finalize().as_bytes();
        if let Some(media) = lock(&self.cache).get(&key) {
            counts.memory_hits += 1;
            return Ok((*media).clone());
        }
        // Bytes become a file for the decoders, named by their hash, removed after the encode.
        let (path, temporary) = match &input.content {
            Content::File(p) => (p.clone(), false),
            Content::Bytes { bytes, extension, .. } => {
                let p = self.temp.path().join(format!("{}.{extension}", blake3::Hash::from(content_hash).to_hex()));
                std::fs::write(&p, bytes.as_slice()).map_err(|e| dycoke::Error::io(&p, e))?;
                (p, true)
            }
        };
        let result = {
            let mut encoder = lock(&self.encoder);
            let turn = turns.take();
            let mut progress = |phase, done, total| {
                turn.pass();
                progress(phase, done, total)
            };
            let before = encoder.counters();
            let result = match input.kind {
                MediaKind::Video => encoder.encode_video(&path, sampling, None, &mut progress),
                MediaKind::Image => encoder.encode_image(&path, &mut progress),
            };
            let after = encoder.counters();
            counts.vision_encodes += (after.vision_encodes - before.vision_encodes) as u64;
            counts.disk_hits += (after.cache_hits - before.cache_hits) as u64;
            counts.frames_encoded += (after.frames_encoded - before.frames_encoded) as u64;
            counts.frames_reused += (after.frames_reused - before.frames_reused) as u64;
            result
        };
        if temporary {
            let _ = std::fs::remove_file(&path);
        }
        let media = result?;
        lock(&self.cache).insert(key, Arc::new(media.clone()));
        Ok(media)
    }
}

/// The source of an error about `path` as the client knows it: temporary files are ours.
pub fn is_temporary(store: &MediaStore, path: &Path) -> bool {
    path.starts_with(store.temp.path())
}
