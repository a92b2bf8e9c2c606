//! The tokenizer (encode with and without special tokens, decode, streaming) and chat-template
//! rendering, on arbitrary text and templates.
#![no_main]

#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::tokenizer(data));
