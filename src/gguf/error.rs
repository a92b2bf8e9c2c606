//! What can be wrong with a GGUF file. Every message names the key or tensor and both values;
//! [`Error`] adds the file's path.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A GGUF file that is unreadable or does not describe the model it should.
#[derive(Debug, thiserror::Error)]
#[error("{}: {kind}", path.display())]
pub struct Error {
    pub path: PathBuf,
    #[source]
    pub kind: GgufError,
}

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read the file: {0}")]
    Io(#[from] std::io::Error),

    #[error("not a GGUF file: it starts with {found:?}, a GGUF file starts with \"GGUF\"")]
    BadMagic { found: String },

    #[error("GGUF version {0} is not supported (this reader reads versions 2 and 3)")]
    UnsupportedVersion(u32),

    #[error("big-endian GGUF files are not supported")]
    BigEndian,

    #[error("truncated: reading {what} at byte {offset} needs {needed} bytes, only {available} remain")]
    Truncated { what: String, offset: u64, needed: u64, available: u64 },

    #[error("{what} is {count}, {reason}")]
    TooMany { what: String, count: u64, reason: String },

    #[error("metadata key {key:?}: unknown value type id {id}")]
    UnknownValueType { key: String, id: u32 },

    #[error("{what}: text is not valid UTF-8")]
    InvalidUtf8 { what: String },

    #[error("metadata key {key:?}: arrays nested more than {limit} levels deep")]
    TooDeep { key: String, limit: usize },

    #[error("metadata key {0:?} appears twice")]
    DuplicateKey(String),

    #[error("tensor {0:?} appears twice")]
    DuplicateTensor(String),

    #[error("general.alignment is {0}, which is not a power of two")]
    BadAlignment(u64),

    #[error("tensor {tensor:?}: unknown ggml type id {id}")]
    UnknownTensorType { tensor: String, id: u32 },

    #[error("tensor {tensor:?}: name is {len} bytes long, ggml allows at most {max}")]
    NameTooLong { tensor: String, len: usize, max: usize },

    #[error("tensor {tensor:?}: {n_dims} dimensions, at most {max} are allowed")]
    TooManyDims { tensor: String, n_dims: u32, max: u32 },

    #[error("tensor {tensor:?}: shape {shape:?} is invalid: {reason}")]
    BadShape { tensor: String, shape: Vec<u64>, reason: String },

    #[error("tensor {tensor:?}: data at bytes {start}..{end} of the data section lies outside it ({available} bytes)")]
    OutOfBounds { tensor: String, start: u64, end: u64, available: u64 },

    #[error("tensor {tensor:?}: data offset {offset} is not a multiple of the alignment {alignment}")]
    Misaligned { tensor: String, offset: u64, alignment: u64 },

    #[error("tensors {first:?} and {second:?} overlap in the data section")]
    Overlap { first: String, second: String },

    #[error("metadata key {key:?} is missing")]
    MissingKey { key: String },

    #[error("metadata key {key:?} has type {found}, expected {expected}")]
    KeyType { key: String, found: String, expected: String },

    #[error("metadata key {key:?} is {value}, {problem}")]
    KeyValue { key: String, value: String, problem: String },

    #[error("architecture is {found:?}, expected {expected}")]
    Architecture { found: String, expected: String },

    #[error("tensor {tensor:?} is missing")]
    MissingTensor { tensor: String },

    #[error("tensor {tensor:?} has shape {found:?}, expected {expected:?}")]
    TensorShape { tensor: String, found: Vec<u64>, expected: Vec<u64> },

    #[error("tensor {tensor:?} has type {found}, expected {expected}")]
    TensorType { tensor: String, found: String, expected: String },
}
