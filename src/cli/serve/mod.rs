//! `dycoke serve`: an OpenAI-compatible HTTP server (chat completions with video and images,
//! streaming, models, health, metrics) with a built-in chat page.
//!
//! Layers, one way: `http` (routes, auth, body limits, SSE, the accept loop with its timeouts) ->
//! `chat` (a request's settings, media and answer) -> `pool` (the sessions and the queue) and
//! `media` (URLs to files, the shared encoder and embedding cache). The request schema itself is
//! the `dycoke-api` crate. Generation runs on blocking threads, never on the async ones.

mod chat;
mod http;
mod media;
mod metrics;
mod pool;
mod stop;
mod turns;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use dycoke::encoder::MediaEncoder;
use dycoke::{Error, Setting};

use super::common::{ContextArgs, ModelArgs, SamplingArgs};
use super::compress::CompressArgs;
use super::media::FrameArgs;

#[derive(Args)]
#[command(after_help = "Security: the server listens on 127.0.0.1 unless --host says otherwise. It reads local files only under \
    --media-dir folders and fetches http(s) media only with --allow-remote-media. Use --api-key on any address other machines can reach.")]
pub struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    context: ContextArgs,
    /// Defaults for requests that do not set them (a request's own values win).
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    frames: FrameArgs,
    #[command(flatten)]
    compress: CompressArgs,
    /// Address to listen on (loopback by default: only this machine can connect).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0 picks a free one; the address is printed).
    #[arg(long, value_name = "N", default_value_t = 8080)]
    port: u16,
    /// Sessions that answer at once, sharing the loaded model (each holds a KV cache of -c positions).
    #[arg(long = "parallel", visible_alias = "np", value_name = "N", default_value_t = 2)]
    parallel: usize,
    /// Requests that may wait for a free session; more are refused with 429 at once.
    #[arg(long = "queue", value_name = "N", default_value_t = 16)]
    queue: usize,
    /// Require `Authorization: Bearer KEY` on every request but /health and the page [env: DYCOKE_API_KEY].
    #[arg(long = "api-key", value_name = "KEY", env = "DYCOKE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Seconds a client may take to send its request, or to read the answer before it is abandoned.
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    timeout: u64,
    /// A folder whose files requests may name with file:// URLs; repeatable (without it file URLs are refused).
    #[arg(long = "media-dir", value_name = "DIR")]
    media_dirs: Vec<PathBuf>,
    /// Fetch http:// and https:// media URLs (off by default: the server would make requests for its clients).
    #[arg(long)]
    allow_remote_media: bool,
    /// Largest request body, in MiB (media sent as data: URLs are in it).
    #[arg(long = "max-body-mb", value_name = "MIB", default_value_t = 256)]
    max_body_mb: usize,
    /// Memory for the vision embeddings of recent media, shared by all sessions, in MiB.
    #[arg(long = "media-cache-mb", value_name = "MIB", default_value_t = 1024)]
    media_cache_mb: usize,
    /// The model's name in /v1/models and responses [default: the LLM file's name].
    #[arg(short = 'a', long = "alias", value_name = "NAME")]
    alias: Option<String>,
}

pub fn run(a: ServeArgs) -> dycoke::Result<()> {
    // Every setting is checked before the model loads.
    if a.parallel == 0 || a.parallel > 64 {
        return Err(Error::invalid("sessions", format!("--parallel {} is outside 1..=64", a.parallel)));
    }
    if a.max_body_mb == 0 {
        return Err(Error::invalid("body limit", "--max-body-mb must be at least 1"));
    }
    if a.timeout == 0 {
        return Err(Error::invalid("timeout", "--timeout must be at least 1 second"));
    }
    let generate = a.sampling.params()?;
    let sampling = a.frames.sampling()?;
    let compression = a.compress.compression(true)?;
    let options = a.context.conversation(compression, sampling, None)?;
    let temporal_reuse = a.frames.temporal_reuse()?;
    let cache = a.frames.cache()?;
    let mut allowed_dirs = Vec::new();
    for d in &a.media_dirs {
        let canonical = d.canonicalize().map_err(|e| Error::io(d, e))?;
        if !canonical.is_dir() {
            return Err(Error::invalid("media folder", format!("--media-dir {}: not a folder", d.display())));
        }
        allowed_dirs.push(canonical);
    }
    let model_options = a.model.options()?;
    // Clients see the name the user gave: the alias, the Hub repository, or the LLM file's name.
    let model_id = a.alias.clone().or_else(|| a.model.hf.as_ref().map(ToString::to_string)).unwrap_or_else(|| model_options.llm.file_name().map_or("model".into(), |n| n.to_string_lossy().into_owned()));
    let timeout = Duration::from_secs(a.timeout);
    let config = http::Config {
        host: a.host.clone(),
        port: a.port,
        api_key: a.api_key.clone().filter(|k| !k.is_empty()),
        timeout,
        max_body: a.max_body_mb << 20,
        model_id,
    };
    let policy = media::MediaPolicy { allowed_dirs, allow_remote: a.allow_remote_media, max_bytes: (a.max_body_mb as u64) << 20, fetch_timeout: timeout.min(Duration::from_secs(120)) };
    let defaults = chat::Defaults { generate, compression, selection: sampling.selection(), max_frames: a.frames.max_frames };
    let (parallel, queue, media_cache) = (a.parallel, a.queue, a.media_cache_mb << 20);

    let load = move |metrics: Arc<metrics::Metrics>| -> dycoke::Result<chat::Engine> {
        let model = super::common::load_model(&model_options)?;
        let mut encoder_options = options.encoder;
        encoder_options.temporal_reuse = temporal_reuse;
        let media = match MediaEncoder::new(&model, encoder_options) {
            Ok(mut encoder) => {
                encoder.set_cache(cache);
                Some(media::MediaStore::new(encoder, media_cache).map_err(|e| Error::io(std::env::temp_dir(), e))?)
            }
            Err(Error::NoVisionModel) => None,
            Err(e) => return Err(e),
        };
        let pool = pool::Pool::new(model.clone(), options, parallel, queue)?;
        let n_ctx = pool.n_ctx();
        if defaults.generate.max_tokens > n_ctx {
            return Err(Error::setting(Setting::MaxTokens, format!("{} is more than the context of {n_ctx}", defaults.generate.max_tokens)));
        }
        Ok(chat::Engine { turns: turns::Turns::default(), pool, media, policy, metrics, defaults, n_ctx, stall_timeout: timeout })
    };
    // Blocking threads: one per session that answers, and two for downloads and loading. A
    // bounded set is reused, so memory (per-thread allocator arenas, stacks) does not grow with
    // the number of clients.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(parallel + 2)
        .thread_keep_alive(Duration::from_secs(600))
        .build().map_err(|e| Error::invalid("runtime", e.to_string()))?;
    runtime.block_on(http::serve(config, load))
}
