//! dycoke: local video question answering with LLaVA-OneVision on ggml, with DyCoke token
//! compression.

pub mod error;
pub mod ggml;
pub mod gguf;
pub mod llm;
pub mod nn;
pub mod sampler;
pub mod tokenizer;
pub mod weights;

pub use error::{Error, Result};
