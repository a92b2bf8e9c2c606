//! The typed request a chat completion asks for, after schema checks. Ranges (temperature, TTM's
//! K, frame counts) are the engine's to check: here a field is only absent or of the right type.

use std::path::PathBuf;

/// Bounds on a request's size, set by the operator; the body's byte size is the server's to bound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_messages: usize,
    /// Parts in one message.
    pub max_parts: usize,
    /// Images and videos in one request.
    pub max_media: usize,
    /// Bytes of all text parts together.
    pub max_text_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_messages: 512, max_parts: 64, max_media: 16, max_text_bytes: 1 << 20 }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ChatRequest {
    pub model: Option<String>,
    /// At least one; the last is the user's.
    pub messages: Vec<Message>,
    pub stream: bool,
    /// `stream_options.include_usage`; only ever true when `stream` is.
    pub include_usage: bool,
    pub sampling: SamplingRequest,
    pub video: VideoRequest,
    pub compression: CompressionRequest,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct SamplingRequest {
    /// `max_completion_tokens`, else `max_tokens`; never 0.
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<u32>,
    pub min_p: Option<f32>,
    /// None also for llama.cpp's -1, "a random seed".
    pub seed: Option<u64>,
    pub repeat_penalty: Option<f32>,
    pub repeat_last_n: Option<u32>,
    /// At most 4, none empty.
    pub stop: Vec<String>,
}

/// How to sample a video's frames; at most one of `frames` and `fps`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VideoRequest {
    pub frames: Option<u32>,
    pub fps: Option<f32>,
    pub max_frames: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct CompressionRequest {
    pub compress: Option<bool>,
    pub ttm_k: Option<f32>,
    pub dp_ratio: Option<f32>,
    pub dp_layer: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub role: Role,
    /// Only user messages have media parts.
    pub parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Part {
    /// Never contains U+E000 or U+E001, the engine's media markers.
    Text(String),
    Media(MediaPart),
}

#[derive(Clone, Debug, PartialEq)]
pub struct MediaPart {
    /// What the part's type says it is; the bytes are not looked at here.
    pub kind: MediaKind,
    pub source: MediaSource,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaKind {
    Image,
    Video,
}

#[derive(Clone, Debug, PartialEq)]
pub enum MediaSource {
    /// A `data:` URL or `input_video.data`, decoded; never empty. `mime` is lower case.
    Data { mime: String, bytes: Vec<u8> },
    /// A `file://` URL's path: percent-decoded, absolute, no NUL byte. Not yet checked against
    /// the allowed folders (`check_allowed_file`).
    File(PathBuf),
    /// An `http://` or `https://` URL, normalised; whether it may be fetched is the server's call.
    Remote(String),
}
