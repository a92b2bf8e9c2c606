//! dycoke: local video question answering with LLaVA-OneVision on ggml, with DyCoke token
//! compression.
//!
//! Load a [`Model`] once (it is shared read-only, `Arc`), open a [`Conversation`] per user, and
//! talk about videos: media go with the next question, answers stream through a callback,
//! progress through another (which can also stop the work), and later questions reuse the cache
//! (the video is prefilled once). DyCoke compression is on by default for video.
//!
//! ```
//! use dycoke::{Conversation, ConversationOptions, GenerateParams, Model, ModelOptions};
//!
//! # fn main() -> dycoke::Result<()> {
//! # // The tiny random LLaVA-OneVision the tests use, converted to GGUF, stands in for a real model.
//! # let dir = tempfile::tempdir().unwrap();
//! # let opts = gguf_tools::convert::ConvertOptions { input: "tests/fixtures/llava-tiny/hf".into(), prefix: dir.path().join("tiny"), outtype: dycoke::ggml::GgmlType::F32, vision_type: None };
//! # gguf_tools::convert::convert(&opts, &mut |_, _, _| {}).unwrap();
//! # let (llm, mmproj) = (dir.path().join("tiny-llm.gguf"), dir.path().join("tiny-mmproj.gguf"));
//! # let video = "tests/fixtures/llava-tiny/clip.mp4";
//! let model = Model::load(&ModelOptions { mmproj: Some(mmproj), ..ModelOptions::new(llm) })?;
//! let mut chat = Conversation::new(model.clone(), &ConversationOptions::default())?;
//! chat.add_video(video.as_ref(), &mut |phase, done, total| { eprintln!("{} {done}/{total}", phase.label()); true })?;
//! let params = GenerateParams { max_tokens: 16, ..GenerateParams::default() };
//! let answer = chat.ask("What happens?", &params, &mut |piece| { print!("{piece}"); true }, &mut dycoke::progress::ignore)?;
//! println!("\n{:?}", chat.stats()); // DyCoke counters
//! // A second question reuses the cache: only its own words are evaluated.
//! let again = chat.ask("And then?", &params, &mut |piece| { print!("{piece}"); true }, &mut dycoke::progress::ignore)?;
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
//! # let opts = gguf_tools::convert::ConvertOptions { input: "tests/fixtures/llava-tiny/hf".into(), prefix: dir.path().join("tiny"), outtype: dycoke::ggml::GgmlType::F32, vision_type: None };
//! # gguf_tools::convert::convert(&opts, &mut |_, _, _| {}).unwrap();
//! # let (llm, mmproj) = (dir.path().join("tiny-llm.gguf"), dir.path().join("tiny-mmproj.gguf"));
//! # let _ = mmproj;
//! let model = Model::load(&ModelOptions::new(llm))?;
//! let mut session = Session::new(model.clone(), &SessionOptions::default())?;
//! let tokens = session.tokenize("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n");
//! session.set_prompt(&[PromptPart::Tokens(&tokens)], &mut dycoke::progress::ignore)?;
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

// The layers, lowest first; each module uses only those above it in this list.
//
// ggml       safe wrappers over ggml: types, tensors, graphs, backends, the scheduler (all
//            `unsafe`); its own errors
// gguf       GGUF files: reader, writer, the tables of tensor names and keys; its own error
// error      the crate's error (wrapping those two) and the settings it names
// weights    placing a file's tensors on a device (mapped, uploaded or repacked)
// nn         graph pieces shared by the models
// media      video decoding (FFmpeg), images, frame sampling
// tokenizer  BPE, the Qwen2 pre-tokenizer, chat templates
// sampler    sampling as pure functions
// progress   the phases of slow work and the callback that can stop it
// llm        Qwen2 and its KV cache, with the decode-attention hook compression plugs into
// compress   DyCoke: the settings, TTM's selection, dynamic pruning, the `DyCoke` object
// vision     preprocessing, SigLIP, projector, pooling, TTM as a node after pooling
// convert    Hugging Face LLaVA-OneVision checkpoints to a GGUF pair (only GGUF files, no model)
// model      a loaded model: LLM, tokenizer, optional vision model
// encoder    media files to embedding rows: the vision context, the embedding cache, counters
// prompt     where media go in a prompt
// session    one KV cache: prefix reuse and generation
// conversation  encoder + DyCoke + session: the one place prompts with media are assembled
// batch, capi   front ends built on conversations (the command line is the binary's)

pub mod batch;
pub mod capi;
pub mod compress;
pub mod conversation;
pub mod convert;
pub mod encoder;
pub mod error;
pub mod ggml;
pub mod gguf;
pub mod llm;
pub mod media;
pub mod model;
pub mod nn;
pub mod progress;
pub mod prompt;
pub mod sampler;
pub mod session;
pub mod tokenizer;
pub mod vision;
pub mod weights;

pub use conversation::{Answer, Conversation, ConversationOptions, Turn};
pub use encoder::{EncodedMedia, MediaEncoder};
pub use error::{Error, Result, Setting};
pub use model::{Model, ModelOptions};
pub use progress::Phase;
pub use sampler::SamplerParams;
pub use vision::layout::VisionType;
pub use session::{CancelToken, GenerateParams, Generation, PromptPart, PromptStats, Session, SessionOptions, StopReason};
