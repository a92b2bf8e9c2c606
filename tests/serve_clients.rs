//! `dycoke serve` with real clients: the official `openai` Python package, and the chat page in
//! headless Chromium (tests/clients/*.py), against the real binary on a free port with the tiny
//! LLaVA-OneVision fixture. Skipped, with a message, where Python, its packages or Chromium are
//! missing (`.ci/run` installs them).

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use dycoke::ggml::GgmlType;

const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// A running server, killed when dropped, so that a failing assertion does not leave it behind.
struct Server {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Server {
    fn start(tag: &str) -> Server {
        let (llm, mmproj) = common::llava::converted(GgmlType::F32);
        let log = common::scratch_dir().join(format!("serve-{tag}.log"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_dycoke"))
            .args(["serve", "-m", path_str(&llm), "--mmproj", path_str(&mmproj), "--host", "127.0.0.1", "--port", "0"])
            .args(["--media-dir", path_str(&common::llava::dir()), "-np", "2", "-c", "4096"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("server log"))
            .spawn()
            .expect("start dycoke serve");
        let stdout = child.stdout.take().unwrap();
        // Build the guard before waiting, so that a server that never says where it listens is still killed.
        let mut server = Server { child, url: String::new(), log };
        server.url = listening_url(stdout).unwrap_or_else(|why| panic!("dycoke serve: {why}\n{}", server.log_text()));
        server
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// Reads the server's stdout until it prints `listening on http://ADDR`, and keeps draining it
/// afterwards so that the server never blocks on a full pipe.
fn listening_url(stdout: impl Read + Send + 'static) -> Result<String, String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if !sent {
                if let Some(at) = line.find("listening on http://") {
                    let url = line[at + "listening on ".len()..].split_whitespace().next().unwrap_or("").to_string();
                    sent = tx.send(url).is_ok();
                }
            }
        }
    });
    match rx.recv_timeout(STARTUP_TIMEOUT) {
        Ok(url) if url.len() > "http://".len() => Ok(url),
        Ok(url) => Err(format!("printed no address after `listening on`: {url:?}")),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(format!("did not print `listening on http://...` within {STARTUP_TIMEOUT:?}")),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err("exited before printing `listening on http://...`".into()),
    }
}

/// Why these tests cannot run here, if they cannot: python3 or one of `modules` missing, or a file.
fn missing(modules: &[&str], files: &[&str]) -> Option<String> {
    for module in modules {
        match Command::new("python3").args(["-c", &format!("import {module}")]).output() {
            Err(_) => return Some("python3 not found".into()),
            Ok(out) if !out.status.success() => {
                return Some(format!("the Python package `{module}` is missing (python3 -m pip install {module})"));
            }
            Ok(_) => {}
        }
    }
    files.iter().find(|f| !Path::new(f).exists()).map(|f| format!("{f} is missing (apt-get install chromium chromium-driver)"))
}

fn client_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients").join(name)
}

fn fixture_video() -> PathBuf {
    common::llava::dir().join("clip.mp4")
}

/// Runs a client script against the server; its output is shown, and a failure carries the
/// server's log.
fn run_client(server: &Server, script: &str, args: &[&str]) {
    let out = Command::new("python3")
        .arg(client_script(script))
        .arg(&server.url)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{script}:\n{stdout}{stderr}");
    assert!(
        out.status.success(),
        "{script} failed ({}):\n{stdout}{stderr}\n--- server log ---\n{}",
        out.status,
        server.log_text()
    );
}

#[test]
fn the_openai_python_package_chats_about_a_video() {
    if let Some(why) = missing(&["openai"], &[]) {
        println!("skipped: {why}");
        return;
    }
    let server = Server::start("openai");
    run_client(&server, "openai_client.py", &[path_str(&fixture_video())]);
}

#[test]
fn the_chat_page_answers_in_a_headless_browser() {
    if let Some(why) = missing(&["selenium"], &["/usr/bin/chromium", "/usr/bin/chromedriver"]) {
        println!("skipped: {why}");
        return;
    }
    let screenshot = std::env::var_os("DYCOKE_PAGE_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve-page.png"));
    let server = Server::start("browser");
    run_client(&server, "browser.py", &[path_str(&fixture_video()), path_str(&screenshot)]);
    assert!(screenshot.exists(), "no screenshot at {}", screenshot.display());
    println!("screenshot of the page: {}", screenshot.display());
}
