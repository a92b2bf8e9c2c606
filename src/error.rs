//! The engine's error type. Every failure a user can cause is one of these, never a panic.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A GGUF file is unreadable or does not describe the model it should.
    #[error(transparent)]
    Gguf(#[from] crate::gguf::Error),

    /// A parameter is outside its valid range.
    #[error("invalid {name}: {message}")]
    InvalidParameter { name: String, message: String },

    /// The prompt (or prompt plus answer) does not fit in the context window.
    #[error("the input needs {needed} positions but the context holds {available} (raise -c/--ctx-size, up to the model's {trained})")]
    ContextOverflow { needed: usize, available: usize, trained: usize },

    /// The tokenizer data of a model file is unusable, or text cannot be tokenized.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// The chat template failed to parse or render.
    #[error("chat template: {0}")]
    Template(String),

    /// The requested device is not available in this build.
    #[error("device {name:?} is not available (this build has: {available})")]
    Device { name: String, available: String },

    /// ggml could not allocate or compute (out of memory, backend failure).
    #[error("compute: {0}")]
    Compute(#[from] crate::ggml::ComputeError),

    /// A video or image cannot be read or decoded.
    #[error("{}: {message}", path.display())]
    Media { path: PathBuf, message: String },

    /// The vision model (mmproj) is unusable or does not fit the language model.
    #[error("{0}")]
    Vision(String),

    /// The prompt and the media do not match (placeholders, counts).
    #[error("prompt: {0}")]
    Prompt(String),

    /// An I/O failure on a named file.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },

    /// Generation was stopped by a cancellation request.
    #[error("cancelled")]
    Cancelled,
}

impl From<crate::ggml::DeviceError> for Error {
    fn from(e: crate::ggml::DeviceError) -> Error {
        Error::Device { name: e.name, available: e.available }
    }
}

impl Error {
    pub fn invalid(name: &str, message: impl Into<String>) -> Error {
        Error::InvalidParameter { name: name.to_string(), message: message.into() }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io { path: path.into(), source }
    }

    pub fn media(path: impl Into<PathBuf>, message: impl Into<String>) -> Error {
        Error::Media { path: path.into(), message: message.into() }
    }
}
