use super::*;
use crate::ErrorKind;
use serde_json::json;
use std::path::PathBuf;

fn parse(v: Value) -> Result<ChatRequest, ApiError> {
    parse_chat_request(v.to_string().as_bytes(), &Limits::default())
}

/// A request with one user message of `content`, and the top-level `extra` fields.
fn with(content: Value, extra: Value) -> Value {
    let mut v = json!({"model": "m", "messages": [{"role": "user", "content": content}]});
    if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
    }
    v
}

fn extra(fields: Value) -> Value {
    with(json!("hi"), fields)
}

fn video_part(url: &str) -> Value {
    json!([{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": "what happens?"}])
}

/// Each refused request: its body, the param the error must name (None: the body itself), and
/// words the message must contain.
fn refused() -> Vec<(Value, Option<&'static str>, &'static str)> {
    vec![
        (json!([1, 2]), None, "must be a JSON object, not an array"),
        (json!("text"), None, "must be a JSON object"),
        (json!({"model": "m"}), Some("messages"), "`messages` is required"),
        (json!({"messages": {}}), Some("messages"), "`messages` must be an array, not an object"),
        (json!({"messages": null}), Some("messages"), "`messages` is required"),
        (json!({"messages": []}), Some("messages"), "must not be empty"),
        (json!({"messages": ["hi"]}), Some("messages[0]"), "`messages[0]` must be an object, not a string"),
        (json!({"messages": [{"content": "hi"}]}), Some("messages[0].role"), "`messages[0].role` is required"),
        (json!({"messages": [{"role": 3, "content": "hi"}]}), Some("messages[0].role"), "must be a string, not a number"),
        (json!({"messages": [{"role": "tool", "content": "x"}, {"role": "user", "content": "hi"}]}), Some("messages[0].role"), "tool messages are not supported"),
        (json!({"messages": [{"role": "robot", "content": "hi"}]}), Some("messages[0].role"), "'robot'; expected system"),
        (json!({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}), Some("messages[1].role"), "the last message must be from the user"),
        (json!({"messages": [{"role": "system", "content": "be brief"}]}), Some("messages[0].role"), "the last message must be from the user"),
        (json!({"messages": [{"role": "user"}]}), Some("messages[0].content"), "is required for a non-assistant message"),
        (json!({"messages": [{"role": "user", "content": null}]}), Some("messages[0].content"), "is required"),
        (json!({"messages": [{"role": "user", "content": 5}]}), Some("messages[0].content"), "a string or an array of parts, not a number"),
        (json!({"messages": [{"role": "assistant", "content": "x", "tool_calls": [{"id": "1"}]}, {"role": "user", "content": "hi"}]}), Some("messages[0].tool_calls"), "tool calls are not supported"),
        (with(json!(["hi"]), json!({})), Some("messages[0].content[0]"), "must be an object, not a string"),
        (with(json!([{"text": "hi"}]), json!({})), Some("messages[0].content[0].type"), "`messages[0].content[0].type` is required"),
        (with(json!([{"type": "input_audio", "input_audio": {}}]), json!({})), Some("messages[0].content[0].type"), "'input_audio' is not supported"),
        (with(json!([{"type": "text"}]), json!({})), Some("messages[0].content[0].text"), "`messages[0].content[0].text` is required"),
        (with(json!([{"type": "text", "text": ["a"]}]), json!({})), Some("messages[0].content[0].text"), "must be a string, not an array"),
        (with(json!("a \u{E000}0\u{E001} b"), json!({})), Some("messages[0].content"), "U+E000/U+E001"),
        (with(json!([{"type": "text", "text": "\u{E001}"}]), json!({})), Some("messages[0].content[0].text"), "private-use"),
        (
            json!({"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]}, {"role": "user", "content": "hi"}]}),
            Some("messages[0].content[0]"),
            "media parts are only allowed in user messages",
        ),
        (
            json!({"messages": [{"role": "assistant", "content": [{"type": "video_url", "video_url": "https://a.b/v.mp4"}]}, {"role": "user", "content": "hi"}]}),
            Some("messages[0].content[0]"),
            "only allowed in user messages",
        ),
        (with(json!([{"type": "video_url"}]), json!({})), Some("messages[0].content[0].video_url"), "is required"),
        (with(json!([{"type": "video_url", "video_url": {}}]), json!({})), Some("messages[0].content[0].video_url.url"), "is required"),
        (with(json!([{"type": "video_url", "video_url": 7}]), json!({})), Some("messages[0].content[0].video_url"), "an object with a url or a URL string"),
        (with(video_part("ftp://host/v.mp4"), json!({})), Some("messages[0].content[0].video_url.url"), "unsupported URL scheme 'ftp'"),
        (with(video_part("javascript:alert(1)"), json!({})), Some("messages[0].content[0].video_url.url"), "unsupported URL scheme 'javascript'"),
        (with(video_part("video.mp4"), json!({})), Some("messages[0].content[0].video_url.url"), "is not a URL"),
        (with(video_part("data:video/mp4,AAAA"), json!({})), Some("messages[0].content[0].video_url.url"), "not base64"),
        (with(video_part("data:video/mp4;base64,AA!A"), json!({})), Some("messages[0].content[0].video_url.url"), "invalid base64"),
        (with(video_part("file://example.com/v.mp4"), json!({})), Some("messages[0].content[0].video_url.url"), "must be local"),
        (
            with(json!([{"type": "image_url", "image_url": "data:image/png;base64,A"}]), json!({})),
            Some("messages[0].content[0].image_url"),
            "invalid base64",
        ),
        (with(json!([{"type": "input_video", "input_video": {"data": "AA==", "url": "https://a.b/c"}}]), json!({})), Some("messages[0].content[0].input_video"), "both `data` and `url`"),
        (with(json!([{"type": "input_video", "input_video": {}}]), json!({})), Some("messages[0].content[0].input_video.data"), "needs `data` (base64) or `url`"),
        (with(json!([{"type": "input_video", "input_video": "AA=="}]), json!({})), Some("messages[0].content[0].input_video"), "must be an object, not a string"),
        (with(json!([{"type": "input_video", "input_video": {"data": "A?=="}}]), json!({})), Some("messages[0].content[0].input_video.data"), "invalid base64"),
        (with(json!([{"type": "input_video", "input_video": {"data": ""}}]), json!({})), Some("messages[0].content[0].input_video.data"), "carries no data"),
        (with(json!([{"type": "input_video", "input_video": {"data": "AA==", "format": "m p4"}}]), json!({})), Some("messages[0].content[0].input_video.format"), "not a video format"),
        (extra(json!({"temperature": "hot"})), Some("temperature"), "`temperature` must be a number, not a string"),
        (extra(json!({"temperature": 1e300})), Some("temperature"), "out of range"),
        (extra(json!({"top_k": -1})), Some("top_k"), "a non-negative integer, not a negative number"),
        (extra(json!({"top_k": 2.5})), Some("top_k"), "a non-negative integer, not a fractional number"),
        (extra(json!({"repeat_last_n": 4294967296u64})), Some("repeat_last_n"), "too large"),
        (extra(json!({"seed": -2})), Some("seed"), "non-negative integer"),
        (extra(json!({"seed": -1.5})), Some("seed"), "not a negative number"),
        (extra(json!({"repeat_last_n": -64.0})), Some("repeat_last_n"), "not a negative number"),
        (extra(json!({"seed": 1e30})), Some("seed"), "too large"),
        (extra(json!({"max_tokens": 0})), Some("max_tokens"), "at least 1"),
        (extra(json!({"max_completion_tokens": 0})), Some("max_completion_tokens"), "at least 1"),
        (extra(json!({"max_tokens": 10, "max_completion_tokens": 20})), Some("max_tokens"), "differ"),
        (extra(json!({"max_tokens": 1e20})), Some("max_tokens"), "too large"),
        (extra(json!({"max_tokens": 5000000000u64})), Some("max_tokens"), "too large"),
        (extra(json!({"stop": ["a", "b", "c", "d", "e"]})), Some("stop"), "at most 4"),
        (extra(json!({"stop": ""})), Some("stop"), "must not be empty"),
        (extra(json!({"stop": ["a", ""]})), Some("stop"), "must not be empty"),
        (extra(json!({"stop": ["a", 1]})), Some("stop[1]"), "must be a string"),
        (extra(json!({"stop": 1})), Some("stop"), "a string or an array of strings"),
        (extra(json!({"stream": "yes"})), Some("stream"), "`stream` must be a boolean, not a string"),
        (extra(json!({"stream_options": {"include_usage": true}})), Some("stream_options"), "only allowed with `stream: true`"),
        (extra(json!({"stream": true, "stream_options": {"include_usage": 1}})), Some("stream_options.include_usage"), "must be a boolean"),
        (extra(json!({"stream": true, "stream_options": []})), Some("stream_options"), "must be an object"),
        (extra(json!({"n": 2})), Some("n"), "`n` must be 1"),
        (extra(json!({"n": "1"})), Some("n"), "must be a non-negative integer"),
        (extra(json!({"presence_penalty": 0.5})), Some("presence_penalty"), "use `repeat_penalty`"),
        (extra(json!({"frequency_penalty": -1})), Some("frequency_penalty"), "not supported"),
        (extra(json!({"logprobs": true})), Some("logprobs"), "`logprobs` is not supported"),
        (extra(json!({"top_logprobs": 3})), Some("top_logprobs"), "`top_logprobs` is not supported"),
        (extra(json!({"tools": [{"type": "function", "function": {"name": "f"}}]})), Some("tools"), "function calling"),
        (extra(json!({"tools": {}})), Some("tools"), "must be an array"),
        (extra(json!({"tool_choice": "auto"})), Some("tool_choice"), "only \"none\""),
        (extra(json!({"response_format": {"type": "json_object"}})), Some("response_format"), "`response_format` is not supported"),
        (extra(json!({"response_format": "text"})), Some("response_format"), "must be an object"),
        (extra(json!({"logit_bias": {"50256": -100}})), Some("logit_bias"), "not supported"),
        (extra(json!({"model": 3})), Some("model"), "`model` must be a string"),
        (extra(json!({"frames": 8, "fps": 1.0})), Some("fps"), "`frames` and `fps` are exclusive"),
        (extra(json!({"frames": 8, "media_io_kwargs": {"video": {"fps": 2}}})), Some("media_io_kwargs.video.fps"), "exclusive"),
        (extra(json!({"media_io_kwargs": {"video": {"num_frames": 8, "fps": 2}}})), Some("media_io_kwargs.video.fps"), "exclusive"),
        (extra(json!({"frames": 8, "media_io_kwargs": {"video": {"num_frames": 16}}})), Some("media_io_kwargs.video.num_frames"), "(16) differs from `frames` (8)"),
        (extra(json!({"fps": 1, "media_io_kwargs": {"video": {"fps": 2}}})), Some("media_io_kwargs.video.fps"), "differs from `fps`"),
        (extra(json!({"media_io_kwargs": {"video": []}})), Some("media_io_kwargs.video"), "must be an object"),
        (extra(json!({"media_io_kwargs": {"video": {"num_frames": -3}}})), Some("media_io_kwargs.video.num_frames"), "non-negative integer"),
        (extra(json!({"frames": "8"})), Some("frames"), "`frames` must be a non-negative integer, not a string"),
        (extra(json!({"max_frames": true})), Some("max_frames"), "not a boolean"),
        (extra(json!({"compress": "no"})), Some("compress"), "`compress` must be a boolean"),
        (extra(json!({"ttm_k": [1]})), Some("ttm_k"), "`ttm_k` must be a number"),
        (extra(json!({"dp_ratio": {}})), Some("dp_ratio"), "`dp_ratio` must be a number"),
        (extra(json!({"dp_layer": 1.5})), Some("dp_layer"), "`dp_layer` must be a non-negative integer"),
    ]
}

#[test]
fn every_refused_request_names_its_field() {
    let cases = refused();
    assert!(cases.len() >= 40);
    for (body, param, words) in cases {
        let e = parse(body.clone()).expect_err(&body.to_string());
        assert_eq!(e.status, 400, "{body}");
        assert_eq!(e.kind, ErrorKind::InvalidRequest, "{body}");
        assert_eq!(e.param.as_deref(), param, "{body}: {}", e.message);
        assert!(e.message.contains(words), "{body}: '{}' lacks '{words}'", e.message);
        if let Some(p) = param {
            // The message names the field, with or without its path, so a user sees what to fix.
            let leaf = p.rsplit(['.', '[']).next().unwrap_or(p).trim_end_matches(']');
            assert!(e.message.contains(p) || e.message.contains(leaf) || words.contains("last message"), "{body}: {}", e.message);
        }
        let j = e.to_json();
        assert_eq!(j["error"]["type"], "invalid_request_error");
        assert_eq!(j["error"]["message"], e.message.as_str());
    }
}

#[test]
fn malformed_json_reports_where() {
    for (body, words) in [
        (&b"{\"messages\": [}"[..], "line 1 column 15"),
        (b"", "EOF while parsing"),
        (b"{\"a\":1} x", "trailing characters"),
        (b"\xff\xfe", "line 1"),
        (b"{\"messages\": \"\xff\"}", "invalid unicode"),
    ] {
        let e = parse_chat_request(body, &Limits::default()).unwrap_err();
        assert_eq!((e.status, e.param.as_deref(), e.code), (400, None, Some(code::INVALID_JSON)));
        assert!(e.message.starts_with("the request body is not valid JSON") && e.message.contains(words), "{}", e.message);
    }
    // serde_json's depth limit turns deep nesting into an error, not a stack overflow.
    let deep = format!("{{\"messages\": {}{}}}", "[".repeat(100_000), "]".repeat(100_000));
    let e = parse_chat_request(deep.as_bytes(), &Limits::default()).unwrap_err();
    assert!(e.message.contains("recursion limit"), "{}", e.message);
}

#[test]
fn limits_are_enforced() {
    let limits = Limits { max_messages: 2, max_parts: 2, max_media: 1, max_text_bytes: 10 };
    let p = |v: Value| parse_chat_request(v.to_string().as_bytes(), &limits).unwrap_err();
    let e = p(json!({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "a"}, {"role": "user", "content": "a"}]}));
    assert_eq!((e.status, e.param.as_deref(), e.code), (400, Some("messages"), Some(code::LIMIT)));
    assert!(e.message.contains("has 3 messages; at most 2"));
    let e = p(with(json!([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}, {"type": "text", "text": "c"}]), json!({})));
    assert_eq!(e.param.as_deref(), Some("messages[0].content"));
    assert!(e.message.contains("has 3 parts; at most 2"));
    let two = json!({"type": "image_url", "image_url": "data:image/png;base64,AA=="});
    let e = p(json!({"messages": [{"role": "user", "content": [two.clone()]}, {"role": "user", "content": [two]}]}));
    assert_eq!((e.param.as_deref(), e.code), (Some("messages[1].content[0]"), Some(code::LIMIT)));
    assert!(e.message.contains("too many media parts: at most 1"));
    let e = p(json!({"messages": [{"role": "system", "content": "123456"}, {"role": "user", "content": "12345"}]}));
    assert_eq!(e.param.as_deref(), Some("messages[1].content"));
    assert!(e.message.contains("exceeds 10 bytes"));
    // At the limits exactly: accepted.
    let ok = json!({"messages": [{"role": "system", "content": "12345"}, {"role": "user", "content": [{"type": "text", "text": "12345"}, {"type": "video_url", "video_url": "https://a.b/v"}]}]});
    assert!(parse_chat_request(ok.to_string().as_bytes(), &limits).is_ok());
}

#[test]
fn a_plain_request() {
    let r = parse(json!({"messages": [{"role": "user", "content": "hi"}]})).unwrap();
    assert_eq!(
        r,
        ChatRequest {
            model: None,
            messages: vec![Message { role: Role::User, parts: vec![Part::Text("hi".into())] }],
            stream: false,
            include_usage: false,
            sampling: SamplingRequest::default(),
            video: VideoRequest::default(),
            compression: CompressionRequest::default(),
        }
    );
}

#[test]
fn a_full_request() {
    let body = json!({
        "model": "qwen",
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "video_url", "video_url": {"url": "file:///srv/media/bikes%20two.mp4"}},
                {"type": "text", "text": "What happens?"}]},
            {"role": "assistant", "content": null},
            {"role": "assistant", "content": [{"type": "text", "text": "Bikes."}]},
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO", "detail": "low"}},
                {"type": "input_video", "input_video": {"data": "AAEC", "format": "webm"}},
                {"type": "input_video", "input_video": {"data": "AAEC"}},
                {"type": "input_video", "input_video": {"url": "https://example.com/v.mp4"}},
                {"type": "video_url", "video_url": "http://example.com/w.mp4"},
                {"type": "text", "text": "And now?"}]},
        ],
        "stream": true, "stream_options": {"include_usage": true},
        "max_tokens": 64, "max_completion_tokens": 64, "temperature": 0, "top_p": 0.9, "top_k": 40, "min_p": 0.05,
        "seed": 18446744073709551615u64, "repeat_penalty": 1.1, "repeat_last_n": 64, "stop": ["\n\n", "END"],
        "max_frames": 32, "media_io_kwargs": {"video": {"num_frames": 16}}, "frames": 16,
        "compress": true, "ttm_k": 0.7, "dp_ratio": 0.5, "dp_layer": 3,
        "n": 1, "presence_penalty": 0, "frequency_penalty": 0.0, "logprobs": false, "top_logprobs": 0, "tools": [],
        "tool_choice": "none", "response_format": {"type": "text"}, "logit_bias": {},
        "user": "someone", "store": false, "metadata": {"x": 1}, "parallel_tool_calls": true
    });
    let r = parse(body).unwrap();
    assert_eq!(r.model.as_deref(), Some("qwen"));
    assert!(r.stream && r.include_usage);
    assert_eq!(
        r.sampling,
        SamplingRequest {
            max_tokens: Some(64),
            temperature: Some(0.0),
            top_p: Some(0.9),
            top_k: Some(40),
            min_p: Some(0.05),
            seed: Some(u64::MAX),
            repeat_penalty: Some(1.1),
            repeat_last_n: Some(64),
            stop: vec!["\n\n".into(), "END".into()],
        }
    );
    assert_eq!(r.video, VideoRequest { frames: Some(16), fps: None, max_frames: Some(32) });
    assert_eq!(r.compression, CompressionRequest { compress: Some(true), ttm_k: Some(0.7), dp_ratio: Some(0.5), dp_layer: Some(3) });
    let roles: Vec<Role> = r.messages.iter().map(|m| m.role).collect();
    assert_eq!(roles, [Role::System, Role::User, Role::Assistant, Role::Assistant, Role::User]);
    assert_eq!(r.messages[2].parts, []);
    assert_eq!(r.messages[3].parts, [Part::Text("Bikes.".into())]);
    let media = |m: usize, p: usize| match &r.messages[m].parts[p] {
        Part::Media(mp) => mp.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(media(1, 0), MediaPart { kind: MediaKind::Video, source: MediaSource::File(PathBuf::from("/srv/media/bikes two.mp4")) });
    assert_eq!(
        media(4, 0),
        MediaPart { kind: MediaKind::Image, source: MediaSource::Data { mime: "image/png".into(), bytes: vec![0x89, 0x50, 0x4e] } }
    );
    let data = |mime: &str| MediaSource::Data { mime: mime.into(), bytes: vec![0, 1, 2] };
    assert_eq!(media(4, 1), MediaPart { kind: MediaKind::Video, source: data("video/webm") });
    assert_eq!(media(4, 2), MediaPart { kind: MediaKind::Video, source: data("video/mp4") });
    assert_eq!(media(4, 3).source, MediaSource::Remote("https://example.com/v.mp4".into()));
    assert_eq!(media(4, 4).source, MediaSource::Remote("http://example.com/w.mp4".into()));
    assert_eq!(r.messages[4].parts[5], Part::Text("And now?".into()));
}

#[test]
fn accepted_variants() {
    // Nulls are absent fields, as OpenAI's schema allows.
    let r = parse(extra(json!({"temperature": null, "stream": null, "stop": null, "n": null, "tools": null, "stream_options": null, "seed": null}))).unwrap();
    assert_eq!((r.stream, r.sampling.temperature, r.sampling.stop.len()), (false, None, 0));
    // llama.cpp's -1 seed is "random".
    assert_eq!(parse(extra(json!({"seed": -1}))).unwrap().sampling.seed, None);
    // stop as one string; max_completion_tokens alone; streaming without options.
    let r = parse(extra(json!({"stop": "END", "max_completion_tokens": 7, "stream": true}))).unwrap();
    assert_eq!((r.sampling.stop, r.sampling.max_tokens, r.stream, r.include_usage), (vec!["END".to_string()], Some(7), true, false));
    // vLLM's frame rate, with an equal top-level value; integers are numbers.
    let r = parse(extra(json!({"fps": 2, "media_io_kwargs": {"video": {"fps": 2.0}, "image": {}}}))).unwrap();
    assert_eq!(r.video, VideoRequest { frames: None, fps: Some(2.0), max_frames: None });
    let r = parse(extra(json!({"media_io_kwargs": {"video": {"num_frames": 4}}}))).unwrap();
    assert_eq!(r.video.frames, Some(4));
    // Integral floats are integers (clients that only have floats send them).
    let r = parse_chat_request(br#"{"messages": [{"role": "user", "content": "a"}], "max_tokens": 100.0, "max_frames": 1e1, "seed": 0.0}"#, &Limits::default()).unwrap();
    assert_eq!((r.sampling.max_tokens, r.video.max_frames, r.sampling.seed), (Some(100), Some(10), Some(0)));
    // An empty string and an empty part list are text the engine may still answer.
    assert_eq!(parse(with(json!(""), json!({}))).unwrap().messages[0].parts, [Part::Text(String::new())]);
    assert_eq!(parse(with(json!([]), json!({}))).unwrap().messages[0].parts, []);
    // An assistant message without content, and a named user message.
    let body = json!({"messages": [{"role": "user", "content": "a", "name": "x"}, {"role": "assistant"}, {"role": "user", "content": "b"}]});
    assert_eq!(parse(body).unwrap().messages.len(), 3);
}
