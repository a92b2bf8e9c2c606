//! Raw bindings to ggml (and to libllama, which tests and benchmarks use as a reference).
//! This is the only crate that names the registry crate that builds ggml.
pub use llama_cpp_sys_2::*;
