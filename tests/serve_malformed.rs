//! Malformed and hostile requests against the real `dycoke serve`: each gets a 4xx with OpenAI's
//! error JSON and a message that says what is wrong, and the server keeps answering (and answers
//! correctly) afterwards.

mod common;

use common::server::{data_url, get, request, Server};
use dycoke::ggml::GgmlType;
use serde_json::{json, Value};

const KEY: &str = "test-key";

struct Case {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    body: Vec<u8>,
    auth: bool,
    status: u16,
    /// A word the error message must contain.
    says: &'static str,
}

fn case(name: &'static str, body: Value, status: u16, says: &'static str) -> Case {
    Case { name, method: "POST", path: "/v1/chat/completions", body: body.to_string().into_bytes(), auth: true, status, says }
}

fn raw(name: &'static str, body: &[u8], status: u16, says: &'static str) -> Case {
    Case { name, method: "POST", path: "/v1/chat/completions", body: body.to_vec(), auth: true, status, says }
}

fn user(content: Value) -> Value {
    json!([{"role": "user", "content": content}])
}

fn video(url: &str) -> Value {
    user(json!([{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": "What?"}]))
}

fn with(mut body: Value, key: &str, value: Value) -> Value {
    body[key] = value;
    body
}

#[test]
fn every_malformed_request_gets_a_clear_4xx_and_the_server_carries_on() {
    let (llm, mmproj) = common::llava::converted(GgmlType::F32);
    let dir = common::llava::dir();
    let mut server = Server::start(&[
        "-m",
        llm.to_str().unwrap(),
        "--mmproj",
        mmproj.to_str().unwrap(),
        "-c",
        "2048",
        "--media-dir",
        dir.to_str().unwrap(),
        "--max-body-mb",
        "1",
        "--max-frames",
        "16",
        "--api-key",
        KEY,
    ]);
    let hello = json!({"messages": user(json!("Hello")), "max_tokens": 4});
    let clip = dir.join("clip.mp4");
    let inside = |p: &str| format!("file://{}/{p}", dir.display());
    let not_a_video = data_url(b"this is plain text, not a video container at all", "video/mp4");
    let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
    let long_text = "word ".repeat(20_000);
    let big = format!("{{\"messages\":[{{\"role\":\"user\",\"content\":\"{}\"}}]}}", "x".repeat(1_200_000));

    let cases = vec![
        raw("malformed JSON", b"{\"messages\": [", 400, "JSON"),
        raw("empty body", b"", 400, ""),
        raw("not UTF-8", b"{\"messages\": \"\xff\xfe\"}", 400, ""),
        raw("deeply nested", deep.as_bytes(), 400, ""),
        case("not an object", json!([1, 2]), 400, ""),
        case("no messages", json!({"model": "x"}), 400, "messages"),
        case("messages not an array", json!({"messages": {}}), 400, "messages"),
        case("no turns", json!({"messages": []}), 400, "messages"),
        case("turn without a role", json!({"messages": [{"content": "hi"}]}), 400, "role"),
        case("unknown role", json!({"messages": [{"role": "tool", "content": "hi"}]}), 400, "role"),
        case("content a number", json!({"messages": [{"role": "user", "content": 5}]}), 400, "content"),
        case("unknown part type", json!({"messages": user(json!([{"type": "input_audio", "input_audio": {}}]))}), 400, "input_audio"),
        case("text part without text", json!({"messages": user(json!([{"type": "text"}]))}), 400, "text"),
        case("last turn the assistant's", json!({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}), 400, "user"),
        case("media in a system turn", json!({"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": not_a_video}}]}, {"role": "user", "content": "a"}]}), 400, ""),
        case("private-use characters", json!({"messages": user(json!("a \u{E000}0\u{E001} b"))}), 400, "U+E000"),
        case("temperature a string", with(hello.clone(), "temperature", json!("hot")), 400, "temperature"),
        case("temperature negative", with(hello.clone(), "temperature", json!(-1)), 400, "temperature"),
        case("top_p above 1", with(hello.clone(), "top_p", json!(2.0)), 400, "top_p"),
        case("seed a string", with(hello.clone(), "seed", json!("x")), 400, "seed"),
        case("max_tokens zero", with(hello.clone(), "max_tokens", json!(0)), 400, "max_tokens"),
        case("max_tokens negative", with(hello.clone(), "max_tokens", json!(-5)), 400, "max_tokens"),
        case("max_tokens huge", with(hello.clone(), "max_tokens", json!(1_000_000_000u64)), 400, "max_tokens"),
        case("n of 2", with(hello.clone(), "n", json!(2)), 400, "n"),
        case("presence penalty", with(hello.clone(), "presence_penalty", json!(0.5)), 400, "presence_penalty"),
        case("logprobs", with(hello.clone(), "logprobs", json!(true)), 400, "logprobs"),
        case("tools", with(hello.clone(), "tools", json!([{"type": "function", "function": {"name": "f"}}])), 400, "tools"),
        case("JSON mode", with(hello.clone(), "response_format", json!({"type": "json_object"})), 400, "response_format"),
        case("stream not a bool", with(hello.clone(), "stream", json!("yes")), 400, "stream"),
        case("five stop strings", with(hello.clone(), "stop", json!(["a", "b", "c", "d", "e"])), 400, "stop"),
        case("frames and fps", with(with(hello.clone(), "frames", json!(4)), "fps", json!(1.0)), 400, "fps"),
        case("frames above the cap", json!({"messages": video(&format!("file://{}", clip.display())), "frames": 1000}), 400, "frames"),
        case("max_frames above the cap", json!({"messages": video(&format!("file://{}", clip.display())), "max_frames": 1000}), 400, "max_frames"),
        case("ttm_k out of range", json!({"messages": video(&format!("file://{}", clip.display())), "ttm_k": 1.5}), 400, "ttm_k"),
        case("dp_layer beyond the model", json!({"messages": video(&format!("file://{}", clip.display())), "dp_layer": 999}), 400, "dp_layer"),
        case("compression off and tuned", json!({"messages": video(&format!("file://{}", clip.display())), "compress": false, "ttm_k": 0.5}), 400, "compress"),
        case("invalid base64", json!({"messages": video("data:video/mp4;base64,@@@not base64@@@")}), 400, "base64"),
        case("data URL not base64", json!({"messages": video("data:video/mp4,rawbytes")}), 400, "base64"),
        case("a video that is not a video", json!({"messages": video(&not_a_video)}), 400, "video"),
        case("an image that is not an image", json!({"messages": user(json!([{"type": "image_url", "image_url": {"url": not_a_video}}]))}), 400, "image"),
        case("input_video with bad base64", json!({"messages": user(json!([{"type": "input_video", "input_video": {"data": "%%%%"}}]))}), 400, "base64"),
        case("file outside the media folders", json!({"messages": video("file:///etc/passwd")}), 403, "outside"),
        case("dot-dot out of the media folder", json!({"messages": video(&inside("../../../../../../etc/passwd"))}), 403, "outside"),
        case("encoded dot-dot", json!({"messages": video(&inside("%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd"))}), 403, "outside"),
        case("missing file in the media folder", json!({"messages": video(&inside("no-such-file.mp4"))}), 404, "no-such-file"),
        case("a folder, not a file", json!({"messages": video(&inside(""))}), 400, ""),
        case("ftp URL", json!({"messages": video("ftp://example.com/clip.mp4")}), 400, "ftp"),
        case("javascript URL", json!({"messages": video("javascript:alert(1)")}), 400, ""),
        case("remote URL not allowed", json!({"messages": video("http://127.0.0.1:9/clip.mp4")}), 403, "--allow-remote-media"),
        case("prompt longer than the context", json!({"messages": user(json!(long_text))}), 400, "context"),
        raw("body over the limit", big.as_bytes(), 413, "limit"),
        Case { name: "wrong API key", method: "POST", path: "/v1/chat/completions", body: hello.to_string().into_bytes(), auth: false, status: 401, says: "API key" },
        Case { name: "unknown path", method: "GET", path: "/v1/../../etc/passwd", body: vec![], auth: true, status: 404, says: "" },
        Case { name: "unknown endpoint", method: "POST", path: "/v1/completions", body: hello.to_string().into_bytes(), auth: true, status: 404, says: "/v1/completions" },
        Case { name: "wrong method", method: "GET", path: "/v1/chat/completions", body: vec![], auth: true, status: 405, says: "GET" },
    ];
    assert!(cases.len() >= 30);
    let bearer = format!("Bearer {KEY}");
    let mut failures = Vec::new();
    for c in &cases {
        let mut headers = vec![("content-type", "application/json")];
        if c.auth {
            headers.push(("authorization", bearer.as_str()));
        } else {
            headers.push(("authorization", "Bearer nope"));
        }
        let (status, v) = request(c.method, &format!("{}{}", server.url, c.path), &headers, Some(&c.body));
        let message = v["error"]["message"].as_str().unwrap_or("");
        let ok = status == c.status && !message.is_empty() && v["error"]["type"].is_string() && message.contains(c.says);
        eprintln!("{:<34} {status} {message}", c.name);
        if !ok {
            failures.push(format!("{}: expected {} mentioning {:?}, got {status} {v}", c.name, c.status, c.says));
        }
        assert!(server.alive(), "the server died on {}", c.name);
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));

    // Still healthy, and still right: a good request after all that.
    assert_eq!(get(&format!("{}/health", server.url)).0, 200);
    let (status, v) = request("POST", &format!("{}/v1/chat/completions", server.url), &[("authorization", bearer.as_str())], Some(hello.to_string().as_bytes()));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 4);
    let (_, metrics) = request("GET", &format!("{}/metrics", server.url), &[("authorization", bearer.as_str())], None);
    assert!(metrics["text"].as_str().unwrap().contains("dycoke_requests_total{outcome=\"server_error\"} 0"));
}
