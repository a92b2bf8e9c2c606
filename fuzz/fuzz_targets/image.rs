//! Image loading (PNG, JPEG, EXIF orientation) and LLaVA-OneVision's preprocessing on arbitrary bytes.
#![no_main]

#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::image(data));
