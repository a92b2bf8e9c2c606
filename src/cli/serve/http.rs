//! The HTTP side: routes, the API key, body limits and timeouts, OpenAI's response and error
//! shapes, server-sent events, and the accept loop.

use std::convert::Infallible;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use dycoke_api::{ApiError, Limits};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::chat::{self, Engine, Event};
use super::metrics::{Gauges, Metrics, Outcome};

pub struct Config {
    pub host: String,
    pub port: u16,
    pub api_key: Option<String>,
    pub timeout: Duration,
    pub max_body: usize,
    pub model_id: String,
}

struct AppState {
    config: Config,
    /// Set once the model has loaded; until then /health says "loading".
    engine: OnceLock<Arc<Engine>>,
    metrics: Arc<Metrics>,
    limits: Limits,
    created: u64,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn error_response(e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(e.to_json())).into_response()
}

fn loading() -> Response {
    error_response(&ApiError::new(503, "the model is loading").with_code("loading"))
}

/// Binds, loads the model (the address answers /health with "loading" meanwhile), prints
/// `listening on http://ADDR` on stdout once requests can be served, and serves until Ctrl-C.
pub async fn serve(config: Config, load: impl FnOnce(Arc<Metrics>) -> dycoke::Result<Engine> + Send + 'static) -> dycoke::Result<()> {
    let address = format!("{}:{}", config.host, config.port);
    let listener = tokio::net::TcpListener::bind(&address).await.map_err(|e| dycoke::Error::invalid("address", format!("cannot listen on {address}: {e}")))?;
    let local = listener.local_addr().map_err(|e| dycoke::Error::invalid("address", e.to_string()))?;
    let metrics = Arc::new(Metrics::default());
    let state = Arc::new(AppState { config, engine: OnceLock::new(), metrics: metrics.clone(), limits: Limits::default(), created: unix_now() });
    let app = router(state.clone());
    let header_timeout = state.config.timeout.min(Duration::from_secs(30));
    let accept = tokio::spawn(accept_loop(listener, app, header_timeout));

    eprintln!("dycoke: loading the model ...");
    let engine = tokio::task::spawn_blocking(move || load(metrics)).await.map_err(|e| dycoke::Error::invalid("model load", e.to_string()))??;
    let _ = state.engine.set(Arc::new(engine));
    println!("listening on http://{local}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    eprintln!("dycoke: the chat page is at http://{local}/ ; the API at http://{local}/v1 (Ctrl-C stops)");

    tokio::select! {
        _ = tokio::signal::ctrl_c() => eprintln!("dycoke: stopping"),
        r = accept => if let Err(e) = r { eprintln!("dycoke: the server stopped: {e}") },
    }
    Ok(())
}

/// Accepts connections for ever; each is served by hyper with a limit on how long its request
/// headers may take (a client that opens a connection and stalls does not hold it).
async fn accept_loop(listener: tokio::net::TcpListener, app: Router, header_timeout: Duration) {
    let service = hyper_util::service::TowerToHyperService::new(app);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin or stop.
                eprintln!("dycoke: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = service.clone();
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(header_timeout);
            let _ = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
        });
    }
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/models", get(models))
        .route("/metrics", get(metrics))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/chat/completions", post(chat_completions))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .with_state(state)
}

async fn not_found(req: Request) -> Response {
    error_response(&ApiError::new(404, format!("no such endpoint: {}", req.uri().path())).with_code("not_found"))
}

async fn method_not_allowed(req: Request) -> Response {
    error_response(&ApiError::new(405, format!("{} is not allowed on {}", req.method(), req.uri().path())).with_code("method_not_allowed"))
}

/// With an API key, every path but the page and /health needs `Authorization: Bearer KEY`.
async fn auth(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &state.config.api_key {
        let path = req.uri().path();
        if path != "/" && path != "/health" {
            let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
            if !given.is_some_and(|g| same(g.as_bytes(), key.as_bytes())) {
                let e = ApiError::new(401, "invalid or missing API key: send Authorization: Bearer KEY").with_code("invalid_api_key");
                let mut r = error_response(&e);
                r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return r;
            }
        }
    }
    next.run(req).await
}

/// Compares without stopping at the first difference (the time says nothing about the key).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

const PAGE: &str = include_str!("page.html");

async fn page() -> Response {
    // A development override, so the page can be edited without rebuilding.
    let page = std::env::var_os("DYCOKE_SERVE_PAGE").and_then(|p| std::fs::read_to_string(p).ok());
    let mut r = Html(page.unwrap_or_else(|| PAGE.to_string())).into_response();
    r.headers_mut().insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src 'self' data: blob:; media-src 'self' data: blob:"));
    r
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    let Some(engine) = state.engine.get() else {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "loading"}))).into_response();
    };
    let (total, busy, queued) = engine.pool.load();
    Json(json!({"status": "ok", "sessions": {"total": total, "busy": busy, "free": total - busy}, "queue": queued})).into_response()
}

async fn models(State(state): State<Arc<AppState>>) -> Response {
    let vision = state.engine.get().map(|e| e.media.is_some());
    Json(json!({
        "object": "list",
        "data": [{"id": state.config.model_id, "object": "model", "created": state.created, "owned_by": "dycoke", "meta": {"vision": vision}}]
    }))
    .into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let Some(engine) = state.engine.get() else { return loading() };
    let (sessions, busy, queued) = engine.pool.load();
    let text = state.metrics.render(&Gauges { sessions, busy, queued });
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// Cancels the request's answer when the handler or the response stream is dropped (the client
/// went away).
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

async fn chat_completions(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let arrived = Instant::now();
    let Some(engine) = state.engine.get().cloned() else { return loading() };
    let fail = |outcome: Outcome, e: ApiError| {
        state.metrics.outcome(outcome);
        error_response(&e)
    };
    let body = match tokio::time::timeout(state.config.timeout, axum::body::to_bytes(req.into_body(), state.config.max_body)).await {
        Err(_) => return fail(Outcome::ClientError, ApiError::new(408, "the request body did not arrive in time").with_code("timeout")),
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            return if too_large {
                fail(Outcome::ClientError, ApiError::new(413, format!("the request body is larger than this server's limit of {} MiB", state.config.max_body >> 20)).with_code("body_too_large"))
            } else {
                fail(Outcome::ClientError, ApiError::new(400, format!("could not read the request body: {e}")))
            };
        }
        Ok(Ok(b)) => b,
    };
    // Parsing decodes data: URLs (up to the body limit): off the async threads.
    let limits = state.limits.clone();
    let parsed = tokio::task::spawn_blocking(move || dycoke_api::parse_chat_request(&body, &limits)).await;
    let request = match parsed {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return fail(Outcome::ClientError, e),
        Err(e) => return fail(Outcome::ServerError, ApiError::new(500, format!("internal error: {e}"))),
    };
    let (stream, include_usage) = (request.stream, request.include_usage);
    let job = match engine.prepare(request, arrived).await {
        Ok(j) => j,
        Err(e) => return fail(if e.status < 500 { Outcome::ClientError } else { Outcome::ServerError }, e),
    };
    let cancel = Arc::new(AtomicBool::new(false));
    let guard = CancelOnDrop(cancel.clone());
    let lease = match engine.pool.acquire(job.identities()).await {
        Ok(l) => l,
        Err(_) => {
            let e = ApiError::new(429, "every session is busy and the queue is full; retry later").with_code("queue_full");
            let mut r = fail(Outcome::Rejected, e);
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return r;
        }
    };
    let (tx, rx) = mpsc::channel(64);
    let worker = engine.clone();
    tokio::task::spawn_blocking(move || chat::run(&worker, job, lease, tx, cancel));
    let reply = Reply { id: completion_id(), created: unix_now(), model: state.config.model_id.clone() };
    if stream {
        stream_response(reply, rx, guard, include_usage)
    } else {
        collect_response(reply, rx, guard).await
    }
}

fn completion_id() -> String {
    format!("chatcmpl-{:024x}", rand::random::<u128>() >> 32)
}

/// What every response object of one completion shares.
struct Reply {
    id: String,
    created: u64,
    model: String,
}

impl Reply {
    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]})
    }
}

async fn collect_response(reply: Reply, mut rx: mpsc::Receiver<Event>, guard: CancelOnDrop) -> Response {
    let mut text = String::new();
    while let Some(event) = rx.recv().await {
        match event {
            Event::Text(t) => text.push_str(&t),
            Event::Error(e) => return error_response(&e),
            Event::Done(f) => {
                drop(guard);
                return Json(json!({
                    "id": reply.id, "object": "chat.completion", "created": reply.created, "model": reply.model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": f.finish_reason}],
                    "usage": f.usage,
                }))
                .into_response();
            }
        }
    }
    error_response(&ApiError::new(500, "the answer was interrupted"))
}

/// The answer as server-sent events: OpenAI's chunks, then `[DONE]`. Keep-alive comments every
/// second let a client's disconnect be noticed while the video is encoded or the prompt evaluated.
fn stream_response(reply: Reply, rx: mpsc::Receiver<Event>, guard: CancelOnDrop, include_usage: bool) -> Response {
    struct StreamState {
        reply: Reply,
        rx: mpsc::Receiver<Event>,
        pending: VecDeque<String>,
        finished: bool,
        include_usage: bool,
        _guard: CancelOnDrop,
    }
    let first = reply.chunk(json!({"role": "assistant", "content": ""}), None).to_string();
    let state = StreamState { reply, rx, pending: VecDeque::from([first]), finished: false, include_usage, _guard: guard };
    let events = futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(data) = s.pending.pop_front() {
                return Some((Ok::<_, Infallible>(SseEvent::default().data(data)), s));
            }
            if s.finished {
                return None;
            }
            match s.rx.recv().await {
                Some(Event::Text(t)) => s.pending.push_back(s.reply.chunk(json!({"content": t}), None).to_string()),
                Some(Event::Done(f)) => {
                    s.pending.push_back(s.reply.chunk(json!({}), Some(f.finish_reason)).to_string());
                    if s.include_usage {
                        let mut last = s.reply.chunk(json!({}), None);
                        last["choices"] = json!([]);
                        last["usage"] = f.usage;
                        s.pending.push_back(last.to_string());
                    }
                    s.pending.push_back("[DONE]".into());
                    s.finished = true;
                }
                Some(Event::Error(e)) => {
                    s.pending.push_back(e.to_json().to_string());
                    s.pending.push_back("[DONE]".into());
                    s.finished = true;
                }
                None => {
                    s.pending.push_back(ApiError::new(500, "the answer was interrupted").to_json().to_string());
                    s.finished = true;
                }
            }
        }
    });
    let mut r = Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(1))).into_response();
    r.headers_mut().insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}
