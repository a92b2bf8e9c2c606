//! One chat completion, from the parsed request to the events the HTTP layer sends: the request's
//! settings checked against the engine, its media resolved and encoded, its turns evaluated by a
//! session (reusing what the session's cache holds), the answer streamed.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dycoke::compress::{Compression, DpSettings, TtmSettings};
use dycoke::media::{FrameSelection, Sampling};
use dycoke::{Error, GenerateParams, Setting, StopReason, Turn};
use dycoke_api::{ApiError, ChatRequest, MediaKind, Part, Role};
use serde_json::json;
use tokio::sync::mpsc;

use super::media::{self, MediaInput, MediaPolicy, MediaStore};
use super::metrics::{MediaCounts, Metrics, Outcome, RequestCounts};
use super::pool::{Lease, Pool};
use super::stop::StopMatcher;
use super::turns::{Turn as CpuTurn, Turns};

/// What a request gets when it does not say (the server's command line).
#[derive(Clone, Debug)]
pub struct Defaults {
    pub generate: GenerateParams,
    pub compression: Compression,
    pub selection: FrameSelection,
    /// The most frames a request may ask for.
    pub max_frames: usize,
}

/// The loaded model and what serves it.
pub struct Engine {
    /// Turns at the CPU, shared by the sessions and the vision encoder.
    pub turns: Turns,
    pub pool: Arc<Pool>,
    /// None without a vision model.
    pub media: Option<MediaStore>,
    pub policy: MediaPolicy,
    pub metrics: Arc<Metrics>,
    pub defaults: Defaults,
    pub n_ctx: usize,
    /// How long an answer waits for a client that stopped reading before it gives up.
    pub stall_timeout: Duration,
}

/// What the HTTP layer sends, in order: text pieces, then one `Done` or `Error`.
pub enum Event {
    Text(String),
    Done(Box<Finished>),
    Error(ApiError),
}

pub struct Finished {
    /// OpenAI's `finish_reason`: "stop" or "length".
    pub finish_reason: &'static str,
    pub usage: serde_json::Value,
}

/// A request's settings, checked.
struct Settings {
    generate: GenerateParams,
    compression: Compression,
    sampling: Sampling,
    stops: Vec<String>,
}

struct TurnSpec {
    role: &'static str,
    text: String,
    /// Indices into the job's media.
    media: Vec<usize>,
}

/// A request ready to run on a session.
pub struct Job {
    settings: Settings,
    turns: Vec<TurnSpec>,
    media: Vec<MediaInput>,
    identities: Vec<u64>,
    arrived: Instant,
}

impl Job {
    /// One identity per turn (role, text, media): equal prefixes mean a session's cache holds them.
    pub fn identities(&self) -> &[u64] {
        &self.identities
    }
}

/// The request field a setting comes from.
fn param(s: Setting) -> &'static str {
    match s {
        Setting::Temperature => "temperature",
        Setting::TopK => "top_k",
        Setting::TopP => "top_p",
        Setting::MinP => "min_p",
        Setting::RepeatPenalty => "repeat_penalty",
        Setting::RepeatLastN => "repeat_last_n",
        Setting::MaxTokens => "max_tokens",
        Setting::Frames => "frames",
        Setting::Fps => "fps",
        Setting::MaxFrames => "max_frames",
        Setting::TtmK => "ttm_k",
        Setting::DpLayer => "dp_layer",
        Setting::DpRatio | Setting::DpThreshold => "dp_ratio",
        _ => "server",
    }
}

/// An engine error as the client is told it.
pub fn api_error(e: &Error) -> ApiError {
    match e {
        Error::Setting { setting, problem } => ApiError::invalid(param(*setting), format!("{}: {problem}", param(*setting))),
        Error::ContextOverflow { .. } => ApiError::invalid("messages", format!("{e}; shorten the conversation, ask for fewer frames, or start the server with a larger -c")).with_code("context_length_exceeded"),
        Error::Prompt(m) => ApiError::invalid("messages", m.clone()),
        Error::Tokenizer(m) | Error::Template(m) => ApiError::invalid("messages", m.clone()),
        Error::NoVisionModel => ApiError::invalid("messages", "this server has no vision model (it was started without --mmproj): send text only"),
        Error::Cancelled => ApiError::new(499, "the request was cancelled").with_code("cancelled"),
        _ => ApiError::new(500, format!("internal error: {e}")),
    }
}

fn is_client_error(e: &ApiError) -> bool {
    (400..500).contains(&e.status)
}

impl Engine {
    fn settings(&self, req: &ChatRequest) -> Result<Settings, ApiError> {
        let s = &req.sampling;
        let mut generate = self.defaults.generate.clone();
        let p = &mut generate.sampler;
        p.temperature = s.temperature.unwrap_or(p.temperature);
        p.top_p = s.top_p.unwrap_or(p.top_p);
        p.top_k = s.top_k.map_or(p.top_k, |k| k as usize);
        p.min_p = s.min_p.unwrap_or(p.min_p);
        p.repeat_penalty = s.repeat_penalty.unwrap_or(p.repeat_penalty);
        p.repeat_last_n = s.repeat_last_n.map_or(p.repeat_last_n, |n| n as usize);
        p.seed = s.seed.or(p.seed);
        p.validate().map_err(|e| api_error(&e))?;
        if let Some(n) = s.max_tokens {
            if n as usize > self.n_ctx {
                return Err(ApiError::invalid("max_tokens", format!("max_tokens {n} is more than this server's context of {} positions", self.n_ctx)));
            }
            generate.max_tokens = n as usize;
        }

        let v = &req.video;
        let cap = self.defaults.max_frames;
        let max_frames = match v.max_frames {
            Some(m) if m as usize > cap => return Err(ApiError::invalid("max_frames", format!("max_frames {m} is more than this server's cap of {cap} frames"))),
            Some(m) => m as usize,
            None => cap,
        };
        let selection = match (v.frames, v.fps) {
            (Some(n), _) => FrameSelection::Count(n as usize),
            (None, Some(r)) => FrameSelection::Fps(f64::from(r)),
            // The server's default, within a smaller cap the request asked for.
            (None, None) => match self.defaults.selection {
                FrameSelection::Count(n) => FrameSelection::Count(n.min(max_frames)),
                other => other,
            },
        };
        let sampling = Sampling::new(selection, max_frames).map_err(|e| api_error(&e))?;

        let c = &req.compression;
        let tuned = c.ttm_k.is_some() || c.dp_ratio.is_some() || c.dp_layer.is_some();
        let compression = if c.compress == Some(false) {
            if tuned {
                return Err(ApiError::invalid("compress", "ttm_k, dp_ratio and dp_layer have no effect with \"compress\": false"));
            }
            Compression::none()
        } else {
            let mut base = if c.compress == Some(true) && self.defaults.compression.is_none() { Compression::dycoke() } else { self.defaults.compression };
            if let Some(k) = c.ttm_k {
                base.ttm = Some(TtmSettings::new(f64::from(k)).map_err(|e| api_error(&e))?);
            }
            if c.dp_ratio.is_some() || c.dp_layer.is_some() {
                let old = base.dp.unwrap_or_default();
                let mut dp = match c.dp_ratio {
                    Some(r) => DpSettings::new(f64::from(r)).map_err(|e| api_error(&e))?,
                    None => old,
                };
                if let Some(l) = c.dp_layer.map(|l| l as usize).or(old.layer()) {
                    dp = dp.with_layer(l);
                }
                base.dp = Some(dp);
            }
            base
        };
        Ok(Settings { generate, compression, sampling, stops: s.stop.clone() })
    }

    /// Checks a request and resolves its media (downloads included) into a job.
    pub async fn prepare(self: &Arc<Self>, req: ChatRequest, arrived: Instant) -> Result<Job, ApiError> {
        let settings = self.settings(&req)?;
        let mut turns = Vec::with_capacity(req.messages.len());
        let mut sources = Vec::new();
        for (i, m) in req.messages.into_iter().enumerate() {
            let role = match m.role {
                Role::System => "system",
                Role::User => "user",
                Role::Assistant => "assistant",
            };
            let mut texts = Vec::new();
            let mut media = Vec::new();
            for (j, part) in m.parts.into_iter().enumerate() {
                match part {
                    Part::Text(t) => texts.push(t),
                    Part::Media(p) => {
                        media.push(sources.len());
                        sources.push((p.kind, p.source, format!("messages[{i}].content[{j}]")));
                    }
                }
            }
            turns.push(TurnSpec { role, text: texts.join("\n"), media });
        }
        if !sources.is_empty() && self.media.is_none() {
            return Err(api_error(&Error::NoVisionModel));
        }
        let engine = self.clone();
        let media = tokio::task::spawn_blocking(move || sources.into_iter().map(|(kind, source, label)| media::resolve(kind, source, label, &engine.policy)).collect::<Result<Vec<_>, _>>())
            .await
            .map_err(|e| ApiError::new(500, format!("internal error: {e}")))??;
        let ids: Vec<[u8; 32]> = media.iter().map(MediaInput::identity).collect();
        let identities = turns.iter().map(|t| turn_identity(t.role, &t.text, t.media.iter().map(|&i| &ids[i]))).collect();
        Ok(Job { settings, turns, media, identities, arrived })
    }

}

fn turn_identity<'a>(role: &str, text: &str, media: impl Iterator<Item = &'a [u8; 32]>) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    role.hash(&mut h);
    text.hash(&mut h);
    for m in media {
        m.hash(&mut h);
    }
    h.finish()
}

/// Sends events to the client's stream, giving up when the client is gone, the request is
/// cancelled, or the client has not read for `stall` (a stalled reader must not hold a session).
struct Sender {
    tx: mpsc::Sender<Event>,
    cancel: Arc<AtomicBool>,
    stall: Duration,
}

impl Sender {
    /// Sends `event`; while the client's buffer is full, `turn` (when held) lets other sessions
    /// compute.
    fn send(&self, mut event: Event, turn: Option<&CpuTurn>) -> bool {
        let deadline = Instant::now() + self.stall;
        loop {
            match self.tx.try_send(event) {
                Ok(()) => return true,
                Err(mpsc::error::TrySendError::Closed(_)) => return false,
                Err(mpsc::error::TrySendError::Full(e)) => {
                    if self.cancelled() || Instant::now() >= deadline {
                        self.cancel.store(true, Ordering::SeqCst);
                        return false;
                    }
                    event = e;
                    let wait = || std::thread::sleep(Duration::from_millis(5));
                    match turn {
                        Some(t) => t.away(wait),
                        None => wait(),
                    }
                }
            }
        }
    }

    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst) || self.tx.is_closed()
    }
}

/// Runs `job` on the session `lease` holds, sending its events; blocking. The outcome is counted
/// before the last event goes out, so a client that has its answer finds it in /metrics.
pub fn run(engine: &Engine, job: Job, mut lease: Lease, tx: mpsc::Sender<Event>, cancel: Arc<AtomicBool>) {
    let sender = Sender { tx, cancel, stall: engine.stall_timeout };
    let (outcome, last) = match answer(engine, job, &mut lease, &sender) {
        Ok(Some(finished)) => (Outcome::Ok, Some(Event::Done(finished))),
        Ok(None) => (Outcome::Cancelled, None),
        Err(_) if sender.cancelled() => (Outcome::Cancelled, None),
        Err(e) => (if is_client_error(&e) { Outcome::ClientError } else { Outcome::ServerError }, Some(Event::Error(e))),
    };
    if outcome != Outcome::Ok {
        // What the cache holds is no longer what a history would say.
        lease.history.clear();
    }
    engine.metrics.outcome(outcome);
    if let Some(event) = last {
        sender.send(event, None);
    }
}

/// The answer, or None when the client went away.
fn answer(engine: &Engine, job: Job, lease: &mut Lease, sender: &Sender) -> Result<Option<Box<Finished>>, ApiError> {
    let Job { settings, turns, media, identities, arrived } = job;
    let conversation = lease.conversation();
    conversation.set_compression(settings.compression).map_err(|e| api_error(&e))?;
    let mut progress = |_, _, _| !sender.cancelled();
    let vision_start = Instant::now();
    let mut counts = MediaCounts::default();
    let mut encoded = Vec::with_capacity(media.len());
    if let Some(store) = &engine.media {
        for input in &media {
            let result = store.encode(input, &settings.sampling, &engine.turns, &mut progress, &mut counts);
            encoded.push(Some(result.map_err(|e| media_error(&e, input, store))?));
        }
    }
    engine.metrics.media(&counts);
    let vision_s = vision_start.elapsed().as_secs_f64();

    let turns: Vec<Turn> = turns
        .into_iter()
        .map(|t| Turn { role: t.role.to_string(), text: t.text, media: t.media.iter().filter_map(|&i| encoded[i].take()).collect() })
        .collect();
    let turn = engine.turns.take();
    let mut progress = |_, _, _| {
        turn.pass();
        !sender.cancelled()
    };
    let prompt = conversation.prepare_turns(turns, &mut progress).map_err(|e| api_error(&e))?;
    let (frames, before, after) = conversation.media().iter().filter_map(|m| m.video()).fold((0, 0, 0), |(f, b, a), v| (f + v.frames, b + v.tokens_before_ttm(), a + v.tokens()));

    let mut matcher = StopMatcher::new(settings.stops);
    let (mut first, mut hit_stop, mut gone) = (None, false, false);
    let mut shown = String::new();
    let result = conversation.answer(&settings.generate, prompt.clone(), &mut |piece| {
        turn.pass();
        if first.is_none() {
            first = Some(Instant::now());
        }
        let (text, stop) = matcher.push(piece);
        if !text.is_empty() {
            shown.push_str(&text);
            if !sender.send(Event::Text(text), Some(&turn)) {
                gone = true;
                return false;
            }
        }
        hit_stop = stop;
        !stop && !sender.cancelled()
    });
    drop(turn);
    if gone || sender.cancelled() {
        return Ok(None);
    }
    let answer = result.map_err(|e| api_error(&e))?;
    let rest = matcher.finish();
    if !rest.is_empty() {
        shown.push_str(&rest);
        if !sender.send(Event::Text(rest), None) {
            return Ok(None);
        }
    }
    let finish_reason = match answer.stop {
        _ if hit_stop => "stop",
        StopReason::EndOfGeneration => "stop",
        StopReason::MaxTokens | StopReason::ContextFull => "length",
        StopReason::Cancelled => return Ok(None),
    };

    let ttft = first.map(|t| t.duration_since(arrived).as_secs_f64());
    if let Some(t) = ttft {
        engine.metrics.ttft(t);
    }
    let pruning = answer.pruning.unwrap_or_default();
    let completion = answer.tokens.len();
    let decode_s = answer.decode_time.as_secs_f64();
    let usage = json!({
        "prompt_tokens": prompt.total,
        "completion_tokens": completion,
        "total_tokens": prompt.total + completion,
        "prompt_tokens_details": {"cached_tokens": prompt.reused},
        "dycoke": {
            "prompt_evaluated": prompt.evaluated,
            "frames": frames,
            "visual_tokens_before": before,
            "visual_tokens_after": after,
            "vision_s": vision_s,
            "prefill_s": prompt.time.as_secs_f64(),
            "ttft_s": ttft,
            "decode_tok_s": if decode_s > 0.0 { completion as f64 / decode_s } else { 0.0 },
            "decode_steps": pruning.steps,
            "fresh_selections": pruning.fresh_selections,
            "kept_fraction": if pruning.steps > 0 { Some(pruning.kept_fraction_sum / pruning.steps as f64) } else { None },
            "vision_encodes": counts.vision_encodes,
            "frames_encoded": counts.frames_encoded,
            "frames_reused": counts.frames_reused,
            "cache_hits": counts.memory_hits + counts.disk_hits,
        }
    });
    engine.metrics.request(&RequestCounts {
        prompt_tokens: prompt.total as u64,
        cached_tokens: prompt.reused as u64,
        completion_tokens: completion as u64,
        visual_tokens_before: before as u64,
        visual_tokens_after: after as u64,
        decode_steps: pruning.steps,
        fresh_selections: pruning.fresh_selections,
    });
    // The session's cache now holds these turns and the answer the client saw.
    lease.history = identities;
    lease.history.push(turn_identity("assistant", &shown, std::iter::empty()));
    Ok(Some(Box::new(Finished { finish_reason, usage })))
}

/// A media error named by where the medium is in the request (not by our temporary file).
fn media_error(e: &Error, input: &MediaInput, store: &MediaStore) -> ApiError {
    let what = match input.kind {
        MediaKind::Video => "video",
        MediaKind::Image => "image",
    };
    match e {
        Error::Media { path, message } => {
            let named = if media::is_temporary(store, path) { format!("{}: the {what} cannot be read: {message}", input.label) } else { format!("{}: {}: {message}", input.label, path.display()) };
            ApiError::invalid(input.label.clone(), named).with_code("invalid_media")
        }
        Error::Io { path, source } if !media::is_temporary(store, path) => ApiError::invalid(input.label.clone(), format!("{}: {}: {source}", input.label, path.display())).with_code("invalid_media"),
        _ => api_error(e),
    }
}
