//! `parse_chat_request`: a request body to a `ChatRequest`, checking the schema only. The JSON is
//! read into a `Value` first and walked by hand, so that every error carries the JSON path of the
//! field (`messages[2].content[0].video_url.url`) and says what is wrong with it.

use crate::error::{code, ApiError};
use crate::media::{decode_base64, is_mime, parse_media_url, shorten};
use crate::request::*;
use serde_json::{Map, Value};

/// The engine's media markers, which no client text may contain.
const MARKERS: [char; 2] = ['\u{E000}', '\u{E001}'];
/// OpenAI's limit on stop sequences.
const MAX_STOP: usize = 4;

/// Parses and checks a `POST /v1/chat/completions` body. Every refusal is a 400 whose `param` is
/// the JSON path of the field at fault (none for a body that is not JSON or not an object) and
/// whose message names it. Data URLs are decoded here, so the time taken follows the body's size.
pub fn parse_chat_request(body: &[u8], limits: &Limits) -> Result<ChatRequest, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::new(400, format!("the request body is not valid JSON: {e}")).with_code(code::INVALID_JSON))?;
    let Value::Object(top) = &value else {
        return Err(ApiError::new(400, format!("the request body must be a JSON object, not {}", kind_of(&value)))
            .with_code(code::INVALID_TYPE));
    };
    refuse_unsupported(top)?;
    let stream = opt(top, "", "stream", boolean)?.unwrap_or(false);
    let include_usage = match get(top, "stream_options") {
        None => false,
        Some(_) if !stream => {
            return Err(ApiError::invalid("stream_options", "`stream_options` is only allowed with `stream: true`"))
        }
        Some(v) => opt(object(v, "stream_options")?, "stream_options", "include_usage", boolean)?.unwrap_or(false),
    };
    Ok(ChatRequest {
        model: opt(top, "", "model", string)?.map(str::to_string),
        messages: messages(top, limits)?,
        stream,
        include_usage,
        sampling: sampling(top)?,
        video: video(top)?,
        compression: CompressionRequest {
            compress: opt(top, "", "compress", boolean)?,
            ttm_k: opt(top, "", "ttm_k", float)?,
            dp_ratio: opt(top, "", "dp_ratio", float)?,
            dp_layer: opt(top, "", "dp_layer", uint32)?,
        },
    })
}

/// OpenAI features the engine does not have: a request asking for one is refused rather than
/// answered as if it had not asked. Values that ask for nothing (`n: 1`, penalties of 0, no
/// tools) are accepted, since clients send them by default.
fn refuse_unsupported(top: &Map<String, Value>) -> Result<(), ApiError> {
    let unsupported = |param: &str, message: String| Err(ApiError::invalid(param, message).with_code(code::UNSUPPORTED));
    if let Some(n) = opt(top, "", "n", uint64)? {
        if n != 1 {
            return unsupported("n", format!("`n` must be 1: one choice per request is supported, not {n}"));
        }
    }
    for name in ["presence_penalty", "frequency_penalty"] {
        if let Some(p) = opt(top, "", name, float)? {
            if p != 0.0 {
                return unsupported(name, format!("`{name}` is not supported (only 0); use `repeat_penalty`"));
            }
        }
    }
    if opt(top, "", "logprobs", boolean)? == Some(true) {
        return unsupported("logprobs", "`logprobs` is not supported".into());
    }
    if opt(top, "", "top_logprobs", uint64)?.is_some_and(|n| n != 0) {
        return unsupported("top_logprobs", "`top_logprobs` is not supported".into());
    }
    for name in ["tools", "functions"] {
        if opt(top, "", name, array)?.is_some_and(|a| !a.is_empty()) {
            return unsupported(name, format!("`{name}` (function calling) is not supported"));
        }
    }
    for name in ["tool_choice", "function_call"] {
        match get(top, name) {
            None => {}
            Some(Value::String(s)) if s == "none" => {}
            Some(_) => return unsupported(name, format!("`{name}` is not supported (only \"none\")")),
        }
    }
    if let Some(v) = get(top, "response_format") {
        let format = object(v, "response_format")?;
        let kind = opt(format, "response_format", "type", string)?;
        if kind != Some("text") {
            return unsupported("response_format", "`response_format` is not supported (only {\"type\": \"text\"})".into());
        }
    }
    if opt(top, "", "logit_bias", object)?.is_some_and(|m| !m.is_empty()) {
        return unsupported("logit_bias", "`logit_bias` is not supported".into());
    }
    Ok(())
}

fn sampling(top: &Map<String, Value>) -> Result<SamplingRequest, ApiError> {
    let legacy = opt(top, "", "max_tokens", uint32)?;
    let current = opt(top, "", "max_completion_tokens", uint32)?;
    let max_tokens = match (current, legacy) {
        (Some(a), Some(b)) if a != b => {
            return Err(ApiError::invalid(
                "max_tokens",
                format!("`max_tokens` ({b}) and `max_completion_tokens` ({a}) differ: give one"),
            ))
        }
        (Some(0), _) => return Err(ApiError::invalid("max_completion_tokens", "`max_completion_tokens` must be at least 1")),
        (None, Some(0)) => return Err(ApiError::invalid("max_tokens", "`max_tokens` must be at least 1")),
        (a, b) => a.or(b),
    };
    let seed = match get(top, "seed") {
        // llama.cpp's "random seed"; its clients send it.
        Some(v) if v.as_i64() == Some(-1) => None,
        _ => opt(top, "", "seed", uint64)?,
    };
    Ok(SamplingRequest {
        max_tokens,
        temperature: opt(top, "", "temperature", float)?,
        top_p: opt(top, "", "top_p", float)?,
        top_k: opt(top, "", "top_k", uint32)?,
        min_p: opt(top, "", "min_p", float)?,
        seed,
        repeat_penalty: opt(top, "", "repeat_penalty", float)?,
        repeat_last_n: opt(top, "", "repeat_last_n", uint32)?,
        stop: stop(top)?,
    })
}

fn stop(top: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
    let stops: Vec<String> = match get(top, "stop") {
        None => return Ok(Vec::new()),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => {
            if items.len() > MAX_STOP {
                return Err(ApiError::invalid("stop", format!("`stop` has {} sequences; at most {MAX_STOP} are allowed", items.len())));
            }
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                out.push(string(item, &format!("stop[{i}]"))?.to_string());
            }
            out
        }
        Some(v) => return Err(wrong_type("stop", "a string or an array of strings", v)),
    };
    if stops.iter().any(String::is_empty) {
        return Err(ApiError::invalid("stop", "`stop` sequences must not be empty"));
    }
    Ok(stops)
}

fn video(top: &Map<String, Value>) -> Result<VideoRequest, ApiError> {
    let mut frames = opt(top, "", "frames", uint32)?.map(|f| (f, "frames"));
    let mut fps = opt(top, "", "fps", float)?.map(|f| (f, "fps"));
    if let Some(kwargs) = opt(top, "", "media_io_kwargs", object)? {
        if let Some(v) = opt(kwargs, "media_io_kwargs", "video", object)? {
            const FRAMES: &str = "media_io_kwargs.video.num_frames";
            const FPS: &str = "media_io_kwargs.video.fps";
            if let Some(n) = opt(v, "media_io_kwargs.video", "num_frames", uint32)? {
                match frames {
                    Some((f, _)) if f != n => {
                        return Err(ApiError::invalid(FRAMES, format!("`{FRAMES}` ({n}) differs from `frames` ({f})")))
                    }
                    _ => frames = Some((n, FRAMES)),
                }
            }
            if let Some(r) = opt(v, "media_io_kwargs.video", "fps", float)? {
                match fps {
                    Some((f, _)) if f != r => return Err(ApiError::invalid(FPS, format!("`{FPS}` ({r}) differs from `fps` ({f})"))),
                    _ => fps = Some((r, FPS)),
                }
            }
        }
    }
    if let (Some((_, a)), Some((_, b))) = (frames, fps) {
        return Err(ApiError::invalid(b, format!("`{a}` and `{b}` are exclusive: give a frame count or a rate, not both")));
    }
    Ok(VideoRequest { frames: frames.map(|f| f.0), fps: fps.map(|f| f.0), max_frames: opt(top, "", "max_frames", uint32)? })
}

/// Counts kept while walking the messages, against the limits.
struct Budget<'a> {
    limits: &'a Limits,
    media: usize,
    text_bytes: usize,
}

fn messages(top: &Map<String, Value>, limits: &Limits) -> Result<Vec<Message>, ApiError> {
    let Some(v) = get(top, "messages") else {
        return Err(ApiError::invalid("messages", "`messages` is required").with_code(code::MISSING));
    };
    let items = array(v, "messages")?;
    if items.is_empty() {
        return Err(ApiError::invalid("messages", "`messages` must not be empty"));
    }
    if items.len() > limits.max_messages {
        return Err(ApiError::invalid(
            "messages",
            format!("`messages` has {} messages; at most {} are allowed", items.len(), limits.max_messages),
        )
        .with_code(code::LIMIT));
    }
    let mut budget = Budget { limits, media: 0, text_bytes: 0 };
    let out = items.iter().enumerate().map(|(i, m)| message(m, &format!("messages[{i}]"), &mut budget)).collect::<Result<Vec<_>, _>>()?;
    if out.last().is_some_and(|m| m.role != Role::User) {
        return Err(ApiError::invalid(format!("messages[{}].role", out.len() - 1), "the last message must be from the user"));
    }
    Ok(out)
}

fn message(v: &Value, path: &str, budget: &mut Budget) -> Result<Message, ApiError> {
    let m = object(v, path)?;
    let role_path = format!("{path}.role");
    let role = match m.get("role") {
        None | Some(Value::Null) => return Err(ApiError::invalid(&role_path, format!("`{role_path}` is required")).with_code(code::MISSING)),
        Some(r) => match string(r, &role_path)? {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" | "function" => {
                return Err(ApiError::invalid(&role_path, format!("`{role_path}`: tool messages are not supported"))
                    .with_code(code::UNSUPPORTED))
            }
            other => {
                return Err(ApiError::invalid(
                    &role_path,
                    format!("`{role_path}` is '{}'; expected system, developer, user or assistant", shorten(other)),
                ))
            }
        },
    };
    for name in ["tool_calls", "function_call"] {
        let present = match get(m, name) {
            None => false,
            Some(Value::Array(a)) => !a.is_empty(),
            Some(_) => true,
        };
        if present {
            return Err(ApiError::invalid(format!("{path}.{name}"), format!("`{path}.{name}`: tool calls are not supported"))
                .with_code(code::UNSUPPORTED));
        }
    }
    let content_path = format!("{path}.content");
    let parts = match get(m, "content") {
        None if role == Role::Assistant => Vec::new(),
        None => {
            return Err(ApiError::invalid(&content_path, format!("`{content_path}` is required for a non-assistant message"))
                .with_code(code::MISSING))
        }
        Some(Value::String(s)) => vec![Part::Text(text(s, &content_path, budget)?)],
        Some(Value::Array(items)) => {
            if items.len() > budget.limits.max_parts {
                return Err(ApiError::invalid(
                    &content_path,
                    format!("`{content_path}` has {} parts; at most {} are allowed", items.len(), budget.limits.max_parts),
                )
                .with_code(code::LIMIT));
            }
            let mut parts = Vec::with_capacity(items.len());
            for (j, item) in items.iter().enumerate() {
                parts.push(part(item, &format!("{content_path}[{j}]"), role, budget)?);
            }
            parts
        }
        Some(v) => return Err(wrong_type(&content_path, "a string or an array of parts", v)),
    };
    Ok(Message { role, parts })
}

fn part(v: &Value, path: &str, role: Role, budget: &mut Budget) -> Result<Part, ApiError> {
    let p = object(v, path)?;
    let type_path = format!("{path}.type");
    let Some(kind) = opt(p, path, "type", string)? else {
        return Err(ApiError::invalid(&type_path, format!("`{type_path}` is required")).with_code(code::MISSING));
    };
    let type_name = kind;
    let kind = match type_name {
        "text" => {
            let Some(t) = opt(p, path, "text", string)? else {
                let text_path = format!("{path}.text");
                return Err(ApiError::invalid(&text_path, format!("`{text_path}` is required")).with_code(code::MISSING));
            };
            return Ok(Part::Text(text(t, &format!("{path}.text"), budget)?));
        }
        "image_url" => MediaKind::Image,
        "video_url" | "input_video" => MediaKind::Video,
        other => {
            return Err(ApiError::invalid(
                &type_path,
                format!("`{type_path}` '{}' is not supported; expected text, image_url, video_url or input_video", shorten(other)),
            )
            .with_code(code::UNSUPPORTED))
        }
    };
    if role != Role::User {
        return Err(ApiError::invalid(path, format!("`{path}`: media parts are only allowed in user messages")));
    }
    budget.media += 1;
    if budget.media > budget.limits.max_media {
        return Err(ApiError::invalid(path, format!("too many media parts: at most {} per request", budget.limits.max_media))
            .with_code(code::LIMIT));
    }
    let source = if type_name == "input_video" { input_video(p, path)? } else { url_field(p, path, type_name)? };
    Ok(Part::Media(MediaPart { kind, source }))
}

/// `"NAME": {"url": U}` or `"NAME": U`, the two shapes clients send.
fn url_field(p: &Map<String, Value>, path: &str, name: &str) -> Result<MediaSource, ApiError> {
    let field = format!("{path}.{name}");
    match get(p, name) {
        None => Err(ApiError::invalid(&field, format!("`{field}` is required")).with_code(code::MISSING)),
        Some(Value::String(u)) => parse_media_url(u, &field),
        Some(Value::Object(o)) => match opt(o, &field, "url", string)? {
            Some(u) => parse_media_url(u, &format!("{field}.url")),
            None => Err(ApiError::invalid(format!("{field}.url"), format!("`{field}.url` is required")).with_code(code::MISSING)),
        },
        Some(v) => Err(wrong_type(&field, "an object with a url or a URL string", v)),
    }
}

/// llama.cpp's `{"input_video": {"data": BASE64, "format": "mp4"}}` or `{"input_video": {"url": U}}`.
fn input_video(p: &Map<String, Value>, path: &str) -> Result<MediaSource, ApiError> {
    let field = format!("{path}.input_video");
    let Some(v) = get(p, "input_video") else {
        return Err(ApiError::invalid(&field, format!("`{field}` is required")).with_code(code::MISSING));
    };
    let o = object(v, &field)?;
    let data = opt(o, &field, "data", string)?;
    let url = opt(o, &field, "url", string)?;
    match (data, url) {
        (Some(_), Some(_)) => Err(ApiError::invalid(&field, format!("`{field}` has both `data` and `url`: give one"))),
        (None, None) => Err(ApiError::invalid(format!("{field}.data"), format!("`{field}` needs `data` (base64) or `url`"))
            .with_code(code::MISSING)),
        (None, Some(u)) => parse_media_url(u, &format!("{field}.url")),
        (Some(d), None) => {
            let format_path = format!("{field}.format");
            let mime = match opt(o, &field, "format", string)? {
                None => "video/mp4".to_string(),
                Some(f) => {
                    let f = f.to_ascii_lowercase();
                    let mime = if f.contains('/') { f } else { format!("video/{f}") };
                    if !is_mime(&mime) {
                        return Err(ApiError::invalid(&format_path, format!("`{format_path}` '{}' is not a video format", shorten(&mime))));
                    }
                    mime
                }
            };
            let data_path = format!("{field}.data");
            let bytes = decode_base64(d).map_err(|e| ApiError::invalid(&data_path, format!("`{data_path}` has invalid base64 data: {e}")))?;
            if bytes.is_empty() {
                return Err(ApiError::invalid(&data_path, format!("`{data_path}` carries no data")));
            }
            Ok(MediaSource::Data { mime, bytes })
        }
    }
}

fn text(s: &str, path: &str, budget: &mut Budget) -> Result<String, ApiError> {
    if s.contains(MARKERS) {
        return Err(ApiError::invalid(path, format!("`{path}` contains the private-use characters U+E000/U+E001, which are reserved")));
    }
    budget.text_bytes = budget.text_bytes.saturating_add(s.len());
    if budget.text_bytes > budget.limits.max_text_bytes {
        return Err(ApiError::invalid(path, format!("the text of the messages exceeds {} bytes", budget.limits.max_text_bytes))
            .with_code(code::LIMIT));
    }
    Ok(s.to_string())
}

// Field access. Null is absent: OpenAI's schema makes optional fields nullable and clients send it.

fn get<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    m.get(key).filter(|v| !v.is_null())
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() { key.to_string() } else { format!("{prefix}.{key}") }
}

/// The optional field `key` of `m` (at JSON path `prefix`), read with `read`.
fn opt<'a, T>(
    m: &'a Map<String, Value>,
    prefix: &str,
    key: &str,
    read: fn(&'a Value, &str) -> Result<T, ApiError>,
) -> Result<Option<T>, ApiError> {
    get(m, key).map(|v| read(v, &join(prefix, key))).transpose()
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.as_f64().is_some_and(|f| f < 0.0) => "a negative number",
        Value::Number(n) if n.as_f64().is_some_and(|f| f.fract() != 0.0) => "a fractional number",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn wrong_type(path: &str, expected: &str, got: &Value) -> ApiError {
    ApiError::invalid(path, format!("`{path}` must be {expected}, not {}", kind_of(got))).with_code(code::INVALID_TYPE)
}

fn boolean(v: &Value, path: &str) -> Result<bool, ApiError> {
    v.as_bool().ok_or_else(|| wrong_type(path, "a boolean", v))
}

fn string<'a>(v: &'a Value, path: &str) -> Result<&'a str, ApiError> {
    v.as_str().ok_or_else(|| wrong_type(path, "a string", v))
}

fn array<'a>(v: &'a Value, path: &str) -> Result<&'a Vec<Value>, ApiError> {
    v.as_array().ok_or_else(|| wrong_type(path, "an array", v))
}

fn object<'a>(v: &'a Value, path: &str) -> Result<&'a Map<String, Value>, ApiError> {
    v.as_object().ok_or_else(|| wrong_type(path, "an object", v))
}

fn uint64(v: &Value, path: &str) -> Result<u64, ApiError> {
    /// 2^64, the first float above u64's range.
    const LIMIT: f64 = 18_446_744_073_709_551_616.0;
    if let Some(n) = v.as_u64() {
        return Ok(n);
    }
    // Integral floats (`100.0`, `1e3`) are integers to clients that have no other numbers.
    match v.as_f64() {
        Some(f) if f.fract() == 0.0 && (0.0..LIMIT).contains(&f) => Ok(f as u64),
        Some(f) if f.fract() == 0.0 && f >= LIMIT => Err(ApiError::invalid(path, format!("`{path}` is too large"))),
        _ => Err(wrong_type(path, "a non-negative integer", v)),
    }
}

fn uint32(v: &Value, path: &str) -> Result<u32, ApiError> {
    let n = uint64(v, path)?;
    u32::try_from(n).map_err(|_| ApiError::invalid(path, format!("`{path}` is too large: {n} (at most {})", u32::MAX)))
}

fn float(v: &Value, path: &str) -> Result<f32, ApiError> {
    let Some(f) = v.as_f64() else {
        return Err(wrong_type(path, "a number", v));
    };
    let f = f as f32;
    if !f.is_finite() {
        return Err(ApiError::invalid(path, format!("`{path}` is out of range")));
    }
    Ok(f)
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
