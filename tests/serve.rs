//! `dycoke serve` end to end: the real binary on a free loopback port with the tiny fixture model.
//! Every endpoint, streaming against non-streaming, the answer against `dycoke run`, follow-ups
//! that reuse the cache, per-request frames and compression, the queue, disconnects and timeouts.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::server::{data_url, get, post, request, stream, Server};
use dycoke::ggml::GgmlType;
use serde_json::{json, Value};

fn model() -> (PathBuf, PathBuf) {
    common::llava::converted(GgmlType::F32)
}

fn clip() -> PathBuf {
    common::llava::dir().join("clip.mp4")
}

fn start(extra: &[&str]) -> Server {
    let (llm, mmproj) = model();
    let media_dir = common::llava::dir();
    let mut args = vec!["-m", llm.to_str().unwrap(), "--mmproj", mmproj.to_str().unwrap(), "-c", "4096", "--media-dir", media_dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    Server::start(&args)
}

fn file_url(p: &std::path::Path) -> String {
    format!("file://{}", p.display())
}

fn video_question(url: &str, question: &str) -> Value {
    json!([{"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": question}]}])
}

fn chat(server: &Server, body: &Value) -> (u16, Value) {
    post(&format!("{}/v1/chat/completions", server.url), body)
}

fn content(v: &Value) -> String {
    v["choices"][0]["message"]["content"].as_str().unwrap_or_else(|| panic!("no answer in {v}")).to_string()
}

#[test]
fn every_endpoint_answers() {
    let server = start(&[]);
    let (status, health) = get(&format!("{}/health", server.url));
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["sessions"]["total"], 2);
    assert_eq!(health["sessions"]["free"], 2);

    let (status, models) = get(&format!("{}/v1/models", server.url));
    assert_eq!(status, 200);
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "llava-tiny-F32-llm.gguf");

    let (status, page) = get(&format!("{}/", server.url));
    assert_eq!(status, 200);
    assert!(page["text"].as_str().unwrap().contains("<html"), "the page is HTML");

    let (status, answer) = chat(&server, &json!({"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(answer["usage"]["completion_tokens"], 4);
    assert_eq!(answer["choices"][0]["finish_reason"], "length");
    // The path without /v1 is the same endpoint.
    let (status, _) = post(&format!("{}/chat/completions", server.url), &json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}));
    assert_eq!(status, 200);

    let (status, metrics) = get(&format!("{}/metrics", server.url));
    assert_eq!(status, 200);
    let text = metrics["text"].as_str().unwrap();
    assert!(text.contains("dycoke_requests_total{outcome=\"ok\"} 2"), "{text}");
    assert!(text.contains("dycoke_completion_tokens_total 6"), "{text}");
    assert!(text.contains("# TYPE dycoke_time_to_first_token_seconds histogram"));
}

#[test]
fn streaming_and_non_streaming_give_the_same_answer_and_match_dycoke_run() {
    let server = start(&[]);
    let question = "What happens in this video?";
    let url = file_url(&clip());
    let body = json!({"messages": video_question(&url, question), "max_tokens": 16, "frames": 8, "temperature": 0});
    let (status, whole) = chat(&server, &body);
    assert_eq!(status, 200, "{whole}");
    let text = content(&whole);
    assert!(!text.is_empty());

    let mut streamed_body = body.clone();
    streamed_body["stream"] = json!(true);
    streamed_body["stream_options"] = json!({"include_usage": true});
    let s = stream(&format!("{}/v1/chat/completions", server.url), &streamed_body, None);
    assert_eq!(s.status, 200);
    assert!(s.done, "the stream ends with [DONE]");
    assert_eq!(s.events[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(s.text(), text, "streaming and non-streaming answers differ");
    let usage = s.usage().expect("include_usage gives a usage chunk");
    assert_eq!(usage["completion_tokens"], whole["usage"]["completion_tokens"]);
    assert_eq!(usage["prompt_tokens"], whole["usage"]["prompt_tokens"]);

    // The same video as a data: URL gives the same answer.
    let bytes = std::fs::read(clip()).unwrap();
    let body = json!({"messages": video_question(&data_url(&bytes, "video/mp4"), question), "max_tokens": 16, "frames": 8, "temperature": 0});
    let (status, by_data) = chat(&server, &body);
    assert_eq!(status, 200, "{by_data}");
    assert_eq!(content(&by_data), text);

    // `dycoke run` with the same prompt, video and settings.
    let (llm, mmproj) = model();
    let out = Command::new(env!("CARGO_BIN_EXE_dycoke"))
        .args(["run", "-m", llm.to_str().unwrap(), "--mmproj", mmproj.to_str().unwrap(), "-c", "4096", "--video"])
        .arg(clip())
        .args(["--frames", "8", "-n", "16", "--temp", "0", "-p", question])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), text, "the server's answer differs from dycoke run's");
}

#[test]
fn a_follow_up_evaluates_only_its_new_tokens() {
    let server = start(&["-np", "1"]);
    let url = file_url(&clip());
    let first_turn = video_question(&url, "What happens?");
    let (status, first) = chat(&server, &json!({"messages": first_turn, "max_tokens": 8, "frames": 4}));
    assert_eq!(status, 200, "{first}");
    let first_prompt = first["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(first["usage"]["prompt_tokens_details"]["cached_tokens"], 0);

    let mut messages = first_turn.as_array().unwrap().clone();
    messages.push(json!({"role": "assistant", "content": content(&first)}));
    messages.push(json!({"role": "user", "content": "And then?"}));
    let (status, second) = chat(&server, &json!({"messages": messages, "max_tokens": 8, "frames": 4}));
    assert_eq!(status, 200, "{second}");
    let u = &second["usage"];
    let (prompt, cached, evaluated) = (u["prompt_tokens"].as_u64().unwrap(), u["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap(), u["dycoke"]["prompt_evaluated"].as_u64().unwrap());
    assert!(cached >= first_prompt, "the first turn ({first_prompt} positions) came from the cache: {u}");
    assert_eq!(evaluated, prompt - cached);
    assert!(evaluated <= prompt - first_prompt, "only the answer and the new question were evaluated: {u}");
    // The video was not encoded again.
    assert_eq!(u["dycoke"]["vision_encodes"], 0, "{u}");
}

#[test]
fn per_request_frames_and_compression_change_the_visual_tokens() {
    let server = start(&[]);
    let url = file_url(&clip());
    let ask = |extra: Value| {
        let mut body = json!({"messages": video_question(&url, "What?"), "max_tokens": 2});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, v) = chat(&server, &body);
        assert_eq!(status, 200, "{v}");
        v["usage"]["dycoke"].clone()
    };
    let eight = ask(json!({"frames": 8, "compress": false}));
    let four = ask(json!({"frames": 4, "compress": false}));
    assert_eq!(eight["frames"], 8);
    assert_eq!(four["frames"], 4);
    let per_frame = eight["visual_tokens_before"].as_u64().unwrap() / 8;
    assert_eq!(four["visual_tokens_before"].as_u64().unwrap(), 4 * per_frame);
    assert_eq!(eight["visual_tokens_after"], eight["visual_tokens_before"], "no compression keeps every token");

    let dycoke = ask(json!({"frames": 8}));
    let lighter = ask(json!({"frames": 8, "ttm_k": 0.3}));
    let before = dycoke["visual_tokens_before"].as_u64().unwrap();
    let (a, b) = (dycoke["visual_tokens_after"].as_u64().unwrap(), lighter["visual_tokens_after"].as_u64().unwrap());
    assert!(a < before && b < before && a < b, "TTM K 0.7 keeps fewer tokens than K 0.3, both fewer than all: {a} {b} {before}");
    // vLLM's spelling of the frame count.
    let vllm = ask(json!({"media_io_kwargs": {"video": {"num_frames": 4}}, "compress": false}));
    assert_eq!(vllm["frames"], 4);
}

/// Waits until /health says `busy` sessions are busy, for at most `limit`.
fn wait_busy(server: &Server, busy: u64, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        let (_, h) = get(&format!("{}/health", server.url));
        if h["sessions"]["busy"] == busy {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn a_full_queue_refuses_at_once_and_a_disconnect_frees_the_session() {
    let server = start(&["-np", "1", "--queue", "0"]);
    // A streaming client that reads the first event and then neither reads nor hangs up.
    let address = server.url.trim_start_matches("http://").to_string();
    let body = json!({"messages": [{"role": "user", "content": "Count."}], "max_tokens": 3500, "stream": true}).to_string();
    let mut tcp = TcpStream::connect(&address).unwrap();
    write!(tcp, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("data: ") {
        let n = tcp.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended early");
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(wait_busy(&server, 1, Duration::from_secs(10)), "the long request holds the session");
    let start = Instant::now();
    let (status, refused) = chat(&server, &json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}));
    assert_eq!(status, 429, "{refused}");
    assert_eq!(refused["error"]["type"], "rate_limit_error");
    assert!(start.elapsed() < Duration::from_secs(2), "refused at once");

    // The client hangs up mid-answer: its session is free within about a second.
    drop(tcp);
    let hung_up = Instant::now();
    assert!(wait_busy(&server, 0, Duration::from_millis(1500)), "the session was not freed");
    eprintln!("session freed {:?} after the disconnect", hung_up.elapsed());
    let (status, _) = chat(&server, &json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}));
    assert_eq!(status, 200);
    let (_, metrics) = get(&format!("{}/metrics", server.url));
    let text = metrics["text"].as_str().unwrap();
    assert!(text.contains("dycoke_requests_total{outcome=\"cancelled\"} 1"), "{text}");
    assert!(text.contains("dycoke_requests_total{outcome=\"rejected\"} 1"), "{text}");
}

#[test]
fn a_client_that_stalls_in_its_headers_is_cut_off() {
    let server = start(&["--timeout", "2"]);
    let address = server.url.trim_start_matches("http://").to_string();
    let mut tcp = TcpStream::connect(&address).unwrap();
    tcp.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n").unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let start = Instant::now();
    let mut buf = Vec::new();
    let _ = tcp.read_to_end(&mut buf);
    assert!(start.elapsed() < Duration::from_secs(15), "the server kept a stalled connection {:?}", start.elapsed());
    // A body that never finishes arriving gets 408.
    let mut tcp = TcpStream::connect(&address).unwrap();
    tcp.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"messages\"").unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = Vec::new();
    let _ = tcp.read_to_end(&mut buf);
    let reply = String::from_utf8_lossy(&buf);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    let (status, _) = get(&format!("{}/health", server.url));
    assert_eq!(status, 200);
}

#[test]
fn the_api_key_guards_everything_but_health_and_the_page() {
    let server = start(&["--api-key", "sesame"]);
    let chat_url = format!("{}/v1/chat/completions", server.url);
    let body = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}).to_string();
    for headers in [vec![], vec![("authorization", "Bearer wrong")], vec![("authorization", "sesame")], vec![("authorization", "Bearer sesam")]] {
        let (status, v) = request("POST", &chat_url, &headers, Some(body.as_bytes()));
        assert_eq!(status, 401, "{headers:?}: {v}");
        assert_eq!(v["error"]["type"], "authentication_error");
    }
    let (status, _) = request("GET", &format!("{}/v1/models", server.url), &[], None);
    assert_eq!(status, 401);
    let (status, _) = request("GET", &format!("{}/metrics", server.url), &[], None);
    assert_eq!(status, 401);
    assert_eq!(get(&format!("{}/health", server.url)).0, 200);
    assert_eq!(get(&format!("{}/", server.url)).0, 200);
    let (status, v) = request("POST", &chat_url, &[("authorization", "Bearer sesame")], Some(body.as_bytes()));
    assert_eq!(status, 200, "{v}");
}
