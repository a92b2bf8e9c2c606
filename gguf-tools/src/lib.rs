//! gguf-tools: make, convert, quantize and inspect the GGUF files dycoke runs.
//!
//! `layout` says what a LLaVA-OneVision GGUF pair holds and `codec` encodes tensor data; `convert`,
//! `quantize` and `random` each build on those two and not on each other.

pub mod codec;
pub mod convert;
pub mod layout;
pub mod quantize;
pub mod random;
pub mod vocab;
