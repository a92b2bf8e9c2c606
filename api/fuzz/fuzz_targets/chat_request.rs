//! The chat-completions request parser, media URLs and the allowed-folder check on arbitrary bytes.
#![no_main]

#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::chat_request(data));
