//! A multi-turn conversation over videos and images: what `dycoke run`, `dycoke chat`,
//! `dycoke batch`, the benchmarks and the C API share.
//!
//! A conversation composes the three parts of an answer: the [`MediaEncoder`] (files to embedding
//! rows), [`DyCoke`] (the compression, entering before prefill through the encoder and during
//! decode through the session's attention hook) and the [`Session`] (the KV cache, prefix reuse,
//! generation). It is the one place where a prompt with media is assembled: media added with
//! `add_video`/`add_image` go into the next question, each question renders the whole
//! conversation through the chat template, and the session evaluates only what its cache does not
//! already hold, so a video is prefilled once and later turns cost only their own tokens.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::compress::{Compression, DpCounters, DyCoke, DyCokeStats};
use crate::encoder::cache::EmbeddingCache;
use crate::encoder::{EncodedMedia, EncoderCounters, EncoderOptions, MediaEncoder};
use crate::error::{Error, Result};
use crate::llm::DecodeAttention;
use crate::media::Sampling;
use crate::model::Model;
use crate::progress::Progress;
use crate::prompt::{self, MediaKind, Piece, DEFAULT_MEDIA_SYSTEM_PROMPT};
use crate::session::{GenerateParams, PromptPart, PromptStats, Session, SessionOptions, StopReason};
use crate::tokenizer::ChatMessage;

/// Settings of a conversation.
#[derive(Clone, Debug)]
pub struct ConversationOptions {
    pub session: SessionOptions,
    /// DyCoke compression of videos (images and text are never compressed).
    pub compression: Compression,
    /// How frames are sampled from videos.
    pub sampling: Sampling,
    pub encoder: EncoderOptions,
    /// The system turn; None gives a model with a vision tower the evaluation convention's system
    /// prompt and a text-only one the chat template's own.
    pub system: Option<String>,
}

impl Default for ConversationOptions {
    /// DyCoke on (it only ever touches videos), 32 frames, the session's defaults.
    fn default() -> ConversationOptions {
        ConversationOptions {
            session: SessionOptions::default(),
            compression: Compression::dycoke(),
            sampling: Sampling::default(),
            encoder: EncoderOptions::default(),
            system: None,
        }
    }
}

/// One turn of a conversation given whole, as chat APIs send it (see `Conversation::prepare_turns`).
#[derive(Clone, Debug)]
pub struct Turn {
    /// "system", "user" or "assistant".
    pub role: String,
    pub text: String,
    /// The media this turn shows (user turns only): before its text, unless the text places them
    /// with `<video>`/`<image>`.
    pub media: Vec<EncodedMedia>,
}

impl Turn {
    pub fn new(role: &str, text: impl Into<String>) -> Turn {
        Turn { role: role.to_string(), text: text.into(), media: Vec::new() }
    }
}

/// The answer to one question.
#[derive(Clone, Debug)]
pub struct Answer {
    pub text: String,
    pub tokens: Vec<u32>,
    pub stop: StopReason,
    /// The prompt evaluation of this turn: `reused` positions came from the cache.
    pub prompt: PromptStats,
    pub decode_time: Duration,
    /// What dynamic pruning did during this answer (None when it did not run).
    pub pruning: Option<DpCounters>,
}

pub struct Conversation {
    session: Session,
    encoder: Option<MediaEncoder>,
    dycoke: DyCoke,
    sampling: Sampling,
    system: Option<String>,
    messages: Vec<ChatMessage>,
    media: Vec<EncodedMedia>,
    /// How many of the last `media` have not been asked about yet (they go into the next question).
    pending: usize,
    /// Cache positions of the evaluated prompt's video frame tokens (newlines excluded).
    visual_spans: Vec<Range<usize>>,
}

impl Conversation {
    /// Opens a conversation on `model`: a session, a media encoder when the model has a vision
    /// tower, and DyCoke checked against the model.
    pub fn new(model: Arc<Model>, opts: &ConversationOptions) -> Result<Conversation> {
        let dycoke = DyCoke::new(opts.compression, model.llm().params().n_layer)?;
        let encoder = match MediaEncoder::new(&model, opts.encoder) {
            Ok(e) => Some(e),
            Err(Error::NoVisionModel) => None,
            Err(e) => return Err(e),
        };
        let system = opts.system.clone().or_else(|| model.vision().is_some().then(|| DEFAULT_MEDIA_SYSTEM_PROMPT.to_string()));
        let session = Session::new(model, &opts.session)?;
        Ok(Conversation {
            session,
            encoder,
            dycoke,
            sampling: opts.sampling,
            system,
            messages: Vec::new(),
            media: Vec::new(),
            pending: 0,
            visual_spans: Vec::new(),
        })
    }

    /// How frames are sampled from videos added from now on.
    pub fn set_sampling(&mut self, sampling: Sampling) {
        self.sampling = sampling;
    }

    pub fn sampling(&self) -> &Sampling {
        &self.sampling
    }

    /// Changes the compression (checked against the model); it applies to videos added and
    /// answers generated from now on. The statistics carry over.
    pub fn set_compression(&mut self, compression: Compression) -> Result<()> {
        let mut dycoke = DyCoke::new(compression, self.session.model().llm().params().n_layer)?;
        std::mem::swap(&mut dycoke, &mut self.dycoke);
        self.dycoke.restore_stats(dycoke.stats().clone());
        Ok(())
    }

    pub fn compression(&self) -> &Compression {
        self.dycoke.compression()
    }

    /// Keeps video embeddings in `cache` (or stops caching with `None`).
    pub fn set_embedding_cache(&mut self, cache: Option<EmbeddingCache>) {
        if let Some(e) = &mut self.encoder {
            e.set_cache(cache);
        }
    }

    /// What DyCoke did since the conversation started or `reset_stats`.
    pub fn stats(&self) -> &DyCokeStats {
        self.dycoke.stats()
    }

    pub fn reset_stats(&mut self) {
        self.dycoke.reset_stats();
    }

    /// Vision encodes and cache use since the conversation started.
    pub fn encoder_counters(&self) -> EncoderCounters {
        self.encoder.as_ref().map(MediaEncoder::counters).unwrap_or_default()
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    pub fn session_mut(&mut self) -> &mut Session {
        &mut self.session
    }

    pub fn model(&self) -> &Arc<Model> {
        self.session.model()
    }

    /// Every medium of the conversation, in the order added.
    pub fn media(&self) -> &[EncodedMedia] {
        &self.media
    }

    pub fn messages(&self) -> &[ChatMessage] {
        &self.messages
    }

    /// Media added since the last question.
    pub fn pending_media(&self) -> &[EncodedMedia] {
        &self.media[self.media.len() - self.pending..]
    }

    fn encoder(&mut self) -> Result<&mut MediaEncoder> {
        self.encoder.as_mut().ok_or(Error::NoVisionModel)
    }

    /// Decodes and encodes a video (compressed as the settings say) for the next question.
    pub fn add_video(&mut self, path: &Path, progress: &mut Progress) -> Result<&EncodedMedia> {
        let (sampling, ttm) = (self.sampling, self.dycoke.ttm());
        let media = self.encoder()?.encode_video(path, &sampling, ttm, progress)?;
        self.push_media(media)
    }

    /// Loads and encodes an image for the next question.
    pub fn add_image(&mut self, path: &Path, progress: &mut Progress) -> Result<&EncodedMedia> {
        let media = self.encoder()?.encode_image(path, progress)?;
        self.push_media(media)
    }

    /// Adds media encoded elsewhere (by this conversation's model) for the next question; an
    /// uncompressed video gets this conversation's TTM.
    pub fn push_media(&mut self, media: EncodedMedia) -> Result<&EncodedMedia> {
        let media = self.compressed(media)?;
        self.media.push(media);
        self.pending += 1;
        Ok(self.media.last().expect("just pushed"))
    }

    /// Evaluates a tokenized prompt whose `Piece::Media(i)` take `media[i]`: the one place that
    /// turns pieces and media into the session's parts and finds where the video tokens are.
    pub fn evaluate(&mut self, pieces: &[Piece], media: &[&EncodedMedia], progress: &mut Progress) -> Result<PromptStats> {
        let mut parts = Vec::with_capacity(pieces.len());
        let mut spans = Vec::new();
        let (mut before, mut after) = (0, 0);
        let mut pos = 0;
        for p in pieces {
            parts.push(match p {
                Piece::Tokens(t) => {
                    pos += t.len();
                    PromptPart::Tokens(t)
                }
                Piece::Media(i) => {
                    let m = media.get(*i).ok_or_else(|| Error::Prompt(format!("media #{i} was not given")))?;
                    if let Some(v) = m.video() {
                        // The frame tokens; the trailing newline is not pruned (as the reference).
                        spans.push(pos..pos + v.tokens());
                        before += v.tokens_before_ttm();
                        after += v.tokens();
                    }
                    pos += m.n_rows();
                    PromptPart::Embeddings { data: m.rows(), key: m.key() }
                }
            });
        }
        self.visual_spans.clear();
        let stats = self.session.set_prompt(&parts, progress)?;
        self.visual_spans = spans;
        self.dycoke.record_prompt(before, after);
        Ok(stats)
    }

    /// Adds `question` (with the pending media) and evaluates the conversation up to the answer's
    /// first token; the logits are then `session().logits()`. On failure the conversation is as
    /// it was.
    pub fn prepare(&mut self, question: &str, progress: &mut Progress) -> Result<PromptStats> {
        let first = self.media.len() - self.pending;
        let kinds: Vec<MediaKind> = self.media.iter().map(EncodedMedia::kind).collect();
        let content = prompt::place_media_from(question, &kinds, first)?;
        let saved = self.messages.len();
        if saved == 0 {
            if let Some(s) = &self.system {
                self.messages.push(ChatMessage::system(s.clone()));
            }
        }
        self.messages.push(ChatMessage::user(content));
        let result = prompt::tokenize_with_media(self.session.model().tokenizer(), &self.messages, true).and_then(|pieces| self.evaluate_own(&pieces, progress));
        match result {
            Ok(stats) => {
                self.pending = 0;
                Ok(stats)
            }
            Err(e) => {
                self.messages.truncate(saved);
                Err(e)
            }
        }
    }

    /// Replaces the conversation with `turns`, the last one the user's, and evaluates it up to the
    /// answer's first token. The session reuses what its cache already holds of it, so a client
    /// that sends the whole conversation each time (as chat APIs do) pays only for what is new. A
    /// leading system turn replaces the conversation's system prompt; videos get this
    /// conversation's TTM. On failure the conversation is as it was.
    pub fn prepare_turns(&mut self, turns: Vec<Turn>, progress: &mut Progress) -> Result<PromptStats> {
        match turns.last() {
            None => return Err(Error::Prompt("a conversation needs at least one turn".into())),
            Some(t) if t.role != "user" => return Err(Error::Prompt(format!("the last turn is the {}'s; it must be the user's", t.role))),
            _ => {}
        }
        let mut messages = Vec::with_capacity(turns.len() + 1);
        if turns[0].role != "system" {
            if let Some(s) = &self.system {
                messages.push(ChatMessage::system(s.clone()));
            }
        }
        let mut media: Vec<EncodedMedia> = Vec::new();
        let mut kinds: Vec<MediaKind> = Vec::new();
        for turn in turns {
            let content = match turn.role.as_str() {
                "user" => {
                    let first = media.len();
                    for m in turn.media {
                        let m = self.compressed(m)?;
                        kinds.push(m.kind());
                        media.push(m);
                    }
                    prompt::place_media_from(&turn.text, &kinds, first)?
                }
                "system" | "assistant" if turn.media.is_empty() => {
                    prompt::check_text(&turn.text)?;
                    turn.text
                }
                "system" | "assistant" => return Err(Error::Prompt(format!("a {} turn cannot show media", turn.role))),
                other => return Err(Error::Prompt(format!("unknown role {other:?}; use system, user or assistant"))),
            };
            messages.push(ChatMessage::new(&turn.role, content));
        }
        let pieces = prompt::tokenize_with_media(self.session.model().tokenizer(), &messages, true)?;
        let refs: Vec<&EncodedMedia> = media.iter().collect();
        let stats = self.evaluate(&pieces, &refs, progress)?;
        self.messages = messages;
        self.media = media;
        self.pending = 0;
        Ok(stats)
    }

    /// `media` checked against the model, with this conversation's TTM when it is an uncompressed
    /// video.
    fn compressed(&self, media: EncodedMedia) -> Result<EncodedMedia> {
        let n_embd = self.session.model().llm().params().n_embd;
        if media.n_embd() != n_embd {
            return Err(Error::invalid("media", format!("{}: its rows are {} wide, the model's {n_embd}", media.source().display(), media.n_embd())));
        }
        match self.dycoke.ttm() {
            Some(t) => media.with_ttm(t),
            None => Ok(media),
        }
    }

    /// As `prepare` for text fed as is, without the chat template (special tokens such as
    /// `<|im_start|>` parsed; `<video>`/`<image>` take the pending media). The answer to it is not
    /// kept as a turn.
    pub fn prepare_raw(&mut self, text: &str, progress: &mut Progress) -> Result<PromptStats> {
        let kinds: Vec<MediaKind> = self.media.iter().map(EncodedMedia::kind).collect();
        let placed = prompt::place_media_from(text, &kinds, self.media.len() - self.pending)?;
        let pieces = prompt::split_media(self.session.model().tokenizer(), &placed)?;
        let stats = self.evaluate_own(&pieces, progress)?;
        self.pending = 0;
        Ok(stats)
    }

    fn evaluate_own(&mut self, pieces: &[Piece], progress: &mut Progress) -> Result<PromptStats> {
        let media = std::mem::take(&mut self.media);
        let refs: Vec<&EncodedMedia> = media.iter().collect();
        let result = self.evaluate(pieces, &refs, progress);
        self.media = media;
        result
    }

    /// DyCoke's decode-time hook for the prompt just evaluated.
    fn decode_attention(&self) -> Option<Arc<crate::compress::DynamicPruning>> {
        self.dycoke.decode_attention(&self.visual_spans)
    }

    /// Generates the answer to the prompt `prepare` evaluated, streaming its text to `on_text`
    /// (return false to stop); after `prepare` it is kept in the conversation.
    pub fn answer(&mut self, params: &GenerateParams, prompt: PromptStats, on_text: &mut dyn FnMut(&str) -> bool) -> Result<Answer> {
        let pruning = self.decode_attention();
        let hook = pruning.clone().map(|p| p as Arc<dyn DecodeAttention>);
        let result = self.session.generate_with(params, hook, on_text);
        let pruning = pruning.map(|p| self.dycoke.finish_answer(&p));
        let g = result?;
        if self.messages.last().is_some_and(|m| m.role == "user") {
            self.messages.push(ChatMessage::assistant(g.text.clone()));
        }
        Ok(Answer { text: g.text, tokens: g.tokens, stop: g.stop, prompt, decode_time: g.decode_time, pruning })
    }

    /// Asks `question` about the pending media and the conversation so far.
    pub fn ask(&mut self, question: &str, params: &GenerateParams, on_text: &mut dyn FnMut(&str) -> bool, progress: &mut Progress) -> Result<Answer> {
        self.session.cancel_token().reset();
        let stats = self.prepare(question, progress)?;
        self.answer(params, stats, on_text)
    }

    /// Appends `tokens` after the evaluated prompt one decode step at a time, with DyCoke's
    /// pruning as an answer would have it, calling `on_logits(i, logits)` after token i (return
    /// false to stop). Returns what pruning did. Teacher forcing, for scoring and fidelity.
    pub fn force_decode(&mut self, tokens: &[u32], on_logits: &mut dyn FnMut(usize, &[f32]) -> bool) -> Result<Option<DpCounters>> {
        let pruning = self.decode_attention();
        let hook = pruning.clone().map(|p| p as Arc<dyn DecodeAttention>);
        let result = self.session.force_decode(tokens, hook, on_logits);
        let pruning = pruning.map(|p| self.dycoke.finish_answer(&p));
        result?;
        Ok(pruning)
    }

    /// Forgets the questions and answers; the media stay, for the next question.
    pub fn reset_turns(&mut self) {
        self.messages.clear();
        self.pending = self.media.len();
        self.visual_spans.clear();
        self.session.reset();
    }

    /// Forgets everything, media included.
    pub fn clear(&mut self) {
        self.messages.clear();
        self.media.clear();
        self.pending = 0;
        self.visual_spans.clear();
        self.session.reset();
    }
}
