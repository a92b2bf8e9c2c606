//! `dycoke serve` with real clients: the official `openai` Python package, and the chat page in
//! headless Chromium (tests/clients/*.py), against the real binary on a free port with the tiny
//! LLaVA-OneVision fixture. Skipped, with a message, where Python, its packages or Chromium are
//! missing (`.ci/run` installs them).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::server::Server;
use dycoke::ggml::GgmlType;

fn start() -> Server {
    let (llm, mmproj) = common::llava::converted(GgmlType::F32);
    Server::start(&["-m", path_str(&llm), "--mmproj", path_str(&mmproj), "--media-dir", path_str(&common::llava::dir()), "-np", "2", "-c", "4096"])
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
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
    let server = start();
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
    let server = start();
    run_client(&server, "browser.py", &[path_str(&fixture_video()), path_str(&screenshot)]);
    assert!(screenshot.exists(), "no screenshot at {}", screenshot.display());
    println!("screenshot of the page: {}", screenshot.display());
}
