//! The body of the request parser's fuzz target, shared by the target (fuzz_targets/*.rs) and by
//! api/tests/fuzz_seeds.rs, which replays the seeds and every past finding through it. It takes
//! arbitrary bytes and must return without a panic or a hang, and what it accepts must keep the
//! promises of the parser's types.

use dycoke_api::{
    check_allowed_file, decode_data_url, parse_chat_request, parse_media_url, ApiError, ChatRequest, Limits, MediaSource, Part,
    Role,
};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Small limits, so that the fuzzer reaches them.
const SMALL: Limits = Limits { max_messages: 6, max_parts: 4, max_media: 3, max_text_bytes: 256 };

pub fn chat_request(data: &[u8]) {
    for limits in [Limits::default(), SMALL] {
        match parse_chat_request(data, &limits) {
            Ok(r) => accepted(&r, &limits),
            Err(e) => refused(&e),
        }
    }
    // The same bytes as a media URL, a data URL's payload, and a path under the allowed folder.
    let text = String::from_utf8_lossy(data);
    for url in [text.to_string(), format!("data:video/mp4;base64,{text}"), format!("file://{text}")] {
        match parse_media_url(&url, "u") {
            Ok(source) => source_ok(&source),
            Err(e) => refused(&e),
        }
    }
    if let Ok((mime, bytes)) = decode_data_url(&text, "u") {
        source_ok(&MediaSource::Data { mime, bytes });
    }
    let first = text.lines().next().unwrap_or_default();
    file_checked(&fixture().media.join(first));
}

/// What the types promise of an accepted request.
fn accepted(r: &ChatRequest, limits: &Limits) {
    assert!(!r.messages.is_empty() && r.messages.len() <= limits.max_messages);
    assert_eq!(r.messages.last().map(|m| m.role), Some(Role::User));
    let (mut media, mut text) = (0usize, 0usize);
    for m in &r.messages {
        assert!(m.parts.len() <= limits.max_parts.max(1));
        for p in &m.parts {
            match p {
                Part::Text(t) => {
                    assert!(!t.contains(['\u{E000}', '\u{E001}']));
                    text += t.len();
                }
                Part::Media(mp) => {
                    assert_eq!(m.role, Role::User);
                    let _ = mp.kind;
                    source_ok(&mp.source);
                    media += 1;
                }
            }
        }
    }
    assert!(media <= limits.max_media && text <= limits.max_text_bytes);
    assert!(r.stream || !r.include_usage);
    let _ = &r.model;
    let s = &r.sampling;
    assert_ne!(s.max_tokens, Some(0));
    assert!(s.stop.len() <= 4 && s.stop.iter().all(|x| !x.is_empty()));
    let _ = (s.top_k, s.seed, s.repeat_last_n);
    let v = &r.video;
    assert!(v.frames.is_none() || v.fps.is_none());
    let _ = v.max_frames;
    let c = &r.compression;
    let _ = (c.compress, c.dp_layer);
    for f in [s.temperature, s.top_p, s.min_p, s.repeat_penalty, v.fps, c.ttm_k, c.dp_ratio].into_iter().flatten() {
        assert!(f.is_finite());
    }
}

fn source_ok(source: &MediaSource) {
    match source {
        MediaSource::Data { mime, bytes } => {
            assert!(!bytes.is_empty());
            assert!(mime.contains('/') && !mime.bytes().any(|b| b.is_ascii_uppercase()));
        }
        MediaSource::File(path) => {
            assert!(path.is_absolute());
            file_checked(path);
        }
        MediaSource::Remote(url) => assert!(url.starts_with("http://") || url.starts_with("https://")),
    }
}

/// Every error is a 4xx with a message, and renders as OpenAI's JSON.
fn refused(e: &ApiError) {
    assert!((400..500).contains(&e.status), "{e:?}");
    assert!(!e.message.is_empty());
    let j = e.to_json();
    assert!(j["error"]["type"].is_string() && j["error"]["message"].is_string());
}

/// A folder with a file, a subfolder and links out of and into it, made once per process.
struct Fixture {
    media: PathBuf,
    real_media: PathBuf,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let root = std::env::temp_dir().join(format!("dycoke-api-fuzz-{}", std::process::id()));
        let media = root.join("media");
        let other = root.join("other");
        std::fs::create_dir_all(media.join("sub")).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(media.join("a.mp4"), b"x").unwrap();
        std::fs::write(media.join("sub/b.mp4"), b"x").unwrap();
        std::fs::write(other.join("secret.mp4"), b"x").unwrap();
        let _ = std::os::unix::fs::symlink(other.join("secret.mp4"), media.join("out.mp4"));
        let _ = std::os::unix::fs::symlink(&other, media.join("outdir"));
        let _ = std::os::unix::fs::symlink(media.join("a.mp4"), other.join("in.mp4"));
        let real_media = media.canonicalize().unwrap();
        Fixture { media, real_media }
    })
}

/// A path accepted by the folder check is a regular file inside the folder.
fn file_checked(path: &Path) {
    let f = fixture();
    match check_allowed_file(path, std::slice::from_ref(&f.media)) {
        Ok(real) => {
            assert!(real.starts_with(&f.real_media), "{path:?} -> {real:?}");
            assert!(real.is_file());
        }
        Err(e) => refused(&e),
    }
    assert_eq!(check_allowed_file(path, &[]).map_err(|e| e.status), Err(403));
}
