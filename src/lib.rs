//! dycoke: local video question answering with LLaVA-OneVision on ggml, with DyCoke token
//! compression.
//!
//! Load a [`Model`] once (it is shared read-only), open a [`Session`] per conversation, set a
//! prompt and generate:
//!
//! ```no_run
//! use dycoke::{GenerateParams, Model, ModelOptions, PromptPart, Session, SessionOptions};
//!
//! # fn main() -> dycoke::Result<()> {
//! let model = Model::load(&ModelOptions::new("models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"))?;
//! let mut session = Session::new(model.clone(), &SessionOptions::default())?;
//! let tokens = session.tokenize("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n");
//! session.set_prompt(&[PromptPart::Tokens(&tokens)], &mut |_, _| {})?;
//! let answer = session.generate(&GenerateParams::default(), &mut |piece| {
//!     print!("{piece}");
//!     true
//! })?;
//! println!("\n({} tokens)", answer.tokens.len());
//! # Ok(())
//! # }
//! ```

pub mod bench;
pub mod compress;
pub mod error;
pub mod ggml;
pub mod gguf;
pub mod llm;
pub mod media;
pub mod model;
pub mod nn;
pub mod prompt;
pub mod sampler;
pub mod session;
pub mod tokenizer;
pub mod vision;
pub mod weights;

pub use error::{Error, Result};
pub use model::{Model, ModelOptions};
pub use sampler::SamplerParams;
pub use session::{CancelToken, GenerateParams, Generation, PromptPart, PromptStats, Session, SessionOptions, StopReason};
