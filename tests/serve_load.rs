//! `dycoke serve` under load on loopback: 32 streaming clients at once against 4 sessions and a
//! short queue, and 8 more that hang up mid-answer. Every request either completes with the text
//! it gets when run alone or is refused with 429; nothing gets a 5xx; the sessions are free
//! afterwards; memory returns to where it was. Prints throughput and time to first token.

mod common;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::server::{get, stream, Server};
use dycoke::ggml::GgmlType;
use serde_json::{json, Value};

const CLIENTS: usize = 32;
const HANG_UPS: usize = 8;

fn prompts(clip: &str) -> Vec<Value> {
    let video = |q: &str| json!([{"role": "user", "content": [{"type": "video_url", "video_url": {"url": clip}}, {"type": "text", "text": q}]}]);
    let text = |q: &str| json!([{"role": "user", "content": q}]);
    [video("What happens in this video?"), video("Describe the colours."), text("Write a line about rivers."), text("Name three birds.")]
        .into_iter()
        .map(|messages| json!({"messages": messages, "max_tokens": 48, "frames": 4, "stream": true, "stream_options": {"include_usage": true}}))
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[test]
fn thirty_two_streaming_clients_against_four_sessions() {
    let (llm, mmproj) = common::llava::converted(GgmlType::F32);
    let dir = common::llava::dir();
    let server = Server::start(&["-m", llm.to_str().unwrap(), "--mmproj", mmproj.to_str().unwrap(), "-c", "2048", "-np", "4", "--queue", "12", "--media-dir", dir.to_str().unwrap()]);
    let url = format!("{}/v1/chat/completions", server.url);
    let clip = format!("file://{}", dir.join("clip.mp4").display());
    let prompts = prompts(&clip);

    // Each prompt alone gives the expected text; a round on all sessions at once warms them up.
    let alone: Vec<String> = prompts.iter().map(|p| {
        let s = stream(&url, p, None);
        assert_eq!(s.status, 200);
        assert!(s.done);
        s.text()
    }).collect();
    std::thread::scope(|scope| {
        for p in &prompts {
            let url = &url;
            scope.spawn(move || assert_eq!(stream(url, p, None).status, 200));
        }
    });
    let rss_before = server.rss();

    let barrier = Arc::new(Barrier::new(CLIENTS + HANG_UPS));
    let start = Instant::now();
    let results: Vec<(usize, u16, bool, String, Option<f64>, u64)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..CLIENTS + HANG_UPS)
            .map(|i| {
                let (url, body, barrier) = (&url, &prompts[i % prompts.len()], barrier.clone());
                scope.spawn(move || {
                    barrier.wait();
                    let begun = Instant::now();
                    let hang_up = i >= CLIENTS;
                    // Hang-ups read the role chunk and one piece of text, then drop the connection.
                    let s = stream(url, body, hang_up.then_some(2));
                    let ttft = (s.events.len() > 1).then(|| begun.elapsed().as_secs_f64());
                    let tokens = s.usage().and_then(|u| u["completion_tokens"].as_u64()).unwrap_or(0);
                    (i, s.status, s.done, s.text(), ttft, tokens)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let wall = start.elapsed().as_secs_f64();

    let (mut completed, mut refused, mut tokens, mut ttfts) = (0, 0, 0, Vec::new());
    for (i, status, done, text, ttft, n) in &results {
        match status {
            200 if *i >= CLIENTS => {}
            200 => {
                assert!(done, "client {i} got no [DONE]");
                assert_eq!(text, &alone[i % prompts.len()], "client {i}'s answer differs from the same request alone");
                completed += 1;
                tokens += n;
                ttfts.extend(*ttft);
            }
            429 => refused += 1,
            other => panic!("client {i} got {other}"),
        }
    }
    assert!(completed > 0);
    ttfts.sort_by(f64::total_cmp);
    eprintln!(
        "load: {CLIENTS} streaming clients + {HANG_UPS} hang-ups, -np 4, queue 12: {completed} completed, {refused} refused (429) in {wall:.2} s; \
         {:.1} completion tokens/s overall; time to first token p50 {:.3} s, p90 {:.3} s, max {:.3} s",
        tokens as f64 / wall,
        percentile(&ttfts, 0.5),
        percentile(&ttfts, 0.9),
        ttfts.last().unwrap()
    );

    // Every session is free again, the queue empty, nothing failed on the server's side.
    let settle = Instant::now();
    loop {
        let (_, h) = get(&format!("{}/health", server.url));
        if h["sessions"]["busy"] == 0 && h["queue"] == 0 {
            break;
        }
        assert!(settle.elapsed() < Duration::from_secs(5), "sessions still busy: {h}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, metrics) = get(&format!("{}/metrics", server.url));
    let text = metrics["text"].as_str().unwrap();
    assert!(text.contains("dycoke_requests_total{outcome=\"server_error\"} 0"), "{text}");
    let rss_after = server.rss();
    let growth = rss_after as f64 / rss_before as f64;
    eprintln!("load: RSS {:.1} MiB before, {:.1} MiB after ({growth:.3}x)", rss_before as f64 / 1048576.0, rss_after as f64 / 1048576.0);
    assert!(growth < 1.10, "RSS grew from {rss_before} to {rss_after} bytes");
}
