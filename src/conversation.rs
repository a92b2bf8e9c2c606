//! A multi-turn conversation over videos and images: what `dycoke chat`, `dycoke batch` and the C
//! API share.
//!
//! Media added with `add_video`/`add_image` go into the next question. Each question renders the
//! whole conversation through the chat template, and the session evaluates only what its cache
//! does not already hold, so a video is prefilled once and later turns cost only their own tokens.

use std::path::Path;
use std::time::Duration;

use crate::compress::DpCounters;
use crate::error::{Error, Result};
use crate::media::Sampling;
use crate::prompt::{self, MediaKind, DEFAULT_MEDIA_SYSTEM_PROMPT};
use crate::session::{GenerateParams, Media, MediaPhase, PromptStats, Session, StopReason};
use crate::tokenizer::ChatMessage;

/// Which slow step is under way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Decoding a video's frames (`total` = frames).
    DecodingFrames,
    /// Running frames or image crops through the vision model (`total` = frames or crops).
    EncodingFrames,
    /// Evaluating the prompt (`total` = positions to evaluate).
    Prefill,
}

impl Phase {
    pub fn label(self) -> &'static str {
        match self {
            Phase::DecodingFrames => "decoding",
            Phase::EncodingFrames => "encoding",
            Phase::Prefill => "prompt",
        }
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
    system: Option<String>,
    messages: Vec<ChatMessage>,
    media: Vec<Media>,
    /// How many of the last `media` have not been asked about yet (they go into the next question).
    pending: usize,
    sampling: Sampling,
}

impl Conversation {
    /// A conversation on `session`. With `system` None, a model with a vision tower gets the
    /// evaluation convention's system prompt and a text-only one the chat template's own.
    pub fn new(session: Session, system: Option<String>) -> Conversation {
        let system = system.or_else(|| session.model().vision().is_some().then(|| DEFAULT_MEDIA_SYSTEM_PROMPT.to_string()));
        Conversation { session, system, messages: Vec::new(), media: Vec::new(), pending: 0, sampling: Sampling::default() }
    }

    /// How frames are sampled from videos added from now on.
    pub fn set_sampling(&mut self, sampling: Sampling) -> Result<()> {
        sampling.validate()?;
        self.sampling = sampling;
        Ok(())
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    pub fn session_mut(&mut self) -> &mut Session {
        &mut self.session
    }

    /// Every medium of the conversation, in the order added.
    pub fn media(&self) -> &[Media] {
        &self.media
    }

    pub fn messages(&self) -> &[ChatMessage] {
        &self.messages
    }

    /// Media added since the last question.
    pub fn pending_media(&self) -> &[Media] {
        &self.media[self.media.len() - self.pending..]
    }

    /// Decodes and encodes a video (compressed as the session's settings say) for the next question.
    pub fn add_video(&mut self, path: &Path, progress: &mut dyn FnMut(Phase, usize, usize)) -> Result<&Media> {
        let sampling = self.sampling;
        let media = self.session.encode_video(path, &sampling, &mut |p, d, t| progress(p.into(), d, t))?;
        Ok(self.push_media(media))
    }

    /// Loads and encodes an image for the next question.
    pub fn add_image(&mut self, path: &Path, progress: &mut dyn FnMut(Phase, usize, usize)) -> Result<&Media> {
        let media = self.session.encode_image(path, &mut |p, d, t| progress(p.into(), d, t))?;
        Ok(self.push_media(media))
    }

    /// Adds media encoded elsewhere (by this conversation's model) for the next question.
    pub fn push_media(&mut self, media: Media) -> &Media {
        self.media.push(media);
        self.pending += 1;
        self.media.last().expect("just pushed")
    }

    /// Adds `question` (with the pending media) and evaluates the conversation up to the answer's
    /// first token; the logits are then `session().logits()`. On failure the conversation is as
    /// it was.
    pub fn prepare(&mut self, question: &str, progress: &mut dyn FnMut(Phase, usize, usize)) -> Result<PromptStats> {
        let first = self.media.len() - self.pending;
        let kinds: Vec<MediaKind> = self.media.iter().map(|m| m.kind).collect();
        let content = prompt::place_media_from(question, &kinds, first)?;
        let saved = self.messages.len();
        if saved == 0 {
            if let Some(s) = &self.system {
                self.messages.push(ChatMessage::system(s.clone()));
            }
        }
        self.messages.push(ChatMessage::user(content));
        let result = prompt::tokenize_with_media(self.session.model().tokenizer(), &self.messages, true).and_then(|pieces| {
            let refs: Vec<&Media> = self.media.iter().collect();
            self.session.set_prompt_with_media(&pieces, &refs, &mut |d, t| progress(Phase::Prefill, d, t))
        });
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

    /// Generates the answer to the question `prepare` added, streaming its text to `on_text`
    /// (return false to stop), and keeps it in the conversation.
    pub fn answer(&mut self, params: &GenerateParams, prompt: PromptStats, on_text: &mut dyn FnMut(&str) -> bool) -> Result<Answer> {
        if self.messages.last().is_none_or(|m| m.role != "user") {
            return Err(Error::Prompt("there is no question to answer: call prepare first".into()));
        }
        let g = self.session.generate(params, on_text)?;
        self.messages.push(ChatMessage::assistant(g.text.clone()));
        Ok(Answer { text: g.text, tokens: g.tokens, stop: g.stop, prompt, decode_time: g.decode_time, pruning: g.pruning })
    }

    /// Asks `question` about the pending media and the conversation so far.
    pub fn ask(
        &mut self,
        question: &str,
        params: &GenerateParams,
        on_text: &mut dyn FnMut(&str) -> bool,
        progress: &mut dyn FnMut(Phase, usize, usize),
    ) -> Result<Answer> {
        self.session.cancel_token().reset();
        let stats = self.prepare(question, progress)?;
        self.answer(params, stats, on_text)
    }

    /// Forgets the questions and answers; the media stay, for the next question.
    pub fn reset_turns(&mut self) {
        self.messages.clear();
        self.pending = self.media.len();
        self.session.reset();
    }

    /// Forgets everything, media included.
    pub fn clear(&mut self) {
        self.messages.clear();
        self.media.clear();
        self.pending = 0;
        self.session.reset();
    }
}

impl From<MediaPhase> for Phase {
    fn from(p: MediaPhase) -> Phase {
        match p {
            MediaPhase::Decoding => Phase::DecodingFrames,
            MediaPhase::Encoding => Phase::EncodingFrames,
        }
    }
}
