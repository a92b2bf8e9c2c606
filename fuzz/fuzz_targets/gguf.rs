//! The GGUF reader and model loading (LLM and mmproj) on arbitrary bytes: an error, never a
//! panic or an abort.
#![no_main]

#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::gguf(data));
