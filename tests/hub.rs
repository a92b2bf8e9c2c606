//! `-hf` and `dycoke pull` against a mock of the Hugging Face Hub on loopback (no outside network):
//! the real binary, with HF_HOME, HF_ENDPOINT and the timeouts set per child process. The mock
//! serves the fixture checkpoint (tests/fixtures/llava-tiny/hf) and GGUF repositories made from
//! it, in the real Hub's shapes: `GET /api/models/REPO/revision/REV` (sha, siblings), and
//! `HEAD`/`GET /REPO/resolve/REV/FILE` with `X-Repo-Commit`, `ETag` (the git blob hash of a
//! plain file), and for LFS files `X-Linked-Etag` (the SHA-256), `X-Linked-Size` and a 302 to
//! the storage, which honours `Range`.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dycoke::ggml::GgmlType;
use sha1::Sha1;
use sha2::{Digest, Sha256};

const COMMIT_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const COMMIT_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const TOKEN: &str = "hf_secret";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

struct MockFile {
    name: String,
    data: Vec<u8>,
    lfs: bool,
    sha256: String,
}

impl MockFile {
    fn new(name: &str, data: Vec<u8>) -> MockFile {
        let lfs = name.ends_with(".safetensors") || name.ends_with(".gguf") || name.ends_with(".bin") || name.ends_with(".onnx");
        MockFile { name: name.into(), sha256: hex(&Sha256::digest(&data)), data, lfs }
    }

    fn git_sha1(&self) -> String {
        let mut h = Sha1::new();
        h.update(format!("blob {}\0", self.data.len()).as_bytes());
        h.update(&self.data);
        hex(&h.finalize())
    }
}

struct MockRepo {
    commit: String,
    files: Vec<MockFile>,
    gated: bool,
}

#[derive(Default)]
struct State {
    repos: HashMap<String, MockRepo>,
    /// Every request: "METHOD PATH" and the Range header if any.
    log: Vec<String>,
    /// Files whose next download is cut off half way.
    drop_once: Vec<String>,
    /// Files whose next download has a byte flipped.
    corrupt_once: Vec<String>,
    /// Read requests and never answer.
    stall: bool,
}

struct MockHub {
    url: String,
    state: Arc<Mutex<State>>,
}

impl MockHub {
    fn start(repos: Vec<(&str, MockRepo)>) -> MockHub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State { repos: repos.into_iter().map(|(n, r)| (n.to_string(), r)).collect(), ..State::default() }));
        let (s, u) = (state.clone(), url.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (s, u) = (s.clone(), u.clone());
                std::thread::spawn(move || serve(conn, &s, &u));
            }
        });
        MockHub { url, state }
    }

    fn log(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }

    fn clear_log(&self) {
        self.state.lock().unwrap().log.clear();
    }
}

fn respond(mut conn: &TcpStream, status: &str, headers: &[(&str, String)], body: &[u8], head: bool) {
    let mut out = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    if !headers.iter().any(|(k, _)| *k == "Content-Length") {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let _ = conn.write_all(out.as_bytes());
    if !head {
        let _ = conn.write_all(body);
    }
    let _ = conn.flush();
}

fn error(conn: &TcpStream, status: &str, code: &str, message: &str, head: bool) {
    respond(conn, status, &[("X-Error-Code", code.into()), ("X-Error-Message", message.into()), ("Content-Type", "application/json".into())], format!("{{\"error\":\"{message}\"}}").as_bytes(), head);
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap_or(b'?'));
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn serve(conn: TcpStream, state: &Mutex<State>, base: &str) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.trim_end().split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
    let range = headers.get("range").cloned();
    let head = method == "HEAD";
    {
        let mut st = state.lock().unwrap();
        st.log.push(format!("{method} {path}{}", range.as_ref().map(|r| format!(" {r}")).unwrap_or_default()));
        if st.stall {
            drop(st);
            std::thread::sleep(Duration::from_secs(30));
            return;
        }
    }
    let auth = headers.get("authorization").cloned();
    let st = state.lock().unwrap();
    let find_repo = |owner: &str, name: &str| st.repos.get(&format!("{owner}/{name}"));
    let segs: Vec<&str> = path.split('/').collect();
    // Access as the Hub gives it: a missing or gated repository is 401 without a token, 403
    // with one that has no access; an unknown revision is 404.
    let open = |owner: &str, name: &str, rev: &str| -> Result<&MockRepo, (&'static str, &'static str)> {
        let repo = match find_repo(owner, name) {
            None => return Err(("401 Unauthorized", "RepoNotFound")),
            Some(r) if r.gated && auth.as_deref() != Some(&format!("Bearer {TOKEN}")) => {
                return Err(if auth.is_some() { ("403 Forbidden", "GatedRepo") } else { ("401 Unauthorized", "GatedRepo") });
            }
            Some(r) => r,
        };
        let rev = decode(rev);
        if rev != "main" && rev != repo.commit {
            return Err(("404 Not Found", "RevisionNotFound"));
        }
        Ok(repo)
    };
    // A renamed repository: the Hub answers its old name with a redirect to a path on itself.
    if path.contains("/tiny/renamed/") {
        return respond(&conn, "307 Temporary Redirect", &[("Location", path.replace("/tiny/renamed/", "/tiny/llava-ov-gguf/"))], b"", head);
    }
    match segs.as_slice() {
        ["", "api", "models", owner, name, "revision", rev] => {
            let repo = match open(owner, name, rev) {
                Ok(r) => r,
                Err((s, c)) => return error(&conn, s, c, "Repository or revision not found, or access denied", head),
            };
            let siblings: Vec<serde_json::Value> = repo.files.iter().map(|f| serde_json::json!({ "rfilename": f.name })).collect();
            let body = serde_json::json!({ "id": format!("{owner}/{name}"), "sha": repo.commit, "siblings": siblings, "private": false });
            respond(&conn, "200 OK", &[("Content-Type", "application/json".into())], body.to_string().as_bytes(), head)
        }
        ["", owner, name, "resolve", rev, file @ ..] => {
            let repo = match open(owner, name, rev) {
                Ok(r) => r,
                Err((s, c)) => return error(&conn, s, c, "Repository or revision not found, or access denied", head),
            };
            let file = decode(&file.join("/"));
            let Some(f) = repo.files.iter().find(|f| f.name == file) else {
                return error(&conn, "404 Not Found", "EntryNotFound", "Entry not found", head);
            };
            if f.lfs {
                let pointer = format!("version https://git-lfs.github.com/spec/v1\noid sha256:{}\nsize {}\n", f.sha256, f.data.len());
                let pointer_etag = hex(&Sha1::digest(pointer.as_bytes()));
                respond(
                    &conn,
                    "302 Found",
                    &[
                        ("Location", format!("{base}/cdn/{}", f.sha256)),
                        ("X-Repo-Commit", repo.commit.clone()),
                        ("X-Linked-Etag", format!("\"{}\"", f.sha256)),
                        ("X-Linked-Size", f.data.len().to_string()),
                        ("ETag", format!("\"{pointer_etag}\"")),
                    ],
                    b"Found. Redirecting",
                    head,
                )
            } else {
                respond(
                    &conn,
                    "200 OK",
                    &[("X-Repo-Commit", repo.commit.clone()), ("ETag", format!("\"{}\"", f.git_sha1())), ("Accept-Ranges", "bytes".into())],
                    &f.data,
                    head,
                )
            }
        }
        ["", "cdn", sha] => {
            let Some(f) = st.repos.values().flat_map(|r| &r.files).find(|f| f.sha256 == *sha) else {
                return respond(&conn, "404 Not Found", &[], b"", head);
            };
            let (name, mut data) = (f.name.clone(), f.data.clone());
            drop(st);
            let start = range.as_deref().and_then(|r| r.strip_prefix("bytes=")).and_then(|r| r.trim_end_matches('-').parse::<usize>().ok()).unwrap_or(0);
            let mut st = state.lock().unwrap();
            let cut = st.drop_once.iter().position(|n| *n == name).map(|i| st.drop_once.remove(i)).is_some();
            if let Some(i) = st.corrupt_once.iter().position(|n| *n == name) {
                st.corrupt_once.remove(i);
                let mid = data.len() / 2;
                data[mid] ^= 0x55;
            }
            drop(st);
            let total = data.len();
            let body = &data[start.min(total)..];
            let mut hdrs = vec![("Accept-Ranges", "bytes".to_string()), ("ETag", format!("\"{sha}\"")), ("Content-Length", body.len().to_string())];
            let status = if range.is_some() {
                hdrs.push(("Content-Range", format!("bytes {start}-{}/{total}", total - 1)));
                "206 Partial Content"
            } else {
                "200 OK"
            };
            if cut {
                // Headers promise the whole body; half of it comes, then the connection drops.
                respond(&conn, status, &hdrs, &body[..body.len() / 2], head);
                let _ = conn.shutdown(std::net::Shutdown::Both);
            } else {
                respond(&conn, status, &hdrs, body, head);
            }
        }
        _ => respond(&conn, "404 Not Found", &[], b"", head),
    }
}

fn fixture_repo(commit: &str) -> MockRepo {
    let dir = common::llava::dir().join("hf");
    let mut files: Vec<MockFile> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| MockFile::new(e.file_name().to_str().unwrap(), std::fs::read(e.path()).unwrap()))
        .collect();
    // Files a conversion does not need, which must not be fetched.
    files.push(MockFile::new("README.md", b"# tiny\n".to_vec()));
    files.push(MockFile::new("onnx/model.onnx", vec![7u8; 4096]));
    files.sort_by(|a, b| a.name.cmp(&b.name));
    MockRepo { commit: commit.into(), files, gated: false }
}

fn gguf_repo(gated: bool) -> MockRepo {
    let (llm32, mmproj) = common::llava::converted(GgmlType::F32);
    let (llm8, _) = common::llava::converted(GgmlType::Q8_0);
    let files = vec![
        MockFile::new("README.md", b"# tiny GGUF\n".to_vec()),
        MockFile::new("tiny-llava-F32.gguf", std::fs::read(llm32).unwrap()),
        MockFile::new("tiny-llava-Q8_0.gguf", std::fs::read(llm8).unwrap()),
        MockFile::new("mmproj-tiny-llava-f32.gguf", std::fs::read(mmproj).unwrap()),
    ];
    MockRepo { commit: COMMIT_A.into(), files, gated }
}

fn hub() -> MockHub {
    let two = MockRepo {
        commit: COMMIT_A.into(),
        files: vec![MockFile::new("m-Q8_0.gguf", vec![1; 64]), MockFile::new("mmproj-a-f16.gguf", vec![2; 64]), MockFile::new("mmproj-b-f16.gguf", vec![3; 64])],
        gated: false,
    };
    let neither = MockRepo { commit: COMMIT_A.into(), files: vec![MockFile::new("README.md", b"hi".to_vec()), MockFile::new("pytorch_model.bin", vec![0; 64])], gated: false };
    MockHub::start(vec![
        ("tiny/llava-ov-hf", fixture_repo(COMMIT_A)),
        ("tiny/llava-ov-gguf", gguf_repo(false)),
        ("tiny/gated-gguf", gguf_repo(true)),
        ("tiny/two-mmproj", two),
        ("tiny/neither", neither),
    ])
}

/// A fresh home: HF_HOME and DYCOKE_CACHE under it.
fn home(tag: &str) -> PathBuf {
    let d = common::scratch_dir().join(format!("hub-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn dycoke(endpoint: &str, home: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_dycoke"));
    c.args(args)
        .env("HOME", home)
        .env("HF_HOME", home.join("hf"))
        .env("DYCOKE_CACHE", home.join("dycoke"))
        .env("HF_ENDPOINT", endpoint)
        // Short enough for the stalled-server case to be quick, long enough for a loaded machine.
        .env("HF_HUB_ETAG_TIMEOUT", "5")
        .env("HF_HUB_DOWNLOAD_TIMEOUT", "5")
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_HUB_CACHE")
        .env_remove("XDG_CACHE_HOME");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "failed: {}\n{}", o.status, String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn fails(o: &Output, code: i32) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(code), "expected exit {code}; stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// `pull`'s answer: the LLM and mmproj paths.
fn pulled(stdout: &str) -> (PathBuf, Option<PathBuf>) {
    let get = |k: &str| stdout.lines().find_map(|l| l.strip_prefix(k)).map(|v| v.trim().to_string());
    let llm = PathBuf::from(get("llm ").expect("an llm line"));
    let mmproj = get("mmproj ").filter(|m| !m.starts_with('(')).map(PathBuf::from);
    (llm, mmproj)
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.symlink_metadata().map(|m| m.is_dir()).unwrap_or(false) {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn clip() -> String {
    common::llava::dir().join("clip.mp4").to_str().unwrap().to_string()
}

fn read_f32(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

#[test]
fn first_run_downloads_and_converts_then_runs_from_the_cache() {
    let hub = hub();
    let home = home("first");
    let logits_hf = home.join("hf.f32");
    let question = ["--video", &clip(), "--frames", "4", "-p", "What happens in this video?", "-n", "4", "-c", "2048"];
    let mut args = vec!["run", "-hf", "tiny/llava-ov-hf:f32", "--dump-logits", logits_hf.to_str().unwrap()];
    args.extend_from_slice(&question);
    let first = dycoke(&hub.url, &home, &args, &[]);
    let answer = ok(&first);

    // Only what the conversion reads was fetched: not the ONNX weights, the README, the
    // generation or chat template files.
    let log = hub.log();
    let fetched: Vec<&String> = log.iter().filter(|l| l.starts_with("GET") && !l.contains("/api/")).collect();
    for skipped in ["onnx", "README", "generation_config", "chat_template"] {
        assert!(!log.iter().any(|l| l.contains(skipped)), "{skipped} fetched: {log:?}");
    }
    assert!(fetched.iter().any(|l| l.starts_with("GET /cdn/")), "the safetensors come from the storage redirect: {log:?}");

    // The cache is huggingface_hub's: refs, snapshots linking into blobs named by their hash.
    let repo_dir = home.join("hf/hub/models--tiny--llava-ov-hf");
    assert_eq!(std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(), COMMIT_A);
    let weights = repo_dir.join(format!("snapshots/{COMMIT_A}/model.safetensors"));
    assert!(weights.symlink_metadata().unwrap().file_type().is_symlink());
    let sha = hex(&Sha256::digest(std::fs::read(&weights).unwrap()));
    assert_eq!(std::fs::read_link(&weights).unwrap(), PathBuf::from(format!("../../blobs/{sha}")));

    // The converted files equal `gguf-tools convert` of the snapshot by hand (the folder's name is
    // the model's general.name), and the logits on the fixture video equal those of the fixture
    // converted by hand.
    let converted = home.join(format!("dycoke/hub/models--tiny--llava-ov-hf/{COMMIT_A}/f32"));
    let by_hand = home.join("by-hand");
    let opts = gguf_tools::convert::ConvertOptions { input: repo_dir.join(format!("snapshots/{COMMIT_A}")), prefix: by_hand.clone(), outtype: GgmlType::F32, vision_type: None };
    gguf_tools::convert::convert(&opts, &mut |_, _, _| {}).unwrap();
    for part in ["llm", "mmproj"] {
        let a = std::fs::read(converted.join(format!("model-{part}.gguf"))).unwrap();
        let b = std::fs::read(format!("{}-{part}.gguf", by_hand.display())).unwrap();
        assert!(a == b, "{part}: the converted file differs from a conversion by hand");
    }
    let (hand_llm, hand_mmproj) = common::llava::converted(GgmlType::F32);
    let logits_hand = home.join("hand.f32");
    let mut args = vec!["run", "-m", hand_llm.to_str().unwrap(), "--mmproj", hand_mmproj.to_str().unwrap(), "--dump-logits", logits_hand.to_str().unwrap()];
    args.extend_from_slice(&question);
    let by_hand = ok(&dycoke(&hub.url, &home, &args, &[]));
    assert!(read_f32(&logits_hf) == read_f32(&logits_hand), "the logits differ");
    assert_eq!(answer, by_hand);

    // The second run makes no request at all.
    hub.clear_log();
    let mut args = vec!["run", "-hf", "tiny/llava-ov-hf:f32"];
    args.extend_from_slice(&question);
    assert_eq!(ok(&dycoke(&hub.url, &home, &args, &[])), answer);
    assert_eq!(hub.log(), Vec::<String>::new());

    // Offline, with nothing listening at the endpoint, the cached model runs.
    let dead = "http://127.0.0.1:9";
    assert_eq!(ok(&dycoke(dead, &home, &args, &[("HF_HUB_OFFLINE", "1")])), answer);
    // Offline, a model not in the cache is an error naming the repository.
    let err = fails(&dycoke(dead, &home, &["run", "-hf", "tiny/llava-ov-gguf", "-p", "hi"], &[("HF_HUB_OFFLINE", "1")]), 1);
    assert!(err.contains("tiny/llava-ov-gguf") && err.contains("not in the cache"), "{err}");
    // Offline, a checkpoint in the cache converts to another type without the network.
    let out = ok(&dycoke(dead, &home, &["pull", "tiny/llava-ov-hf:q8_0"], &[("HF_HUB_OFFLINE", "1")]));
    assert!(pulled(&out).0.ends_with(format!("{COMMIT_A}/q8_0/model-llm.gguf")), "{out}");

    // A new revision of main is converted again, beside the old one.
    hub.state.lock().unwrap().repos.get_mut("tiny/llava-ov-hf").unwrap().commit = COMMIT_B.into();
    let out = ok(&dycoke(&hub.url, &home, &["pull", "tiny/llava-ov-hf:f32"], &[]));
    assert!(pulled(&out).0.ends_with(format!("{COMMIT_B}/f32/model-llm.gguf")), "{out}");
    assert_eq!(std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(), COMMIT_B);
    assert!(converted.join("model-llm.gguf").exists());

    // The list shows both caches with sizes.
    let list = ok(&dycoke(&hub.url, &home, &["pull", "--list"], &[]));
    assert!(list.contains("tiny/llava-ov-hf") && list.contains("tiny/llava-ov-hf:f32") && list.contains("tiny/llava-ov-hf:q8_0") && list.contains("KiB"), "{list}");
}

#[test]
fn gguf_repository_picks_the_type_by_file_name() {
    let hub = hub();
    let home = home("gguf");
    let out = ok(&dycoke(&hub.url, &home, &["pull", "tiny/llava-ov-gguf:q8_0"], &[]));
    let (llm, mmproj) = pulled(&out);
    assert!(llm.ends_with("tiny-llava-Q8_0.gguf"), "{out}");
    assert!(mmproj.as_ref().unwrap().ends_with("mmproj-tiny-llava-f32.gguf"), "{out}");
    assert!(std::fs::read(&llm).unwrap() == std::fs::read(common::llava::converted(GgmlType::Q8_0).0).unwrap());
    // Nothing but the two files was fetched.
    let log = hub.log();
    assert!(!log.iter().any(|l| l.contains("F32.gguf") || l.contains("README")), "{log:?}");

    // Redirects within the Hub (a renamed repository) are followed, for the API and the files.
    let out = ok(&dycoke(&hub.url, &home, &["pull", "tiny/renamed:q8_0"], &[]));
    assert!(std::fs::read(pulled(&out).0).unwrap() == std::fs::read(&llm).unwrap());
    assert!(hub.log().iter().any(|l| l.starts_with("HEAD /tiny/renamed/resolve/")), "{:?}", hub.log());

    let run = ["run", "-hf", "tiny/llava-ov-gguf:Q8_0", "-p", "Hello", "-n", "3"];
    let answer = ok(&dycoke(&hub.url, &home, &run, &[]));
    hub.clear_log();
    assert_eq!(ok(&dycoke(&hub.url, &home, &run, &[])), answer);
    assert_eq!(hub.log(), Vec::<String>::new(), "the second run made requests");
    // `bench` takes the same name, from the cache.
    let bench = ok(&dycoke(&hub.url, &home, &["bench", "llm", "-hf", "tiny/llava-ov-gguf:q8_0", "--prompt", "16", "--gen", "2", "--depths", "0", "--reps", "1", "--json"], &[]));
    assert!(bench.lines().count() >= 2 && bench.contains("tokens_per_s"), "{bench}");
    assert_eq!(hub.log(), Vec::<String>::new(), "bench made requests");

    let err = fails(&dycoke(&hub.url, &home, &["pull", "tiny/llava-ov-gguf:q6_k"], &[]), 1);
    assert!(err.contains("no GGUF file of type q6_k") && err.contains("tiny-llava-F32.gguf, tiny-llava-Q8_0.gguf"), "{err}");
    let err = fails(&dycoke(&hub.url, &home, &["pull", "tiny/llava-ov-gguf"], &[]), 1);
    assert!(err.contains("several language models") && err.contains("tiny/llava-ov-gguf:TYPE"), "{err}");
}

#[test]
fn an_interrupted_download_resumes_and_a_corrupt_one_is_fetched_again() {
    let hub = hub();
    let home = home("resume");
    hub.state.lock().unwrap().drop_once.push("model.safetensors".into());
    let out = dycoke(&hub.url, &home, &["pull", "tiny/llava-ov-hf:f32"], &[]);
    ok(&out);
    let gets: Vec<String> = hub.log().into_iter().filter(|l| l.starts_with("GET /cdn/")).collect();
    assert_eq!(gets.len(), 2, "{gets:?}");
    let expected = std::fs::read(common::llava::dir().join("hf/model.safetensors")).unwrap();
    assert!(!gets[0].contains("bytes="), "{gets:?}");
    assert_eq!(gets[1].rsplit_once("bytes=").unwrap().1, format!("{}-", expected.len() / 2), "{gets:?}");
    let snap = home.join(format!("hf/hub/models--tiny--llava-ov-hf/snapshots/{COMMIT_A}"));
    assert!(std::fs::read(snap.join("model.safetensors")).unwrap() == expected, "the resumed file differs");
    assert!(!files_under(&home.join("hf")).iter().any(|p| p.to_string_lossy().ends_with(".incomplete")));

    // A download that fails on every try of a run leaves its partial file, which the next run
    // continues from where the last try stopped.
    let home2 = self::home("resume-runs");
    hub.state.lock().unwrap().drop_once.extend(["model.safetensors".to_string(), "model.safetensors".into(), "model.safetensors".into()]);
    hub.clear_log();
    let err = fails(&dycoke(&hub.url, &home2, &["pull", "tiny/llava-ov-hf:f32"], &[]), 1);
    assert!(err.contains("model.safetensors") && err.contains("cannot reach the Hub"), "{err}");
    let partial: Vec<PathBuf> = files_under(&home2.join("hf")).into_iter().filter(|p| p.to_string_lossy().ends_with(".incomplete")).collect();
    assert_eq!(partial.len(), 1, "{partial:?}");
    let kept = std::fs::metadata(&partial[0]).unwrap().len() as usize;
    assert!(kept > expected.len() / 2 && kept < expected.len(), "{kept} of {}", expected.len());
    hub.clear_log();
    ok(&dycoke(&hub.url, &home2, &["pull", "tiny/llava-ov-hf:f32"], &[]));
    let gets: Vec<String> = hub.log().into_iter().filter(|l| l.starts_with("GET /cdn/")).collect();
    assert_eq!(gets, vec![format!("GET /cdn/{} bytes={kept}-", hex(&Sha256::digest(&expected)))], "resumed from the partial file");
    let snap2 = home2.join(format!("hf/hub/models--tiny--llava-ov-hf/snapshots/{COMMIT_A}"));
    assert!(std::fs::read(snap2.join("model.safetensors")).unwrap() == expected, "the file resumed across runs differs");

    // Bytes damaged in transit: detected by the hash, fetched again.
    hub.state.lock().unwrap().corrupt_once.push("tiny-llava-Q8_0.gguf".into());
    let out = dycoke(&hub.url, &home, &["pull", "tiny/llava-ov-gguf:q8_0"], &[]);
    let (llm, _) = pulled(&ok(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("corrupt"), "{}", String::from_utf8_lossy(&out.stderr));
    let good = std::fs::read(common::llava::converted(GgmlType::Q8_0).0).unwrap();
    assert!(std::fs::read(&llm).unwrap() == good, "not fetched again");

    // A blob damaged on disk: `pull` checks the cache against the Hub and fetches it again.
    let blob = std::fs::canonicalize(&llm).unwrap();
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&blob, &bytes).unwrap();
    hub.clear_log();
    let out = dycoke(&hub.url, &home, &["pull", "tiny/llava-ov-gguf:q8_0"], &[]);
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("corrupt"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(hub.log().iter().any(|l| l.starts_with("GET /cdn/")), "{:?}", hub.log());
    assert!(std::fs::read(&llm).unwrap() == good, "not fetched again");
}

#[test]
fn hub_errors_are_clear_and_bounded() {
    let hub = hub();
    let home = home("errors");
    let err = fails(&dycoke(&hub.url, &home, &["pull", "tiny/llava-ov-gguf:q8_0@v9"], &[]), 1);
    assert!(err.contains("tiny/llava-ov-gguf") && err.contains("404") && err.contains("RevisionNotFound"), "{err}");
    let err = fails(&dycoke(&hub.url, &home, &["pull", "tiny/missing"], &[]), 1);
    assert!(err.contains("tiny/missing") && err.contains("401") && err.contains("HF_TOKEN"), "{err}");
    let err = fails(&dycoke(&hub.url, &home, &["run", "-hf", "tiny/gated-gguf:q8_0", "-p", "hi"], &[]), 1);
    assert!(err.contains("401") && err.contains("set HF_TOKEN"), "{err}");
    let err = fails(&dycoke(&hub.url, &home, &["pull", "tiny/gated-gguf:q8_0"], &[("HF_TOKEN", "hf_wrong")]), 1);
    assert!(err.contains("403") && err.contains("HF_TOKEN does not give access"), "{err}");
    ok(&dycoke(&hub.url, &home, &["pull", "tiny/gated-gguf:q8_0"], &[("HF_TOKEN", TOKEN)]));

    let err = fails(&dycoke(&hub.url, &home, &["pull", "tiny/two-mmproj"], &[]), 1);
    assert!(err.contains("mmproj-a-f16.gguf, mmproj-b-f16.gguf"), "{err}");
    let err = fails(&dycoke(&hub.url, &home, &["pull", "tiny/neither"], &[]), 1);
    assert!(err.contains("neither a transformers") && err.contains("README.md, pytorch_model.bin"), "{err}");
    let err = fails(&dycoke(&hub.url, &home, &["pull", "tiny/llava-ov-hf:q4_k_m"], &[]), 1);
    assert!(err.contains("unknown TYPE \"q4_k_m\"") && err.contains("f32, f16"), "{err}");

    // A server that accepts and never answers: an error within the timeouts, not a hang.
    hub.state.lock().unwrap().stall = true;
    let t = Instant::now();
    let err = fails(&dycoke(&hub.url, &home, &["pull", "tiny/llava-ov-hf"], &[]), 1);
    assert!(t.elapsed() < Duration::from_secs(20), "took {:?}", t.elapsed());
    assert!(err.contains("cannot reach the Hub") && err.contains("HF_HUB_OFFLINE"), "{err}");
}

#[test]
fn bad_input_is_refused_and_leaves_nothing_half_written() {
    let hub = hub();
    let home = home("bad");
    for bad in ["tiny", "tiny/", "a/b/c", "tiny/x y", "tiny/-x", "tiny/a--b", "../x", "tiny/x:", "tiny/x:q4-k", "tiny/x@", "tiny/x@../../etc"] {
        let err = fails(&dycoke(&hub.url, &home, &["pull", bad], &[]), if bad == "tiny" { 1 } else { 2 });
        assert!(err.contains("REPO[:TYPE][@REV]") || err.contains("tiny"), "{bad}: {err}");
    }
    let err = fails(&dycoke(&hub.url, &home, &["run", "-hf", "tiny/llava-ov-gguf", "-m", "x.gguf", "-p", "hi"], &[]), 2);
    assert!(err.contains("cannot be used with"), "{err}");

    // The cache cannot be made (HF_HOME under a file): an error naming the path.
    let file = home.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let err = fails(&dycoke(&hub.url, &home, &["pull", "tiny/llava-ov-gguf:q8_0"], &[("HF_HOME", file.join("hf").to_str().unwrap())]), 1);
    assert!(err.contains("cannot write the cache") && err.contains("a-file"), "{err}");

    // A full disk, for the downloads and then for the conversion (a small tmpfs; needs root).
    let full = home.join("full");
    std::fs::create_dir_all(&full).unwrap();
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"]).arg(&full).output().is_ok_and(|o| o.status.success());
    if !mounted {
        eprintln!("skipping the full-disk cases: cannot mount a tmpfs here (not root?)");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(full.clone());
    let check = || -> Result<(), String> {
        let err = fails(&dycoke(&hub.url, &home, &["pull", "tiny/llava-ov-hf:f32"], &[("HF_HOME", full.join("hf").to_str().unwrap())]), 1);
        if !(err.contains("cannot write the cache") && err.contains("No space left")) {
            return Err(format!("downloads: {err}"));
        }
        let left: Vec<PathBuf> = files_under(&full).into_iter().filter(|p| p.to_string_lossy().contains(".incomplete") || p.to_string_lossy().contains("model.safetensors")).collect();
        if !left.is_empty() {
            return Err(format!("left behind: {left:?}"));
        }
        // Downloads fit elsewhere; the converted files do not.
        let err = fails(&dycoke(&hub.url, &home, &["pull", "tiny/llava-ov-hf:f32"], &[("DYCOKE_CACHE", full.join("dycoke").to_str().unwrap())]), 1);
        if !err.contains("No space left") {
            return Err(format!("conversion: {err}"));
        }
        let left = files_under(&full.join("dycoke"));
        if !left.is_empty() {
            return Err(format!("left behind by the conversion: {left:?}"));
        }
        Ok(())
    };
    check().unwrap();
}
