//! The batch request parser, the resume reader and multiple-choice parsing on arbitrary lines.
#![no_main]

#[path = "../bodies.rs"]
mod bodies;

libfuzzer_sys::fuzz_target!(|data: &[u8]| bodies::batch_jsonl(data));
