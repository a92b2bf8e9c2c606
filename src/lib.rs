//! dycoke: local video question answering with LLaVA-OneVision on ggml, with DyCoke token
//! compression.
//!
//! Load a [`Model`] once (it is shared read-only, `Arc`), open a [`Session`] per conversation, and
//! talk about videos through a [`conversation::Conversation`]: media go with the next question,
//! answers stream through a callback, progress through another, and later questions reuse the
//! cache (the video is prefilled once). DyCoke compression is on by default for video.
//!
//! ```
//! use dycoke::conversation::Conversation;
//! use dycoke::{GenerateParams, Model, ModelOptions, Session, SessionOptions};
//!
//! # fn main() -> dycoke::Result<()> {
//! # // The tiny random LLaVA-OneVision the tests use, converted to GGUF, stands in for a real model.
//! # let dir = tempfile::tempdir().unwrap();
//! # let opts = gguf_tools::convert::ConvertOptions { input: "tests/fixtures/llava-tiny/hf".into(), prefix: dir.path().join("tiny"), outtype: dycoke::ggml::GgmlType::F32 };
//! # gguf_tools::convert::convert(&opts, &mut |_, _, _| {}).unwrap();
//! # let (llm, mmproj) = (dir.path().join("tiny-llm.gguf"), dir.path().join("tiny-mmproj.gguf"));
//! # let video = "tests/fixtures/llava-tiny/clip.mp4";
//! let model = Model::load(&ModelOptions { mmproj: Some(mmproj), ..ModelOptions::new(llm) })?;
//! let mut chat = Conversation::new(Session::new(model.clone(), &SessionOptions::default())?, None);
//! chat.add_video(video.as_ref(), &mut |phase, done, total| eprintln!("{} {done}/{total}", phase.label()))?;
//! let params = GenerateParams { max_tokens: 16, ..GenerateParams::default() };
//! let answer = chat.ask("What happens?", &params, &mut |piece| { print!("{piece}"); true }, &mut |_, _, _| {})?;
//! println!("\n{:?}", chat.session().stats()); // DyCoke counters
//! // A second question reuses the cache: only its own words are evaluated.
//! let again = chat.ask("And then?", &params, &mut |piece| { print!("{piece}"); true }, &mut |_, _, _| {})?;
//! assert!(again.prompt.evaluated < again.prompt.reused);
//! # Ok(())
//! # }
//! ```
//!
//! Lower down, a [`Session`] takes token runs and embedding rows and reuses the longest prefix its
//! cache holds:
//!
//! ```
//! use dycoke::{GenerateParams, Model, ModelOptions, PromptPart, Session, SessionOptions};
//!
//! # fn main() -> dycoke::Result<()> {
//! # // The tiny random LLaVA-OneVision the tests use, converted to GGUF, stands in for a real model.
//! # let dir = tempfile::tempdir().unwrap();
//! # let opts = gguf_tools::convert::ConvertOptions { input: "tests/fixtures/llava-tiny/hf".into(), prefix: dir.path().join("tiny"), outtype: dycoke::ggml::GgmlType::F32 };
//! # gguf_tools::convert::convert(&opts, &mut |_, _, _| {}).unwrap();
//! # let (llm, mmproj) = (dir.path().join("tiny-llm.gguf"), dir.path().join("tiny-mmproj.gguf"));
//! # let _ = mmproj;
//! let model = Model::load(&ModelOptions::new(llm))?;
//! let mut session = Session::new(model.clone(), &SessionOptions::default())?;
//! let tokens = session.tokenize("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n");
//! session.set_prompt(&[PromptPart::Tokens(&tokens)], &mut |_, _| {})?;
//! let answer = session.generate(&GenerateParams { max_tokens: 16, ..GenerateParams::default() }, &mut |piece| {
//!     print!("{piece}");
//!     true
//! })?;
//! println!("\n({} tokens)", answer.tokens.len());
//! # Ok(())
//! # }
//! ```
//!
//! The C API is in [`capi`] (header `include/dycoke.h`).

pub mod batch;
pub mod bench;
pub mod cache;
pub mod capi;
pub mod compress;
pub mod conversation;
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
