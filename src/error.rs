//! The engine's error type. Every failure a user can cause is one of these, never a panic.
//!
//! Errors describe what went wrong in the engine's own words. A setting out of range is
//! [`Error::Setting`] with a [`Setting`], never a command-line flag: each front end (the CLI, the C
//! API, a server) names the setting its own way.

use std::fmt;
use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A setting a user chooses. Front ends map each to their own name (`--ttm-k`, `ttm_k`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Setting {
    /// Positions of context (prompt plus answer).
    ContextSize,
    /// Positions per prefill chunk.
    BatchSize,
    Threads,
    /// Images per vision graph.
    VisionBatch,
    /// The vision tower block temporal reuse starts at.
    VisionReuseLayer,
    /// Temporal reuse's change threshold.
    VisionReuseThreshold,
    /// Frames sampled uniformly from a video.
    Frames,
    /// Frames sampled per second of video.
    Fps,
    /// The cap on frames per video.
    MaxFrames,
    /// TTM's prune ratio K.
    TtmK,
    /// Dynamic pruning's first pruned layer L.
    DpLayer,
    /// Dynamic pruning's ratio P.
    DpRatio,
    /// Dynamic pruning's selection-reuse threshold.
    DpThreshold,
    Temperature,
    TopK,
    TopP,
    MinP,
    RepeatPenalty,
    RepeatLastN,
    /// Most tokens of an answer.
    MaxTokens,
    /// The compute device.
    Device,
    /// Layers placed on the device.
    GpuLayers,
    /// The shares of the offloaded layers each device of a list holds.
    TensorSplit,
    /// The folder of the embedding cache.
    CacheDir,
    /// The type the vision tower's matrices are multiplied in.
    VisionType,
}

impl Setting {
    /// What the setting is, in words.
    pub fn describe(self) -> &'static str {
        match self {
            Setting::ContextSize => "context size",
            Setting::BatchSize => "batch size",
            Setting::Threads => "thread count",
            Setting::VisionBatch => "vision batch",
            Setting::VisionReuseLayer => "vision reuse layer",
            Setting::VisionReuseThreshold => "vision reuse threshold",
            Setting::Frames => "frame count",
            Setting::Fps => "frame rate",
            Setting::MaxFrames => "frame cap",
            Setting::TtmK => "TTM prune ratio K",
            Setting::DpLayer => "pruning layer L",
            Setting::DpRatio => "pruning ratio P",
            Setting::DpThreshold => "pruning reuse threshold",
            Setting::Temperature => "temperature",
            Setting::TopK => "top-k",
            Setting::TopP => "top-p",
            Setting::MinP => "min-p",
            Setting::RepeatPenalty => "repeat penalty",
            Setting::RepeatLastN => "repeat window",
            Setting::MaxTokens => "answer length",
            Setting::Device => "device",
            Setting::GpuLayers => "GPU layers",
            Setting::TensorSplit => "tensor split",
            Setting::CacheDir => "cache folder",
            Setting::VisionType => "vision weight type",
        }
    }
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A GGUF file is unreadable or does not describe the model it should.
    #[error(transparent)]
    Gguf(#[from] crate::gguf::Error),

    /// A setting is outside its valid range (or does not fit the model).
    #[error("{setting}: {problem}")]
    Setting { setting: Setting, problem: String },

    /// A library call got an argument it cannot use (not a user setting: a caller's mistake).
    #[error("invalid {what}: {problem}")]
    InvalidArgument { what: String, problem: String },

    /// Videos or images were given to a model loaded without a vision model.
    #[error("videos and images need a vision model (mmproj), and none is loaded")]
    NoVisionModel,

    /// The vision model does not feed this language model.
    #[error("{}: the projector outputs {projector} values per token but the language model's embeddings have {llm}; the mmproj belongs to another model", path.display())]
    VisionMismatch { path: PathBuf, projector: usize, llm: usize },

    /// The prompt (or prompt plus answer) does not fit in the context window.
    #[error("the input needs {needed} positions but the context holds {available} (the model allows up to {trained})")]
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

    /// An RPC server cannot be used (a bad address, no answer, another protocol version).
    #[error(transparent)]
    Rpc(#[from] crate::ggml::rpc::RpcError),

    /// ggml could not allocate or compute (out of memory, backend failure).
    #[error("compute: {0}")]
    Compute(#[from] crate::ggml::ComputeError),

    /// A video or image cannot be read or decoded.
    #[error("{}: {message}", path.display())]
    Media { path: PathBuf, message: String },

    /// The prompt and the media do not match (placeholders, counts).
    #[error("prompt: {0}")]
    Prompt(String),

    /// An I/O failure on a named file.
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },

    /// The work was stopped by a cancellation request or a progress callback.
    #[error("cancelled")]
    Cancelled,
}

impl From<crate::ggml::DeviceError> for Error {
    fn from(e: crate::ggml::DeviceError) -> Error {
        Error::Device { name: e.name, available: e.available }
    }
}

impl Error {
    /// A setting out of range.
    pub fn setting(setting: Setting, problem: impl Into<String>) -> Error {
        Error::Setting { setting, problem: problem.into() }
    }

    /// A library call's argument that cannot be used.
    pub fn invalid(what: &str, problem: impl Into<String>) -> Error {
        Error::InvalidArgument { what: what.to_string(), problem: problem.into() }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io { path: path.into(), source }
    }

    pub fn media(path: impl Into<PathBuf>, message: impl Into<String>) -> Error {
        Error::Media { path: path.into(), message: message.into() }
    }
}
