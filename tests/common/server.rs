//! The real `dycoke serve` binary on a free loopback port, for the server tests, and a small HTTP
//! client for them.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// The server's stderr.
    log: std::path::PathBuf,
}

impl Server {
    /// Starts `dycoke serve --port 0 ARGS` and waits (up to two minutes) for its `listening on` line.
    pub fn start(args: &[&str]) -> Server {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let log = super::scratch_dir().join(format!("serve-{}.log", N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)));
        let mut child = Command::new(env!("CARGO_BIN_EXE_dycoke"))
            .arg("serve")
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("server log"))
            .spawn()
            .expect("start dycoke serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        // Keeps draining stdout after the address, so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(url) = line.strip_prefix("listening on ") {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let mut server = Server { child, url: String::new(), log };
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(url) => server.url = url,
            Err(_) => panic!("dycoke serve did not start:\n{}", server.log_text()),
        }
        server
    }

    /// What the server wrote to stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the server process, in bytes.
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kb: u64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches("kB").trim().parse().unwrap();
        kb * 1024
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(300))).build().into()
}

/// (status, body as JSON, or the text under "text" when it is not JSON)
pub fn request(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> (u16, Value) {
    let agent = agent();
    let mut r = match method {
        "GET" => {
            let mut req = agent.get(url);
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            req.call()
        }
        _ => {
            let mut req = agent.post(url);
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            req.send(body.unwrap_or_default())
        }
    }
    .expect("HTTP request");
    let status = r.status().as_u16();
    let mut text = String::new();
    r.body_mut().with_config().limit(1 << 30).reader().read_to_string(&mut text).unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|_| serde_json::json!({ "text": text }));
    (status, json)
}

pub fn get(url: &str) -> (u16, Value) {
    request("GET", url, &[], None)
}

pub fn post(url: &str, body: &Value) -> (u16, Value) {
    request("POST", url, &[("content-type", "application/json")], Some(body.to_string().as_bytes()))
}

/// A streamed completion: the status and the JSON of every `data:` event before `[DONE]`
/// (`done` says whether `[DONE]` came).
pub struct Streamed {
    pub status: u16,
    pub events: Vec<Value>,
    pub done: bool,
}

impl Streamed {
    /// The answer's text, from the content deltas.
    pub fn text(&self) -> String {
        self.events.iter().filter_map(|e| e["choices"][0]["delta"]["content"].as_str()).collect()
    }

    pub fn usage(&self) -> Option<&Value> {
        self.events.iter().find_map(|e| e.get("usage"))
    }
}

/// Posts `body` (with "stream": true) and reads the events; `stop_after` events, when given, drops
/// the connection early.
pub fn stream(url: &str, body: &Value, stop_after: Option<usize>) -> Streamed {
    let mut r = agent().post(url).header("content-type", "application/json").send(body.to_string().as_bytes()).expect("HTTP request");
    let status = r.status().as_u16();
    let mut events = Vec::new();
    let mut done = false;
    if status == 200 {
        let reader = BufReader::new(r.body_mut().with_config().limit(1 << 30).reader());
        for line in reader.lines() {
            let Ok(line) = line else { break };
            let Some(data) = line.strip_prefix("data: ") else { continue };
            if data == "[DONE]" {
                done = true;
                break;
            }
            events.push(serde_json::from_str(data).expect("an event's data is JSON"));
            if stop_after.is_some_and(|n| events.len() >= n) {
                break;
            }
        }
    }
    Streamed { status, events, done }
}

/// A data: URL of `bytes` (base64 written here, so the tests do not share the server's decoder).
pub fn data_url(bytes: &[u8], mime: &str) -> String {
    // Base64 by hand keeps the test independent of the server's decoder.
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = format!("data:{mime};base64,");
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
