//! The request side of `dycoke serve`'s OpenAI-compatible API: a chat-completions body to a typed
//! `ChatRequest`, checked against the schema (types, required and exclusive fields, what the
//! engine does not support), and errors as OpenAI's error JSON. Setting ranges (temperature,
//! TTM's K, ...) are the engine's to check. No engine dependency, so that it fuzzes quickly.

mod error;
mod files;
mod media;
mod parse;
mod request;

pub use error::{code, ApiError, ErrorKind};
pub use files::check_allowed_file;
pub use media::{decode_base64, decode_data_url, parse_media_url};
pub use parse::parse_chat_request;
pub use request::{
    ChatRequest, CompressionRequest, Limits, MediaKind, MediaPart, MediaSource, Message, Part, Role, SamplingRequest,
    VideoRequest,
};
