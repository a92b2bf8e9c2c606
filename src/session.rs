//! A session: one KV cache, filled with a prompt and extended by generation. Setting a new prompt
//! reuses the longest prefix the cache already holds, so a chat turn only evaluates what is new.
//! What the prompt means (media, compression, turns) is the conversation's business
//! (`conversation.rs`); a session sees token runs and embedding rows.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::llm::kv_cache::KvType;
use crate::llm::{DecodeAttention, LlmContext, LlmOptions, Segment};
use crate::model::Model;
use crate::progress::{Phase, Progress};
use crate::sampler::{Sampler, SamplerParams};
use crate::tokenizer::StreamDecoder;

/// Settings of a session.
#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// Positions of context (prompt plus answer); 0 picks `DEFAULT_CONTEXT` or the model's training
    /// context, whichever is smaller.
    pub n_ctx: usize,
    /// Tokens per prefill chunk.
    pub n_batch: usize,
    /// CPU threads.
    pub n_threads: usize,
    pub kv_type: KvType,
}

impl Default for SessionOptions {
    fn default() -> SessionOptions {
        SessionOptions {
            n_ctx: 0,
            n_batch: 512,
            n_threads: default_threads(),
            kv_type: KvType::F16,
        }
    }
}

/// The context a session gets when none is asked for: 32 frames of video (6273 tokens) and a
/// conversation around them.
pub const DEFAULT_CONTEXT: usize = 8192;

/// The machine's physical parallelism (as llama.cpp's default).
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(4, |n| n.get())
}

/// Stops generation or prefill from another thread (or a signal handler).
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> CancelToken {
        CancelToken::default()
    }
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    pub fn reset(&self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// A piece of a prompt.
#[derive(Clone, Copy, Debug)]
pub enum PromptPart<'a> {
    /// Token ids.
    Tokens(&'a [u32]),
    /// Embedding rows (n_embd each) identified by `key`: equal keys mean equal rows, which lets a
    /// later prompt reuse them from the cache.
    Embeddings { data: &'a [f32], key: u64 },
}

/// What one cache position holds, for prefix matching.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Token(u32),
    Row { key: u64, index: usize },
}

/// Generation settings.
#[derive(Clone, Debug)]
pub struct GenerateParams {
    /// Most tokens to generate.
    pub max_tokens: usize,
    pub sampler: SamplerParams,
    /// Keep generating past end-of-turn tokens.
    pub ignore_eos: bool,
}

impl Default for GenerateParams {
    fn default() -> GenerateParams {
        GenerateParams { max_tokens: 256, sampler: SamplerParams::default(), ignore_eos: false }
    }
}

/// Why generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The model ended its turn.
    EndOfGeneration,
    /// `max_tokens` were generated.
    MaxTokens,
    /// The context is full.
    ContextFull,
    /// The callback asked to stop, or the cancel token fired.
    Cancelled,
}

/// The result of `generate`.
#[derive(Clone, Debug)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub text: String,
    pub stop: StopReason,
    pub decode_time: Duration,
}

/// The result of `set_prompt`.
#[derive(Clone, Debug)]
pub struct PromptStats {
    /// Positions of the whole prompt.
    pub total: usize,
    /// Positions reused from the cache.
    pub reused: usize,
    /// Positions evaluated now.
    pub evaluated: usize,
    pub time: Duration,
}

pub struct Session {
    model: Arc<Model>,
    llm: LlmContext,
    slots: Vec<Slot>,
    cancel: CancelToken,
}

impl Session {
    /// Opens a session; the language model's context checks the settings (context against the
    /// model's training context, batch, threads).
    pub fn new(model: Arc<Model>, opts: &SessionOptions) -> Result<Session> {
        let n_ctx = if opts.n_ctx == 0 { DEFAULT_CONTEXT.min(model.llm().params().n_ctx_train) } else { opts.n_ctx };
        let llm_opts = LlmOptions { n_ctx, n_batch: opts.n_batch, n_threads: opts.n_threads, kv_type: opts.kv_type, device: model.device(), split: model.split_devices().to_vec() };
        let llm = LlmContext::new(model.llm().clone(), &llm_opts)?;
        Ok(Session { model, llm, slots: Vec::new(), cancel: CancelToken::new() })
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    pub fn llm(&self) -> &LlmContext {
        &self.llm
    }

    /// The token that stops this session's work when cancelled.
    pub fn cancel_token(&self) -> CancelToken {
        self.cancel.clone()
    }

    pub fn n_past(&self) -> usize {
        self.slots.len()
    }

    pub fn n_ctx(&self) -> usize {
        self.llm.n_ctx()
    }

    /// Forgets everything.
    pub fn reset(&mut self) {
        self.llm.truncate(0);
        self.slots.clear();
    }

    /// The logits after the last evaluated position.
    pub fn logits(&self) -> &[f32] {
        self.llm.logits()
    }

    /// Tokenizes prompt text (special tokens such as `<|im_start|>` recognised).
    pub fn tokenize(&self, text: &str) -> Vec<u32> {
        self.model.tokenizer().encode(text, true, true)
    }

    /// Makes the cache hold exactly `parts`, evaluating only what differs from what it holds, and
    /// computes the logits of the last position. `progress(Prefill, done, total)` follows the
    /// evaluation; returning false (or the cancel token) stops it at the end of the current chunk.
    pub fn set_prompt(&mut self, parts: &[PromptPart], progress: &mut Progress) -> Result<PromptStats> {
        let start = Instant::now();
        let n_embd = self.model.llm().params().n_embd;
        let mut want: Vec<Slot> = Vec::new();
        for p in parts {
            match *p {
                PromptPart::Tokens(t) => want.extend(t.iter().map(|&t| Slot::Token(t))),
                PromptPart::Embeddings { data, key } => {
                    if data.len() % n_embd != 0 {
                        return Err(Error::invalid("embeddings", format!("{} values is not a whole number of rows of {n_embd}", data.len())));
                    }
                    want.extend((0..data.len() / n_embd).map(|index| Slot::Row { key, index }));
                }
            }
        }
        if want.is_empty() {
            return Err(Error::invalid("prompt", "it is empty"));
        }
        if want.len() > self.n_ctx() {
            return Err(Error::ContextOverflow { needed: want.len(), available: self.n_ctx(), trained: self.model.llm().params().n_ctx_train });
        }
        // Reuse the common prefix, but evaluate at least the last position (its logits are needed).
        let common = self.slots.iter().zip(&want).take_while(|(a, b)| a == b).count().min(want.len() - 1);
        self.llm.truncate(common);
        self.slots.truncate(common);

        // The parts from position `common` on, as LLM segments.
        let mut segments: Vec<Segment> = Vec::new();
        let mut pos = 0usize;
        for p in parts {
            let len = match p {
                PromptPart::Tokens(t) => t.len(),
                PromptPart::Embeddings { data, .. } => data.len() / n_embd,
            };
            if pos + len > common {
                let skip = common.saturating_sub(pos);
                segments.push(match *p {
                    PromptPart::Tokens(t) => Segment::Tokens(&t[skip..]),
                    PromptPart::Embeddings { data, .. } => Segment::Embeddings(&data[skip * n_embd..]),
                });
            }
            pos += len;
        }
        let cancel = self.cancel.clone();
        let mut cancelled = false;
        // A cancel stops the evaluation at the end of the current chunk.
        let result = self.llm.eval_with_progress(&segments, &mut |done, total| {
            cancelled |= !progress(Phase::Prefill, done, total) || cancel.is_cancelled();
            !cancelled
        });
        // On failure the cache state is unknown past the reused prefix: forget it.
        if let Err(e) = result {
            self.llm.truncate(common);
            return Err(e);
        }
        self.slots = want;
        if cancelled {
            return Err(Error::Cancelled);
        }
        Ok(PromptStats { total: self.slots.len(), reused: common, evaluated: self.slots.len() - common, time: start.elapsed() })
    }

    /// Generates an answer after the prompt, calling `on_text` with each complete piece of text;
    /// returning false from it stops generation.
    pub fn generate(&mut self, params: &GenerateParams, on_text: &mut dyn FnMut(&str) -> bool) -> Result<Generation> {
        self.generate_with(params, None, on_text)
    }

    /// As `generate`, with `attention` as the decode steps' attention (the hook compression
    /// plugs into) for this answer only.
    pub fn generate_with(&mut self, params: &GenerateParams, attention: Option<Arc<dyn DecodeAttention>>, on_text: &mut dyn FnMut(&str) -> bool) -> Result<Generation> {
        if self.slots.is_empty() {
            return Err(Error::invalid("generation", "set a prompt first"));
        }
        let mut sampler = Sampler::new(params.sampler.clone())?;
        for s in &self.slots {
            if let Slot::Token(t) = s {
                sampler.accept(*t);
            }
        }
        let mut out = Generation { tokens: Vec::new(), text: String::new(), stop: StopReason::MaxTokens, decode_time: Duration::ZERO };
        self.with_attention(attention, |s| s.decode_loop(params, &mut sampler, &mut out, on_text))?;
        Ok(out)
    }

    /// Appends `tokens` one decode step at a time (with `attention`, as `generate_with`), calling
    /// `on_logits(i, logits)` with the next-token logits after token i; returning false stops.
    /// Teacher forcing: scoring a given continuation, or comparing settings step by step.
    pub fn force_decode(&mut self, tokens: &[u32], attention: Option<Arc<dyn DecodeAttention>>, on_logits: &mut dyn FnMut(usize, &[f32]) -> bool) -> Result<()> {
        if self.slots.is_empty() {
            return Err(Error::invalid("decoding", "set a prompt first"));
        }
        let needed = self.n_past() + tokens.len();
        if needed > self.n_ctx() {
            return Err(Error::ContextOverflow { needed, available: self.n_ctx(), trained: self.model.llm().params().n_ctx_train });
        }
        self.with_attention(attention, |s| {
            for (i, &t) in tokens.iter().enumerate() {
                s.llm.eval(&[Segment::Tokens(&[t])])?;
                s.slots.push(Slot::Token(t));
                if !on_logits(i, s.llm.logits()) || s.cancel.is_cancelled() {
                    break;
                }
            }
            Ok(())
        })
    }

    /// Runs `f` with `attention` on the decode steps, and removes it afterwards whatever happens.
    fn with_attention<T>(&mut self, attention: Option<Arc<dyn DecodeAttention>>, f: impl FnOnce(&mut Session) -> Result<T>) -> Result<T> {
        self.llm.set_decode_attention(attention);
        let result = f(self);
        self.llm.set_decode_attention(None);
        result
    }

    fn decode_loop(&mut self, params: &GenerateParams, sampler: &mut Sampler, out: &mut Generation, on_text: &mut dyn FnMut(&str) -> bool) -> Result<()> {
        let model = self.model.clone();
        let tokenizer = model.tokenizer();
        let mut decoder = StreamDecoder::new();
        let start = Instant::now();
        let mut emit = |text: String, out: &mut Generation| -> bool {
            if text.is_empty() {
                return true;
            }
            out.text.push_str(&text);
            on_text(&text)
        };
        loop {
            if out.tokens.len() >= params.max_tokens {
                out.stop = StopReason::MaxTokens;
                break;
            }
            if self.cancel.is_cancelled() {
                out.stop = StopReason::Cancelled;
                break;
            }
            let token = sampler.sample(self.llm.logits());
            if !params.ignore_eos && tokenizer.is_end_of_generation(token) {
                out.stop = StopReason::EndOfGeneration;
                break;
            }
            sampler.accept(token);
            out.tokens.push(token);
            if !emit(decoder.push(&tokenizer.token_bytes(token, false)), out) {
                out.stop = StopReason::Cancelled;
                break;
            }
            if out.tokens.len() >= params.max_tokens {
                out.stop = StopReason::MaxTokens;
                break;
            }
            if self.n_past() >= self.n_ctx() {
                out.stop = StopReason::ContextFull;
                break;
            }
            self.llm.eval(&[Segment::Tokens(&[token])])?;
            self.slots.push(Slot::Token(token));
        }
        let tail = decoder.finish();
        emit(tail, out);
        out.decode_time = start.elapsed();
        Ok(())
    }
}
