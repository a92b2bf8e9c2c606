//! gguf-tools: make, convert, quantize and inspect the GGUF files dycoke runs.

pub mod convert;
pub mod quantize;
pub mod random;
pub mod vocab;
