//! Video demuxing and decoding (FFmpeg through our wrapper) on arbitrary bytes.
#![no_main]

#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::video(data));
