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
    // The bytes as a body, and as the choices of a generator of well-formed JSON requests, which
    // reaches the schema checks far more often than mutated bytes do.
    for body in [data.to_vec(), generated(data).into_bytes()] {
        for limits in [Limits::default(), SMALL] {
            match parse_chat_request(&body, &limits) {
                Ok(r) => accepted(&r, &limits),
                Err(e) => refused(&e),
            }
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
    root: PathBuf,
    media: PathBuf,
    real_media: PathBuf,
}

/// Removes the fixture folder; for the replay test (a fuzzing process leaves its one folder).
pub fn remove_fixture() {
    let _ = std::fs::remove_dir_all(&fixture().root);
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
        Fixture { root, media, real_media }
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

/// Choices read from the fuzzer's bytes; zeros once they run out.
struct Choices<'a>(&'a [u8]);

impl Choices<'_> {
    fn byte(&mut self) -> u8 {
        let (first, rest) = self.0.split_first().map_or((0, &[][..]), |(f, r)| (*f, r));
        self.0 = rest;
        first
    }

    fn pick<'b>(&mut self, from: &[&'b str]) -> &'b str {
        from.get(usize::from(self.byte()) % from.len().max(1)).copied().unwrap_or_default()
    }

    /// Up to 15 bytes of the input as text, sometimes with a marker character in it.
    fn text(&mut self) -> String {
        let n = usize::from(self.byte() % 16).min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        let mut t = String::from_utf8_lossy(head).into_owned();
        match self.byte() % 16 {
            0 => t.push('\u{E000}'),
            1 => t.insert(0, '\u{E001}'),
            _ => {}
        }
        t
    }
}

fn quoted(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out + "\""
}

const KEYS: &[&str] = &[
    "model", "stream", "stream_options", "include_usage", "max_tokens", "max_completion_tokens", "temperature", "top_p",
    "top_k", "min_p", "seed", "repeat_penalty", "repeat_last_n", "stop", "frames", "fps", "max_frames", "compress", "ttm_k",
    "dp_ratio", "dp_layer", "media_io_kwargs", "video", "num_frames", "n", "presence_penalty", "frequency_penalty",
    "logprobs", "top_logprobs", "tools", "tool_choice", "functions", "function_call", "response_format", "logit_bias", "type",
    "user", "url", "data", "format",
];

/// Any JSON value, biased to the shapes the request's fields take.
fn value(c: &mut Choices, depth: u32) -> String {
    let scalars = [
        "null", "true", "false", "0", "1", "2", "4", "16", "-1", "0.5", "1.0", "2.5", "-2.5", "1e3", "1e39", "4294967296",
        "18446744073709551615", "18446744073709551616", "\"none\"", "\"text\"", "\"auto\"", "\"mp4\"",
    ];
    match c.byte() % 8 {
        0..=3 => c.pick(&scalars).to_string(),
        4 => quoted(&c.text()),
        5 if depth < 3 => format!("[{}]", (0..c.byte() % 6).map(|_| value(c, depth + 1)).collect::<Vec<_>>().join(",")),
        _ if depth < 3 => object(c, depth + 1),
        _ => "{}".to_string(),
    }
}

fn object(c: &mut Choices, depth: u32) -> String {
    let fields: Vec<String> = (0..c.byte() % 4).map(|_| format!("{}:{}", quoted(c.pick(KEYS)), value(c, depth))).collect();
    format!("{{{}}}", fields.join(","))
}

fn media_url(c: &mut Choices) -> String {
    let media = fixture().media.display().to_string();
    let prefix = match c.byte() % 14 {
        0 => "data:video/mp4;base64,".to_string(),
        1 => "data:image/png;base64,".to_string(),
        2 => "data:;base64,".to_string(),
        3 => "data:video/mp4,".to_string(),
        4 => "file://".to_string(),
        5 => "file://localhost/".to_string(),
        6 | 7 => format!("file://{media}/"),
        8 => "http://".to_string(),
        9 => "https://example.com/".to_string(),
        10 => "ftp://".to_string(),
        11 => "javascript:".to_string(),
        _ => String::new(),
    };
    let tail = match c.byte() % 4 {
        0 => c.pick(&["a.mp4", "sub/b.mp4", "out.mp4", "outdir/secret.mp4", "../other/secret.mp4", "sub", "%2e%2e/other/secret.mp4", "a%00.mp4"]).to_string(),
        1 => c.pick(&["AAEC", "AA==", "AA", "A", "", "AA\nEC", "A$A="]).to_string(),
        _ => c.text(),
    };
    prefix + &tail
}

fn part(c: &mut Choices) -> String {
    let kind = c.pick(&["text", "image_url", "video_url", "input_video", "input_audio", "", "text", "video_url"]);
    let body = match kind {
        "text" => match c.byte() % 4 {
            0 => format!("\"text\":{}", value(c, 2)),
            _ => format!("\"text\":{}", quoted(&c.text())),
        },
        "image_url" | "video_url" => match c.byte() % 4 {
            0 => format!("{}:{}", quoted(kind), quoted(&media_url(c))),
            1 => format!("{}:{}", quoted(kind), value(c, 2)),
            _ => format!("{}:{{\"url\":{}}}", quoted(kind), quoted(&media_url(c))),
        },
        "input_video" => match c.byte() % 4 {
            0 => format!("\"input_video\":{{\"url\":{}}}", quoted(&media_url(c))),
            1 => format!("\"input_video\":{}", object(c, 2)),
            _ => format!("\"input_video\":{{\"data\":{},\"format\":{}}}", quoted(&c.text()), value(c, 2)),
        },
        _ => format!("\"{kind}\":{}", value(c, 2)),
    };
    if kind.is_empty() { format!("{{{body}}}") } else { format!("{{\"type\":{},{body}}}", quoted(kind)) }
}

fn message(c: &mut Choices) -> String {
    let role = c.pick(&["user", "user", "user", "system", "assistant", "developer", "tool", "robot", ""]);
    let content = match c.byte() % 6 {
        0 => String::new(),
        1 => ",\"content\":null".to_string(),
        2 => format!(",\"content\":{}", quoted(&c.text())),
        3 => format!(",\"content\":{}", value(c, 2)),
        _ => format!(",\"content\":[{}]", (0..c.byte() % 6).map(|_| part(c)).collect::<Vec<_>>().join(",")),
    };
    let role = if role.is_empty() { String::new() } else { format!("\"role\":{}", quoted(role)) };
    format!("{{{role}{content}}}").replacen("{,", "{", 1)
}

/// A request body built from the bytes' choices: messages (mostly well-formed, with every part
/// type and URL kind) and top-level fields of any type.
fn generated(data: &[u8]) -> String {
    let mut c = Choices(data);
    let mut fields: Vec<String> = Vec::new();
    for _ in 0..c.byte() % 6 {
        fields.push(format!("{}:{}", quoted(c.pick(KEYS)), value(&mut c, 1)));
    }
    let messages: Vec<String> = (0..(c.byte() % 8).max(1)).map(|_| message(&mut c)).collect();
    fields.insert(0, format!("\"messages\":[{}]", messages.join(",")));
    format!("{{{}}}", fields.join(","))
}
