//! gguf-tools: make, convert, quantize and inspect the GGUF files dycoke runs.
//!
//! The conversion and what a GGUF pair holds live in the dycoke library (`dycoke::convert`), so
//! that the `dycoke` binary can convert a downloaded checkpoint itself; they are re-exported here
//! under their old names. `quantize` and `random` build on `layout` and `codec`.

pub use dycoke::convert;
pub use dycoke::convert::{codec, layout};
pub mod quantize;
pub mod random;
pub mod vocab;
