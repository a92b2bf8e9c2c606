//! The C API (`include/dycoke.h` is generated from this file by the build script).
//!
//! Handles are opaque; every function returns a `DycokeStatus` and leaves a message for
//! `dycoke_last_error()` on failure. Every pointer is checked, every string must be UTF-8, and no
//! panic crosses the boundary: it becomes `DYCOKE_STATUS_INTERNAL`.
//!
//! Threads: a model may be shared by sessions in any threads; a session is used by one thread at a
//! time, except `dycoke_session_cancel`, which any thread may call at any time.

#![allow(clippy::missing_safety_doc)] // the header documents the contract of each function

use std::cell::RefCell;
use std::ffi::{c_char, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::compress::{Compression, DpSettings, TtmSettings};
use crate::conversation::{Conversation, ConversationOptions};
use crate::encoder::cache::EmbeddingCache;
use crate::encoder::EncoderOptions;
use crate::media::{sampling, FrameSelection, Sampling};
use crate::session::{CancelToken, GenerateParams, SessionOptions};
use crate::vision::TemporalReuse;
use crate::{Error, Model, ModelOptions, Phase, SamplerParams, Setting, StopReason, VisionType};

/// What a call did.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DycokeStatus {
    Ok = 0,
    /// A NULL pointer, a string that is not UTF-8, a parameter out of range.
    InvalidArgument = 1,
    /// A file could not be read or written.
    Io = 2,
    /// A model file (LLM or mmproj) is unusable.
    BadModel = 3,
    /// A video or image cannot be read or decoded.
    BadMedia = 4,
    /// The conversation no longer fits in the context: reset the session.
    ContextFull = 5,
    /// Stopped by `dycoke_session_cancel` or a callback.
    Cancelled = 6,
    /// ggml could not allocate or compute.
    Compute = 7,
    /// A bug in dycoke (a caught panic); the message says where.
    Internal = 8,
}

/// Which slow step a progress callback reports.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DycokePhase {
    DecodingFrames = 0,
    EncodingFrames = 1,
    Prefill = 2,
}

/// Called with each piece of the answer's text (UTF-8, NUL-terminated); return false to stop.
pub type DycokeTokenFn = Option<unsafe extern "C" fn(piece: *const c_char, user_data: *mut c_void) -> bool>;
/// Called as slow work advances: `done` of `total` frames or positions.
pub type DycokeProgressFn = Option<unsafe extern "C" fn(phase: DycokePhase, done: u64, total: u64, user_data: *mut c_void)>;

/// How a model is loaded (`dycoke_model_default_params()` fills the defaults).
#[repr(C)]
pub struct DycokeModelParams {
    /// The vision model (mmproj GGUF), or NULL for text only.
    pub mmproj_path: *const c_char,
    /// The compute device: "cpu", or a GPU of a build with a GPU backend ("cuda0", "metal", ...);
    /// NULL is "cpu". An unknown name is DYCOKE_STATUS_INVALID_ARGUMENT, naming the devices there are.
    pub device: *const c_char,
    /// Layers placed on `device` when it is a GPU (0: none); ignored on the CPU.
    pub gpu_layers: u32,
    /// The type the vision matrices are multiplied in: "auto" (NULL: the fastest measured layout:
    /// F16 and BF16 widened to F32 where ggml runs AVX-512, others as stored), or "f32", "f16",
    /// "bf16", "q8_0", "q4_0", ... (converted once at load). Unknown: DYCOKE_STATUS_INVALID_ARGUMENT.
    pub vision_type: *const c_char,
    /// RPC servers ("HOST:PORT", comma-separated) whose devices are added before `device` is looked
    /// up ("rpc0" is the first server's); NULL or "" for none. The protocol has no authentication:
    /// use servers on loopback or a trusted network. An unusable server is DYCOKE_STATUS_IO.
    pub rpc_servers: *const c_char,
}

/// A session's settings (`dycoke_session_default_params()` fills the defaults).
#[repr(C)]
pub struct DycokeSessionParams {
    /// Positions of context; 0 picks the default (8192 or the model's, whichever is smaller).
    pub n_ctx: u32,
    /// CPU threads; 0 picks the number of cores.
    pub n_threads: u32,
    /// Frames sampled uniformly from each video (at most `max_frames`).
    pub frames: u32,
    /// The cap on frames per video; 0 takes the default (128), or `frames` when it is larger.
    pub max_frames: u32,
    /// DyCoke compression of videos (true by default).
    pub compress: bool,
    /// TTM prune ratio K in [0, 1) (0.7); negative turns TTM off.
    pub ttm_k: f32,
    /// Dynamic pruning ratio P in [0, 1) (0.7); negative turns dynamic pruning off.
    pub dp_ratio: f32,
    /// Dynamic pruning layer L; negative picks the default (3).
    pub dp_layer: i32,
    /// A folder for the embedding cache, or NULL for none.
    pub cache_dir: *const c_char,
    /// The system prompt, or NULL for the default.
    pub system_prompt: *const c_char,
    /// Temporal reuse inside the vision tower for videos: from this tower block on, a frame's
    /// position whose hidden state moved less than `vision_reuse_threshold` (relative L2) since it
    /// was last computed is not recomputed. Negative (the default) turns it off.
    pub vision_reuse_layer: i32,
    /// Temporal reuse's threshold, in [0, 1]; 0 reuses nothing (the same embeddings as off).
    pub vision_reuse_threshold: f32,
}

/// How an answer is generated (`dycoke_generate_default_params()` fills the defaults).
#[repr(C)]
pub struct DycokeGenerateParams {
    pub max_tokens: u32,
    /// 0 is greedy.
    pub temperature: f32,
    pub top_k: u32,
    pub top_p: f32,
    /// The random seed; negative takes one from the clock.
    pub seed: i64,
}

/// Counters of a session (DyCoke, media, the last answer).
#[repr(C)]
pub struct DycokeStats {
    pub visual_tokens_before_ttm: u64,
    pub visual_tokens_after_ttm: u64,
    pub decode_steps: u64,
    pub fresh_selections: u64,
    pub recalls: u64,
    pub mean_kept_fraction: f64,
    pub vision_encodes: u64,
    pub cache_hits: u64,
    /// Prompt positions of the last question taken from the cache and evaluated.
    pub last_prompt_reused: u64,
    pub last_prompt_evaluated: u64,
    /// Tokens of the last answer.
    pub last_answer_tokens: u64,
    /// Video frames run through the vision tower, and repeated frames copied instead.
    pub frames_encoded: u64,
    pub frames_reused: u64,
    /// The share of the vision tower's work (positions times blocks) temporal reuse skipped.
    pub vision_reused_share: f64,
}

/// A loaded model (LLM and optional vision model); shareable by sessions in any threads.
pub struct DycokeModel {
    model: Arc<Model>,
}

/// One conversation.
pub struct DycokeSession {
    cancel: CancelToken,
    state: Mutex<SessionState>,
}

struct SessionState {
    chat: Conversation,
    /// The last question's prompt positions reused and evaluated, and its answer's tokens.
    last: [u64; 3],
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(message: &str) {
    let c = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

fn status_of(e: &Error) -> DycokeStatus {
    match e {
        Error::Setting { .. } | Error::InvalidArgument { .. } | Error::NoVisionModel | Error::Prompt(_) | Error::Device { .. } => DycokeStatus::InvalidArgument,
        Error::Io { .. } | Error::Rpc(_) | Error::Gguf(crate::gguf::Error { kind: crate::gguf::GgufError::Io(_), .. }) => DycokeStatus::Io,
        Error::Gguf(_) | Error::Tokenizer(_) | Error::Template(_) | Error::VisionMismatch { .. } => DycokeStatus::BadModel,
        Error::Media { .. } => DycokeStatus::BadMedia,
        Error::ContextOverflow { .. } => DycokeStatus::ContextFull,
        Error::Cancelled => DycokeStatus::Cancelled,
        Error::Compute(_) => DycokeStatus::Compute,
    }
}

/// Runs `f`, turning its error or panic into a status and a last-error message.
fn guard(f: impl FnOnce() -> Result<(), Error>) -> DycokeStatus {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => {
            set_error("");
            DycokeStatus::Ok
        }
        Ok(Err(e)) => {
            set_error(&describe(&e));
            status_of(&e)
        }
        Err(panic) => {
            let what = panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned()).unwrap_or_default();
            set_error(&format!("internal error: {what}"));
            DycokeStatus::Internal
        }
    }
}

/// The parameter-struct field (or function) of a setting, as C callers know it.
fn field(s: Setting) -> &'static str {
    match s {
        Setting::ContextSize => "n_ctx",
        Setting::Threads => "n_threads",
        Setting::Frames => "frames",
        Setting::MaxFrames => "max_frames",
        Setting::TtmK => "ttm_k",
        Setting::DpLayer => "dp_layer",
        Setting::DpRatio => "dp_ratio",
        Setting::Temperature => "temperature",
        Setting::TopK => "top_k",
        Setting::TopP => "top_p",
        Setting::MaxTokens => "max_tokens",
        Setting::Device => "device",
        Setting::GpuLayers => "gpu_layers",
        // Not a C field: C callers split layers equally.
        Setting::TensorSplit => "tensor_split",
        Setting::CacheDir => "cache_dir",
        Setting::VisionType => "vision_type",
        Setting::VisionReuseLayer => "vision_reuse_layer",
        Setting::VisionReuseThreshold => "vision_reuse_threshold",
        // Settings the C API does not expose keep their own words.
        Setting::BatchSize
        | Setting::VisionBatch
        | Setting::Fps
        | Setting::DpThreshold
        | Setting::MinP
        | Setting::RepeatPenalty
        | Setting::RepeatLastN => s.describe(),
    }
}

/// An error as a C caller reads it: settings by their field names.
fn describe(e: &Error) -> String {
    match e {
        Error::Setting { setting, problem } => format!("{}: {setting} {problem}", field(*setting)),
        Error::NoVisionModel => "videos and images need a vision model: load the model with mmproj_path set".into(),
        Error::ContextOverflow { .. } => format!("{e}; open the session with a larger n_ctx"),
        Error::Rpc(_) => format!("rpc_servers: {e}"),
        _ => e.to_string(),
    }
}

fn null(name: &str) -> Error {
    Error::invalid(name, "is NULL")
}

/// A required string argument.
unsafe fn required_str<'a>(p: *const c_char, name: &str) -> Result<&'a str, Error> {
    // SAFETY: the caller passes NULL or a NUL-terminated string that outlives the call.
    unsafe { optional_str(p, name) }?.ok_or_else(|| null(name))
}

unsafe fn optional_str<'a>(p: *const c_char, name: &str) -> Result<Option<&'a str>, Error> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: non-NULL, and the caller promises a NUL-terminated string.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str().map(Some).map_err(|_| Error::invalid(name, "is not UTF-8"))
}

/// The version of the library ("0.1.0"); a static string.
#[no_mangle]
pub extern "C" fn dycoke_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The message of the last failed call on this thread ("" after a successful one). The pointer
/// stays valid until the next dycoke call on this thread.
#[no_mangle]
pub extern "C" fn dycoke_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

#[no_mangle]
pub extern "C" fn dycoke_model_default_params() -> DycokeModelParams {
    DycokeModelParams { mmproj_path: std::ptr::null(), device: std::ptr::null(), gpu_layers: 0, vision_type: std::ptr::null(), rpc_servers: std::ptr::null() }
}

#[no_mangle]
pub extern "C" fn dycoke_session_default_params() -> DycokeSessionParams {
    DycokeSessionParams {
        n_ctx: 0,
        n_threads: 0,
        frames: sampling::DEFAULT_FRAMES as u32,
        max_frames: 0,
        compress: true,
        ttm_k: TtmSettings::default().k() as f32,
        dp_ratio: DpSettings::default().ratio() as f32,
        dp_layer: -1,
        cache_dir: std::ptr::null(),
        system_prompt: std::ptr::null(),
        vision_reuse_layer: -1,
        vision_reuse_threshold: 0.0,
    }
}

#[no_mangle]
pub extern "C" fn dycoke_generate_default_params() -> DycokeGenerateParams {
    let g = GenerateParams::default();
    DycokeGenerateParams { max_tokens: g.max_tokens as u32, temperature: 0.0, top_k: g.sampler.top_k as u32, top_p: g.sampler.top_p, seed: -1 }
}

/// Loads the LLM GGUF at `llm_path` (and the mmproj of `params`, which may be NULL for the
/// defaults) into `*out`. Free it with `dycoke_model_free`.
#[no_mangle]
pub unsafe extern "C" fn dycoke_model_load(llm_path: *const c_char, params: *const DycokeModelParams, out: *mut *mut DycokeModel) -> DycokeStatus {
    guard(|| {
        if out.is_null() {
            return Err(null("out"));
        }
        // SAFETY: checked for NULL; the caller passes a writable pointer.
        unsafe { *out = std::ptr::null_mut() };
        // SAFETY: as documented for each argument.
        let llm = unsafe { required_str(llm_path, "llm_path") }?;
        let defaults = dycoke_model_default_params();
        // SAFETY: NULL or a valid struct.
        let params = unsafe { params.as_ref() }.unwrap_or(&defaults);
        // SAFETY: as documented.
        let mmproj = unsafe { optional_str(params.mmproj_path, "mmproj_path") }?.map(PathBuf::from);
        // SAFETY: as documented.
        let device = unsafe { optional_str(params.device, "device") }?.map(str::to_string);
        // SAFETY: as documented.
        let vision_type = unsafe { optional_str(params.vision_type, "vision_type") }?.map_or(Ok(VisionType::Auto), VisionType::parse)?;
        // SAFETY: as documented.
        let rpc = unsafe { optional_str(params.rpc_servers, "rpc_servers") }?
            .map(|list| list.split(',').map(str::trim).filter(|e| !e.is_empty()).map(str::to_string).collect())
            .unwrap_or_default();
        let model = Model::load(&ModelOptions { mmproj, device, rpc, gpu_layers: params.gpu_layers as usize, vision_type, ..ModelOptions::new(llm) })?;
        let handle = Box::into_raw(Box::new(DycokeModel { model }));
        // SAFETY: checked for NULL above.
        unsafe { *out = handle };
        Ok(())
    })
}

/// Frees a model (NULL is ignored). Sessions opened on it stay usable.
#[no_mangle]
pub unsafe extern "C" fn dycoke_model_free(model: *mut DycokeModel) {
    if !model.is_null() {
        // SAFETY: a pointer from dycoke_model_load, freed once.
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(model) })));
    }
}

fn compression_of(p: &DycokeSessionParams) -> Result<Compression, Error> {
    if !p.compress {
        return Ok(Compression::none());
    }
    let ttm = if p.ttm_k >= 0.0 { Some(TtmSettings::new(f64::from(p.ttm_k))?) } else { None };
    let dp = if p.dp_ratio >= 0.0 {
        let d = DpSettings::new(f64::from(p.dp_ratio))?;
        Some(match usize::try_from(p.dp_layer) {
            Ok(l) => d.with_layer(l),
            Err(_) => d,
        })
    } else {
        None
    };
    Ok(Compression { ttm, dp })
}

fn sampling_of(p: &DycokeSessionParams) -> Result<Sampling, Error> {
    let frames = p.frames as usize;
    let cap = match p.max_frames {
        0 => frames.max(sampling::DEFAULT_MAX_FRAMES),
        n => n as usize,
    };
    Sampling::new(FrameSelection::Count(frames), cap)
}

/// Opens a session on `model` (`params` may be NULL for the defaults) into `*out`. Free it with
/// `dycoke_session_free`.
#[no_mangle]
pub unsafe extern "C" fn dycoke_session_new(model: *const DycokeModel, params: *const DycokeSessionParams, out: *mut *mut DycokeSession) -> DycokeStatus {
    guard(|| {
        if out.is_null() {
            return Err(null("out"));
        }
        // SAFETY: checked for NULL.
        unsafe { *out = std::ptr::null_mut() };
        // SAFETY: NULL or a pointer from dycoke_model_load.
        let model = unsafe { model.as_ref() }.ok_or_else(|| null("model"))?;
        let defaults = dycoke_session_default_params();
        // SAFETY: NULL or a valid struct.
        let p = unsafe { params.as_ref() }.unwrap_or(&defaults);
        let mut session = SessionOptions { n_ctx: p.n_ctx as usize, ..SessionOptions::default() };
        if p.n_threads > 0 {
            session.n_threads = p.n_threads as usize;
        }
        let temporal_reuse = match p.vision_reuse_layer {
            l if l < 0 => None,
            l => Some(TemporalReuse::new(l as usize, p.vision_reuse_threshold)?),
        };
        let encoder = EncoderOptions { n_threads: session.n_threads, temporal_reuse, ..EncoderOptions::default() };
        // SAFETY: as documented.
        let system = unsafe { optional_str(p.system_prompt, "system_prompt") }?.map(str::to_string);
        let options = ConversationOptions { session, compression: compression_of(p)?, sampling: sampling_of(p)?, encoder, system };
        // SAFETY: as documented.
        let cache = unsafe { optional_str(p.cache_dir, "cache_dir") }?.map(EmbeddingCache::open).transpose()?;
        let mut chat = Conversation::new(model.model.clone(), &options)?;
        chat.set_embedding_cache(cache);
        let cancel = chat.session().cancel_token();
        let handle = Box::into_raw(Box::new(DycokeSession { cancel, state: Mutex::new(SessionState { chat, last: [0; 3] }) }));
        // SAFETY: checked for NULL above.
        unsafe { *out = handle };
        Ok(())
    })
}

/// Frees a session (NULL is ignored). No other thread may use it any more.
#[no_mangle]
pub unsafe extern "C" fn dycoke_session_free(session: *mut DycokeSession) {
    if !session.is_null() {
        // SAFETY: a pointer from dycoke_session_new, freed once.
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(session) })));
    }
}

/// Runs `f` on the session's state; a session busy in another thread is an error, not a wait.
fn with_state(session: *const DycokeSession, f: impl FnOnce(&mut SessionState) -> Result<(), Error>) -> DycokeStatus {
    guard(|| {
        // SAFETY: NULL or a pointer from dycoke_session_new.
        let s = unsafe { session.as_ref() }.ok_or_else(|| null("session"))?;
        let mut state = s.state.try_lock().map_err(|e| match e {
            std::sync::TryLockError::WouldBlock => Error::invalid("session", "is in use by another thread"),
            std::sync::TryLockError::Poisoned(_) => Error::invalid("session", "is unusable after an internal error; free it"),
        })?;
        f(&mut state)
    })
}

/// The caller's progress callback; the work stops when `cancel` fires (`dycoke_session_cancel`).
fn progress_adapter(cb: DycokeProgressFn, user_data: *mut c_void, cancel: CancelToken) -> impl FnMut(Phase, usize, usize) -> bool {
    move |phase, done, total| {
        if let Some(cb) = cb {
            let phase = match phase {
                Phase::Decoding => DycokePhase::DecodingFrames,
                Phase::Encoding => DycokePhase::EncodingFrames,
                Phase::Prefill => DycokePhase::Prefill,
            };
            // SAFETY: the caller's callback, with the caller's user data.
            unsafe { cb(phase, done as u64, total as u64, user_data) }
        }
        !cancel.is_cancelled()
    }
}

/// Decodes and encodes a video for the next question. `progress` may be NULL.
#[no_mangle]
pub unsafe extern "C" fn dycoke_session_add_video(session: *mut DycokeSession, path: *const c_char, progress: DycokeProgressFn, user_data: *mut c_void) -> DycokeStatus {
    with_state(session, |s| {
        // SAFETY: as documented.
        let path = unsafe { required_str(path, "path") }?;
        let cancel = s.chat.session().cancel_token();
        cancel.reset();
        s.chat.add_video(path.as_ref(), &mut progress_adapter(progress, user_data, cancel))?;
        Ok(())
    })
}

/// Loads and encodes an image for the next question. `progress` may be NULL.
#[no_mangle]
pub unsafe extern "C" fn dycoke_session_add_image(session: *mut DycokeSession, path: *const c_char, progress: DycokeProgressFn, user_data: *mut c_void) -> DycokeStatus {
    with_state(session, |s| {
        // SAFETY: as documented.
        let path = unsafe { required_str(path, "path") }?;
        let cancel = s.chat.session().cancel_token();
        cancel.reset();
        s.chat.add_image(path.as_ref(), &mut progress_adapter(progress, user_data, cancel))?;
        Ok(())
    })
}

/// Asks `question` about the media added so far and the conversation before it, streaming the
/// answer to `on_token`. `params`, `on_token` and `on_progress` may be NULL. A stop by
/// `dycoke_session_cancel` or by `on_token` returning false returns DYCOKE_STATUS_CANCELLED; the
/// text streamed until then stays in the conversation.
#[no_mangle]
pub unsafe extern "C" fn dycoke_session_ask(
    session: *mut DycokeSession,
    question: *const c_char,
    params: *const DycokeGenerateParams,
    on_token: DycokeTokenFn,
    on_progress: DycokeProgressFn,
    user_data: *mut c_void,
) -> DycokeStatus {
    with_state(session, |s| {
        // SAFETY: as documented.
        let question = unsafe { required_str(question, "question") }?;
        let defaults = dycoke_generate_default_params();
        // SAFETY: NULL or a valid struct.
        let p = unsafe { params.as_ref() }.unwrap_or(&defaults);
        let sampler = SamplerParams {
            temperature: p.temperature,
            top_k: p.top_k as usize,
            top_p: p.top_p,
            seed: u64::try_from(p.seed).ok(),
            ..SamplerParams::default()
        };
        sampler.validate()?;
        if p.max_tokens == 0 {
            return Err(Error::setting(Setting::MaxTokens, "must be at least 1"));
        }
        let params = GenerateParams { max_tokens: p.max_tokens as usize, sampler, ignore_eos: false };
        let mut on_text = |piece: &str| match on_token {
            None => true,
            Some(cb) => {
                let c = CString::new(piece.replace('\0', "")).unwrap_or_default();
                // SAFETY: the caller's callback, with a string valid during the call.
                unsafe { cb(c.as_ptr(), user_data) }
            }
        };
        let cancel = s.chat.session().cancel_token();
        let answer = s.chat.ask(question, &params, &mut on_text, &mut progress_adapter(on_progress, user_data, cancel))?;
        s.last = [answer.prompt.reused as u64, answer.prompt.evaluated as u64, answer.tokens.len() as u64];
        if answer.stop == StopReason::Cancelled {
            return Err(Error::Cancelled);
        }
        Ok(())
    })
}

/// Stops the session's current work (from any thread; NULL is ignored).
#[no_mangle]
pub unsafe extern "C" fn dycoke_session_cancel(session: *const DycokeSession) -> DycokeStatus {
    guard(|| {
        // SAFETY: NULL or a pointer from dycoke_session_new; only the thread-safe token is used.
        let s = unsafe { session.as_ref() }.ok_or_else(|| null("session"))?;
        s.cancel.cancel();
        Ok(())
    })
}

/// Forgets the questions and answers; the media stay, for the next question.
#[no_mangle]
pub unsafe extern "C" fn dycoke_session_reset(session: *mut DycokeSession) -> DycokeStatus {
    with_state(session, |s| {
        s.chat.reset_turns();
        Ok(())
    })
}

/// Fills `*out` with the session's counters.
#[no_mangle]
pub unsafe extern "C" fn dycoke_session_stats(session: *const DycokeSession, out: *mut DycokeStats) -> DycokeStatus {
    with_state(session, |s| {
        if out.is_null() {
            return Err(null("out"));
        }
        let d = s.chat.stats();
        let m = s.chat.encoder_counters();
        let stats = DycokeStats {
            visual_tokens_before_ttm: d.visual_tokens_before_ttm as u64,
            visual_tokens_after_ttm: d.visual_tokens_after_ttm as u64,
            decode_steps: d.dp.steps,
            fresh_selections: d.dp.fresh_selections,
            recalls: d.dp.recalls,
            mean_kept_fraction: d.dp.mean_kept_fraction(),
            vision_encodes: m.vision_encodes as u64,
            cache_hits: m.cache_hits as u64,
            last_prompt_reused: s.last[0],
            last_prompt_evaluated: s.last[1],
            last_answer_tokens: s.last[2],
            frames_encoded: m.frames_encoded as u64,
            frames_reused: m.frames_reused as u64,
            vision_reused_share: m.reused_share(),
        };
        // SAFETY: checked for NULL; the caller passes a writable struct.
        unsafe { *out = stats };
        Ok(())
    })
}
